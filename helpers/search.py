"""Semantic search over a tavern collection, with the checks the article's `search_taverns` lacks.

The article encodes queries with ``encode_documents`` and passes ``nprobe`` to an HNSW index. Here
queries go through ``encode_queries``, HNSW gets ``ef``, and a search that cannot give a
meaningful answer (an empty query, a missing or unloaded collection) says so instead of
returning nothing or a gRPC stack trace.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
from pymilvus import MilvusClient

from helpers.embeddings import encode_queries
from helpers.schema import COLLECTION, VECTOR_FIELD, search_params

DEFAULT_EF = 64
OUTPUT_FIELDS = ("name", "description", "location", "famous_visitor")


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


def search_many(
    client: MilvusClient,
    queries: Sequence[str],
    *,
    collection: str = COLLECTION,
    limit: int = 3,
    ef: int = DEFAULT_EF,
    filter: str = "",
    output_fields: Sequence[str] = OUTPUT_FIELDS,
) -> list[list[dict[str, Any]]]:
    """Top ``limit`` hits for each query, in one request. Each hit: id, similarity, fields.

    With ``metric_type="IP"`` on unit vectors, Milvus's "distance" is the cosine similarity:
    higher is closer. We name it ``similarity`` so nobody sorts it the wrong way.
    """
    texts = _clean_queries(queries)
    check_searchable(client, collection)
    vectors = encode_queries(texts)
    results = client.search(
        collection,
        data=[v.tolist() for v in vectors],
        anns_field=VECTOR_FIELD,
        search_params=search_params(max(ef, limit)),
        limit=limit,
        filter=filter,
        output_fields=list(output_fields),
    )
    return [
        [{"id": hit["id"], "similarity": float(hit["distance"]), **hit["entity"]} for hit in hits]
        for hits in results
    ]


def search_taverns(
    client: MilvusClient, query: str, *, collection: str = COLLECTION, limit: int = 3, **kwargs: Any
) -> list[dict[str, Any]]:
    """The article's ``search_taverns(query)``, fixed: query encoder, ``ef``, clear errors."""
    return search_many(client, [query], collection=collection, limit=limit, **kwargs)[0]


def hits_frame(hits: list[dict[str, Any]], text_width: int = 90) -> pd.DataFrame:
    """Hits as a table a reader can scan: rank, similarity, name, place, the start of the text."""
    rows = []
    for rank, hit in enumerate(hits, start=1):
        row = {"rank": rank, "similarity": round(hit["similarity"], 3)}
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
) -> dict[str, list[str]]:
    """For each benchmark query (``query_id``, ``query``), the ranked tavern ids it retrieves."""
    hits = search_many(
        client, queries["query"].tolist(), collection=collection, limit=limit, ef=ef,
        output_fields=["name"],
    )  # fmt: skip
    return {
        qid: [name_to_tavern[h["name"]] for h in hit_list]
        for qid, hit_list in zip(queries["query_id"], hits, strict=True)
    }
