"""Search over a tavern collection (dense, BM25 or hybrid), with the checks the article lacks.

The article encodes queries with ``encode_documents`` and passes ``nprobe`` to an HNSW index. Here
queries go through ``encode_queries``, HNSW gets ``ef``, and a search that cannot give a
meaningful answer (an empty query, a missing or unloaded collection, a mode the server or the
collection does not have) says so instead of returning nothing or a gRPC stack trace.

One entry, :func:`search` (one query) / :func:`search_batch` (many, one request), with
``mode``:

* ``dense``  ``client.search`` on the MiniLM vector (HNSW, inner product);
* ``bm25``   ``client.search`` with the raw query text on the BM25 sparse field
  (:mod:`helpers.fulltext`);
* ``hybrid`` ``client.hybrid_search`` with one request of each kind, fused by reciprocal rank
  (``ranker="rrf"``, constant ``rrf_k``) or by a weighted sum of normalised scores
  (``ranker="weighted"``, ``weights=(dense, bm25)``).

Each hit is a dict with ``id``, ``score`` (higher is better in every mode: cosine similarity,
BM25 score, fused score; dense hits also keep it as ``similarity``) and the output fields.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from pymilvus import AnnSearchRequest, MilvusClient, RRFRanker, WeightedRanker

from helpers import fulltext
from helpers.embeddings import DIM, encode_queries
from helpers.schema import COLLECTION, VECTOR_FIELD, search_params

DEFAULT_EF = 64
OUTPUT_FIELDS = ("name", "description", "location", "famous_visitor")
MODES = ("dense", "bm25", "hybrid")
RANKERS = ("rrf", "weighted")
RRF_K = 60  # the constant of Cormack et al. (2009), also Milvus's default
BM25_PARAMS = {"metric_type": fulltext.BM25_METRIC}


class SearchError(ValueError):
    """A search that cannot run as asked; the message says what to do."""


def check_searchable(client: MilvusClient, collection: str) -> None:
    """Raise a clear error unless ``collection`` exists and is loaded."""
    if not client.has_collection(collection):
        known = ", ".join(client.list_collections()) or "none"
        raise SearchError(
            f"Collection {collection!r} does not exist (collections here: {known}). Create and "
            "fill it first (notebooks 03 and 04 do), or pass the right name."
        )
    state = str(client.get_load_state(collection).get("state", ""))
    if state != "Loaded":
        raise SearchError(
            f"Collection {collection!r} is not loaded ({state}); call "
            f"client.load_collection({collection!r}) after its index is built."
        )


def _clean_queries(queries: Sequence[str]) -> list[str]:
    if isinstance(queries, str):
        queries = [queries]
    cleaned = []
    for i, query in enumerate(queries):
        if not isinstance(query, str) or not query.strip():
            raise SearchError(
                f"Query {i} is empty ({query!r}); type what you are looking for, e.g. "
                "'A cozy place frequented by famous hobbits'."
            )
        cleaned.append(query.strip())
    return cleaned


def _check_vectors(vectors: Sequence[Any]) -> list[list[float]]:
    out = []
    for i, vector in enumerate(vectors):
        try:
            arr = np.asarray(vector, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError):
            arr = np.full(1, np.nan, dtype=np.float32)
        if arr.shape[0] != DIM or not np.all(np.isfinite(arr)):
            raise SearchError(
                f"Query vector {i} has {arr.shape[0]} dimensions or non-finite values; the "
                f"collection holds {DIM}-dimensional MiniLM vectors (helpers.embeddings)."
            )
        out.append(arr.tolist())
    return out


def check_mode(client: MilvusClient, collection: str, mode: str) -> None:
    """Raise a clear error unless ``collection`` can be searched in ``mode`` on this server."""
    if mode not in MODES:
        raise SearchError(f"Unknown search mode {mode!r}; use one of: {', '.join(MODES)}.")
    if mode == "dense" or fulltext.has_full_text(client.describe_collection(collection)):
        return
    caps = fulltext.search_capabilities(client)
    if not caps.full_text:
        raise SearchError(f"mode={mode!r} is not available: {caps.reason}.")
    raise SearchError(
        f"mode={mode!r} needs the BM25 field {fulltext.SPARSE_FIELD!r}, and collection "
        f"{collection!r} was created without it (dense-only schema). Recreate it: "
        f"helpers.schema.fill_collection(client, {collection!r}, rows, full_text=True)."
    )


def _ranker(ranker: str, rrf_k: int, weights: Sequence[float]) -> Any:
    if ranker == "rrf":
        if rrf_k < 1:
            raise SearchError(f"rrf_k must be a positive integer (60 is usual), got {rrf_k}.")
        return RRFRanker(int(rrf_k))
    if ranker == "weighted":
        w = [float(x) for x in weights]
        if len(w) != 2 or any(x < 0 or not math.isfinite(x) for x in w) or sum(w) == 0:
            raise SearchError(
                f"weights must be two non-negative numbers (dense, bm25), not both 0; got {weights}."
            )
        return WeightedRanker(*w)
    raise SearchError(f"Unknown ranker {ranker!r}; use one of: {', '.join(RANKERS)}.")


def _hit(hit: dict[str, Any], mode: str) -> dict[str, Any]:
    # milvus-lite reports BM25 scores as negative distances, Milvus 2.5 as positive ones.
    score = float(hit["distance"])
    score = abs(score) if mode == "bm25" else score
    extra = {"similarity": score} if mode == "dense" else {}
    return {"id": hit["id"], "score": score, **extra, **hit["entity"]}


def search_batch(
    client: MilvusClient,
    collection: str,
    queries: Sequence[str] | Sequence[Sequence[float]],
    *,
    mode: str = "dense",
    k: int = 3,
    filter: str = "",
    ef: int = DEFAULT_EF,
    query_vectors: Sequence[Sequence[float]] | None = None,
    ranker: str = "rrf",
    rrf_k: int = RRF_K,
    weights: Sequence[float] = (0.5, 0.5),
    candidates: int | None = None,
    output_fields: Sequence[str] = OUTPUT_FIELDS,
) -> list[list[dict[str, Any]]]:
    """Top ``k`` hits for each query, in one request, searched in ``mode``.

    ``queries`` are texts, or (dense mode only) vectors. ``query_vectors`` lets a caller that
    already has the dense vectors of text queries skip embedding them again. ``filter`` is a
    Milvus boolean expression applied to every sub-search. In hybrid mode each sub-search
    returns ``candidates`` hits (default ``max(2 k, 20)``) before fusion.
    """
    if k < 1:
        raise SearchError(f"k must be a positive integer, got {k}.")
    if isinstance(queries, str):
        queries = [queries]
    if len(queries) == 0:
        raise SearchError("No query given; pass at least one query text.")
    check_searchable(client, collection)
    check_mode(client, collection, mode)
    is_text = all(isinstance(q, str) for q in queries)
    texts = _clean_queries(queries) if is_text else []
    if not is_text and mode != "dense":
        raise SearchError(
            f"mode={mode!r} needs the query text (BM25 scores words); pass the text as the query "
            "and its vector, if you have it, as query_vectors."
        )
    if mode != "bm25":
        if query_vectors is not None:
            vectors = _check_vectors(query_vectors)
        elif is_text:
            vectors = [v.tolist() for v in encode_queries(texts)]
        else:
            vectors = _check_vectors(queries)
        if texts and len(vectors) != len(texts):
            raise SearchError(f"{len(texts)} queries but {len(vectors)} query_vectors.")
    fields = list(output_fields)
    if mode == "dense":
        results = client.search(
            collection, data=vectors, anns_field=VECTOR_FIELD,
            search_params=search_params(max(ef, k)), limit=k, filter=filter, output_fields=fields,
        )  # fmt: skip
    elif mode == "bm25":
        results = client.search(
            collection, data=texts, anns_field=fulltext.SPARSE_FIELD, search_params=BM25_PARAMS,
            limit=k, filter=filter, output_fields=fields,
        )  # fmt: skip
    else:
        fusion = _ranker(ranker, rrf_k, weights)
        n = max(candidates or max(2 * k, 20), k)
        expr = filter or None  # hybrid_search filters per request (milvus-lite ignores a top one)
        requests = [
            AnnSearchRequest(
                data=vectors, anns_field=VECTOR_FIELD, param=search_params(max(ef, n)), limit=n,
                expr=expr,
            ),
            AnnSearchRequest(
                data=texts, anns_field=fulltext.SPARSE_FIELD, param=BM25_PARAMS, limit=n, expr=expr
            ),
        ]  # fmt: skip
        results = client.hybrid_search(
            collection, requests, ranker=fusion, limit=k, output_fields=fields
        )
    return [[_hit(hit, mode) for hit in hits] for hits in results]


def search(
    client: MilvusClient,
    collection: str,
    query: str | Sequence[float],
    *,
    mode: str = "dense",
    k: int = 3,
    filter: str = "",
    query_vector: Sequence[float] | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """Top ``k`` hits for one query (text, or a vector in dense mode); see :func:`search_batch`
    for ``options`` (``ef``, ``ranker``, ``rrf_k``, ``weights``, ``candidates``,
    ``output_fields``)."""
    vectors = None if query_vector is None else [query_vector]
    return search_batch(
        client, collection, [query], mode=mode, k=k, filter=filter, query_vectors=vectors,
        **options,
    )[0]  # fmt: skip


def search_many(
    client: MilvusClient,
    queries: Sequence[str],
    *,
    collection: str = COLLECTION,
    limit: int = 3,
    ef: int = DEFAULT_EF,
    filter: str = "",
    output_fields: Sequence[str] = OUTPUT_FIELDS,
    mode: str = "dense",
    **options: Any,
) -> list[list[dict[str, Any]]]:
    """Top ``limit`` hits for each query, in one request (:func:`search_batch` by keyword).

    With ``metric_type="IP"`` on unit vectors, Milvus's "distance" is the cosine similarity:
    higher is closer. We name it ``similarity`` so nobody sorts it the wrong way.
    """
    return search_batch(
        client, collection, queries, mode=mode, k=limit, filter=filter, ef=ef,
        output_fields=output_fields, **options,
    )  # fmt: skip


def search_taverns(
    client: MilvusClient, query: str, *, collection: str = COLLECTION, limit: int = 3, **kwargs: Any
) -> list[dict[str, Any]]:
    """The article's ``search_taverns(query)``, fixed: query encoder, ``ef``, clear errors."""
    return search_many(client, [query], collection=collection, limit=limit, **kwargs)[0]


