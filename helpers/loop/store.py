"""The loop's store: the collection (schema with lineage), the policy views, and retrieval with
an exact re-rank. See :mod:`helpers.loop` for why each choice was made.

Rows are written from ledger records only (:func:`row_from_record`), so a row inserted now and one
re-inserted on resume hold the same bytes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeAlias

import numpy as np
from pymilvus import CollectionSchema, DataType, FieldSchema, MilvusClient

from helpers import fulltext
from helpers.common import truncate_utf8
from helpers.embeddings import encode_documents, encode_queries
from helpers.evaluation import cosine
from helpers.ledger import decode_vector
from helpers.loop.params import (
    GENERATED_LATEST,
    GENERATED_NONE,
    LOOP_TEXT_LIMITS,
    MAX_K,
    SOURCES,
    LoopError,
    check_choice,
    view_rule,
)
from helpers.milvus_server import MilvusHandle
from helpers.schema import (
    SEARCH_TEXT_MAX,
    VECTOR_FIELD,
    SchemaError,
    ensure_collection,
    search_params,
    tavern_schema,
)

Milvus: TypeAlias = MilvusHandle | MilvusClient

SEARCH_EF = 512  # HNSW with ef >= the rows it holds visits them all: exact, so reproducible
CANDIDATE_MARGIN = 5
CONTEXT_FIELDS = ("tavern_id", "name", "location", "description", "source", "iteration")


def now() -> str:
    """UTC now as ISO 8601 with milliseconds and a ``Z``: the ``created_at`` of rows."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def embed_one(text: str, *, query: bool = False) -> np.ndarray:
    """One text, on its own: a batch pads its texts and shifts the last bits of the vectors
    (measured: 1.5e-7), which would make a resumed run differ from an uninterrupted one."""
    return (encode_queries if query else encode_documents)([text])[0].astype(np.float32)


def client_of(milvus: Milvus) -> MilvusClient:
    """A MilvusHandle's client (which pings and reconnects), or the MilvusClient given."""
    return milvus.client if isinstance(milvus, MilvusHandle) else milvus


def backend_of(milvus: Milvus | None, default: str) -> str:
    """The backend a handle runs; ``default`` for a plain client or none."""
    return milvus.backend if isinstance(milvus, MilvusHandle) else default


# ---------------------------------------------------------------------------------------------
# The collection


def loop_schema(full_text: bool = False) -> CollectionSchema:
    """The article's six fields (:func:`helpers.schema.tavern_schema`) plus the lineage fields
    described in the module docstring; with ``full_text`` also the BM25 text and sparse fields
    (:func:`helpers.fulltext.add_full_text_fields`) a ``bm25`` or ``hybrid`` retriever needs."""

    def text(name: str, description: str) -> FieldSchema:
        return FieldSchema(
            name, DataType.VARCHAR, max_length=LOOP_TEXT_LIMITS[name], description=description
        )

    lineage = [
        text("tavern_id", "tavern this text describes (taverns.csv)"),
        text("run_id", "loop run that wrote the row"),
        FieldSchema(
            "iteration", DataType.INT64, description="loop iteration; -1 = human reference"
        ),
        text("source", "human or generated"),
        text("generator", "local, claude or human"),
        text("model", "model that wrote the text"),
        FieldSchema(
            "context_ids",
            DataType.ARRAY,
            element_type=DataType.INT64,
            max_capacity=MAX_K,
            description="ids of the rows retrieved as context",
        ),
        FieldSchema("parent_id", DataType.INT64, description="version the retrieval started from"),
        FieldSchema("scores", DataType.JSON, description="evaluation scores (helpers.evaluation)"),
        text("created_at", "UTC time the text was generated"),
    ]
    schema = CollectionSchema(
        [*tavern_schema().fields, *lineage],
        description="LOTR Taverns: feedback loop versions with lineage",
    )
    return fulltext.add_full_text_fields(schema, SEARCH_TEXT_MAX) if full_text else schema


def open_loop_collection(
    client: MilvusClient, collection: str, *, drop_existing: bool, retriever: str = "dense"
) -> bool:
    """Create the run's collection if missing; True when it was created. An existing one with
    other fields is an error (an older kit version, or a name clash). A ``bm25`` or ``hybrid``
    retriever on a server without full-text (or hybrid) search is an error that says which
    backends have it."""
    full_text = retriever != "dense"
    if full_text:
        caps = fulltext.search_capabilities(client)
        if not caps.full_text or (retriever == "hybrid" and not caps.hybrid):
            raise LoopError(f"retriever={retriever!r} is not available: {caps.reason}.")
    try:
        return ensure_collection(
            client, collection, loop_schema(full_text), drop_existing=drop_existing,
            hint="use another run id",
        )  # fmt: skip
    except SchemaError as exc:
        raise LoopError(str(exc)) from None


def load_with_retry(client: MilvusClient, collection: str, *, attempts: int = 4) -> None:
    """``client.load_collection``, retried when milvus-lite 3.2.2 fails it with "read error
    ... Resource temporarily unavailable": it can read an index file its background index
    build is still writing (seen once in a sweep of many small runs); a moment later the same
    load succeeds. Any other error is raised at once."""
    for attempt in range(attempts):
        try:
            client.load_collection(collection)
            return
        except Exception as exc:  # pymilvus.MilvusException
            if "Resource temporarily unavailable" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))


