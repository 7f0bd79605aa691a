"""The tavern collection on milvus-lite and on the C++ server: schema, HNSW index, input checks.

Each backend is started once for the module (the C++ one takes about 10 s). Tests that store
rows use their own collection or their own ids, so they do not depend on each other's order.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from pymilvus import DataType, MilvusClient

from helpers.fulltext import search_capabilities
from helpers.schema import (
    COLLECTION,
    DESCRIPTION_MAX,
    SHORT_MAX,
    VECTOR_FIELD,
    SchemaError,
    build_hnsw_index,
    create_tavern_collection,
    fit_utf8,
    prepare_rows,
    search_params,
    stable_id,
    tavern_schema,
    upsert_rows,
)
from helpers.settings import get_settings
from tests.conftest import REPO, start_backend

POPULATED = "taverns_test"
N_ROWS = 12


def unit_vector(seed: int) -> list[float]:
    v = np.random.default_rng(seed).normal(size=384).astype(np.float32)
    return (v / np.linalg.norm(v)).tolist()


def tavern(i: int, **fields: Any) -> dict[str, Any]:
    row = {
        "id": stable_id("test-tavern", i),
        "name": f"The Inn number {i}",
        "description": f"Inn number {i} serves ale by the fire. Hobbits like it.",
        "location": "Bree",
        "famous_visitor": "Bilbo Baggins",
        VECTOR_FIELD: unit_vector(i),
    }
    row.update(fields)
    return row


@dataclass
class Backend:
    name: str
    client: MilvusClient

    def count(self, collection: str = POPULATED) -> int:
        res = self.client.query(
            collection, filter="", output_fields=["count(*)"], consistency_level="Strong"
        )
        return int(res[0]["count(*)"])

    def get(self, row_id: int, collection: str = POPULATED) -> dict[str, Any]:
        res = self.client.query(
            collection,
            filter=f"id == {row_id}",
            output_fields=["name", "description", "location", "famous_visitor"],
            consistency_level="Strong",
        )
        assert len(res) == 1, res
        return res[0]


@pytest.fixture(scope="module", params=["lite", "milvus"])
def db(request, tmp_path_factory) -> Iterator[Backend]:
    """One running backend per module, with a populated, indexed tavern collection."""
    settings = get_settings(run_dir=tmp_path_factory.mktemp(f"schema-{request.param}"))
    handle = start_backend(settings, request.param, fresh=True)
    try:
        client = handle.client
        assert create_tavern_collection(client, POPULATED) is True
        assert upsert_rows(client, [tavern(i) for i in range(N_ROWS)], POPULATED) == N_ROWS
        build_hnsw_index(client, POPULATED)
        yield Backend(request.param, client)
    finally:
        handle.stop()


# --- collection and index ----------------------------------------------------------------------


@pytest.mark.slow
def test_create_is_idempotent_and_refuses_other_fields(db: Backend) -> None:
    c = db.client
    name = "taverns_create"
    assert create_tavern_collection(c, name) is True
    assert create_tavern_collection(c, name) is False  # re-running a notebook keeps it
    fields = {f["name"]: f for f in c.describe_collection(name)["fields"]}
    # the BM25 fields come where the server has full-text search (helpers.fulltext)
    full_text = search_capabilities(c).full_text
    assert list(fields) == [f.name for f in tavern_schema(full_text).fields]
    assert fields["id"]["is_primary"] and not c.describe_collection(name).get("auto_id")
    assert fields[VECTOR_FIELD]["params"]["dim"] == 384
    assert int(fields["description"]["params"]["max_length"]) == DESCRIPTION_MAX

    c.create_collection("taverns_other", dimension=384)  # same name, other fields
    with pytest.raises(SchemaError) as err:
        create_tavern_collection(c, "taverns_other")
    assert "taverns_other" in str(err.value) and "vector_embedding" in str(err.value)
    assert "drop" in str(err.value).lower()
    assert create_tavern_collection(c, "taverns_other", drop_existing=True) is True
    assert "description" in {f["name"] for f in c.describe_collection("taverns_other")["fields"]}


@pytest.mark.slow
def test_hnsw_index_has_the_article_parameters(db: Backend) -> None:
    c = db.client
    info = build_hnsw_index(c, POPULATED)  # the fixture built it once; again keeps it
    assert info["index_type"] == "HNSW"
    assert info["metric_type"] == "IP"
    assert int(info["M"]) == 48
    assert int(info["efConstruction"]) == 200
    # The index serves: each stored vector finds its own row first, with inner product 1.
    probe = tavern(5)
    hits = c.search(
        POPULATED,
        [probe[VECTOR_FIELD]],
        limit=3,
        search_params=search_params(64),
        consistency_level="Strong",
    )[0]
    assert hits[0]["id"] == probe["id"]
    assert hits[0]["distance"] == pytest.approx(1.0, abs=1e-4)


# --- bad rows: the error names the row and the field, and nothing is stored ----------------------


def _nan_vector() -> list[float]:
    v = unit_vector(99)
    v[7] = float("nan")
    return v


BAD_ROWS = {
    "empty name": (dict(name="  "), "name"),
    "wrong dimension": ({VECTOR_FIELD: unit_vector(99)[:383]}, VECTOR_FIELD),
    "NaN in vector": ({VECTOR_FIELD: _nan_vector()}, VECTOR_FIELD),
    "not unit length": ({VECTOR_FIELD: [2 * x for x in unit_vector(99)]}, VECTOR_FIELD),
    # 128 characters but 256 bytes: over the limit in bytes, as the C++ server counts.
    "location over 255 bytes": (dict(location="é" * 128), "location"),
    "duplicate id": (dict(id=stable_id("test-tavern", 100)), "id"),
    "missing id": (dict(id=None), "id"),
    "empty description": (dict(description=""), "description"),
}


def _batch_with_bad_row(case: str) -> list[dict[str, Any]]:
    change, _ = BAD_ROWS[case]
    rows = [tavern(100), tavern(101, **change), tavern(102)]
    if case == "missing id":
        del rows[1]["id"]
    return rows


@pytest.mark.parametrize("case", BAD_ROWS)
def test_prepare_rows_names_the_row_and_the_field(case: str) -> None:
    with pytest.raises(SchemaError) as err:
        prepare_rows(_batch_with_bad_row(case))
    message = str(err.value)
    assert message.startswith("row 1 ("), message
    assert BAD_ROWS[case][1] in message, message


@pytest.mark.slow
@pytest.mark.parametrize("case", BAD_ROWS)
def test_a_bad_row_stores_nothing_of_its_batch(db: Backend, case: str) -> None:
    before = db.count()
    # batch_size=1: checking batch by batch would already have stored row 0.
    with pytest.raises(SchemaError, match=r"^row 1 "):
        upsert_rows(db.client, _batch_with_bad_row(case), POPULATED, batch_size=1)
    assert db.count() == before


def test_prepare_rows_defaults_and_keeps_good_rows() -> None:
    row = tavern(7)
    del row["famous_visitor"]
    row["location"] = None
    row["id"] = np.int64(row["id"])
    (clean,) = prepare_rows([row])
    assert clean["famous_visitor"] == "" and clean["location"] == ""
    assert type(clean["id"]) is int
    assert isinstance(clean[VECTOR_FIELD], list) and len(clean[VECTOR_FIELD]) == 384
    assert row["location"] is None  # the caller's row is not modified


# --- long and non-ASCII descriptions ------------------------------------------------------------


def _long_description() -> str:
    sentences = [f"Tale {i}: the hobbits sang until the candles burned low." for i in range(80)]
    text = " ".join(sentences)
    assert len(text.encode("utf-8")) > DESCRIPTION_MAX
    return text


def test_long_description_is_cut_at_a_sentence_end_within_the_limit() -> None:
    text = _long_description()
    (clean,) = prepare_rows([tavern(1, description=text)])
    cut = clean["description"]
    assert len(cut.encode("utf-8")) <= DESCRIPTION_MAX
    assert text.startswith(cut) and cut.endswith("low.")
    # It is the longest such cut: one more sentence would not fit.
    rest = text[len(cut) :]
    next_end = rest.index(".") + 1
    assert len((cut + rest[:next_end]).encode("utf-8")) > DESCRIPTION_MAX
    with pytest.raises(SchemaError, match=r"row 0 .*description is \d+ bytes"):
        prepare_rows([tavern(1, description=text)], truncate_description=False)


@pytest.mark.slow
def test_long_description_is_stored_cut(db: Backend) -> None:
    row = tavern(200, description=_long_description())
    upsert_rows(db.client, [row], POPULATED)
    stored = db.get(row["id"])["description"]
    assert stored == fit_utf8(_long_description(), DESCRIPTION_MAX)
    assert len(stored.encode("utf-8")) <= DESCRIPTION_MAX and stored.endswith(".")


@pytest.mark.slow
def test_multibyte_description_of_exactly_3000_bytes_is_stored_intact(db: Backend) -> None:
    text = "é" * 1500  # 1500 characters, 3000 bytes: exactly at the limit
    assert len(text.encode("utf-8")) == DESCRIPTION_MAX
    row = tavern(201, description=text, name="Ærwen’s Ínn — 中つ国", location="Hobbiton 🍺")
    (clean,) = prepare_rows([row])
    assert clean["description"] == text
    upsert_rows(db.client, [row], POPULATED)
    stored = db.get(row["id"])
    assert stored["description"] == text
    assert stored["name"] == "Ærwen’s Ínn — 中つ国" and stored["location"] == "Hobbiton 🍺"
    # One more character is over the limit in bytes (still far under it in characters).
    with pytest.raises(SchemaError, match="description is 3002 bytes"):
        prepare_rows([tavern(202, description=text + "é")], truncate_description=False)


@pytest.mark.slow
def test_raw_backends_count_varchar_length_differently(db: Backend) -> None:
    """Why the kit checks UTF-8 bytes itself: without it, a row that milvus-lite takes is
    refused by the C++ server. milvus-lite counts characters, the C++ server counts bytes."""
    c = db.client
    schema = MilvusClient.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("s", DataType.VARCHAR, max_length=10)
    schema.add_field("v", DataType.FLOAT_VECTOR, dim=2)
    index = c.prepare_index_params()
    index.add_index(field_name="v", index_type="FLAT", metric_type="IP")
    c.create_collection("varchar_raw", schema=schema, index_params=index)
    ten_chars_twenty_bytes = "é" * 10
    row = {"id": 1, "s": ten_chars_twenty_bytes, "v": [1.0, 0.0]}
    if db.name == "lite":
        assert c.insert("varchar_raw", [row])["insert_count"] == 1
        got = c.query("varchar_raw", filter="id == 1", output_fields=["s"],
                      consistency_level="Strong")  # fmt: skip
        assert got[0]["s"] == ten_chars_twenty_bytes
    else:
        with pytest.raises(Exception, match="exceeds max length") as err:
            c.insert("varchar_raw", [row])
        assert "20" in str(err.value)  # the length it counted: bytes
    # Both refuse 11 ASCII characters, so the limit itself is the same.
    with pytest.raises(Exception, match=r"(?i)max.?length"):
        c.insert("varchar_raw", [{"id": 2, "s": "e" * 11, "v": [1.0, 0.0]}])


# --- pure helpers -----------------------------------------------------------------------------


def test_fit_utf8_never_splits_a_character() -> None:
    text = "Ale🍺 for Frodo, é, 中つ国 and ß" * 20  # 1-, 2-, 3- and 4-byte characters
    raw = text.encode("utf-8")
    for limit in range(0, len(raw) + 2):
        cut = fit_utf8(text, limit)
        assert len(cut.encode("utf-8")) <= limit
        assert text.startswith(cut)
        assert "\ufffd" not in cut
    no_spaces = "é中🍺" * 50
    for limit in range(1, 200):
        cut = fit_utf8(no_spaces, limit)
        size = len(cut.encode("utf-8"))
        assert no_spaces.startswith(cut) and limit - 4 < size <= limit  # at most one char lost


def test_fit_utf8_prefers_sentences_then_words() -> None:
    text = "The inn opened. Its ale costs 2.50 pennies a pint and more."
    assert fit_utf8(text, len(text)) == text
    assert fit_utf8(text, 40) == "The inn opened."
    # "2." cut out of "2.50" is not the end of a sentence.
    assert fit_utf8(text, 32) == "The inn opened."
    assert fit_utf8('He said "Go." Then left.', 20) == 'He said "Go."'
    assert fit_utf8("no sentence end in these words", 18) == "no sentence end"


def test_stable_id_is_deterministic_positive_and_distinct() -> None:
    ids = [stable_id("tavern", i) for i in range(2000)]
    assert ids == [stable_id("tavern", i) for i in range(2000)]
    assert len(set(ids)) == len(ids)
    assert all(0 < i < 2**63 for i in ids)
    assert stable_id("prancing-pony") != stable_id("green-dragon")
    assert stable_id("a", "b") != stable_id("b", "a")


def test_stable_id_is_the_same_in_another_process() -> None:
    """Unlike hash(), which changes with PYTHONHASHSEED: re-runs upsert the same rows."""
    code = "from helpers.schema import stable_id; print(stable_id('prancing-pony', 3))"
    env = dict(os.environ, PYTHONHASHSEED="12345", PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO,
        check=True, timeout=60,
    )  # fmt: skip
    assert int(out.stdout.strip()) == stable_id("prancing-pony", 3)


@pytest.mark.parametrize("ef", [1, 10, 64, 256])
def test_search_params(ef: int) -> None:
    assert search_params(ef) == {"metric_type": "IP", "params": {"ef": ef}}


@pytest.mark.parametrize("ef", [0, -1, -64])
def test_search_params_rejects_ef_below_one(ef: int) -> None:
    with pytest.raises(ValueError, match="ef"):
        search_params(ef)


def test_schema_matches_the_article() -> None:
    schema = tavern_schema()
    assert [f.name for f in schema.fields] == [
        "id", "name", "description", "location", "famous_visitor", VECTOR_FIELD,
    ]  # fmt: skip
    assert COLLECTION == "taverns10"
    limits = {f.name: f.params.get("max_length") for f in schema.fields}
    assert limits["description"] == DESCRIPTION_MAX == 3000
    assert limits["name"] == limits["location"] == limits["famous_visitor"] == SHORT_MAX == 255
    assert not schema.auto_id
