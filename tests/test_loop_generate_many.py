"""The loop generates each iteration through ``generate_many``: with Claude (the real anthropic
SDK against the local fake Messages API, with a simulated latency) an iteration's requests are
in flight together, and a request that fails loses none of the others: they are ledgered and
stored, and a resume generates only the one that failed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import tests.fake_anthropic as fa
from helpers.feedback_loop import LoopParams, resume, run_loop
from helpers.generators import GenerationError
from helpers.milvus_server import start_milvus
from helpers.settings import get_settings
from tests.fake_anthropic import FAKE_KEY, TEST_MODEL

pytest_plugins = ["tests.fixtures_anthropic"]

PARAMS = {
    "iterations": 2, "k": 2, "n_taverns": 6, "context_chars": 150, "max_tokens": 40, "seed": 3,
    "generator": "claude", "use_ratings": False, "human_fraction": 1.0, "judge": "off",
}  # fmt: skip


def claude_settings(run_dir: Path, fake: fa.FakeAnthropic, concurrency: int) -> Any:
    return get_settings(
        run_dir=run_dir, generator="claude", anthropic_api_key=FAKE_KEY,
        anthropic_base_url=fake.base_url, claude_model=TEST_MODEL,
        claude_concurrency=concurrency,
    )  # fmt: skip


def test_an_iterations_requests_go_out_together(
    fake_anthropic: fa.FakeAnthropic, tmp_path: Path
) -> None:
    fake_anthropic.set_default(fa.echo()).set_latency(0.3, 0.6)
    settings = claude_settings(tmp_path, fake_anthropic, concurrency=4)
    with start_milvus(settings, backend="lite") as milvus:
        run = run_loop(LoopParams(**PARAMS, run_id="together"), settings, milvus=milvus,
                       progress=False)  # fmt: skip
        records = run.records()
    assert len(records) == 12 and len(fake_anthropic.message_requests) == 12
    assert 1 < fake_anthropic.peak_in_flight <= 4
    # each record's text answers its own prompt (the echo), in the ledger's order
    for rec in records:
        assert rec["text"].startswith("Answer: ")
    assert [r["iteration"] for r in records] == [0] * 6 + [1] * 6


def test_a_failed_request_loses_no_other_generation_and_resume_sends_only_it(
    fake_anthropic: fa.FakeAnthropic, tmp_path: Path
) -> None:
    fake_anthropic.set_default(fa.echo())
    rejected = fa.error(400, "invalid_request_error", "prompt is too long")
    fake_anthropic.script(rejected)  # the first request to arrive is refused, once
    settings = claude_settings(tmp_path, fake_anthropic, concurrency=3)
    params = LoopParams(**{**PARAMS, "iterations": 1}, run_id="partial")
    with start_milvus(settings, backend="lite") as milvus:
        with pytest.raises(GenerationError, match="too long"):
            run_loop(params, settings, milvus=milvus, progress=False)
        after_failure = len(fake_anthropic.message_requests)
        run = resume("partial", settings, milvus=milvus, progress=False)
        records = run.records()
    assert after_failure == 6
    assert len(fake_anthropic.message_requests) == 7  # only the refused one was sent again
    assert len({r["tavern_id"] for r in records}) == 6  # every tavern once, none twice
    assert len({r["row_id"] for r in records}) == 6 and run.finished
