"""Loop policy experiments (notebook 08): a sweep of ``policy x human_fraction x seed``, one
table of what every run measured, means and spreads over seeds, and direction checks against the
published studies the loop echoes (``../shared/RESEARCH.md`` sums them up).

Notebook use::

    points = sweep_points(["accumulate", "replace", "gated"], [1.0, 0.5, 0.0], [1, 2, 3])
    runs = run_sweep(points, LoopParams(iterations=5, n_taverns=6), settings, milvus=milvus)
    table = experiment_table(runs, k=3, milvus=milvus)       # one row per run and iteration
    summary = seed_summary(table)                            # mean, sd, min, max over seeds
    checks = literature_checks(table)                        # each claim with its numbers

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
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

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
) -> list[LoopRun]:
    """One loop run per point, with ``base``'s other parameters. A run that exists already
    with the same parameters is continued or left alone (``run_loop``'s rule), so running the
    cell again costs nothing. ``generator`` default: ``make_generator(settings)`` for
    ``base.generator``; with ``share_generations`` wrapped in :class:`SharedGenerations`."""
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
            run_loop(params, settings, milvus=milvus, generator=generator, progress=False,
                     announce=None)
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


def slope(iterations: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of ``values`` over ``iterations`` (change per iteration), NaN with
    fewer than two finite points."""
    x = np.asarray(iterations, dtype=float)
    y = np.asarray(values, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 2 or np.ptp(x[ok]) == 0:
        return math.nan
    return float(np.polyfit(x[ok], y[ok], 1)[0])


def run_slopes(table: pd.DataFrame, metric: str, *, from_iteration: int = 0) -> pd.DataFrame:
    """Per run: the slope of ``metric`` over iterations ``>= from_iteration`` and its change
    from the first to the last of them. Columns ``policy, human_fraction, seed, slope, change``."""
    if metric not in table.columns:
        raise KeyError(f"{metric!r} is not a column of the experiment table.")
    rows = []
    part = table[table["iteration"] >= from_iteration].sort_values("iteration")
    for (policy, fraction, seed), g in part.groupby(["policy", "human_fraction", "seed"]):
        values = g[metric].to_numpy(dtype=float)
        finite = values[np.isfinite(values)]
        rows.append(
            {
                "policy": policy,
                "human_fraction": fraction,
                "seed": seed,
                "slope": slope(g["iteration"], values),
                "change": float(finite[-1] - finite[0]) if len(finite) >= 2 else math.nan,
            }
        )
    return pd.DataFrame(rows)


def run_levels(
    table: pd.DataFrame, metric: str, level: float, *, from_iteration: int = 0
) -> pd.DataFrame:
    """Per run: the mean of ``metric - level`` over iterations ``>= from_iteration`` (in the
    ``slope`` column, so :func:`literature_checks` treats trends and levels alike)."""
    if metric not in table.columns:
        raise KeyError(f"{metric!r} is not a column of the experiment table.")
    part = table[table["iteration"] >= from_iteration]
    rows = []
    for (policy, fraction, seed), g in part.groupby(["policy", "human_fraction", "seed"]):
        values = g[metric].to_numpy(dtype=float) - level
        values = values[np.isfinite(values)]
        rows.append({"policy": policy, "human_fraction": fraction, "seed": seed,
                     "slope": float(values.mean()) if len(values) else math.nan})  # fmt: skip
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# The published findings, as checks on our numbers


@dataclass(frozen=True)
class Claim:
    """A published finding turned into a sign our runs can show or not.

    The measured value, per seed, is the slope (change per iteration) of ``metric`` under
    (``policy``, ``human_fraction``); with ``versus`` set, the paired difference of that slope
    minus the slope under ``versus`` for the same seed. With ``level`` set instead, it is the
    mean of ``metric - level`` over the iterations (a claim about a level, not a trend).
    ``expect`` is the sign the study predicts (+1 or -1). ``from_iteration`` -1 includes the
    store before the loop (retrieval metrics).
    """

    study: str
    finding: str
    metric: str
    policy: str
    human_fraction: float
    expect: int
    versus: tuple[str, float] | None = None
    from_iteration: int = 0
    level: float | None = None

    @property
    def measured_as(self) -> str:
        where = f"{self.policy} hf={self.human_fraction:g}"
        if self.level is not None:
            return f"mean over iterations of {self.metric} - {self.level:g}, {where}"
        what = f"slope of {self.metric} per iteration, {where}"
        if self.versus:
            what += f" minus {self.versus[0]} hf={self.versus[1]:g} (same seed)"
        return what


CLAIMS: tuple[Claim, ...] = (
    Claim("Shumailov et al. 2024 (Nature)",
          "training only on the previous generation loses the tails: diversity shrinks",
          "dispersion", "replace", 0.0, -1),
    Claim("Shumailov et al. 2024 (Nature)",
          "rare content disappears first: the pooled vocabulary shrinks",
          "corpus_distinct_2", "replace", 0.0, -1),
    Claim("Gerstgrasser et al. 2024",
          "replacing data drifts further from the real data than accumulating it",
          "drift_reference_median", "replace", 0.0, +1, versus=("accumulate", 0.0)),
    Claim("Gerstgrasser et al. 2024",
          "replacing data loses diversity faster than accumulating it",
          "dispersion", "replace", 0.0, -1, versus=("accumulate", 0.0)),
    Claim("Chen et al. 2024 (ACL), spiral of silence",
          "generated texts take a growing share of the top-k",
          "generated_share", "accumulate", 1.0, +1, from_iteration=-1),
    Claim("Chen et al. 2024 (ACL), spiral of silence",
          "human texts sink in the ranking",
          "human_rank", "accumulate", 1.0, +1, from_iteration=-1),
    Claim("Chen et al. 2024 (ACL), spiral of silence",
          "the retriever prefers generated texts beyond their share of the store",
          "over_representation", "accumulate", 1.0, +1, level=1.0),
    Claim("Alemohammad et al. 2024 (ICLR)",
          "keeping real data slows the loss of diversity",
          "dispersion", "replace", 0.5, +1, versus=("replace", 0.0)),
)  # fmt: skip


ZERO = 1e-9  # below this a slope or difference counts as no change (float noise)


def _verdict(values: np.ndarray, expect: int) -> str:
    values = values[np.isfinite(values)]
    if not len(values):
        return "not measurable"
    signs = np.where(np.abs(values) < ZERO, 0.0, np.sign(values))
    if np.all(signs == 0):
        return f"no change ({len(values)}/{len(values)} seeds)"
    if np.all(signs == expect):
        return f"reproduced ({len(values)}/{len(values)} seeds)"
    if np.all(signs == -expect):
        return f"opposite ({len(values)}/{len(values)} seeds)"
    agree = int(np.sum(signs == expect))
    return f"mixed ({agree}/{len(values)} seeds agree)"


def _per_seed(values: pd.DataFrame, policy: str, fraction: float) -> pd.Series:
    sel = values[(values["policy"] == policy) & np.isclose(values["human_fraction"], fraction)]
    return sel.set_index("seed")["slope"]


def literature_checks(table: pd.DataFrame, claims: Sequence[Claim] = CLAIMS) -> pd.DataFrame:
    """One row per claim: the study, the finding, how we measure it, the predicted sign, the
    per-seed values, their mean, min and max, and a verdict computed from the signs:
    ``reproduced`` when every seed shows the predicted sign, ``opposite`` when every seed shows
    the other one, ``no change`` when every value is zero (below :data:`ZERO`), ``mixed``
    otherwise, ``not measurable`` when the sweep lacks the condition
    (e.g. a grid without ``replace``, or a single iteration)."""
    rows = []
    for claim in claims:
        if claim.level is not None:
            slopes = run_levels(table, claim.metric, claim.level,
                                from_iteration=claim.from_iteration)  # fmt: skip
        else:
            slopes = run_slopes(table, claim.metric, from_iteration=claim.from_iteration)

        values = _per_seed(slopes, claim.policy, claim.human_fraction)
        if claim.versus is not None:
            other = _per_seed(slopes, *claim.versus)
            values = (values - other).dropna()
        arr = values.to_numpy(dtype=float)
        finite = arr[np.isfinite(arr)]
        rows.append(
            {
                "study": claim.study,
                "finding": claim.finding,
                "measured_as": claim.measured_as,
                "predicted": "increase" if claim.expect > 0 else "decrease",
                "per_seed": ", ".join(f"{v:+.4f}" for v in arr) if len(arr) else "",
                "mean": float(finite.mean()) if len(finite) else math.nan,
                "min": float(finite.min()) if len(finite) else math.nan,
                "max": float(finite.max()) if len(finite) else math.nan,
                "verdict": _verdict(arr, claim.expect),
            }
        )
    return pd.DataFrame(rows)


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


def checks_markdown(checks: pd.DataFrame) -> str:
    """One bullet per claim, with the measured numbers beside it, for a notebook's Markdown."""
    lines = []
    for c in checks.itertuples():
        unit = "" if c.measured_as.startswith("mean over") else " per iteration"
        numbers = (
            f"mean {c.mean:+.4f}{unit} (seeds: {c.per_seed})" if np.isfinite(c.mean) else "no value"
        )
        lines.append(
            f"- **{c.study}**: {c.finding}. Predicted: {c.predicted} of the {c.measured_as}. "
            f"Measured: {numbers}. **{c.verdict}**."
        )
    return "\n".join(lines)
