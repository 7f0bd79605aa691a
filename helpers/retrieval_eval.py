"""Compare search modes (dense, BM25, hybrid) on the benchmark queries, with intervals.

Why these metrics: a query in ``data/queries.csv`` has one relevant tavern (easy, hard) or
several (ambiguous, up to 12). recall@1 of a query with 9 relevant taverns is at most 1/9, so a
low recall@1 says nothing about the search. We therefore report

* **success@k** (``hit@k`` in :mod:`helpers.metrics`): 1 when any relevant tavern is in the top k;
* **MRR**: mean of 1 / rank of the first relevant tavern;
* **nDCG@10**: the whole top 10 against the best possible order, so queries with many relevant
  taverns count every one of them (graded when a query carries grades, binary otherwise);
* **recall@10** only, the share of a query's relevant taverns in the top 10, which is
  reachable for every query here (the largest set has 12 taverns, so at most 10/12 for it).

Intervals are 95 % percentile bootstrap intervals over queries (resampling queries with
replacement, seeded). A comparison between two modes uses the *paired* bootstrap of the mean
per-query difference: the same queries are resampled for both, so a difference is called only
when its interval excludes 0 (:func:`compare_modes`).

Notebook use::

    per_query = score_modes({"dense": rank_d, "bm25": rank_b}, queries)   # one row per query x mode
    summarize(per_query, by="difficulty")      # mean [95 % CI] per mode and difficulty
    compare_modes(per_query, "bm25", "dense")  # paired differences, with a verdict word
    wins(per_query, "bm25", "dense", queries)  # queries each mode wins, side by side
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from helpers.metrics import dedupe_ranking, first_relevant_rank, hit_at_k, reciprocal_rank

METRICS = ("success@1", "success@3", "MRR", "nDCG@10", "recall@10")
N_BOOT = 2000
LEVEL = 0.95


def ndcg_at_k(
    ranked_ids: Sequence[str],
    relevant: Iterable[str],
    k: int = 10,
    grades: Mapping[str, float] | None = None,
) -> float:
    """nDCG@k with gain = grade (1 for every relevant tavern without grades), log2 discount.

    1.0 when the top k holds the relevant taverns in the best possible order, 0.0 when it holds
    none. ``grades`` maps tavern id to a graded relevance (e.g. 2 = exact answer, 1 = partial).
    """
    rel = set(relevant)
    if not rel:
        raise ValueError("a query needs at least one relevant tavern")
    gain = {t: float(grades.get(t, 1.0)) if grades else 1.0 for t in rel}
    dcg = sum(gain.get(t, 0.0) / math.log2(i + 2) for i, t in enumerate(ranked_ids[:k]))
    ideal = sorted(gain.values(), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def _grades_of(row: object) -> Mapping[str, float] | None:
    """A query's optional graded judgements (a ``grades`` column holding a mapping)."""
    grades = getattr(row, "grades", None)
    return grades if isinstance(grades, Mapping) and grades else None


def score_modes(
    rankings: Mapping[str, Mapping[str, Sequence[str]]], queries: pd.DataFrame
) -> pd.DataFrame:
    """One row per (mode, query): the metrics of :data:`METRICS` and the first relevant rank.

    ``rankings`` maps a mode name to {query_id: ranked tavern ids}; several texts of one
    tavern count once, at their best rank. ``queries`` has query_id, relevant (a tuple of
    ids) and difficulty, and may have ``grades`` ({tavern_id: grade}) for graded nDCG.
    """
    rows = []
    for mode, by_query in rankings.items():
        for q in queries.itertuples():
            ranked = dedupe_ranking(by_query[q.query_id])
            relevant = tuple(q.relevant)
            rows.append(
                {
                    "mode": mode,
                    "query_id": q.query_id,
                    "difficulty": q.difficulty,
                    "n_relevant": len(relevant),
                    "success@1": hit_at_k(ranked, relevant, 1),
                    "success@3": hit_at_k(ranked, relevant, 3),
                    "MRR": reciprocal_rank(ranked, relevant),
                    "nDCG@10": ndcg_at_k(ranked, relevant, 10, _grades_of(q)),
                    "recall@10": len(set(relevant) & set(ranked[:10])) / len(relevant),
                    "first_rank": first_relevant_rank(ranked, relevant),
                }
            )
    return pd.DataFrame(rows)


def bootstrap_ci(
    values: Sequence[float], n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, low, high): the mean and its percentile bootstrap interval over the values."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return (math.nan, math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, arr.size, size=(n_boot, arr.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(arr.mean()), float(low), float(high)


