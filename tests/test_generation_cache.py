"""The kit's one generation cache (helpers.generation_cache.CachedGenerator) in front of the
real anthropic SDK and the local fake Messages API: ``generate_many`` answers what it has seen
from the file, sends only the rest (together, in order), and keeps every answer that arrived even
when part of a batch fails."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import tests.fake_anthropic as fa
from helpers.generation_cache import CachedGenerator
from helpers.generators import GenerateManyError, GenerationRequest

pytest_plugins = ["tests.fixtures_anthropic"]


def requests_for(n: int) -> list[GenerationRequest]:
    return [
        GenerationRequest(prompt=f"Describe tavern {i}.", max_tokens=40, temperature=0.0, seed=i)
        for i in range(n)
    ]


def test_generate_many_sends_only_what_the_file_does_not_hold(
    fake_anthropic: fa.FakeAnthropic, claude, tmp_path: Path
) -> None:
    fake_anthropic.set_default(fa.echo())
    path = tmp_path / "cache.jsonl"
    first = CachedGenerator(claude(concurrency=4), path)
    texts = [g.text for g in first.generate_many(requests_for(3))]
    assert texts == [f"Answer: Describe tavern {i}." for i in range(3)]
    assert len(fake_anthropic.message_requests) == 3

    again = CachedGenerator(claude(concurrency=4), path)  # a new process reads the file back
    out = again.generate_many(requests_for(5))
    assert [g.text for g in out] == [f"Answer: Describe tavern {i}." for i in range(5)]
    assert (again.hits, again.misses) == (3, 2)
    assert len(fake_anthropic.message_requests) == 5  # only tavern 3 and 4 were sent
    assert again.generate(**dataclasses.asdict(requests_for(5)[4])).text == out[4].text


def test_a_failed_request_keeps_the_answers_that_arrived(
    fake_anthropic: fa.FakeAnthropic, claude, tmp_path: Path
) -> None:
    fake_anthropic.set_default(fa.echo())
    path = tmp_path / "cache.jsonl"
    CachedGenerator(claude(), path).generate_many(requests_for(1))  # tavern 0 cached
    fake_anthropic.answer_prompt("Describe tavern 2.", fa.server_error(500))
    cached = CachedGenerator(claude(concurrency=2, max_retries=1), path)
    with pytest.raises(GenerateManyError) as info:
        cached.generate_many(requests_for(4))
    assert set(info.value.errors) == {2}  # positions in the caller's request list
    kept = info.value.generations
    assert kept[2] is None and all(kept[i] is not None for i in (0, 1, 3))
    reopened = CachedGenerator(claude(), path)
    assert len(reopened._cache) == 3  # tavern 0, 1 and 3 are on disk: nothing paid is lost


def test_notebook_04s_descriptions_go_through_the_cache_in_batches(
    fake_anthropic: fa.FakeAnthropic, claude, tmp_path: Path
) -> None:
    from helpers.data import load_taverns
    from helpers.descriptions import BATCH, generate_descriptions

    fake_anthropic.set_default(fa.echo()).set_latency(0.2, 0.4)
    taverns = load_taverns().head(BATCH + 3)
    gen = claude(concurrency=4)
    first = generate_descriptions(gen, taverns, run_dir=tmp_path, seed=1, max_tokens=40,
                                  progress=False)  # fmt: skip
    assert list(first["tavern_id"]) == list(taverns["tavern_id"])  # the table keeps row order
    for text, name in zip(first["description"], taverns["name"], strict=True):
        assert name in text  # each text answers its own tavern's prompt (the fake echoes it)
    assert not first["cached"].any() and 1 < fake_anthropic.peak_in_flight <= 4
    again = generate_descriptions(gen, taverns, run_dir=tmp_path, seed=1, max_tokens=40,
                                  progress=False)  # fmt: skip
    assert again["cached"].all() and list(again["description"]) == list(first["description"])
    assert len(fake_anthropic.message_requests) == len(taverns)
