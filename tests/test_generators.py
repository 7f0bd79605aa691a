"""helpers.generators: Claude through the real SDK against a fake Messages API, and the offline
SmolLM2 model for real.

Nothing inside the ``anthropic`` SDK is mocked: it sends real HTTP to tests/fake_anthropic.py,
so its retries, timeouts, headers and parsing are what a user gets.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers import generators as g
from helpers.generators import (
    AuthenticationFailedError,
    ClaudeGenerator,
    ConnectionFailedError,
    Generation,
    GenerationError,
    GenerationRequest,
    Generator,
    LocalGenerator,
    LocalModelError,
    MalformedResponseError,
    MissingAPIKeyError,
    OverloadedError,
    RateLimitedError,
    RequestRejectedError,
    RequestTimeoutError,
    ServerError,
    TokenLedger,
    article_prompt,
    estimate_cost,
    generate_description,
    make_generator,
    trim_to_last_sentence,
)
from helpers.settings import Settings, SettingsError
from tests import fake_anthropic as fa
from tests.fake_anthropic import FAKE_KEY, TEST_MODEL

pytest_plugins = ["tests.fixtures_anthropic"]

REPO = Path(__file__).resolve().parent.parent
PRANCING_PONY = ("The Prancing Pony", "Bree", "Aragorn")
SENTENCE_END = re.compile(r"[.!?…][\"'”’)\]]*$")
MakeClaude = Callable[..., ClaudeGenerator]


def hermetic_settings(**changes: object) -> Settings:
    """Settings built from the dataclass defaults, not the environment of the test run."""
    return Settings().replace(**changes)


# ---------------------------------------------------------------------------------------------
# The article's prompt


def test_article_prompt_is_the_articles_wording() -> None:
    assert article_prompt(*PRANCING_PONY) == (
        "Write a vivid description for a tavern named The Prancing Pony, located in Bree, "
        "known for a visit by Aragorn."
    )


# ---------------------------------------------------------------------------------------------
# Claude: normal answers


def test_claude_answer_becomes_a_generation(
    fake_anthropic: fa.FakeAnthropic, claude: MakeClaude
) -> None:
    fake_anthropic.script(fa.ok("A smoky common room.", input_tokens=31, output_tokens=17))
    gen = claude()
    result = generate_description(gen, *PRANCING_PONY)

    assert isinstance(result, Generation)
    assert result.text == "A smoky common room."
    assert (result.input_tokens, result.output_tokens) == (31, 17)
    assert result.model == TEST_MODEL and result.generator == "claude"
    assert result.stop_reason == "end_turn" and not result.truncated
    assert result.latency_s > 0
    assert result.seed is None  # the Messages API has no seed
    assert result.temperature is None  # not sent: API 2026-10-21 removed it

    (request,) = fake_anthropic.message_requests
    assert request.method == "POST" and request.path == "/v1/messages"
    body = request.json
    assert body["model"] == TEST_MODEL
    assert body["messages"] == [{"role": "user", "content": article_prompt(*PRANCING_PONY)}]
    assert body["max_tokens"] == g.CLAUDE_DESCRIPTION_MAX_TOKENS
    assert "temperature" not in body and "system" not in body
    # The key path works: the SDK (2.x) sends the key as a bearer token (1.x sent x-api-key).
    sent = request.headers.get("authorization", "") + request.headers.get("x-api-key", "")
    assert FAKE_KEY in sent
    assert request.headers.get("anthropic-version")


def test_claude_sends_temperature_zero_when_asked(
    fake_anthropic: fa.FakeAnthropic, claude: MakeClaude
) -> None:
    """The article's temperature=0 reaches the wire through extra_body for APIs that take it."""
    gen = claude(send_temperature=True)
    result = generate_description(gen, *PRANCING_PONY, max_tokens=123, system="Be brief.")
    body = fake_anthropic.message_requests[0].json
    assert body["temperature"] == 0 and isinstance(body["temperature"], float)
    assert body["max_tokens"] == 123
    assert body["system"] == "Be brief."
    assert result.temperature == 0.0


