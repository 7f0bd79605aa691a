"""Generate tavern descriptions with the article's prompt, keeping every answer on disk.

Generation is the slow and (with Claude) the paid step, so each answer is appended to a JSON
Lines file in the run folder the moment it arrives: a notebook that is re-run, or a second
notebook that needs the same texts (05 after 04), reads them back instead of paying again, and a
kernel that dies half-way loses nothing already generated.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from helpers.generators import Generation, Generator, article_prompt


def cache_file(run_dir: Path, generator: Generator) -> Path:
    safe_model = re.sub(r"[^A-Za-z0-9_.-]+", "-", generator.model)
    return run_dir / "generations" / f"{generator.name}-{safe_model}.jsonl"


def _key(prompt: str, model: str, max_tokens: int, temperature: float, seed: int) -> str:
    raw = json.dumps([prompt, model, max_tokens, temperature, seed])
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def _read_cache(path: Path) -> dict[str, dict]:
    cached: dict[str, dict] = {}
    if not path.exists():
        return cached
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by a crash: that generation is simply redone
            cached[record["key"]] = record
    return cached


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
    path = cache_file(run_dir, generator)
    path.parent.mkdir(parents=True, exist_ok=True)
    cached = _read_cache(path)
    rows = []
    bar = tqdm(
        taverns.itertuples(),
        total=len(taverns),
        desc="generating",
        unit="tavern",
        disable=not progress,
    )
    with path.open("a", encoding="utf-8") as out:
        for tavern in bar:
            prompt = article_prompt(tavern.name, tavern.location, tavern.famous_visitor)
            key = _key(prompt, generator.model, max_tokens, temperature, seed)
            record = cached.get(key)
            was_cached = record is not None
            if record is None:
                gen: Generation = generator.generate(
                    prompt, max_tokens=max_tokens, temperature=temperature, seed=seed
                )
                record = {
                    "key": key,
                    "tavern_id": tavern.tavern_id,
                    "prompt": prompt,
                    **asdict(gen),
                }
                out.write(json.dumps(record) + "\n")
                out.flush()
            rows.append(
                {
                    "tavern_id": tavern.tavern_id,
                    "name": tavern.name,
                    "location": tavern.location,
                    "famous_visitor": tavern.famous_visitor,
                    "description": record["text"],
                    "words": len(record["text"].split()),
                    "seconds": round(record["latency_s"], 2),
                    "input_tokens": record["input_tokens"],
                    "output_tokens": record["output_tokens"],
                    "model": record["model"],
                    "generator": record["generator"],
                    "truncated": record.get("stop_reason") == "max_tokens",
                    "cached": was_cached,
                }
            )
    frame = pd.DataFrame(rows)
    if progress and len(frame):
        fresh = frame[~frame["cached"]]
        print(
            f"{len(frame)} descriptions: {len(fresh)} generated in {fresh['seconds'].sum():.0f} s, "
            f"{len(frame) - len(fresh)} read back from {path.name}"
        )
    return frame
