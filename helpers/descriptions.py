"""Generate tavern descriptions with the article's prompt, keeping every answer on disk.

Generation is the slow and (with Claude) the paid step, so each answer goes through the kit's one
generation cache (:class:`~helpers.generation_cache.CachedGenerator`, a JSON Lines file in the
run folder): a notebook that is re-run, or a second notebook that needs the same texts (05 after
04), reads them back instead of paying again, and a kernel that dies half-way loses nothing
already generated.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from helpers.console import console_logger
from helpers.generation_cache import CachedGenerator, cache_path
from helpers.generators import GenerationRequest, Generator, article_prompt

log = console_logger(__name__)


BATCH = 8  # requests per generate_many call (Claude's default concurrency)


def cache_file(run_dir: Path, generator: Generator) -> Path:
    """Where the descriptions of ``generator`` are kept: ``<run_dir>/generations/...jsonl``."""
    return cache_path(Path(run_dir) / "generations", generator)


def generate_descriptions(
    generator: Generator,
    taverns: pd.DataFrame,
    *,
    run_dir: Path,
    seed: int,
    max_tokens: int | None = None,
    temperature: float = 0.0,
    progress: bool = True,
) -> pd.DataFrame:
    """One generated description per tavern row, with the article's prompt.

    Returns a table with the tavern fields plus ``description, words, seconds, input_tokens,
    output_tokens, model, generator, truncated, cached``.
    """
    max_tokens = max_tokens if max_tokens is not None else generator.description_max_tokens
    cached_gen = CachedGenerator(generator, cache_file(run_dir, generator))
    rows = []
    records = list(taverns.itertuples())
    bar = tqdm(total=len(records), desc="generating", unit="tavern", disable=not progress)
    # Batches through generate_many: Claude answers a batch concurrently, the local model on its
    # workers; the bar moves per batch, and each finished batch is on disk (the cache) at once.
    clock = time.perf_counter()
    for start in range(0, len(records), BATCH):
        batch = records[start : start + BATCH]
        requests = [
            GenerationRequest(
                prompt=article_prompt(t.name, t.location, t.famous_visitor),
                max_tokens=max_tokens,
                temperature=temperature,
                seed=seed,
            )
            for t in batch
        ]
        cached = [cached_gen.is_cached(r) for r in requests]
        for tavern, gen, was_cached in zip(
            batch, cached_gen.generate_many(requests), cached, strict=True
        ):
            rows.append(
                {
                    "tavern_id": tavern.tavern_id,
                    "name": tavern.name,
                    "location": tavern.location,
                    "famous_visitor": tavern.famous_visitor,
                    "description": gen.text,
                    "words": len(gen.text.split()),
                    "seconds": round(gen.latency_s, 2),
                    "input_tokens": gen.input_tokens,
                    "output_tokens": gen.output_tokens,
                    "model": gen.model,
                    "generator": gen.generator,
                    "truncated": gen.truncated,
                    "cached": was_cached,
                }
            )
        bar.update(len(batch))
    bar.close()
    frame = pd.DataFrame(rows)
    if progress and len(frame):
        fresh = frame[~frame["cached"]]
        log.info(
            "%d descriptions: %d generated in %.0f s (wall clock), %d read back from %s",
            len(frame), len(fresh), time.perf_counter() - clock, len(frame) - len(fresh),
            cached_gen.path.name,
        )  # fmt: skip
    return frame