def test_claude_cut_answer_is_trimmed_to_the_last_sentence(
    fake_anthropic: fa.FakeAnthropic, claude: MakeClaude
) -> None:
    fake_anthropic.script(fa.ok("The door creaks. Inside, the fire", stop_reason="max_tokens"))
    result = claude().generate("x", max_tokens=10, temperature=0.0, seed=1)
    assert result.text == "The door creaks." and result.truncated


def test_token_accounting_sums_over_calls(
    fake_anthropic: fa.FakeAnthropic, claude: MakeClaude
) -> None:
    fake_anthropic.script(
        fa.ok(input_tokens=10, output_tokens=100),
        fa.ok(input_tokens=20, output_tokens=200),
        fa.unauthorized(),
        fa.ok(input_tokens=30, output_tokens=300),
    )
    gen = claude()
    for _ in range(2):
        gen.generate("p", max_tokens=50, temperature=0.0, seed=0)
    with pytest.raises(AuthenticationFailedError):
        gen.generate("p", max_tokens=50, temperature=0.0, seed=0)
    gen.generate("p", max_tokens=50, temperature=0.0, seed=0)

    usage = gen.usage
    assert (usage.calls, usage.failures) == (3, 1)
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (60, 600, 660)
    assert usage.latency_s > 0
    # 60 in at $3/Mtok + 600 out at $15/Mtok
    assert usage.cost(3.0, 15.0) == pytest.approx(60 * 3e-6 + 600 * 15e-6)
    assert estimate_cost(1_000_000, 1_000_000, 3.0, 15.0) == pytest.approx(18.0)
    summary = usage.summary("claude-sonnet-4-5")
    assert "3 call(s)" in summary and "60 input" in summary and "600 output" in summary
    assert "1 failed" in summary and "$" in summary
    assert usage.as_dict()["calls"] == 3