def hits_frame(hits: list[dict[str, Any]], text_width: int = 90) -> pd.DataFrame:
    """Hits as a table a reader can scan: rank, similarity, name, place, the start of the text."""
    rows = []
    for rank, hit in enumerate(hits, start=1):
        key = "similarity" if "similarity" in hit else "score"
        row = {"rank": rank, key: round(hit[key], 3)}
        for field in ("name", "location", "famous_visitor", "source"):
            if field in hit:
                row[field] = hit[field]
        if "description" in hit:
            text = " ".join(hit["description"].split())
            row["description"] = text if len(text) <= text_width else text[: text_width - 1] + "…"
        rows.append(row)
    return pd.DataFrame(rows)


def rank_taverns(
    client: MilvusClient,
    queries: pd.DataFrame,
    name_to_tavern: dict[str, str],
    *,
    collection: str = COLLECTION,
    limit: int = 10,
    ef: int = DEFAULT_EF,
    mode: str = "dense",
    **options: Any,
) -> dict[str, list[str]]:
    """For each benchmark query (``query_id``, ``query``), the ranked tavern ids it retrieves
    (searched in ``mode``; ``options`` as in :func:`search_batch`)."""
    hits = search_many(
        client, queries["query"].tolist(), collection=collection, limit=limit, ef=ef,
        output_fields=["name"], mode=mode, **options,
    )  # fmt: skip
    return {
        qid: [name_to_tavern[h["name"]] for h in hit_list]
        for qid, hit_list in zip(queries["query_id"], hits, strict=True)
    }
