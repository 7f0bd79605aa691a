"""Loop policy experiments (notebook 08): a sweep of ``policy x human_fraction x seed``, one
table of what every run measured, means and spreads over seeds, and direction checks against the
published studies the loop echoes (:mod:`helpers.claims`).

Notebook use::

    points = sweep_points(["accumulate", "replace", "gated"], [1.0, 0.5, 0.0], [1, 2, 3])
    runs = run_sweep(points, LoopParams(iterations=5, n_taverns=6), settings, milvus=milvus)
    table = experiment_table(runs, k=3, milvus=milvus)       # one row per run and iteration
    summary = seed_summary(table)                            # mean, sd, min, max over seeds
    units = unit_tables(runs, k=3, milvus=milvus)            # per tavern / per query values
    checks = literature_checks(table, units=units)           # each claim as an effect + verdict

The claims and their statistics live in :mod:`helpers.claims` and :mod:`helpers.stats`
(re-exported here: ``Claim``, ``CLAIMS``, ``literature_checks``, ``checks_markdown``,
``unit_tables``, ``power_table``).

Why the sweep shares generations (:class:`SharedGenerations`): the loop derives each
generation's seed from (run seed, iteration, tavern), and before iteration 2 the three policies
see the same store, so their first two iterations send *identical* requests. Answering a repeated
request from a file instead of generating it again saves about a quarter of a 5-iteration sweep,
and it makes the policies differ only where their stores differ (common random numbers: the
comparison between policies is paired, not blurred by sampling noise). With the local model the
answer is the one it would have generated anyway (same prompt and seed, same text); with Claude it
is one sample reused, which is what a paired comparison wants and what saves money.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from helpers.claims import (  # noqa: F401  (the claims are part of this module's API)
    CLAIMS,
    Claim,
    checks_markdown,
    literature_checks,
    power_table,
    unit_tables,
)
from helpers.feedback_loop import POLICIES, LoopParams, LoopParamsError, run_loop
from helpers.generation_cache import CachedGenerator, cache_path
from helpers.generators import Generator
from helpers.settings import Settings

if TYPE_CHECKING:
    from helpers.feedback_loop import LoopRun, Milvus

HUMAN_FRACTIONS = (1.0, 0.5, 0.0)
SEEDS = (1, 2, 3)
EXPERIMENTS_FILE = "experiments.csv"
SUMMARY_FILE = "experiments_by_policy.csv"
CHECKS_FILE = "experiments_literature_checks.csv"

# The columns of experiment_table worth comparing across policies (mean and spread over seeds).
SUMMARY_METRICS = (
    "drift_reference_median",
    "drift_start_median",
    "centroid_shift_reference",
    "dispersion",
    "corpus_distinct_2",
    "self_bleu",
    "copy_rate",
    "score",
    "top1_score",
    "MRR",
    "generated_share",
    "over_representation",
    "human_rank",
    "human_ref_in_topk",
)


# ---------------------------------------------------------------------------------------------
# The grid


@dataclass(frozen=True)
class SweepPoint:
    """One run of the sweep."""

    policy: str
    human_fraction: float
    seed: int

    def run_id(self, prefix: str) -> str:
        """``<prefix>-<policy>-hf<percent>-s<seed>``: readable, and a valid loop run id."""
        return f"{prefix}-{self.policy}-hf{round(self.human_fraction * 100):03d}-s{self.seed}"


# The default sweep: the three arms notebook 08 compares (POLICIES also has the control
# ``no-feedback`` and ``replace-keep-human``; pass them explicitly).
SWEEP_POLICIES = ("accumulate", "replace", "gated")


def sweep_points(
    policies: Iterable[str] = SWEEP_POLICIES,
    human_fractions: Iterable[float] = HUMAN_FRACTIONS,
    seeds: Iterable[int] = SEEDS,
) -> list[SweepPoint]:
    """Every combination, seeds innermost. Bad values are refused here, before any run starts,
    with the allowed values in the message."""
    policies, fractions, seeds = list(policies), list(human_fractions), list(seeds)
    for name, values in (("policies", policies), ("human_fractions", fractions), ("seeds", seeds)):
        if not values:
            raise LoopParamsError(f"{name} is empty: give at least one value.")
        if len(set(values)) != len(values):
            raise LoopParamsError(f"{name} lists a value twice: {values}.")
    bad = [p for p in policies if p not in POLICIES]
    if bad:
        raise LoopParamsError(f"Unknown policies {bad}; use some of {list(POLICIES)}.")
    for f in fractions:
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 <= f <= 1.0:
            raise LoopParamsError(f"human_fractions must be numbers in [0, 1], got {f!r}.")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise LoopParamsError(f"seeds must be non-negative integers, got {s!r}.")
    return [SweepPoint(p, float(f), int(s)) for p in policies for f in fractions for s in seeds]


# ---------------------------------------------------------------------------------------------
# Shared generations


# The sweep's name for the kit's one generation cache (notebook 08 uses it).
SharedGenerations = CachedGenerator


def shared_generations_file(settings: Settings, generator: Generator) -> Path:
    return cache_path(settings.run_dir / "cache", generator, prefix="sweep-generations-")


# ---------------------------------------------------------------------------------------------
# Running the sweep


def run_sweep(
    points: Sequence[SweepPoint],
    base: LoopParams,
    settings: Settings,
    *,
    milvus: Milvus,
    generator: Generator | None = None,
    prefix: str = "sweep",
    share_generations: bool = True,
    progress: bool = True,
    loop_progress: bool = False,
) -> list[LoopRun]:
    """One loop run per point, with ``base``'s other parameters. A run that exists already
    with the same parameters is continued or left alone (``run_loop``'s rule), so running the
    cell again costs nothing. ``generator`` default: ``make_generator(settings)`` for
    ``base.generator``; with ``share_generations`` wrapped in :class:`SharedGenerations`.
    ``progress``: one bar over the runs; ``loop_progress``: each run's own bar too (a long sweep
    then shows where it is inside a run)."""
    from tqdm.auto import tqdm

    from helpers.generators import make_generator

    if generator is None:
        generator = make_generator(settings.replace(generator=base.generator))
    if share_generations and not isinstance(generator, SharedGenerations):
        generator = SharedGenerations(generator, shared_generations_file(settings, generator))
    runs = []
    bar = tqdm(points, desc="sweep", unit="run", disable=not progress)
    for point in bar:
        run_id = point.run_id(prefix)
        bar.set_postfix_str(run_id, refresh=False)
        params = dataclasses.replace(
            base,
            policy=point.policy,
            human_fraction=point.human_fraction,
            seed=point.seed,
            run_id=run_id,
        )
        runs.append(
            run_loop(params, settings, milvus=milvus, generator=generator,
                     progress=loop_progress, announce=None)
        )  # fmt: skip
    bar.close()
    return runs


# ---------------------------------------------------------------------------------------------
# The table


def experiment_table(
    runs: Sequence[LoopRun],
    *,
    k: int = 3,
    milvus: Milvus | None = None,
    with_self_bleu: bool = True,
) -> pd.DataFrame:
    """One row per (run, iteration): ``run_id, policy, human_fraction, seed, iteration``, the
    drift, dispersion and lexical columns of :func:`helpers.metrics.drift_table`, the retrieval
    columns of :func:`helpers.metrics.retrieval_summary` (top-``k``) and the loop's own
    per-iteration ``score``, ``stored`` and ``rejected`` (``metrics.csv``).

    Iteration ``-1`` (the store before the loop) has retrieval columns only. The human reference
    embeddings are computed once for all runs.
    """
    from helpers.metrics import (
        drift_table,
        reference_embeddings,
        retrieval_by_iteration,
        retrieval_summary,
    )

    frames = []
    references: dict[str, Any] = {}
    for run in runs:
        missing = [t for t in run.params["tavern_ids"] if t not in references]
        if missing:
            references |= reference_embeddings(run)
        drift = drift_table(run, reference_vectors=references, with_self_bleu=with_self_bleu)
        retrieval = retrieval_summary(retrieval_by_iteration(run, k=k, milvus=milvus))
        loop = run.metrics()[["iteration", "score", "stored", "rejected"]]
        frame = retrieval.merge(drift, on="iteration", how="outer").merge(
            loop, on="iteration", how="left"
        )
        frame.insert(0, "seed", int(run.params["seed"]))
        frame.insert(0, "human_fraction", float(run.params["human_fraction"]))
        frame.insert(0, "policy", run.params["policy"])
        frame.insert(0, "run_id", run.run_id)
        frames.append(frame.sort_values("iteration"))
    if not frames:
        raise ValueError("No runs given: run the sweep first (run_sweep).")
    return pd.concat(frames, ignore_index=True)


def seed_summary(table: pd.DataFrame, metrics: Sequence[str] = SUMMARY_METRICS) -> pd.DataFrame:
    """Mean, standard deviation (ddof=1), min and max over seeds of each metric, per
    (policy, human_fraction, iteration); ``seeds`` is how many runs each row averages."""
    metrics = [m for m in metrics if m in table.columns]
    keys = ["policy", "human_fraction", "iteration"]
    grouped = table.groupby(keys, sort=True)
    stats = grouped[metrics].agg(["mean", "std", "min", "max"])
    stats.columns = [f"{m}_{s}" for m, s in stats.columns]
    stats["seeds"] = grouped["seed"].nunique()
    return stats.reset_index()


def write_tables(
    out_dir: Path, table: pd.DataFrame, summary: pd.DataFrame, checks: pd.DataFrame
) -> dict[str, Path]:
    """The three CSVs into the run folder, where the main job's report shows them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "experiments": out_dir / EXPERIMENTS_FILE,
        "summary": out_dir / SUMMARY_FILE,
        "checks": out_dir / CHECKS_FILE,
    }
    table.to_csv(paths["experiments"], index=False)
    summary.to_csv(paths["summary"], index=False)
    checks.to_csv(paths["checks"], index=False)
    return paths