def test_ledger_is_per_generator_and_thread_safe() -> None:
    ledger = TokenLedger()
    one = Generation("t", "m", "local", 2, 3, 0.5)
    import threading

    threads = [
        threading.Thread(target=lambda: [ledger.record(one) for _ in range(500)]) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (ledger.calls, ledger.input_tokens, ledger.output_tokens) == (2000, 4000, 6000)


# ---------------------------------------------------------------------------------------------
# Claude: retries and errors


@pytest.mark.parametrize("failure", [fa.server_error, fa.overloaded], ids=["500", "529"])
def test_sdk_retries_then_succeeds(
    fake_anthropic: fa.FakeAnthropic, claude: MakeClaude, failure: Callable[[], fa.Reply]
) -> None:
    fake_anthropic.script(failure(), failure(), fa.ok("Third time lucky."))
    result = claude(max_retries=2).generate("p", max_tokens=20, temperature=0.0, seed=0)
    assert result.text == "Third time lucky."
    requests = fake_anthropic.message_requests
    assert len(requests) == 3  # N + 1 with N = max_retries
    assert [r.headers.get("x-stainless-retry-count") for r in requests] == ["0", "1", "2"]
    # retry-after-ms: 10 was honoured: each retry came at least 10 ms after the error was sent
    errors = [a.sent_at for a in fake_anthropic.answers if a.status != 200]
    assert all(r.received_at >= t + 0.010 for r, t in zip(requests[1:], errors, strict=True))


def test_rate_limited_after_retries(fake_anthropic: fa.FakeAnthropic, claude: MakeClaude) -> None:
    fake_anthropic.set_default(fa.rate_limited())
    with pytest.raises(RateLimitedError) as info:
        claude(max_retries=2).generate("p", max_tokens=20, temperature=0.0, seed=0)
    message = str(info.value)
    assert "429" in message and "after 2 retries" in message
    assert "Wait" in message and "concurrency" in message
    assert info.value.status_code == 429 and info.value.request_id
    assert len(fake_anthropic.message_requests) == 3


def test_overloaded_after_retries(fake_anthropic: fa.FakeAnthropic, claude: MakeClaude) -> None:
    fake_anthropic.set_default(fa.overloaded())
    with pytest.raises(OverloadedError) as info:
        claude(max_retries=1).generate("p", max_tokens=20, temperature=0.0, seed=0)
    assert isinstance(info.value, ServerError)
    message = str(info.value)
    assert "overloaded" in message and "529" in message and "after 1 retry" in message
    assert "GFL_GENERATOR=local" in message
    assert len(fake_anthropic.message_requests) == 2


def test_server_error_after_retries(fake_anthropic: fa.FakeAnthropic, claude: MakeClaude) -> None:
    fake_anthropic.set_default(fa.server_error(502))
    with pytest.raises(ServerError) as info:
        claude(max_retries=1).generate("p", max_tokens=20, temperature=0.0, seed=0)
    assert not isinstance(info.value, OverloadedError)
    assert "502" in str(info.value) and "server error" in str(info.value)
    assert info.value.status_code == 502


def test_bad_key_is_not_retried_and_says_what_to_check(
    fake_anthropic: fa.FakeAnthropic, claude: MakeClaude
) -> None:
    fake_anthropic.set_default(fa.unauthorized())
    with pytest.raises(AuthenticationFailedError) as info:
        claude().generate("p", max_tokens=20, temperature=0.0, seed=0)
    assert "ANTHROPIC_API_KEY" in str(info.value) and "401" in str(info.value)
    assert len(fake_anthropic.message_requests) == 1


def test_unknown_model_points_at_the_model_setting(
    fake_anthropic: fa.FakeAnthropic, claude: MakeClaude
) -> None:
    fake_anthropic.set_default(fa.not_found_model("claude-3-opus-20240229"))
    with pytest.raises(RequestRejectedError) as info:
        claude(model="claude-3-opus-20240229").generate("p", max_tokens=20, temperature=0.0, seed=0)
    assert "GFL_CLAUDE_MODEL" in str(info.value) and "claude-3-opus-20240229" in str(info.value)


def test_timeout(fake_anthropic: fa.FakeAnthropic, claude: MakeClaude) -> None:
    fake_anthropic.set_default(fa.slow(2.0))
    with pytest.raises(RequestTimeoutError) as info:
        claude(timeout=0.3, max_retries=1).generate("p", max_tokens=20, temperature=0.0, seed=0)
    assert isinstance(info.value, ConnectionFailedError)
    message = str(info.value)
    assert "0.3 s" in message and fake_anthropic.base_url in message and "timeout" in message
    assert len(fake_anthropic.message_requests) == 2  # the SDK retried the timeout once


def test_connection_refused(claude: MakeClaude) -> None:
    url = fa.closed_port_url()
    with pytest.raises(ConnectionFailedError) as info:
        claude(base_url=url, max_retries=0).generate("p", max_tokens=20, temperature=0.0, seed=0)
    assert not isinstance(info.value, RequestTimeoutError)
    message = str(info.value)
    assert url in message and "ANTHROPIC_BASE_URL" in message and "network" in message


@pytest.mark.parametrize(
    "reply",
    [fa.invalid_json(), fa.missing_content(), fa.no_text_block(), fa.not_json_object()],
    ids=["invalid-json", "no-content", "no-text-block", "not-an-object"],
)
def test_malformed_answers(
    fake_anthropic: fa.FakeAnthropic, claude: MakeClaude, reply: fa.Reply
) -> None:
    fake_anthropic.set_default(reply)
    gen = claude()
    with pytest.raises(MalformedResponseError) as info:
        gen.generate("p", max_tokens=20, temperature=0.0, seed=0)
    assert "Claude's answer" in str(info.value)
    assert (gen.usage.calls, gen.usage.failures, gen.usage.output_tokens) == (0, 1, 0)


def test_every_error_is_a_generation_error_without_the_sdk_exception_attached(
    fake_anthropic: fa.FakeAnthropic, claude: MakeClaude
) -> None:
    fake_anthropic.set_default(fa.server_error())
    with pytest.raises(GenerationError) as info:
        claude(max_retries=0).generate("p", max_tokens=20, temperature=0.0, seed=0)
    # The SDK's exception holds the request, whose headers hold the key: it must not ride along.
    assert info.value.__cause__ is None and info.value.__context__ is None


def test_claude_without_a_key_is_refused_at_construction() -> None:
    with pytest.raises(MissingAPIKeyError, match="ANTHROPIC_API_KEY"):
        ClaudeGenerator(api_key="")


# ---------------------------------------------------------------------------------------------
# The key never shows


def test_key_never_appears_in_errors_reprs_or_logs(
    fake_anthropic: fa.FakeAnthropic,
    claude: MakeClaude,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in ("anthropic", "httpx", "httpx2", "httpcore", "httpcore2", "helpers.generators"):
        caplog.set_level(logging.DEBUG, logger=name)
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    gen = claude(max_retries=1, timeout=0.3)
    gen.generate("ok", max_tokens=20, temperature=0.0, seed=0)
    echoing = fa.error(
        401, "authentication_error", f"invalid x-api-key {FAKE_KEY}"
    )  # a leaky server
    for reply in [
        echoing,
        fa.unauthorized(),
        fa.rate_limited(),
        fa.overloaded(),
        fa.server_error(),
        fa.not_found_model("m"),
        fa.slow(1.0),
        fa.invalid_json(),
        fa.missing_content(),
    ]:
        fake_anthropic.set_default(reply)
        with pytest.raises(GenerationError) as info:
            gen.generate("p", max_tokens=20, temperature=0.0, seed=0)
        exc = info.value
        texts += [str(exc), repr(exc), repr(exc.args), "".join(traceback.format_exception(exc))]
    assert "***" in texts[0]  # the echoed key was scrubbed, not dropped silently

    with pytest.raises(ConnectionFailedError) as info:
        claude(base_url=fa.closed_port_url(), max_retries=0).generate(
            "p", max_tokens=5, temperature=0.0, seed=0
        )
    texts += [str(info.value), "".join(traceback.format_exception(info.value))]

    settings = hermetic_settings(anthropic_api_key=FAKE_KEY, generator="claude")
    made = make_generator(settings, claude_options={"max_retries": 0})
    texts += [repr(gen), str(gen), repr(made), repr(settings), str(settings.describe())]
    texts += [gen.usage.summary(), repr(gen.usage)]
    out = capsys.readouterr()
    texts += [out.out, out.err, caplog.text]
    texts += [r.getMessage() for r in caplog.records]

    assert caplog.records, "DEBUG logging was on: the SDK should have logged something"
    for text in texts:
        assert FAKE_KEY not in text
        assert "SECRET-1234567890" not in text
    # ...while the key did reach the server, on every request
    for request in fake_anthropic.message_requests:
        assert FAKE_KEY in request.headers.get("authorization", "") + request.headers.get(
            "x-api-key", ""
        )


def test_scrub() -> None:
    assert g.scrub(f"key={FAKE_KEY}!", FAKE_KEY) == "key=***!"
    assert g.scrub("other sk-ant-api03-abcdEFGH_1234 here") == "other *** here"
    assert g.scrub("nothing to hide", "") == "nothing to hide"


# ---------------------------------------------------------------------------------------------
# make_generator


def test_auto_without_key_is_local_and_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    gen = make_generator(hermetic_settings(generator="auto", anthropic_api_key=""))
    assert isinstance(gen, LocalGenerator) and gen.name == "local"
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "generator: local SmolLM2-135M-Instruct-Q4_1 (no ANTHROPIC_API_KEY set; set it to use Claude)"
    ]


def test_auto_with_key_is_claude(capsys: pytest.CaptureFixture[str]) -> None:
    settings = hermetic_settings(
        generator="auto", anthropic_api_key=FAKE_KEY, anthropic_base_url="http://127.0.0.1:9"
    )
    gen = make_generator(settings)
    assert isinstance(gen, ClaudeGenerator) and isinstance(gen, Generator)
    assert gen.model == settings.claude_model and gen.base_url == "http://127.0.0.1:9"
    assert gen.concurrency == settings.claude_concurrency
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"generator: claude {settings.claude_model} (")
    assert "ANTHROPIC_API_KEY is set" in lines[0]


