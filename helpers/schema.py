"""The article's tavern collection: schema, HNSW index and input checks.

Fields and index follow the article (six fields; HNSW, IP, M=48, efConstruction=200). What we
change, and why (see docs/article-errata.md):

* ids are deterministic (a hash of a stable key) instead of ``auto_id``: re-running a notebook
  upserts the same rows instead of piling up duplicates;
* the collection is created *without* index params, then rows are inserted, flushed, indexed and
  loaded in that order: milvus-lite loads a collection created with index params at once and then
  answers every search by brute force (docs/measured-facts.md);
* HNSW params are passed in the nested form ``{"params": {"M": .., "efConstruction": ..}}``:
  milvus-lite silently ignores the flat form and builds M=16;
* VARCHAR limits are checked here, in UTF-8 bytes: the C++ server counts bytes, milvus-lite counts
  characters, so a byte check is the one that holds on every backend;
* on servers with full-text search (milvus-lite 3.2+, Milvus 2.5+) the collection also gets an
  analyzed ``search_text`` (name + description) and a BM25 sparse field beside the dense vector
  (:mod:`helpers.fulltext`); on the C++ 2.3.5 server it keeps the dense-only schema.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from pymilvus import CollectionSchema, DataType, MilvusClient

from helpers import fulltext
from helpers.common import fit_utf8, stable_id  # re-exported: callers import them from here
from helpers.embeddings import DIM

log = logging.getLogger(__name__)

COLLECTION = "taverns10"  # the article's collection name
VECTOR_FIELD = "vector_embedding"
DESCRIPTION_MAX = 3000
SHORT_MAX = 255
SEARCH_TEXT_MAX = SHORT_MAX + 1 + DESCRIPTION_MAX  # name, newline, description (bytes)
HNSW_M = 48
HNSW_EF_CONSTRUCTION = 200
METRIC = "IP"

TEXT_LIMITS: dict[str, int] = {
    "name": SHORT_MAX,
    "description": DESCRIPTION_MAX,
    "location": SHORT_MAX,
    "famous_visitor": SHORT_MAX,
}
REQUIRED_TEXT = ("name", "description")


class SchemaError(ValueError):
    """A row does not fit the collection; the message names the row, the field and the fix."""


def tavern_schema(full_text: bool = False) -> CollectionSchema:
    """The article's six fields, with the article's descriptions; with ``full_text``, also the
    analyzed name + description and its BM25 sparse field (:mod:`helpers.fulltext`)."""
    schema = MilvusClient.create_schema(auto_id=False, description="LOTR Taverns")
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("name", DataType.VARCHAR, max_length=SHORT_MAX, description="Tavern name")
    schema.add_field(
        "description",
        DataType.VARCHAR,
        max_length=DESCRIPTION_MAX,
        description="Tavern description",
    )
    schema.add_field(
        "location", DataType.VARCHAR, max_length=SHORT_MAX, description="Location in Middle-Earth"
    )
    schema.add_field(
        "famous_visitor",
        DataType.VARCHAR,
        max_length=SHORT_MAX,
        description="Famous visitors in the tavern",
    )
    schema.add_field(
        VECTOR_FIELD,
        DataType.FLOAT_VECTOR,
        dim=DIM,
        description="Vector embedding for semantic search",
    )
    if full_text:
        fulltext.add_full_text_fields(schema, SEARCH_TEXT_MAX)
    return schema


def hnsw_index_params(
    client: MilvusClient,
    m: int = HNSW_M,
    ef_construction: int = HNSW_EF_CONSTRUCTION,
    *,
    field_name: str = VECTOR_FIELD,
) -> Any:
    """Index params for HNSW (inner product) in the nested form every backend honours.

    milvus-lite silently ignores the flat ``params={"M": ..}`` form and builds M=16.
    """
    params = client.prepare_index_params()
    params.add_index(
        field_name=field_name,
        index_name=field_name,
        index_type="HNSW",
        metric_type=METRIC,
        params={"params": {"M": int(m), "efConstruction": int(ef_construction)}},
    )
    return params


def search_params(ef: int = 64) -> dict[str, Any]:
    """HNSW's search knob is ``ef`` (candidates kept while searching); ``nprobe`` is IVF's."""
    if ef < 1:
        raise ValueError(f"ef must be a positive integer, got {ef}.")
    return {"metric_type": METRIC, "params": {"ef": ef}}


def _field_names(description: Mapping[str, Any]) -> list[str]:
    return [f["name"] for f in description.get("fields", [])]


def ensure_collection(
    client: MilvusClient,
    name: str,
    schema: CollectionSchema,
    *,
    drop_existing: bool = False,
    hint: str = "pass another collection name",
    also_accept: Sequence[CollectionSchema] = (),
) -> bool:
    """Create collection ``name`` with ``schema`` if it is missing. Returns True when created.

    An existing collection with the same fields (or those of one of ``also_accept``) is kept
    (notebooks are re-runnable); one with other fields is an error rather than a silent mix of
    two schemas.
    """
    if client.has_collection(name):
        if drop_existing:
            client.drop_collection(name)
        else:
            have = _field_names(client.describe_collection(name))
            wanted = [[f.name for f in s.fields] for s in (schema, *also_accept)]
            if not any(sorted(have) == sorted(want) for want in wanted):
                raise SchemaError(
                    f"Collection {name!r} exists with fields {have}, not {wanted[0]}. Drop it "
                    f"(client.drop_collection({name!r})) or {hint}."
                )
            return False
    client.create_collection(name, schema=schema)
    return True


def wants_full_text(client: MilvusClient, full_text: bool | None = None) -> bool:
    """Resolve ``full_text`` (None: whatever the server supports) against the server's version.

    Asking for full text on a server without it (the C++ 2.3.5 default_server) is an error that
    says which version is needed; the automatic choice logs the same reason and goes dense-only.
    """
    if full_text is False:
        return False
    caps = fulltext.search_capabilities(client)
    if not caps.full_text:
        if full_text:
            raise SchemaError(caps.reason + ".")
        log.warning("%s.", caps.reason)
    return caps.full_text


def create_tavern_collection(
    client: MilvusClient,
    name: str = COLLECTION,
    *,
    drop_existing: bool = False,
    full_text: bool | None = None,
) -> bool:
    """The article's collection (:func:`tavern_schema`), created if missing (see
    :func:`ensure_collection`). Returns True when it was created.

    ``full_text``: None creates the BM25 fields where the server supports them (and keeps an
    existing collection with or without them); True requires them; False is the article's
    dense-only schema.
    """
    if client.has_collection(name) and not drop_existing:
        options = [False, True] if full_text is None else [full_text]
        schemas = [tavern_schema(option) for option in options]
        return ensure_collection(client, name, schemas[-1], also_accept=schemas[:-1])
    schema = tavern_schema(wants_full_text(client, full_text))
    return ensure_collection(client, name, schema, drop_existing=drop_existing)


def index_info(
    client: MilvusClient, name: str = COLLECTION, *, field_name: str = VECTOR_FIELD
) -> dict[str, Any]:
    """What the server says it built (type, metric, M, efConstruction, rows), params unpacked.

    milvus-lite reports the nested params as a JSON string, the C++ server as a dict.
    """
    if not client.list_indexes(name):
        return {}
    info = dict(client.describe_index(name, index_name=field_name) or {})
    nested = info.get("params")
    if isinstance(nested, str):
        with contextlib.suppress(ValueError):
            nested = json.loads(nested)
    if isinstance(nested, Mapping):
        for key, value in nested.items():
            info.setdefault(key, value)
    for key in ("M", "efConstruction"):
        if key in info:
            with contextlib.suppress(TypeError, ValueError):
                info[key] = int(info[key])
    return info


def build_hnsw_index(
    client: MilvusClient,
    name: str = COLLECTION,
    *,
    m: int = HNSW_M,
    ef_construction: int = HNSW_EF_CONSTRUCTION,
) -> dict[str, Any]:
    """Flush, (re)create the HNSW index, and load, in the order that makes HNSW really serve.

    A collection already loaded before its rows were flushed keeps answering by brute force in
    milvus-lite, so a loaded collection is released first.
    """
    client.flush(name)
    existing = index_info(client, name)
    same = (
        existing.get("index_type") == "HNSW"
        and int(existing.get("M", -1)) == m
        and int(existing.get("efConstruction", -1)) == ef_construction
    )
    client.release_collection(name)
    if existing and not same:
        client.drop_index(name, index_name=VECTOR_FIELD)
    if not same:
        client.create_index(name, hnsw_index_params(client, m, ef_construction))
    has_bm25 = fulltext.has_full_text(client.describe_collection(name))
    if has_bm25 and fulltext.SPARSE_FIELD not in client.list_indexes(name):
        client.create_index(name, fulltext.add_bm25_index(client.prepare_index_params()))
    client.load_collection(name)
    return index_info(client, name)


def _check_vector(vector: Any, where: str) -> list[float]:
    try:
        arr = np.asarray(vector, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError):
        raise SchemaError(f"{where}: {VECTOR_FIELD} is not a list of numbers.") from None
    if arr.shape[0] != DIM:
        raise SchemaError(
            f"{where}: {VECTOR_FIELD} has {arr.shape[0]} dimensions; the collection expects {DIM} "
            "(all-MiniLM-L6-v2). Embed with helpers.embeddings.encode_documents."
        )
    if not np.all(np.isfinite(arr)):
        raise SchemaError(f"{where}: {VECTOR_FIELD} contains NaN or infinity; re-embed the text.")
    norm = float(np.linalg.norm(arr))
    if not math.isclose(norm, 1.0, abs_tol=1e-3):
        raise SchemaError(
            f"{where}: {VECTOR_FIELD} has length {norm:.3f}; inner-product search needs unit "
            "vectors (normalise, or embed with normalize_embeddings=True)."
        )
    return arr.tolist()


def prepare_rows(
    rows: Iterable[Mapping[str, Any]], *, truncate_description: bool = True, full_text: bool = False
) -> list[dict[str, Any]]:
    """Check every row before anything is written, so a bad row never leaves half a batch stored.

    Descriptions over 3000 UTF-8 bytes are cut at the last full sentence (documented, tested);
    with ``truncate_description=False`` they are an error. Every other violation is an error.
    With ``full_text`` each row also gets ``search_text`` (name + description) for BM25.
    """
    out: list[dict[str, Any]] = []
    seen: dict[int, int] = {}
    for i, row in enumerate(rows):
        where = f"row {i} ({str(row.get('name', ''))[:40]!r})"
        clean = dict(row)
        if "id" not in clean or not isinstance(clean["id"], int | np.integer):
            raise SchemaError(f"{where}: needs an integer 'id' (use helpers.schema.stable_id).")
        clean["id"] = int(clean["id"])
        if clean["id"] in seen:
            raise SchemaError(f"{where}: id {clean['id']} repeats row {seen[clean['id']]}.")
        seen[clean["id"]] = i
        for fld, limit in TEXT_LIMITS.items():
            value = clean.get(fld, "")
            if value is None:
                value = ""
            if not isinstance(value, str):
                raise SchemaError(f"{where}: {fld} must be text, got {type(value).__name__}.")
            if fld in REQUIRED_TEXT and not value.strip():
                raise SchemaError(f"{where}: {fld} is empty; every tavern needs a {fld}.")
            size = len(value.encode("utf-8"))
            if size > limit:
                if fld == "description" and truncate_description:
                    value = fit_utf8(value, limit)
                else:
                    raise SchemaError(
                        f"{where}: {fld} is {size} bytes of UTF-8 ({len(value)} characters); the "
                        f"limit is {limit} bytes. Shorten it."
                    )
            clean[fld] = value
        clean[VECTOR_FIELD] = _check_vector(clean.get(VECTOR_FIELD), where)
        if full_text:
            clean[fulltext.TEXT_FIELD] = fulltext.search_text(clean["name"], clean["description"])
        out.append(clean)
    return out


def upsert_rows(
    client: MilvusClient,
    rows: Sequence[Mapping[str, Any]],
    name: str = COLLECTION,
    *,
    batch_size: int = 256,
    truncate_description: bool = True,
) -> int:
    """Validate all rows, then upsert them in batches (one RPC per batch, not per row).

    On a collection with the BM25 fields each row gets its ``search_text`` here."""
    full_text = fulltext.has_full_text(client.describe_collection(name))
    clean = prepare_rows(rows, truncate_description=truncate_description, full_text=full_text)
    for start in range(0, len(clean), batch_size):
        client.upsert(name, clean[start : start + batch_size])
    return len(clean)


def tavern_rows(frame: Any, vectors: Any, *, source: str) -> list[dict[str, Any]]:
    """Rows for the collection from a table of taverns (``tavern_id``, ``name``, ``description``,
    ``location``, ``famous_visitor``) and their embeddings. ``source`` (e.g. ``human``,
    ``generated``) is part of the id, so a tavern's human and generated texts are two rows."""
    if len(frame) != len(vectors):
        raise SchemaError(f"{len(frame)} taverns but {len(vectors)} vectors; embed every row once.")
    return [
        {
            "id": stable_id(source, t.tavern_id),
            "name": t.name,
            "description": t.description,
            "location": t.location,
            "famous_visitor": t.famous_visitor,
            VECTOR_FIELD: v,
        }
        for t, v in zip(frame.itertuples(), vectors, strict=True)
    ]


def fill_collection(
    client: MilvusClient,
    name: str,
    rows: Sequence[Mapping[str, Any]],
    *,
    replace: bool = True,
    full_text: bool | None = None,
) -> dict[str, Any]:
    """Create (or with ``replace``, recreate) a collection holding exactly ``rows``, indexed
    and loaded, ready to search. Rows are validated before the old collection is dropped.
    ``full_text`` as in :func:`create_tavern_collection`."""
    clean = prepare_rows(rows)
    create_tavern_collection(client, name, drop_existing=replace, full_text=full_text)
    upsert_rows(client, clean, name)
    return build_hnsw_index(client, name)
