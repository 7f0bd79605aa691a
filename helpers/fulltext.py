"""Milvus full-text search (BM25) for the tavern collection, and which servers have it.

Dense search with all-MiniLM-L6-v2 finds paraphrases but can miss a query that names a rare
place or person: "An inn in Frogmorton on the road home to Hobbiton" ranks The Floating Log,
whose text says "a good inn at Frogmorton", 7th of 47. Milvus 2.5 added full-text search: a
VARCHAR field with an analyzer, and a ``BM25`` *function* that fills a sparse vector field from
it on insert, so the client sends text and never computes term weights itself. Searching that
field with raw text ranks by BM25.

What BM25 indexes here: the tavern's **name and description** (:func:`search_text`), because
queries name an inn ("the Prancing Pony") as often as they describe it. Location and famous
visitor stay out: they are short labels that the description repeats in prose.

Which servers have it (:func:`search_capabilities`, by the version the server reports):

* milvus-lite 3.2 and later (in-process and ``milvus-lite server``): BM25 and ``hybrid_search``;
* Milvus 2.5 and later (standalone, cluster, Zilliz Cloud): both;
* Milvus 2.4: ``hybrid_search`` over dense fields only, no BM25 function;
* the ``milvus`` package's C++ ``default_server`` 2.3.5 (the article's): neither. The tavern
  collection then keeps its dense-only schema, and the kit says why.

Analyzer: the ``standard`` tokenizer with a ``lowercase`` filter and an explicit English stop
list. milvus-lite 3.2.2 knows only the ``standard`` and ``jieba`` tokenizers (it refuses
``{"type": "english"}``), so the portable choice is spelled out rather than named; nothing is
stemmed ("inns" does not match "inn").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pymilvus import CollectionSchema, DataType, Function, FunctionType, MilvusClient

TEXT_FIELD = "search_text"
SPARSE_FIELD = "search_text_bm25"
BM25_FUNCTION = "search_text_to_bm25"
BM25_METRIC = "BM25"
SPARSE_INDEX = "SPARSE_INVERTED_INDEX"
BM25_K1 = 1.2  # term-frequency saturation (the usual default)
BM25_B = 0.75  # document-length normalisation (the usual default)

# Lucene's English stop list: words in nearly every tavern text carry no information.
STOP_WORDS: tuple[str, ...] = (
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is",
    "it", "no", "not", "of", "on", "or", "such", "that", "the", "their", "then", "there",
    "these", "they", "this", "to", "was", "will", "with",
)  # fmt: skip
ANALYZER_PARAMS: dict[str, Any] = {
    "tokenizer": "standard",
    "filter": ["lowercase", {"type": "stop", "stop_words": list(STOP_WORDS)}],
}

FULL_TEXT_SINCE = (2, 5)  # Milvus release that added the BM25 function
HYBRID_SINCE = (2, 4)  # Milvus release that added hybrid_search
LITE_FULL_TEXT_SINCE = (3, 2)  # milvus-lite release checked to have both (3.2.2)


@dataclass(frozen=True)
class Capabilities:
    """What one server can do beyond dense search, and, when it cannot, why (for users)."""

    version: str
    full_text: bool
    hybrid: bool
    reason: str = ""


def _version_tuple(text: str) -> tuple[int, ...] | None:
    found = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not found:
        return None
    return tuple(int(part) for part in found.groups() if part is not None)


def search_capabilities(server: MilvusClient | str) -> Capabilities:
    """Which search modes a server supports, from the version it reports.

    ``server`` is a client (asked with ``get_server_version()``) or a version string such as
    ``"milvus_lite-3.2.2"``, ``"v2.3.5-lite"`` (the C++ default_server) or ``"v2.5.4"``.
    """
    version = server if isinstance(server, str) else str(server.get_server_version())
    if version.startswith("milvus_lite-"):
        parsed = _version_tuple(version.removeprefix("milvus_lite-"))
        ok = parsed is not None and parsed[:2] >= LITE_FULL_TEXT_SINCE
        why = "" if ok else f"milvus-lite {version} predates full-text search; install 3.2 or later"
        return Capabilities(version, ok, ok, why)
    parsed = _version_tuple(version)
    if parsed is None:
        return Capabilities(
            version,
            False,
            False,
            f"cannot read the server version {version!r}; assuming dense only",
        )
    full_text = parsed[:2] >= FULL_TEXT_SINCE
    hybrid = parsed[:2] >= HYBRID_SINCE
    reason = ""
    if not full_text:
        reason = (
            f"full-text (BM25) search needs Milvus {FULL_TEXT_SINCE[0]}.{FULL_TEXT_SINCE[1]} or "
            f"later and hybrid_search {HYBRID_SINCE[0]}.{HYBRID_SINCE[1]} or later; this server "
            f"is {version}"
        )
        if version.startswith("v2.3.5"):
            reason += " (the `milvus` package's default_server, frozen at 2.3.5)"
        reason += (
            ". The tavern collection keeps its dense-only schema. For BM25 and hybrid search use "
            "backend lite or lite-server (milvus-lite 3.2+), or a Milvus 2.5+ server by URI"
        )
    return Capabilities(version, full_text, hybrid, reason)


def search_text(name: str, description: str) -> str:
    """The text BM25 indexes: the tavern's name, then its description."""
    return f"{name.strip()}\n{description.strip()}"


def add_full_text_fields(schema: CollectionSchema, max_length: int) -> CollectionSchema:
    """Add the analyzed text field, the sparse field and the BM25 function that links them.

    Rows then carry ``search_text``; Milvus computes ``search_text_bm25`` itself on insert
    (a row must not send it).
    """
    schema.add_field(
        TEXT_FIELD,
        DataType.VARCHAR,
        max_length=max_length,
        enable_analyzer=True,
        analyzer_params=ANALYZER_PARAMS,
        description="Name and description, analyzed for full-text (BM25) search",
    )
    schema.add_field(
        SPARSE_FIELD, DataType.SPARSE_FLOAT_VECTOR, description="BM25 term weights (computed)"
    )
    schema.add_function(
        Function(
            name=BM25_FUNCTION,
            function_type=FunctionType.BM25,
            input_field_names=[TEXT_FIELD],
            output_field_names=[SPARSE_FIELD],
        )
    )
    return schema


def add_bm25_index(index_params: Any) -> Any:
    """Add the sparse inverted index with metric BM25 to ``client.prepare_index_params()``."""
    index_params.add_index(
        field_name=SPARSE_FIELD,
        index_name=SPARSE_FIELD,
        index_type=SPARSE_INDEX,
        metric_type=BM25_METRIC,
        params={"bm25_k1": BM25_K1, "bm25_b": BM25_B},
    )
    return index_params


def has_full_text(description: dict[str, Any]) -> bool:
    """Whether a ``describe_collection`` answer has the BM25 sparse field."""
    return any(f.get("name") == SPARSE_FIELD for f in description.get("fields", []))