def test_claude_without_key_is_an_error_not_a_fallback(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(MissingAPIKeyError) as info:
        make_generator(hermetic_settings(generator="claude", anthropic_api_key=""))
    assert "ANTHROPIC_API_KEY" in str(info.value) and "GFL_GENERATOR" in str(info.value)
    assert capsys.readouterr().out == ""


def test_local_on_request(capsys: pytest.CaptureFixture[str]) -> None:
    gen = make_generator(hermetic_settings(generator="local", anthropic_api_key=FAKE_KEY, seed=7))
    assert isinstance(gen, LocalGenerator) and gen.default_seed == 7
    assert capsys.readouterr().out.strip().endswith("(GFL_GENERATOR=local)")


def test_announce_can_be_logged_or_silenced(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    make_generator(hermetic_settings(generator="local"), announce=None)
    assert capsys.readouterr().out == ""
    caplog.set_level(logging.INFO, logger="x")
    make_generator(hermetic_settings(generator="local"), announce=logging.getLogger("x").info)
    assert capsys.readouterr().out == ""
    logged = [r.getMessage() for r in caplog.records if r.name == "x"]
    assert len(logged) == 1 and logged[0].startswith("generator: local ")


# ---------------------------------------------------------------------------------------------
# Sentence trimming


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("One sentence. And half of anoth", "One sentence."),
        ("Ends well.", "Ends well."),
        ("  Two! Three? Four", "Two! Three?"),
        ('He said "Go home." and then', 'He said "Go home."'),
        ("The keeper (a hobbit.) said", "The keeper (a hobbit.)"),
        ("Ask Mr. Butterbur. He knows Mr. Under", "Ask Mr. Butterbur."),
        ("It waits… and", "It waits…"),
        ("Version 2.5 is out. The", "Version 2.5 is out."),
        ("No sentence end at all", "No sentence end at all"),
        ("A line.\n\nA new paragraph without end", "A line."),
        ("", ""),
    ],
)
def test_trim_to_last_sentence(text: str, expected: str) -> None:
    assert trim_to_last_sentence(text) == expected


