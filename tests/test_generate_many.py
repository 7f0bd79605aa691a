"""``generate_many``: a whole iteration's requests at once, answered in request order.

Claude: the real ``anthropic`` SDK against tests/fake_anthropic.py answering with 1-2 s of
simulated latency, a burst of 429s, failures for one prompt. The local model: the real SmolLM2.
What is asserted is behaviour (each request answered once, order, concurrency bound, retry-after
honoured, exact tokens); how much faster it is, is measured by bench/generation.py.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest

from helpers.generators import (
    AuthenticationFailedError,
    ClaudeGenerator,
    GenerateManyError,
    GenerationRequest,
    Generator,
    LocalGenerator,
    ServerError,
    Throttle,
    generate_sequentially,
)
from helpers.generators.claude import retry_after_seconds
from helpers.settings import Settings, SettingsError
from tests import fake_anthropic as fa

pytest_plugins = ["tests.fixtures_anthropic"]

MakeClaude = Callable[..., ClaudeGenerator]
N_TAVERNS = 47  # one iteration of the default loop


def requests_for(n: int, max_tokens: int = 50) -> list[GenerationRequest]:
    return [
        GenerationRequest(f"Describe tavern number {i} in {i % 5 + 2} words.", max_tokens, 0.0, 7)
        for i in range(n)
    ]


def test_iteration_at_concurrency_8_with_latency_and_a_burst_of_429s(
    fake_anthropic: fa.FakeAnthropic, claude: MakeClaude
) -> None:
    retry_after = 2.0
    fake_anthropic.set_default(fa.echo()).set_latency(1.0, 2.0, seed=3)
    # the first answer is immediate, then a burst of 429s that really ask for 2 s of quiet
    # (no retry-after-ms shortcut) while other workers are finishing their requests
    fake_anthropic.script(*[fa.echo()] * 10, *[fa.rate_limited(retry_after, fast=False)] * 4)
    gen = claude(concurrency=8, max_retries=4, timeout=30.0)
    requests = requests_for(N_TAVERNS)

    generations = gen.generate_many(requests)

    # every request answered, in request order, by its own answer
    assert [g.text for g in generations] == [f"Answer: {r.prompt}" for r in requests]
    ok = Counter(a.prompt for a in fake_anthropic.answers if a.status == 200)
    assert ok == Counter({r.prompt: 1 for r in requests}), "a generation was lost or made twice"
    # at most 8 in flight at once, and really concurrent
    assert 1 < fake_anthropic.peak_in_flight <= 8
    # the 429s were sent and each rate-limited request came back only after retry-after
    limited = [a for a in fake_anthropic.answers if a.status == 429]
    assert len(limited) == 4
    for answer in limited:
        later = [
            r.received_at
            for r in fake_anthropic.message_requests
            if r.json["messages"][-1]["content"] == answer.prompt and r.received_at > answer.sent_at
        ]
        assert later and min(later) >= answer.sent_at + retry_after
    # ...and the pause held back every other worker too: from when the client saw the first 429
    # until the time it named, nothing new reached the server (0.5 s allowed for a request that
    # had already passed the pause and was in transit)
    seen, quiet_until = gen.throttle.events[0]
    arrivals = [r.received_at for r in fake_anthropic.message_requests]
    assert quiet_until >= seen + retry_after
    assert not [t for t in arrivals if seen + 0.5 < t < quiet_until]
    # token accounting exact: the ledger holds each answer once, failures none
    expected = [fa.echo_tokens(r.prompt) for r in requests]
    assert [(g.input_tokens, g.output_tokens) for g in generations] == expected
    assert gen.usage.calls == N_TAVERNS and gen.usage.failures == 0
    assert gen.usage.input_tokens == sum(i for i, _ in expected)
    assert gen.usage.output_tokens == sum(o for _, o in expected)


def test_a_request_that_fails_for_good_loses_no_other_generation(
    fake_anthropic: fa.FakeAnthropic, claude: MakeClaude
) -> None:
    fake_anthropic.set_default(fa.echo())
    requests = requests_for(12)
    fake_anthropic.answer_prompt(requests[5].prompt, fa.server_error(500))
    gen = claude(concurrency=4, max_retries=1)

    with pytest.raises(GenerateManyError) as info:
        gen.generate_many(requests)

    err = info.value
    assert set(err.errors) == {5} and isinstance(err.errors[5], ServerError)
    assert "1 of 12 request(s) failed" in str(err) and "request 5" in str(err)
    kept = err.generations
    assert kept[5] is None
    assert [g.text for i, g in enumerate(kept) if i != 5 and g is not None] == [
        f"Answer: {r.prompt}" for i, r in enumerate(requests) if i != 5
    ]
    assert gen.usage.calls == 11 and gen.usage.failures == 1


def test_a_rejected_prompt_does_not_stop_the_others(
    fake_anthropic: fa.FakeAnthropic, claude: MakeClaude
) -> None:
    fake_anthropic.set_default(fa.echo())
    requests = requests_for(6)
    too_long = fa.error(400, "invalid_request_error", "prompt is too long")
    fake_anthropic.answer_prompt(requests[0].prompt, too_long)
    with pytest.raises(GenerateManyError) as info:
        claude(concurrency=2).generate_many(requests)
    assert set(info.value.errors) == {0}
    assert all(g is not None for g in info.value.generations[1:])


def test_a_refused_key_stops_the_batch_instead_of_sending_it_all(
    fake_anthropic: fa.FakeAnthropic, claude: MakeClaude
) -> None:
    fake_anthropic.set_default(fa.unauthorized())
    with pytest.raises(GenerateManyError) as info:
        claude(concurrency=2).generate_many(requests_for(30))
    assert all(isinstance(e, AuthenticationFailedError) for e in info.value.errors.values())
    assert fa.FAKE_KEY not in str(info.value)
    assert len(fake_anthropic.message_requests) < 30


def test_concurrency_one_is_sequential(
    fake_anthropic: fa.FakeAnthropic, claude: MakeClaude
) -> None:
    fake_anthropic.set_default(fa.echo())
    requests = requests_for(5)
    generations = claude(concurrency=1).generate_many(requests)
    assert [g.text for g in generations] == [f"Answer: {r.prompt}" for r in requests]
    assert fake_anthropic.peak_in_flight == 1
    assert claude().generate_many([]) == []


def test_overloaded_backs_off_then_succeeds(
    fake_anthropic: fa.FakeAnthropic, claude: MakeClaude
) -> None:
    fake_anthropic.set_default(fa.echo())
    overloaded = fa.error(529, "overloaded_error", "Overloaded")  # no retry-after at all
    fake_anthropic.script(overloaded, overloaded)
    gen = claude(concurrency=2, max_retries=3)
    generations = gen.generate_many(requests_for(4))
    assert len(generations) == 4 and gen.throttle.pauses == 2
    sent = sorted(a.sent_at for a in fake_anthropic.answers if a.status == 529)
    later = [r.received_at for r in fake_anthropic.message_requests if r.received_at > sent[-1]]
    # two 529s in a row: 0.5 s then 1 s of back-off for everyone
    assert min(later) >= sent[-1] + 1.0


def test_concurrency_setting() -> None:
    assert Settings.from_env({}).claude_concurrency == 8
    assert Settings.from_env({"GFL_CLAUDE_CONCURRENCY": "3"}).claude_concurrency == 3
    with pytest.raises(SettingsError, match="GFL_CLAUDE_CONCURRENCY"):
        Settings.from_env({"GFL_CLAUDE_CONCURRENCY": "0"})
    with pytest.raises(ValueError, match="concurrency"):
        ClaudeGenerator(api_key=fa.FAKE_KEY, concurrency=0)


def test_retry_after_parsing() -> None:
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after_seconds({"retry-after": "3"}) == 3.0
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) is None
    assert retry_after_seconds({"retry-after": "100000"}) == 60.0
    assert retry_after_seconds({}) is None


def test_throttle_pause_is_shared_and_extends_only_forward() -> None:
    now = [100.0]
    throttle = Throttle(clock=lambda: now[0])
    throttle.observe(429, {"retry-after": "5"})
    throttle.observe(429, {"retry-after": "1"})  # a shorter pause does not shorten the first
    assert throttle.events == [(100.0, 105.0), (100.0, 105.0)] and throttle.pauses == 2
    throttle.observe(200, {})
    now[0] = 106.0
    throttle.wait()  # returns at once: the pause is over


# ---------------------------------------------------------------------------------------------
# The local model


def test_local_generate_many_equals_one_by_one() -> None:
    local = LocalGenerator(n_threads=1)  # see TEST_THREADS in test_generators.py
    assert isinstance(local, Generator)
    requests = [
        GenerationRequest("Name a tavern dish.", 12, 0.0, 1),
        GenerationRequest("Name a tavern drink.", 12, 0.8, 2, system="Answer briefly."),
        GenerationRequest("Name a tavern song.", 12, 0.8, 3),
    ]
    calls_before = local.usage.calls
    many = local.generate_many(requests)
    one_by_one = generate_sequentially(local, requests)
    assert [g.text for g in many] == [g.text for g in one_by_one]
    assert [g.seed for g in many] == [1, 2, 3]
    assert local.usage.calls == calls_before + 6
    assert local.last_timings.get("prompt_n", 0) > 0
