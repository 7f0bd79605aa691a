"""The prompt diet's choice rule (bench/generation_quality.py ``diet_verdicts``) on synthetic
grids: a point is acceptable only if no quality score falls below the default's mean minus the
default's seed-to-seed spread, and the chosen default is the fastest acceptable point."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from bench.generation_quality import DIET_QUALITY, diet_summary, diet_verdicts

GRID = {  # point -> (seconds, quality shift)
    ("full", 3, 600, 230): (8.0, 0.0),  # today's default: the reference
    ("full", 3, 600, 150): (6.0, -0.005),  # a little faster, quality within the spread
    ("short", 2, 300, 150): (4.0, -0.2),  # fastest, clearly worse
}


def synthetic(grid: dict = GRID, seeds=(1, 2, 3), taverns=8, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    tavern_level = rng.uniform(0.4, 0.8, taverns)
    seed_level = {s: rng.normal(0, 0.01) for s in seeds}
    rows = []
    for (intro, k, chars, max_tokens), (seconds, shift) in grid.items():
        for s, t in itertools.product(seeds, range(taverns)):
            base = tavern_level[t] + seed_level[s] + rng.normal(0, 0.005)
            rows.append(
                {"intro": intro, "k": k, "context_chars": chars, "max_tokens": max_tokens,
                 "seed": s, "tavern_id": f"t{t}", "prompt_tokens": chars, "words": 100,
                 "seconds": seconds + rng.normal(0, 0.1), "prompt_s": seconds / 2,
                 "decode_s": seconds / 2,
                 **{q: base + shift for q in DIET_QUALITY}}
            )  # fmt: skip
    return pd.DataFrame(rows)


def test_the_fastest_point_within_the_spread_is_chosen() -> None:
    v = diet_verdicts(synthetic())
    assert list(v["acceptable"]) == [True, True, False]
    assert list(v["chosen"]) == [False, True, False]
    worse = v.iloc[2]
    for q in DIET_QUALITY:  # the planted drop is found, with an interval that excludes 0
        assert worse[f"{q}_diff"] == pytest.approx(-0.2, abs=0.01)
        _low, high = (float(x) for x in worse[f"{q}_ci"].strip("[]").split(","))
        assert high < 0
    assert v.loc[1, "speedup"] > 1.2


def test_spread_is_max_minus_min_of_the_per_seed_means() -> None:
    df = synthetic()
    summary = diet_summary(df)
    base = df[df["max_tokens"] == 230]
    per_seed = base.groupby("seed")["coverage"].mean()
    assert summary.loc[0, "coverage_spread"] == per_seed.max() - per_seed.min()


def test_nothing_is_chosen_when_only_the_default_is_acceptable_and_it_is_slowest() -> None:
    grid = {("full", 3, 600, 230): (8.0, 0.0), ("short", 2, 300, 150): (4.0, -0.2)}
    v = diet_verdicts(synthetic(grid))
    assert list(v["chosen"]) == [True, False]  # the default stays