def test_model_name_from_path() -> None:
    assert (
        g.model_name_from_path("/x/SmolLM2-135M-Instruct.Q4_1.gguf") == "SmolLM2-135M-Instruct-Q4_1"
    )


# ---------------------------------------------------------------------------------------------
# The local model, for real


# One llama.cpp thread: on a loaded 2-core machine two threads spin at llama.cpp's barriers and
# run about 10x slower (docs/benchmarks.md, "Generation throughput"); determinism is the same.
TEST_THREADS = 1


@pytest.fixture(scope="module")
def local() -> LocalGenerator:
    return LocalGenerator(n_threads=TEST_THREADS)


@pytest.fixture(scope="module")
def pony(local: LocalGenerator) -> Generation:
    return generate_description(local, *PRANCING_PONY, seed=42)


def test_local_description(local: LocalGenerator, pony: Generation) -> None:
    assert isinstance(local, Generator)
    assert pony.generator == "local" and pony.model == "SmolLM2-135M-Instruct-Q4_1"
    assert len(pony.text.split()) > 40
    assert SENTENCE_END.search(pony.text), pony.text[-80:]
    assert pony.input_tokens > 20 and 0 < pony.output_tokens <= g.LOCAL_DESCRIPTION_MAX_TOKENS
    assert pony.temperature == 0.0 and pony.seed == 42
    assert pony.stop_reason in {"max_tokens", "end_turn"}
    assert pony.latency_s > 0


def test_local_is_deterministic_in_process(local: LocalGenerator, pony: Generation) -> None:
    again = generate_description(local, *PRANCING_PONY, seed=42)
    assert again.text == pony.text
    assert local.usage.calls >= 2 and local.usage.output_tokens >= 2 * again.output_tokens - 1


