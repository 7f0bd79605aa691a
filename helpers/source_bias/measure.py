"""Measures of the source-bias test: ranks of each pair, NDCG, Dai's relative difference,
the bootstrap interval, and Huang et al.'s debiasing projection (helpers/source_bias)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

NDCG_K = 5
N_BOOT = 2000
HUMAN, GENERATED = "human", "generated"

# ---------------------------------------------------------------------------------------------
# Metrics


def ndcg_at_k(ranked: Sequence[str], relevant: set[str], k: int = NDCG_K) -> float:
    """Binary-relevance NDCG@k: sum over hits at rank r <= k of 1 / log2(r + 1), divided by the
    same sum for an ideal ranking of min(k, |relevant|) hits. 0 when nothing is relevant."""
    if not relevant:
        return 0.0
    dcg = sum(1 / np.log2(r + 2) for r, key in enumerate(ranked[:k]) if key in relevant)
    ideal = sum(1 / np.log2(r + 2) for r in range(min(k, len(relevant))))
    return float(dcg / ideal)


def relative_difference(metric_human: float, metric_generated: float) -> float:
    """Dai et al.'s relative delta = (H - G) / ((H + G) / 2); below 0 = generated preferred.
    NaN when both are 0 (no signal either way)."""
    total = metric_human + metric_generated
    if total == 0:
        return float("nan")
    return float((metric_human - metric_generated) / (total / 2))


def bootstrap_interval(
    units: np.ndarray,
    statistic: Callable[[np.ndarray], float],
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap: draw ``len(units)`` rows with replacement ``n_boot`` times,
    apply ``statistic`` to each draw, return the (1-level)/2 and (1+level)/2 percentiles."""
    units = np.asarray(units, dtype=float)
    if len(units) < 2:
        raise ValueError(f"A bootstrap interval needs at least 2 units, got {len(units)}.")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(units), size=(n_boot, len(units)))
    stats = np.array([statistic(units[d]) for d in draws])
    tail = (1 - level) / 2 * 100
    lo, hi = np.nanpercentile(stats, [tail, 100 - tail])
    return float(lo), float(hi)


def remove_source_direction(
    human: np.ndarray, generated: np.ndarray, *, folds: int = 5, seed: int = 0
) -> np.ndarray:
    """Huang et al. (2026)'s inference-time debiasing, cross-fitted: taverns are split into
    ``folds``; for the generated vectors of one fold the direction u = mean(generated - human)
    of the *other* folds (normalised) is estimated, and each vector loses its projection on u:
    g' = (g - (g.u) u) / |g - (g.u) u|. Rows of ``human`` and ``generated`` are the same taverns.
    """
    if human.shape != generated.shape:
        raise ValueError(f"human {human.shape} and generated {generated.shape} must match.")
    n = len(human)
    folds = min(folds, n)
    if folds < 2:
        raise ValueError("Cross-fitting needs at least 2 taverns.")
    fold_of = np.random.default_rng(seed).permutation(n) % folds
    out = np.empty_like(generated)
    for f in range(folds):
        held_out = fold_of == f
        u = (generated[~held_out] - human[~held_out]).mean(axis=0)
        u = u / np.linalg.norm(u)
        g = generated[held_out]
        g = g - np.outer(g @ u, u)
        out[held_out] = g / np.linalg.norm(g, axis=1, keepdims=True)
    return out


# ---------------------------------------------------------------------------------------------
# The test


@dataclass(frozen=True)
class Corpus:
    """Documents of the mixed corpus: key "tavern_id|source", text, and which pairs count."""

    keys: list[str]
    texts: list[str]
    pairs: list[str]  # tavern ids with a matched twin


def build_corpus(taverns: pd.DataFrame, twins: pd.DataFrame) -> Corpus:
    """Every tavern's human text, plus the twin of each matched tavern. Unmatched taverns keep
    their human text in the corpus (as a distractor) but take no part in the comparison."""
    twin_of = {r.tavern_id: r.text for r in twins.itertuples() if r.matched}
    keys, texts = [], []
    for tid, human in zip(taverns["tavern_id"], taverns["description"], strict=True):
        keys.append(f"{tid}|{HUMAN}")
        texts.append(human)
        if tid in twin_of:
            keys.append(f"{tid}|{GENERATED}")
            texts.append(twin_of[tid])
    return Corpus(keys, texts, [t for t in taverns["tavern_id"] if t in twin_of])


