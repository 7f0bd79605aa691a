"""Retrieval metrics over the benchmark queries, and drift metrics of a feedback-loop run: one
import for notebooks. The metrics themselves are in :mod:`helpers.measures` (plain functions,
each checkable on a hand-made case); how a run changes them, iteration by iteration, is in
:mod:`helpers.run_analysis`.

Notebook use: see :mod:`helpers.run_analysis`.
"""

from __future__ import annotations

from helpers.loop.versions import current_versions, finished_iterations
from helpers.measures import (
    centroid_shift,
    copy_rate,
    corpus_distinct_n,
    cosine_distances,
    dedupe_ranking,
    embedding_dispersion,
    first_relevant_rank,
    generated_share,
    hit_at_k,
    mean_distinct_n,
    recall_at_k,
    reciprocal_rank,
    restrict_queries,
    score_rankings,
    self_bleu,
    spread,
    summarize_scores,
)
from helpers.run_analysis import (
    METRIC_MEANS,
    drift_per_tavern,
    drift_table,
    iteration_metrics,
    reference_embeddings,
    reference_texts,
    retrieval_by_iteration,
    retrieval_summary,
    run_embeddings,
    score_hits,
    searchable_counts,
    summary_line,
)

__all__ = [
    "METRIC_MEANS", "centroid_shift", "copy_rate", "corpus_distinct_n", "cosine_distances",
    "current_versions", "dedupe_ranking", "drift_per_tavern", "drift_table",
    "embedding_dispersion", "finished_iterations", "first_relevant_rank", "generated_share",
    "hit_at_k", "iteration_metrics", "mean_distinct_n", "recall_at_k", "reciprocal_rank",
    "reference_embeddings", "reference_texts", "restrict_queries", "retrieval_by_iteration",
    "retrieval_summary", "run_embeddings", "score_hits", "score_rankings", "searchable_counts",
    "self_bleu", "spread", "summarize_scores", "summary_line",
]  # fmt: skip
