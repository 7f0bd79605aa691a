"""The article's own ORM code (docs/article-errata.md #4, #7, #8) run against milvus-lite.

These are the measurements behind the errata and docs/measured-facts.md: what the article's
``Collection(..., index_params=...)`` and nested ``create_index`` dict really do, and when rows
are searched by brute force. Small random vectors and a deliberately poor HNSW graph (M=4,
efConstruction=8) make HNSW's answers differ from exact search, so brute force can be told
apart from the graph: brute force returns the same top 10 at every ``ef``.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
from pymilvus import (
    Collection,
    CollectionSchema,
    DataType,
    FieldSchema,
    MilvusClient,
    connections,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

DIM, N, N_QUERIES, K = 32, 3000, 30, 10
POOR_GRAPH = {"M": 4, "efConstruction": 8}


def _vectors(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, DIM)).astype("float32")
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _same_at_every_ef(client: MilvusClient, name: str, queries: np.ndarray) -> float:
    """Share of the top 10 found both at ef=10 and ef=512: 1.0 is what brute force gives."""

    def top(ef: int) -> list[set[int]]:
        res = client.search(
            name, data=queries.tolist(), anns_field="v", limit=K,
            search_params={"metric_type": "IP", "params": {"ef": ef}},
        )  # fmt: skip
        return [{int(h["id"]) for h in hits} for hits in res]

    return float(np.mean([len(a & b) / K for a, b in zip(top(10), top(512), strict=True)]))


@pytest.fixture
def orm(tmp_path):
    uri = str(tmp_path / "article.db")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        connections.connect(alias="default", uri=uri)
    client = MilvusClient(uri=uri)
    yield client
    client.close()
    connections.disconnect("default")


def _article_collection(name: str, index_params: dict) -> Collection:
    """The article's code, field list shortened to the id and the vector."""
    fields = [
        FieldSchema(name="id", dtype=DataType.INT64, is_primary=True, auto_id=True),
        FieldSchema(name="name", dtype=DataType.VARCHAR, max_length=255),
        FieldSchema(name="v", dtype=DataType.FLOAT_VECTOR, dim=DIM),
    ]
    schema = CollectionSchema(fields=fields, description="LOTR Taverns")
    return Collection(name=name, schema=schema, index_params=index_params)


def test_collection_ignores_index_params_and_the_nested_create_index_dict_works(orm) -> None:
    index_params = {"metric_type": "IP", "index_type": "HNSW",
                    "params": {"M": 48, "efConstruction": 200}}  # fmt: skip
    taverns10 = _article_collection("taverns10", index_params)
    # errata #4: the argument is accepted and ignored, no index exists after the call
    assert taverns10.indexes == []
    assert orm.list_indexes("taverns10") == []
    # errata #7: the article's dict is nested, and the ORM's create_index honours it
    taverns10.create_index("v", index_params)
    info = orm.describe_index("taverns10", index_name=orm.list_indexes("taverns10")[0])
    assert info["index_type"] == "HNSW" and info["params"] == {"M": 48, "efConstruction": 200}


def test_milvus_client_flat_hnsw_params_are_ignored_by_lite(orm) -> None:
    """The trap the kit avoids: ``add_index(params={"M": ..})`` flat, as many examples write it."""
    schema = MilvusClient.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("v", DataType.FLOAT_VECTOR, dim=DIM)
    for name, params in (("flat", {"M": 48, "efConstruction": 200}),
                         ("nested", {"params": {"M": 48, "efConstruction": 200}})):  # fmt: skip
        orm.create_collection(name, schema=schema)
        index = orm.prepare_index_params()
        index.add_index(field_name="v", index_type="HNSW", metric_type="IP", params=params)
        orm.create_index(name, index)
    assert "params" not in orm.describe_index("flat", index_name="v")
    assert orm.describe_index("nested", index_name="v")["params"] == {
        "M": 48, "efConstruction": 200
    }  # fmt: skip


def test_the_article_order_searches_unflushed_rows_by_brute_force(orm) -> None:
    """errata #8: index first, insert, load, never flush (the article's order): every search is
    brute force. After a flush milvus-lite builds the index in the background and switches to
    HNSW within seconds, so the same search gives other results depending on timing."""
    spec = {"metric_type": "IP", "index_type": "HNSW", "params": POOR_GRAPH}
    taverns10 = _article_collection("order", spec)
    taverns10.create_index("v", spec)
    taverns10.insert([[f"t{i}" for i in range(N)], _vectors(N, 1).tolist()])
    orm.load_collection("order")
    queries = _vectors(N_QUERIES, 2)
    assert _same_at_every_ef(orm, "order", queries) == 1.0  # brute force
    taverns10.flush()
    deadline = time.monotonic() + 60
    while _same_at_every_ef(orm, "order", queries) == 1.0:
        assert time.monotonic() < deadline, "no switch to HNSW within 60 s of the flush"
        time.sleep(0.5)


def test_the_kit_order_serves_hnsw_at_once(orm) -> None:
    """insert, flush, create_index, load (notebook 03): HNSW answers the first search."""
    schema = MilvusClient.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("v", DataType.FLOAT_VECTOR, dim=DIM)
    orm.create_collection("kit", schema=schema)
    orm.insert("kit", [{"id": i, "v": v} for i, v in enumerate(_vectors(N, 1).tolist())])
    orm.flush("kit")
    index = orm.prepare_index_params()
    index.add_index(field_name="v", index_type="HNSW", metric_type="IP",
                    params={"params": POOR_GRAPH})  # fmt: skip
    orm.create_index("kit", index)
    orm.load_collection("kit")
    assert _same_at_every_ef(orm, "kit", _vectors(N_QUERIES, 2)) < 1.0