def pair_outcome(score_human: float | None, score_generated: float | None) -> float:
    """1 when the twin is ranked above the human text, 0 when below, 1/2 on a tie (equal
    scores, or neither returned). ``None`` = not returned by the retriever (ranks last)."""
    if score_human == score_generated:
        return 0.5
    if score_generated is None:
        return 0.0
    return 1.0 if score_human is None or score_generated > score_human else 0.0


def rank_tables(
    corpus: Corpus, queries: pd.DataFrame, hits: list[list[tuple]], retriever: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per pair (query, relevant matched tavern): ranks, scores and the outcome (1 twin above,
    0.5 tie, 0 human above); per query: share of twin-above outcomes and NDCG@k with human
    texts, then twins, marked relevant. Documents a retriever did not return rank last."""
    paired = set(corpus.pairs)
    pair_rows, query_rows = [], []
    query_pairs = zip(queries["query_id"], queries["relevant"], strict=True)
    for (qid, relevant), qhits in zip(query_pairs, hits, strict=True):
        ranked = [corpus.keys[i] for i, _ in qhits]
        score = {corpus.keys[i]: s for i, s in qhits}
        rank = {key: r + 1 for r, key in enumerate(ranked)}
        tids = [t for t in relevant if t in paired]
        if not tids:
            continue
        outcomes = []
        for tid in tids:
            h, g = f"{tid}|{HUMAN}", f"{tid}|{GENERATED}"
            sh, sg = score.get(h), score.get(g)
            outcome = pair_outcome(sh, sg)
            outcomes.append(outcome)
            pair_rows.append(
                dict(
                    retriever=retriever,
                    query_id=qid,
                    tavern_id=tid,
                    rank_human=rank.get(h),
                    rank_generated=rank.get(g),
                    score_human=sh,
                    score_generated=sg,
                    twin_above=outcome,
                )
            )
        query_rows.append(
            dict(
                retriever=retriever,
                query_id=qid,
                n_pairs=len(tids),
                share_twin_above=float(np.mean(outcomes)),
                ndcg_human=ndcg_at_k(ranked, {f"{t}|{HUMAN}" for t in tids}),
                ndcg_generated=ndcg_at_k(ranked, {f"{t}|{GENERATED}" for t in tids}),
            )
        )
    return pd.DataFrame(pair_rows), pd.DataFrame(query_rows)


def _rel_diff_of_means(rows: np.ndarray) -> float:
    return relative_difference(rows[:, 1].mean(), rows[:, 2].mean())


def summarize(per_query: pd.DataFrame, *, n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Any]:
    """One retriever's summary row: the two effects with 95 % bootstrap intervals over queries."""
    units = per_query[["share_twin_above", "ndcg_human", "ndcg_generated"]].to_numpy(float)
    share_lo, share_hi = bootstrap_interval(
        units, lambda r: r[:, 0].mean(), n_boot=n_boot, seed=seed
    )
    rd_lo, rd_hi = bootstrap_interval(units, _rel_diff_of_means, n_boot=n_boot, seed=seed)
    return dict(
        retriever=per_query["retriever"].iloc[0],
        n_queries=len(per_query),
        n_pairs=int(per_query["n_pairs"].sum()),
        share_twin_above=round(float(units[:, 0].mean()), 4),
        share_ci_low=round(share_lo, 4),
        share_ci_high=round(share_hi, 4),
        ndcg_human=round(float(units[:, 1].mean()), 4),
        ndcg_generated=round(float(units[:, 2].mean()), 4),
        relative_difference=round(_rel_diff_of_means(units), 4),
        rd_ci_low=round(rd_lo, 4),
        rd_ci_high=round(rd_hi, 4),
    )
