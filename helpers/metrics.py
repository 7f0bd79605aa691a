"""Retrieval metrics over the benchmark queries (plain functions over lists and DataFrames).

A query in ``data/queries.csv`` has a set of relevant taverns. A search returns a ranked list
of tavern ids (several stored texts of one tavern count once, at their best rank).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import pandas as pd


def dedupe_ranking(ranked_ids: Iterable[str]) -> list[str]:
    """Keep each tavern at its first (best) rank: two texts of one inn are one answer."""
    seen: set[str] = set()
    out = []
    for tid in ranked_ids:
        if tid not in seen:
            seen.add(tid)
            out.append(tid)
    return out


def first_relevant_rank(ranked_ids: Sequence[str], relevant: Iterable[str]) -> int | None:
    """1-based rank of the first relevant tavern, or None when none was retrieved."""
    rel = set(relevant)
    for rank, tid in enumerate(ranked_ids, start=1):
        if tid in rel:
            return rank
    return None


def recall_at_k(ranked_ids: Sequence[str], relevant: Iterable[str], k: int) -> float:
    """recall@k = |relevant ∩ top k| / |relevant|.

    For a query with many relevant taverns recall@1 can be at most 1/|relevant|; see
    :func:`hit_at_k` for "was anything relevant in the top k".
    """
    rel = set(relevant)
    if not rel:
        raise ValueError("a query needs at least one relevant tavern")
    return len(rel.intersection(ranked_ids[:k])) / len(rel)


def hit_at_k(ranked_ids: Sequence[str], relevant: Iterable[str], k: int) -> float:
    """1.0 when at least one relevant tavern is in the top k, else 0.0."""
    rank = first_relevant_rank(ranked_ids, relevant)
    return float(rank is not None and rank <= k)


def reciprocal_rank(ranked_ids: Sequence[str], relevant: Iterable[str]) -> float:
    """1 / rank of the first relevant tavern (0 when none was retrieved). MRR is its mean."""
    rank = first_relevant_rank(ranked_ids, relevant)
    return 0.0 if rank is None else 1.0 / rank


def score_rankings(
    rankings: Mapping[str, Sequence[str]], queries: pd.DataFrame, ks: Sequence[int] = (1, 3)
) -> pd.DataFrame:
    """One row per query: recall@k and hit@k for each k, reciprocal rank, first relevant rank.

    ``rankings`` maps query_id to the ranked tavern ids returned for it; ``queries`` is
    ``helpers.data.load_queries()`` (columns query_id, relevant, difficulty).
    """
    rows = []
    for q in queries.itertuples():
        ranked = dedupe_ranking(rankings[q.query_id])
        row: dict[str, object] = {"query_id": q.query_id, "difficulty": q.difficulty}
        for k in ks:
            row[f"recall@{k}"] = recall_at_k(ranked, q.relevant, k)
            row[f"hit@{k}"] = hit_at_k(ranked, q.relevant, k)
        row["rr"] = reciprocal_rank(ranked, q.relevant)
        row["first_relevant_rank"] = first_relevant_rank(ranked, q.relevant)
        rows.append(row)
    return pd.DataFrame(rows)


def summarize_scores(per_query: pd.DataFrame) -> pd.Series:
    """Means over queries; ``rr`` becomes MRR."""
    numeric = per_query.drop(columns=["query_id", "difficulty", "first_relevant_rank"])
    return numeric.mean().rename({"rr": "MRR"})


def restrict_queries(queries: pd.DataFrame, tavern_ids: Iterable[str]) -> pd.DataFrame:
    """Queries judged on a subset of taverns: relevant sets cut to the subset, queries with no
    relevant tavern left dropped. Lets a small test run score the same way as a full one."""
    keep = set(tavern_ids)
    out = queries.copy()
    out["relevant"] = [tuple(t for t in rel if t in keep) for rel in out["relevant"]]
    return out[out["relevant"].map(len) > 0].reset_index(drop=True)


def generated_share(hit_sources: Sequence[Sequence[str]], k: int) -> float:
    """Mean over queries of the fraction of the top ``k`` hits whose source is ``generated``."""
    shares = [sum(s == "generated" for s in sources[:k]) / k for sources in hit_sources if sources]
    return float(sum(shares) / len(shares)) if shares else float("nan")