def test_local_is_deterministic_across_processes(pony: Generation) -> None:
    script = (
        "import json\n"
        "from helpers.generators import LocalGenerator, generate_description\n"
        f"r = generate_description(LocalGenerator(n_threads={TEST_THREADS}), *{PRANCING_PONY!r}, "
        "seed=42)\n"
        "print(json.dumps({'text': r.text, 'out': r.output_tokens}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-2000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["text"] == pony.text
    assert done.stderr.count("\n") < 5, "llama.cpp should be silent (verbosity -1)"


def test_local_seed_decides_sampled_text(local: LocalGenerator) -> None:
    def run(seed: int) -> str:
        return local.generate(
            "Name three tavern dishes.", max_tokens=40, temperature=0.9, seed=seed
        ).text

    first = run(1)
    assert run(1) == first
    assert any(run(seed) != first for seed in (2, 3))


def test_local_workers_change_speed_not_texts(local: LocalGenerator) -> None:
    """generate_many on two model instances side by side: the texts, their order and the token
    account equal one-by-one generation, since each request is alone in its context."""
    requests = [
        GenerationRequest(f"Describe tavern number {i} of the Shire in one sentence.", 24, 0.8, i)
        for i in range(5)
    ]
    one_by_one = [
        local.generate(r.prompt, max_tokens=r.max_tokens, temperature=r.temperature, seed=r.seed)
        for r in requests
    ]
    two = LocalGenerator(n_threads=TEST_THREADS, workers=2)
    together = two.generate_many(requests)
    assert [g.text for g in together] == [g.text for g in one_by_one]
    assert [g.seed for g in together] == [r.seed for r in requests]
    assert two.usage.output_tokens == sum(g.output_tokens for g in one_by_one)
    workers = {k[3] for k in g.loaded_local_models() if k[2] == TEST_THREADS}
    assert {0, 1} <= workers  # both instances were used (loaded once each, cached)


def test_local_threads_are_part_of_a_texts_identity(local: LocalGenerator, tmp_path: Path) -> None:
    """The cache key holds the generator's text settings: a text made with 2 threads is never
    served to a 1-thread generator (loop-sized prompts differ between them: docs/benchmarks.md
    section 9)."""
    from helpers.generation_cache import CachedGenerator

    args = {"system": None, "max_tokens": 10, "temperature": 0.8, "seed": 1}
    one = CachedGenerator(local, tmp_path / "c.jsonl")
    two = CachedGenerator(LocalGenerator(n_threads=2), tmp_path / "c.jsonl")
    assert one.text_settings == {"n_threads": TEST_THREADS, "repeat_penalty": 1.15}
    assert one.key("Hello", **args) != two.key("Hello", **args)
    assert one.key("Hello", **args) == CachedGenerator(local, tmp_path / "d.jsonl").key(
        "Hello", **args
    )


def test_local_threads_come_from_the_settings(capsys: pytest.CaptureFixture[str]) -> None:
    gen = make_generator(hermetic_settings(generator="local", local_threads=1), announce=None)
    assert isinstance(gen, LocalGenerator) and gen.n_threads == 1
    assert Settings.from_env({"GFL_LOCAL_THREADS": "3"}).local_threads == 3
    assert Settings.from_env({}).local_threads == 1
    assert Settings.from_env({}).local_workers == 2
    assert Settings.from_env({"GFL_LOCAL_WORKERS": "3"}).local_workers == 3
    assert make_generator(hermetic_settings(generator="local"), announce=None).workers == 2
    with pytest.raises(SettingsError, match="GFL_LOCAL_THREADS"):
        Settings.from_env({"GFL_LOCAL_THREADS": "0"})
    with pytest.raises(SettingsError, match="GFL_LOCAL_WORKERS"):
        Settings.from_env({"GFL_LOCAL_WORKERS": "0"})


def test_local_model_is_loaded_once(local: LocalGenerator) -> None:
    second = LocalGenerator(n_threads=TEST_THREADS)
    assert second._server is local._server
    key = (str(local.model_path), local.n_ctx, local.n_threads, 0)
    assert g.loaded_local_models().count(key) == 1
    assert second.usage is not local.usage  # each generator keeps its own account
    assert "SmolLM2" in repr(second)


def test_local_prompt_too_long(local: LocalGenerator) -> None:
    with pytest.raises(LocalModelError, match="n_ctx"):
        local.generate("word " * 5000, max_tokens=5, temperature=0.0, seed=0)


def test_local_seed_must_be_usable(local: LocalGenerator) -> None:
    with pytest.raises(ValueError, match="seed"):
        local.generate("x", max_tokens=5, temperature=0.0, seed=-1)


def test_default_claude_model_is_known_to_the_sdk_and_not_deprecated() -> None:
    from anthropic._data import DEPRECATED_MODELS
    from anthropic.types import model_param

    from helpers.settings import DEFAULT_CLAUDE_MODEL

    assert DEFAULT_CLAUDE_MODEL not in DEPRECATED_MODELS
    assert DEFAULT_CLAUDE_MODEL in str(model_param.ModelParam)
