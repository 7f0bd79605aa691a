"""The published findings as claims on a policy sweep, each judged as an effect with an interval.

A claim names a metric, an arm (``policy``, ``human_fraction``) and the direction a study
predicts. Its effect is computed per *unit* (seed x cluster; see :mod:`helpers.stats`): the
slope of the metric over iterations, the paired difference of that slope between two arms at
the same seed and cluster, or the mean distance of the metric from a neutral expectation (a
level). The clusters are taverns (drift, dispersion, the human text's rank percentile) or
benchmark queries (over-representation), taken from :func:`unit_tables`; a metric that exists
only for the whole run (the pooled distinct-2) falls back to the run table of
:func:`helpers.experiments.experiment_table`, with the seed as the only unit.

Construction artefacts the claims avoid (why they look the way they do):

* Under ``accumulate`` with every human text stored, the generated share of the store after
  iteration t is (t+1)/(t+2), so the generated share of the top-k rises with volume alone. Only
  the **over-representation** (top-k generated share / store generated share; a neutral
  retriever gives 1) and the human text's **rank percentile** among its own tavern's stored texts
  (a neutral retriever gives 0.5) speak about the retriever. The store before the loop
  (iteration -1) holds no generated text: it is left out, not counted as a 0.
* The arms are the papers' own, every one starting from the human texts (human share 1):
  ``replace`` shows later iterations only the previous generation (the human rows leave the
  searchable view after iteration 0: Shumailov's and Gerstgrasser's "replace"),
  ``accumulate`` keeps every human and generated row (Gerstgrasser's "accumulate"),
  ``replace-keep-human`` shows the human rows and the previous generation (Alemohammad's
  "fresh real data" loop), and ``no-feedback`` generates every iteration from the human texts
  only: the control every arm's drift and diversity are measured against
  (:data:`CONTROL_CLAIMS`). At human share 0 iteration 0 would be the bare prompt over an empty
  store, and a slope would pick up the one-off step when context first arrives: the claims do
  not use share 0.

Each claim states ``min_effect``, the smallest effect we would call meaningful, fixed before
looking at the numbers: 0.005 per iteration for dispersion and drift slopes and their paired
differences (over 8 iterations 0.04, about 6 % of the human texts' dispersion), 0.005 per
iteration for the pooled distinct-2, 0.1 for over-representation above 1 (a 10 % preference),
0.02 per iteration for its trend, 0.05 for the human percentile above 0.5.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from helpers import stats as st

if TYPE_CHECKING:
    from helpers.feedback_loop import LoopRun, Milvus

ARM_COLUMNS = ["run_id", "policy", "human_fraction", "seed"]
RUN_CLUSTER = "run"  # the cluster of a run-level row: one per run


@dataclass(frozen=True)
class Claim:
    """A published finding turned into an effect our runs can show or not (module docstring).

    ``expect`` is the predicted sign (+1 or -1); ``versus`` an arm to subtract at the same seed
    (and cluster); ``level`` a neutral expectation (the claim is then about a level, not a
    trend); ``from_iteration`` the first iteration used.
    """

    study: str
    finding: str
    metric: str
    policy: str
    human_fraction: float
    expect: int
    min_effect: float = 0.0
    versus: tuple[str, float] | None = None
    from_iteration: int = 0
    level: float | None = None

    @property
    def measured_as(self) -> str:
        where = f"{self.policy} hf={self.human_fraction:g}, iterations >= {self.from_iteration}"
        if self.level is not None:
            return f"mean of {self.metric} - {self.level:g}, {where}"
        what = f"slope of {self.metric} per iteration, {where}"
        if self.versus:
            what += f", minus {self.versus[0]} hf={self.versus[1]:g} (same seed and unit)"
        return what


CHEN = "Chen et al. 2024 (ACL), spiral of silence"
CLAIMS: tuple[Claim, ...] = (
    Claim("Shumailov et al. 2024 (Nature)",
          "training only on the previous generation loses the tails: diversity shrinks",
          "dispersion", "replace", 1.0, -1, 0.005),
    Claim("Shumailov et al. 2024 (Nature)",
          "rare content disappears first: the pooled vocabulary shrinks",
          "corpus_distinct_2", "replace", 1.0, -1, 0.005),
    Claim("Gerstgrasser et al. 2024",
          "replacing data drifts further from the real data than accumulating it",
          "drift_reference_mean", "replace", 1.0, +1, 0.005, versus=("accumulate", 1.0)),
    Claim("Gerstgrasser et al. 2024",
          "replacing data loses diversity faster than accumulating it",
          "dispersion", "replace", 1.0, -1, 0.005, versus=("accumulate", 1.0)),
    Claim(CHEN, "the retriever puts generated texts in the top-k beyond their share of the store",
          "over_representation", "accumulate", 1.0, +1, 0.1, level=1.0),
    Claim(CHEN, "that preference grows as generated texts accumulate",
          "over_representation", "accumulate", 1.0, +1, 0.02),
    Claim(CHEN, "human texts sink below their own tavern's generated versions",
          "human_percentile", "accumulate", 1.0, +1, 0.05, level=0.5),
    Claim("Alemohammad et al. 2024 (ICLR)",
          "keeping real data slows the loss of diversity",
          "dispersion", "replace-keep-human", 1.0, +1, 0.005, versus=("replace", 1.0)),
)  # fmt: skip

CONTROL = ("no-feedback", 1.0)
# Every feedback arm against the no-feedback control (a second family, Holm-corrected on its
# own): does feeding outputs back drift further from the human texts, and lose diversity,
# beyond what sampling from the same model without feedback does?
CONTROL_CLAIMS: tuple[Claim, ...] = tuple(
    claim
    for policy in ("accumulate", "replace", "replace-keep-human")
    for claim in (
        Claim("against the no-feedback control",
              f"{policy} drifts further from the human texts than no feedback",
              "drift_reference_mean", policy, 1.0, +1, 0.005, versus=CONTROL),
        Claim("against the no-feedback control",
              f"{policy} loses diversity against no feedback",
              "dispersion", policy, 1.0, -1, 0.005, versus=CONTROL),
    )
)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Unit tables: one value per (run, iteration, cluster)


def _arm(run: LoopRun) -> dict[str, Any]:
    p = run.params
    return {"run_id": run.run_id, "policy": p["policy"],
            "human_fraction": float(p["human_fraction"]), "seed": int(p["seed"])}  # fmt: skip


def dispersion_terms(vectors: np.ndarray) -> np.ndarray:
    """Each row's mean cosine distance to the other rows,
    ``e_i = sum_{j != i} (1 - cos(v_i, v_j)) / (n - 1)``; their mean is the dispersion
    ``2 / (n (n - 1)) sum_{i<j} (1 - cos)``, so a tavern can be the unit of a dispersion claim.
    NaN for fewer than two rows."""
    v = np.asarray(vectors, dtype=np.float64)
    if len(v) < 2:
        return np.full(len(v), np.nan)
    u = v / np.linalg.norm(v, axis=1, keepdims=True)
    dist = 1.0 - u @ u.T
    np.fill_diagonal(dist, 0.0)
    return dist.sum(axis=1) / (len(v) - 1)


def tavern_units(runs: Sequence[LoopRun]) -> pd.DataFrame:
    """One row per (run, iteration, tavern) from the ledgers: ``drift_reference_mean`` and
    ``drift_start_mean`` (the tavern's cosine distance from its human reference / its first
    version; their means over taverns are the run table's columns of the same name) and
    ``dispersion`` (:func:`dispersion_terms` of the current versions: its mean is the run's
    dispersion). ``cluster`` is the tavern id."""
    from helpers.ledger import decode_vector
    from helpers.metrics import current_versions, drift_per_tavern, reference_embeddings

    frames, refs = [], {}
    for run in runs:
        if any(t not in refs for t in run.params["tavern_ids"]):
            refs |= reference_embeddings(run)
        drift = drift_per_tavern(run, reference_vectors=refs).rename(
            columns={
                "tavern_id": "cluster",
                "drift_from_reference": "drift_reference_mean",
                "drift_from_start": "drift_start_mean",
            }
        )
        records = run.records()
        terms = []
        for it in sorted(drift["iteration"].unique()):
            current = current_versions(records, int(it))
            ids = [t for t in run.params["tavern_ids"] if t in current]
            vectors = np.asarray([decode_vector(current[t]["vector_b64"]) for t in ids])
            terms += [{"iteration": it, "cluster": t, "dispersion": e}
                      for t, e in zip(ids, dispersion_terms(vectors), strict=True)]  # fmt: skip
        frame = drift.merge(pd.DataFrame(terms, columns=["iteration", "cluster", "dispersion"]),
                            on=["iteration", "cluster"], how="left")  # fmt: skip
        frames.append(frame.assign(**_arm(run)))
    return _ordered(frames, ["drift_reference_mean", "drift_start_mean", "dispersion"])


def _ordered(frames: list[pd.DataFrame], metrics: list[str]) -> pd.DataFrame:
    columns = [*ARM_COLUMNS, "iteration", "cluster", *metrics]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns]


def retrieval_units(
    runs: Sequence[LoopRun], *, k: int = 3, milvus: Milvus | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The benchmark queries against each finished iteration's searchable store (the whole
    store ranked, as :func:`helpers.metrics.retrieval_by_iteration` does). Returns two tables:

    * per (run, iteration, query; ``cluster`` = query id): ``over_representation`` = share of
      generated texts in the top ``k`` / their share of the searchable store (NaN when the
      store holds none);
    * per (run, iteration, query, relevant tavern whose human text is stored; ``cluster`` =
      tavern id): ``human_position`` (rank of the human text among that tavern's stored texts,
      1 = first), ``tavern_rows`` (how many there are) and ``human_percentile`` =
      ``(position - 1) / (rows - 1)`` (0 = above all its generated versions, 1 = below all;
      rows < 2 give no percentile and no row).
    """
    from helpers.data import load_queries
    from helpers.embeddings import encode_queries
    from helpers.metrics import (
        finished_iterations,
        generated_share,
        restrict_queries,
        searchable_counts,
    )

    over, ranks = [], []
    for run in runs:
        queries = restrict_queries(load_queries(settings=run.settings), run.params["tavern_ids"])
        if not len(queries):
            continue
        vectors = encode_queries(queries["query"].str.strip().tolist())
        records = run.records()
        humans = set(run.params.get("human_taverns", []))
        arm = _arm(run)
        for it in finished_iterations(records, len(run.params["tavern_ids"])):
            n_h, n_g = searchable_counts(records, arm["policy"], len(humans), it)
            if n_h + n_g == 0:  # an empty store (share 0, before the loop) answers nothing
                continue
            hit_lists = run.search_many(
                queries["query"].tolist(), after_iteration=it, limit=n_h + n_g, milvus=milvus,
                query_vectors=vectors, output_fields=("tavern_id", "source", "iteration"),
            )  # fmt: skip
            corpus_share = n_g / (n_h + n_g)
            for q, hits in zip(queries.itertuples(), hit_lists, strict=True):
                share = generated_share([[h["source"] for h in hits]], k)
                ratio = share / corpus_share if corpus_share > 0 else math.nan  # no generated row
                over.append(arm | {"iteration": it, "cluster": q.query_id,
                                   "over_representation": ratio})  # fmt: skip
                for tid in (t for t in q.relevant if t in humans):
                    own = [h["source"] for h in hits if h["tavern_id"] == tid]
                    if len(own) >= 2 and "human" in own:
                        pos = own.index("human") + 1
                        ranks.append(arm | {"iteration": it, "cluster": tid, "query_id": q.query_id,
                                            "human_position": pos, "tavern_rows": len(own),
                                            "human_percentile": (pos - 1) / (len(own) - 1)})  # fmt: skip
    over_frame = _ordered([pd.DataFrame(over)] if over else [], ["over_representation"])
    rank_cols = ["query_id", "human_position", "tavern_rows", "human_percentile"]
    return over_frame, _ordered([pd.DataFrame(ranks)] if ranks else [], rank_cols)


def unit_tables(
    runs: Sequence[LoopRun], *, k: int = 3, milvus: Milvus | None = None
) -> list[pd.DataFrame]:
    """:func:`tavern_units` and the two tables of :func:`retrieval_units`, for
    :func:`literature_checks` ``units=``."""
    return [tavern_units(runs), *retrieval_units(runs, k=k, milvus=milvus)]


# ---------------------------------------------------------------------------------------------
# Judging the claims


def metric_source(metric: str, table: pd.DataFrame, units: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """The finest table holding ``metric``: a unit table, else the run table (one cluster per
    run). Raises KeyError when none has it."""
    for frame in units:
        if metric in frame.columns:
            return frame
    if metric in table.columns:
        return table.assign(cluster=RUN_CLUSTER)
    raise KeyError(f"{metric!r} is in neither the experiment table nor the unit tables.")


def _arm_values(source: pd.DataFrame, claim: Claim, policy: str, fraction: float) -> pd.Series:
    part = source[(source["policy"] == policy) & np.isclose(source["human_fraction"], fraction)
                  & (source["iteration"] >= claim.from_iteration)]  # fmt: skip
    if not len(part):
        return pd.Series(dtype=float)
    if claim.level is not None:
        return st.unit_levels(part, claim.metric, claim.level)
    return st.unit_slopes(part, claim.metric)


def claim_units(claim: Claim, table: pd.DataFrame, units: Sequence[pd.DataFrame] = ()) -> pd.Series:
    """The claim's effect per unit, indexed by (seed, cluster): a slope, a level, or (with
    ``versus``) the paired difference at the same seed and cluster. Units without a finite
    value are dropped; empty when the sweep lacks an arm."""
    source = metric_source(claim.metric, table, units)
    values = _arm_values(source, claim, claim.policy, claim.human_fraction)
    if claim.versus is not None and len(values):
        other = _arm_values(source, claim, *claim.versus)
        if not len(other):  # the sweep lacks the arm to compare with: not measurable
            return pd.Series(dtype=float)
        values = values - other
    return values[np.isfinite(values.to_numpy(dtype=float))] if len(values) else values


def _unit_name(claim: Claim, source: pd.DataFrame) -> str:
    """What one cluster of the claim is: a run (run table), a query or a tavern."""
    if (source["cluster"] == RUN_CLUSTER).all():
        return "run"
    return "query" if claim.metric == "over_representation" else "tavern"


def _permutation_p(claim: Claim, d: pd.Series, source: pd.DataFrame, rng: Any) -> float:
    """The permutation null where labels can be shuffled: arm labels within a seed (paired
    claims) or source labels within a tavern (the human percentile); NaN otherwise."""
    if not len(d):
        return math.nan
    if claim.versus is not None:
        return st.sign_flip_test(d.groupby(level="seed").mean().to_numpy(), rng)
    if {"human_position", "tavern_rows"} <= set(source.columns):
        part = source[(source["policy"] == claim.policy)
                      & np.isclose(source["human_fraction"], claim.human_fraction)
                      & (source["iteration"] >= claim.from_iteration)]  # fmt: skip
        return st.rank_percentile_test(part["human_position"], part["tavern_rows"], rng)[1]
    return math.nan


def literature_checks(
    table: pd.DataFrame,
    claims: Sequence[Claim] = CLAIMS,
    *,
    units: Sequence[pd.DataFrame] = (),
    seed: int = 0,
    n_boot: int = st.N_BOOT,
    alpha: float = st.ALPHA,
) -> pd.DataFrame:
    """One row per claim: ``study, finding, measured_as, predicted, min_effect``; the effect
    (``estimate``, ``ci_low``/``ci_high`` its 1 - alpha interval, ``p``), the Holm correction
    across the claims (``p_holm``, ``holm_low``/``holm_high`` the interval at the claim's Holm
    level), ``mde`` (the minimum detectable effect at 80 % power and that level, at this size),
    ``p_permutation`` (see :func:`_permutation_p`), the sizes (``seeds``, ``clusters``,
    ``unit``: what a cluster is), ``per_seed`` (the effect per seed, for reading only) and
    ``verdict`` (:func:`helpers.stats.verdict`). Deterministic given ``seed``."""
    rng = np.random.default_rng(seed)
    rows, effects = [], []
    for claim in claims:
        source = metric_source(claim.metric, table, units)
        d = claim_units(claim, table, units)
        effect = (st.estimate_effect(st.effect_matrix(d), rng, n_boot=n_boot, alpha=alpha)
                  if len(d) else st.NAN_EFFECT)  # fmt: skip
        effects.append(effect)
        per_seed = d.groupby(level="seed").mean() if len(d) else pd.Series(dtype=float)
        unit = _unit_name(claim, source)
        rows.append({
            "study": claim.study, "finding": claim.finding, "measured_as": claim.measured_as,
            "predicted": "increase" if claim.expect > 0 else "decrease",
            "min_effect": claim.min_effect,
            "estimate": effect.estimate, "ci_low": effect.ci_low, "ci_high": effect.ci_high,
            "p": effect.p, "p_permutation": _permutation_p(claim, d, source, rng),
            "seeds": effect.n_seeds, "clusters": effect.n_clusters, "unit": unit,
            "per_seed": ", ".join(f"{v:+.4f}" for v in per_seed),
        })  # fmt: skip
    out = pd.DataFrame(rows)
    out["p_holm"] = st.holm(out["p"])
    levels = st.holm_levels(out["p"], alpha)
    bounds = [st.interval_at(e, lv) if np.isfinite(lv) else (math.nan, math.nan)
              for e, lv in zip(effects, levels, strict=True)]  # fmt: skip
    out["holm_low"] = [b[0] for b in bounds]
    out["holm_high"] = [b[1] for b in bounds]
    out["mde"] = [st.mde(e.se, alpha=lv) if np.isfinite(lv) else math.nan
                  for e, lv in zip(effects, levels, strict=True)]  # fmt: skip
    out["verdict"] = [
        st.verdict(e.estimate, ph, c.expect, c.min_effect, alpha=alpha)
        for e, ph, c in zip(effects, out["p_holm"], claims, strict=True)
    ]
    return out


def _num(x: float) -> str:
    return f"{x:+.4g}" if np.isfinite(x) else "n/a"


def checks_markdown(checks: pd.DataFrame) -> str:
    """One bullet per claim with its numbers beside the verdict (for a notebook or the doc)."""
    lines = []
    for c in checks.itertuples():
        if not np.isfinite(c.estimate):
            numbers = "no value (the sweep lacks this arm or its iterations)"
        else:
            numbers = (
                f"{_num(c.estimate)}, 95 % interval [{_num(c.ci_low)}, {_num(c.ci_high)}], "
                f"Holm p {c.p_holm:.3g}, {c.seeds} seeds x {c.clusters} {c.unit} clusters"
            )
        note = ""
        if c.verdict == st.NOT_DETECTED and np.isfinite(c.mde):
            note = (f" (detectable at this size: |effect| >= {c.mde:.3g}; "
                    f"minimum of interest {c.min_effect:g})")  # fmt: skip
        lines.append(
            f"- **{c.study}**: {c.finding}. Predicted: {c.predicted} ({c.measured_as}). "
            f"Measured: {numbers}. **{c.verdict}**{note}."
        )
    return "\n".join(lines)


def cluster_limits() -> dict[str, int]:
    """How many clusters of each kind the data holds: ``tavern`` (data/taverns.csv), ``query``
    (data/queries.csv) and ``run`` (1: a run-level metric has one value per seed)."""
    from helpers.data import load_queries, load_taverns

    return {"tavern": len(load_taverns()), "query": len(load_queries()), "run": 1}


def power_table(
    table: pd.DataFrame,
    claims: Sequence[Claim] = CLAIMS,
    *,
    units: Sequence[pd.DataFrame] = (),
    power: float = st.POWER,
    alpha: float = st.ALPHA,
    max_clusters: dict[str, int] | None = None,
    seed: int = 0,
    n_boot: int = st.N_BOOT,
) -> pd.DataFrame:
    """From a pilot sweep: per claim, the seeds x clusters needed for ``power`` at its
    ``min_effect`` (:func:`helpers.stats.size_needed`), at the Bonferroni level ``alpha / m``
    (the strictest Holm step, so the size holds whatever the claim's rank). Columns: ``study,
    finding, min_effect, sigma_seed, sigma_cluster`` (per-unit standard deviations of the
    pilot), ``pilot_seeds, pilot_clusters, unit, seeds, clusters, mde, feasible``.

    ``max_clusters``: how many clusters of each unit exist at all (default
    :func:`cluster_limits`: every tavern of data/taverns.csv, every query of
    data/queries.csv): a query claim cannot grow past the benchmark's queries."""
    limits = cluster_limits() if max_clusters is None else max_clusters
    rng = np.random.default_rng(seed)
    level = alpha / max(len(claims), 1)
    rows = []
    for claim in claims:
        d = claim_units(claim, table, units)
        effect = st.estimate_effect(st.effect_matrix(d), rng, n_boot=n_boot) if len(d) else (
            st.NAN_EFFECT)  # fmt: skip
        s2, c2 = st.variance_components(effect)
        source = metric_source(claim.metric, table, units)
        cap = limits.get(_unit_name(claim, source), 1)
        need = (st.size_needed(effect, claim.min_effect, alpha=level, power=power,
                               max_clusters=cap)
                if claim.min_effect > 0 else {})  # fmt: skip
        rows.append({
            "study": claim.study, "finding": claim.finding, "min_effect": claim.min_effect,
            "sigma_seed": math.sqrt(s2) if np.isfinite(s2) else math.nan,
            "sigma_cluster": math.sqrt(c2) if np.isfinite(c2) else math.nan,
            "pilot_seeds": effect.n_seeds, "pilot_clusters": effect.n_clusters,
            "unit": _unit_name(claim, source),
            "seeds": need.get("seeds", math.nan), "clusters": need.get("clusters", math.nan),
            "mde": need.get("mde", math.nan), "feasible": bool(need.get("feasible", False)),
        })  # fmt: skip
    return pd.DataFrame(rows)
