"""The paired source-bias test of Dai et al. (KDD 2024), on the kit's 47 taverns.

Each tavern's human reference text gets a *twin*: a rewrite by the kit's local generator with
the same facts and about the same length (within 10 % of the words), because a retriever that
prefers longer or shorter texts would otherwise look like one that prefers generated text. Both
versions go into one corpus; for every benchmark query we ask where each retriever puts the twin
of a relevant tavern relative to its human text. A retriever with no source preference puts the
twin above the human text half the time.

Two numbers per retriever, each with a 95 % percentile bootstrap interval over queries:

* **share twin above human**: per query, the mean over its relevant taverns of
  1 (twin ranked above the human text), 1/2 (tie: equal scores, or neither retrieved) or 0;
  then the mean over queries. 0.5 = no preference.
* **Dai's relative difference** of NDCG@k: NDCG_human is computed with the human texts of the
  relevant taverns marked relevant, NDCG_generated with their twins marked relevant, both on the
  same mixed ranking; relative delta = (H - G) / ((H + G) / 2) of the query means. Below 0 the
  retriever prefers the generated text.

Queries are the resampling unit: each query is one independent ranking, the pairs inside a query
share its wording (so they are not independent), and Dai's metric is defined per query.

Modules: ``twins`` (making and length-matching the rewrites), ``measure`` (ranks, NDCG, relative
difference, bootstrap, the debiasing projection), ``retrieval`` (the Milvus retrievers and the
whole test). Run it with ``python scripts/source_bias.py``.
"""

from helpers.source_bias.measure import (
    GENERATED,
    HUMAN,
    N_BOOT,
    NDCG_K,
    Corpus,
    bootstrap_interval,
    build_corpus,
    ndcg_at_k,
    pair_outcome,
    rank_tables,
    relative_difference,
    remove_source_direction,
    summarize,
)
from helpers.source_bias.retrieval import (
    ENCODERS,
    bm25_collection,
    bm25_search,
    dense_collection,
    dense_search,
    encode_e5,
    encode_minilm,
    run_test,
)
from helpers.source_bias.twins import (
    LENGTH_TOLERANCE,
    MAX_ATTEMPTS,
    MAX_COPY_SHARE,
    MIN_NAME_RETENTION,
    REWRITE_PROMPT,
    REWRITE_SYSTEM,
    REWRITE_TEMPERATURES,
    Twin,
    cached_twins,
    copy_share,
    fit_length,
    generate_twins,
    is_rewrite,
    length_ok,
    load_twins,
    make_twin,
    name_retention,
    read_cache,
    rewrite_temperature,
    split_sentences,
    token_cap,
    word_count,
)

__all__ = [
    "ENCODERS",
    "GENERATED",
    "HUMAN",
    "LENGTH_TOLERANCE",
    "MAX_ATTEMPTS",
    "MAX_COPY_SHARE",
    "MIN_NAME_RETENTION",
    "NDCG_K",
    "N_BOOT",
    "REWRITE_PROMPT",
    "REWRITE_SYSTEM",
    "REWRITE_TEMPERATURES",
    "Corpus",
    "Twin",
    "bm25_collection",
    "bm25_search",
    "bootstrap_interval",
    "build_corpus",
    "cached_twins",
    "copy_share",
    "dense_collection",
    "dense_search",
    "encode_e5",
    "encode_minilm",
    "fit_length",
    "generate_twins",
    "is_rewrite",
    "length_ok",
    "load_twins",
    "make_twin",
    "name_retention",
    "ndcg_at_k",
    "pair_outcome",
    "rank_tables",
    "read_cache",
    "relative_difference",
    "remove_source_direction",
    "rewrite_temperature",
    "run_test",
    "split_sentences",
    "summarize",
    "token_cap",
    "word_count",
]