def view_filter(
    policy: str, sources: str, run_id: str, upto: int, *, exclude_tavern: str | None = None
) -> str | None:
    """The Milvus filter for "the searchable store after iteration ``upto``" (-1: before the
    loop) under ``policy`` (:func:`~helpers.loop.params.view_rule`), restricted to ``sources``.
    ``exclude_tavern``: leave out that tavern's generated rows. None when nothing can match
    (skip the search).
    """
    rule = view_rule(policy, upto)
    check_choice("sources", sources, SOURCES)
    clauses = []
    if sources in ("all", "human") and rule.humans:
        clauses.append('source == "human"')
    if sources in ("all", "generated", "run") and rule.generated != GENERATED_NONE:
        gen = 'source == "generated"'
        if sources == "run":
            gen += f' and run_id == "{run_id}"'
        op = "==" if rule.generated == GENERATED_LATEST else "<="
        gen += f" and iteration {op} {upto}"
        if exclude_tavern is not None:
            gen += f' and tavern_id != "{exclude_tavern}"'
        clauses.append(gen)
    if not clauses:
        return None
    return " or ".join(f"({c})" for c in clauses)


# ---------------------------------------------------------------------------------------------
# Rows


def json_number(value: Any) -> Any:
    return round(value, 6) if isinstance(value, float) else value


def row_from_record(rec: Mapping[str, Any]) -> dict[str, Any]:
    """The stored row of a ledger record: the same bytes whether inserted now or on resume."""
    return {
        "id": rec["row_id"],
        "name": rec["name"],
        "description": rec["text"],
        "location": rec["location"],
        "famous_visitor": rec["famous_visitor"],
        "vector_embedding": decode_vector(rec["vector_b64"]).tolist(),
        "tavern_id": rec["tavern_id"],
        "run_id": rec["run_id"],
        "iteration": rec["iteration"],
        "source": "generated",
        "generator": truncate_utf8(rec["generator"], LOOP_TEXT_LIMITS["generator"]),
        "model": truncate_utf8(rec["model"], LOOP_TEXT_LIMITS["model"]),
        "context_ids": [int(i) for i in rec["context_ids"]],
        "parent_id": rec["parent_id"],
        "scores": rec["scores"],
        "created_at": rec["created_at"],
    }


def present_ids(client: MilvusClient, collection: str, ids: Sequence[int]) -> set[int]:
    """Which of ``ids`` the collection holds (queried in chunks of 500)."""
    found: set[int] = set()
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        res = client.query(
            collection,
            filter=f"id in {list(chunk)}",
            output_fields=["id"],
            consistency_level="Strong",
        )
        found.update(int(r["id"]) for r in res)
    return found


# ---------------------------------------------------------------------------------------------
# Retrieval


def search_contexts(
    client: MilvusClient,
    collection: str,
    query: np.ndarray,
    expr: str,
    k: int,
    vectors: Mapping[int, np.ndarray],
    *,
    retriever: str = "dense",
    query_text: str = "",
) -> list[dict[str, Any]]:
    """The ``k`` rows nearest ``query`` under filter ``expr``, re-ranked exactly.

    Milvus returns ``k + CANDIDATE_MARGIN`` candidates; each is re-scored with the cosine of
    the vectors the run ledgered (``vectors``, by row id), ties broken by id, so float noise
    between brute-force and indexed segments cannot swap two texts. A row the run does not know
    means the collection was changed from outside: an error.

    With ``retriever`` ``bm25`` or ``hybrid`` the search is :func:`helpers.search.search_batch`
    in that mode with ``query_text`` (and ``query`` as the dense half of hybrid); the order is
    the retriever's own score (BM25, or the RRF fusion), ties broken by id, and each context
    still records its cosine ``similarity`` to the query vector beside that ``score``.
    """
    if retriever != "dense":
        from helpers.search import search_batch

        hits = search_batch(
            client, collection, [query_text], mode=retriever, k=k + CANDIDATE_MARGIN,
            filter=expr, query_vectors=[query.tolist()], output_fields=CONTEXT_FIELDS,
        )[0]  # fmt: skip
        hits = [{"id": h["id"], "score": h["score"], "entity": h} for h in hits]
    else:
        hits = client.search(
            collection,
            data=[query.tolist()],
            anns_field=VECTOR_FIELD,
            search_params=search_params(SEARCH_EF),
            limit=k + CANDIDATE_MARGIN,
            filter=expr,
            output_fields=list(CONTEXT_FIELDS),
            consistency_level="Strong",
        )[0]
    contexts = []
    for hit in hits:
        hid = int(hit["id"])
        vector = vectors.get(hid)
        if vector is None:
            raise LoopError(
                f"Collection {collection!r} holds row {hid}, which this run's ledger does not "
                "know: the collection was changed from outside. Start the run again with "
                "fresh=True (or a new run id)."
            )
        entity = hit["entity"]
        context = {
            "id": hid,
            "similarity": cosine(query, vector),
            **{f: entity[f] for f in CONTEXT_FIELDS if f != "iteration"},
            "iteration": int(entity["iteration"]),
        }
        if retriever != "dense":
            context["score"] = round(float(hit["score"]), 6)
        contexts.append(context)
    order = "similarity" if retriever == "dense" else "score"
    contexts.sort(key=lambda c: (-c[order], c["id"]))
    return contexts[:k]