def summarize(
    per_query: pd.DataFrame,
    by: str | None = None,
    metrics: Sequence[str] = METRICS,
    *,
    label: str = "mode",
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> pd.DataFrame:
    """Mean and 95 % interval of each metric, per ``label`` value (a mode, or e.g. the
    collection) and per ``by`` group, plus "all".

    Long format: mode (the ``label`` value), group, metric, n (queries), mean, low, high.
    """
    rows = []
    groups: list[tuple[str, pd.DataFrame]] = [("all", per_query)]
    if by is not None:
        groups += [(str(g), df) for g, df in per_query.groupby(by, sort=True)]
    for group, df in groups:
        for mode, mdf in df.groupby(label, sort=False):
            for metric in metrics:
                mean, low, high = bootstrap_ci(mdf[metric], n_boot=n_boot, seed=seed)
                rows.append(
                    {"mode": mode, "group": group, "metric": metric, "n": len(mdf),
                     "mean": mean, "low": low, "high": high}
                )  # fmt: skip
    return pd.DataFrame(rows)


def interval_table(summary: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """:func:`summarize` as a readable grid: rows (group, mode), columns metrics, cells
    ``mean [low, high]``."""
    cell = summary.apply(
        lambda r: f"{r['mean']:.{digits}f} [{r['low']:.{digits}f}, {r['high']:.{digits}f}]", axis=1
    )
    grid = summary.assign(cell=cell).pivot_table(
        index=["group", "mode"], columns="metric", values="cell", aggfunc="first", sort=False
    )
    return grid[[m for m in summary["metric"].unique()]]


def verdict(low: float, high: float) -> str:
    """'higher' / 'lower' when the interval of a difference excludes 0, else 'no clear difference'."""
    if low > 0:
        return "higher"
    if high < 0:
        return "lower"
    return "no clear difference"


def compare_modes(
    per_query: pd.DataFrame,
    mode: str,
    baseline: str,
    by: str | None = "difficulty",
    metrics: Sequence[str] = ("MRR", "nDCG@10"),
    *,
    label: str = "mode",
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> pd.DataFrame:
    """Paired per-query differences ``mode - baseline`` with 95 % bootstrap intervals and a
    verdict word (``higher``, ``lower``, ``no clear difference``), overall and per group.
    ``label`` is the column that holds ``mode`` and ``baseline`` (e.g. ``collection``)."""
    wide = per_query.pivot_table(
        index=["query_id", *([by] if by else [])], columns=label, values=list(metrics)
    )
    rows = []
    keys = [("all", wide)]
    if by:
        keys += [(str(g), df) for g, df in wide.groupby(level=by, sort=True)]
    for group, df in keys:
        for metric in metrics:
            diff = (df[(metric, mode)] - df[(metric, baseline)]).to_numpy()
            mean, low, high = bootstrap_ci(diff, n_boot=n_boot, seed=seed)
            rows.append(
                {"group": group, "metric": metric, "n": len(diff),
                 mode: float(df[(metric, mode)].mean()),
                 baseline: float(df[(metric, baseline)].mean()),
                 "difference": mean, "low": low, "high": high, "verdict": verdict(low, high)}
            )  # fmt: skip
    return pd.DataFrame(rows)


def sentence(row: Mapping[str, object], mode: str, baseline: str, what: str = "") -> str:
    """One row of :func:`compare_modes` as a sentence whose direction comes from the interval."""
    where = what or f"{row['group']} queries"
    words = {
        "higher": "higher",
        "lower": "lower",
        "no clear difference": "not clearly different (the interval includes 0)",
    }
    return (
        f"On {where} (n={row['n']}), {row['metric']} of {mode} is {row[mode]:.2f} against "
        f"{row[baseline]:.2f} for {baseline}: difference {row['difference']:+.2f} "
        f"[95 % CI {row['low']:+.2f}, {row['high']:+.2f}], so {words[str(row['verdict'])]}."
    )


def wins(
    per_query: pd.DataFrame,
    mode: str,
    other: str,
    queries: pd.DataFrame,
    metric: str = "MRR",
) -> pd.DataFrame:
    """The queries where one mode ranks a relevant tavern better than the other, side by side:
    query, difficulty, first relevant rank under each mode, and who wins. Ties are left out."""
    wide = per_query.pivot_table(index="query_id", columns="mode", values=metric)
    ranks = per_query.pivot_table(index="query_id", columns="mode", values="first_rank")
    text = queries.set_index("query_id")
    out = pd.DataFrame(
        {
            "query": text["query"],
            "difficulty": text["difficulty"],
            f"rank ({mode})": ranks[mode],
            f"rank ({other})": ranks[other],
            "winner": np.where(wide[mode] > wide[other], mode, other),
        }
    )[(wide[mode] != wide[other]).reindex(text.index, fill_value=False)]
    return out.sort_values(["winner", "difficulty"]).reset_index()


_WORD = re.compile(r"[A-Za-z][A-Za-z'-]+")


def proper_names_shared(query: str, texts: Iterable[str]) -> list[str]:
    """Capitalised words of ``query`` (after its first word, 3+ letters) that also occur in one
    of ``texts``: the names and places a lexical search can match exactly."""
    words = _WORD.findall(query)[1:]
    names = {w for w in words if w[0].isupper() and len(w) >= 3}
    haystack = " ".join(texts)
    return sorted(n for n in names if re.search(rf"\b{re.escape(n)}\b", haystack))