def side_by_side(
    summary: pd.DataFrame,
    metrics: Sequence[str] = (
        "dispersion",
        "drift_reference_median",
        "corpus_distinct_2",
        "generated_share",
        "human_rank",
        "MRR",
    ),
    *,
    iteration: int | None = None,
    digits: int = 3,
) -> pd.DataFrame:
    """The policies side by side at one iteration (default: the last one every run finished):
    rows (policy, human_fraction), one column per metric as ``mean ± sd`` over seeds."""
    if not len(summary):
        raise ValueError("The summary is empty: pass seed_summary(experiment_table(runs)).")
    if iteration is None:
        iteration = int(summary["iteration"].max())
    part = summary[summary["iteration"] == iteration]
    if not len(part):
        raise ValueError(f"No row for iteration {iteration}; iterations: "
                         f"{sorted(summary['iteration'].unique())}.")  # fmt: skip
    out = part[["policy", "human_fraction", "seeds"]].copy()
    for m in metrics:
        if f"{m}_mean" not in part.columns:
            raise KeyError(f"{m!r} is not in the summary; metrics: {list(SUMMARY_METRICS)}.")
        mean, sd = part[f"{m}_mean"], part[f"{m}_std"].fillna(0.0)
        out[m] = [
            "n/a" if not np.isfinite(a) else f"{a:.{digits}f} ± {b:.{digits}f}"
            for a, b in zip(mean, sd, strict=True)
        ]
    out = out.sort_values(["human_fraction", "policy"], ascending=[False, True])
    return out.set_index(["human_fraction", "policy"])
