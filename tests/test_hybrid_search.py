"""Full-text (BM25) and hybrid search on a real milvus-lite, and which servers have them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pymilvus import MilvusClient

from helpers import fulltext, schema
from helpers.data import load_taverns
from helpers.embeddings import encode_documents, encode_queries
from helpers.milvus_server import start_milvus
from helpers.search import SearchError, search, search_batch
from helpers.settings import get_settings

FT = "taverns_fulltext"
DENSE_ONLY = "taverns_dense_only"
FROGMORTON = "An inn in Frogmorton on the road home to Hobbiton"


@pytest.fixture(scope="module")
def lite(tmp_path_factory) -> Iterator[MilvusClient]:
    """All 47 reference taverns, once with the BM25 fields (automatic on lite), once without."""
    settings = get_settings(run_dir=tmp_path_factory.mktemp("hybrid"))
    taverns = load_taverns(settings=settings)
    rows = schema.tavern_rows(
        taverns, encode_documents(taverns["description"].tolist()), source="human"
    )
    with start_milvus(settings, backend="lite") as milvus:
        client = milvus.client
        schema.fill_collection(client, FT, rows)
        schema.fill_collection(client, DENSE_ONLY, rows[:5], full_text=False)
        yield client


def names(hits: list[dict]) -> list[str]:
    return [h["name"] for h in hits]


def rank_of(name: str, hits: list[dict]) -> int | None:
    return names(hits).index(name) + 1 if name in names(hits) else None


def test_collection_has_the_analyzed_text_the_bm25_function_and_its_index(lite) -> None:
    desc = lite.describe_collection(FT)
    fields = {f["name"]: f for f in desc["fields"]}
    assert fields[fulltext.TEXT_FIELD]["params"]["enable_analyzer"] in (True, "true")
    assert fields[fulltext.SPARSE_FIELD].get("is_function_output")
    (function,) = desc["functions"]
    assert function["input_field_names"] == [fulltext.TEXT_FIELD]
    assert function["output_field_names"] == [fulltext.SPARSE_FIELD]
    assert fulltext.SPARSE_FIELD in lite.list_indexes(FT)
    info = lite.describe_index(FT, index_name=fulltext.SPARSE_FIELD)
    assert info["index_type"] == "SPARSE_INVERTED_INDEX" and info["metric_type"] == "BM25"
    row = lite.query(FT, filter='name == "The Floating Log"', output_fields=["*"])[0]
    assert row[fulltext.TEXT_FIELD] == f"The Floating Log\n{row['description']}"
    assert fulltext.TEXT_FIELD not in {
        f["name"] for f in lite.describe_collection(DENSE_ONLY)["fields"]
    }


def test_bm25_finds_the_named_place_that_dense_search_ranks_lower(lite) -> None:
    dense = search(lite, FT, FROGMORTON, mode="dense", k=10)
    bm25 = search(lite, FT, FROGMORTON, mode="bm25", k=10)
    hybrid = search(lite, FT, FROGMORTON, mode="hybrid", k=10)
    assert rank_of("The Floating Log", bm25) == 1
    dense_rank = rank_of("The Floating Log", dense) or 11
    assert dense_rank > 1
    assert (rank_of("The Floating Log", hybrid) or 11) < dense_rank
    # scores read "higher is better" in every mode (milvus-lite reports BM25 as negative)
    for hits in (dense, bm25, hybrid):
        scores = [h["score"] for h in hits]
        assert scores == sorted(scores, reverse=True) and scores[0] > 0


def test_weighted_fusion_with_one_weight_zero_is_the_other_mode(lite) -> None:
    query = "The inn at Stock with the best beer in the Eastfarthing"
    dense = names(search(lite, FT, query, mode="dense", k=3))
    bm25 = names(search(lite, FT, query, mode="bm25", k=3))
    assert dense != bm25  # otherwise the test below could not tell the weights apart
    only_dense = search(lite, FT, query, mode="hybrid", k=3, ranker="weighted", weights=(1, 0))
    only_bm25 = search(lite, FT, query, mode="hybrid", k=3, ranker="weighted", weights=(0, 1))
    assert names(only_dense) == dense
    assert names(only_bm25) == bm25


def test_rrf_scores_follow_the_constant_k(lite) -> None:
    for rrf_k in (1, 60):
        hits = search(lite, FT, FROGMORTON, mode="hybrid", k=5, rrf_k=rrf_k, candidates=20)
        for hit in hits:  # one or two lists each give 1 / (k + rank), rank <= 20
            assert 1 / (rrf_k + 20) - 1e-6 <= hit["score"] <= 2 / (rrf_k + 1) + 1e-6
    sharp = search(lite, FT, FROGMORTON, mode="hybrid", k=1, rrf_k=1)[0]["score"]
    flat = search(lite, FT, FROGMORTON, mode="hybrid", k=1, rrf_k=60)[0]["score"]
    assert sharp > flat


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_filter_applies_in_every_mode(lite, mode: str) -> None:
    hits = search(lite, FT, "a cosy inn with ale", mode=mode, k=5, filter='location like "%Bree%"')
    assert hits and all("Bree" in h["location"] for h in hits)


def test_batch_vector_queries_and_given_vectors(lite) -> None:
    queries = [FROGMORTON, "An elven hall with music and wine"]
    vectors = encode_queries(queries)
    by_text = search_batch(lite, FT, queries, mode="hybrid", k=4)
    by_given = search_batch(lite, FT, queries, mode="hybrid", k=4, query_vectors=vectors)
    assert [names(h) for h in by_text] == [names(h) for h in by_given]
    assert names(search(lite, FT, vectors[0], mode="dense", k=4)) == names(
        search(lite, FT, queries[0], mode="dense", k=4)
    )


def test_clear_errors(lite) -> None:
    cases = [
        (dict(query=FROGMORTON, mode="sparse"), "use one of: dense, bm25, hybrid"),
        (dict(query=FROGMORTON, mode="hybrid", ranker="max"), "use one of: rrf, weighted"),
        (dict(query=FROGMORTON, mode="hybrid", rrf_k=0), "rrf_k must be a positive"),
        (dict(query=FROGMORTON, mode="hybrid", ranker="weighted", weights=(0, 0)), "not both 0"),
        (dict(query=encode_queries(["x"])[0], mode="bm25"), "needs the query text"),
        (dict(query="  ", mode="bm25"), "Query 0 is empty"),
        (dict(query=[0.1, 0.2], mode="dense"), "384-dimensional"),
        (dict(query=FROGMORTON, mode="dense", k=0), "k must be a positive"),
    ]
    for kwargs, message in cases:
        with pytest.raises(SearchError, match=message):
            search(lite, FT, **kwargs)
    with pytest.raises(SearchError, match="created without it") as err:
        search(lite, DENSE_ONLY, FROGMORTON, mode="bm25")
    assert "full_text=True" in str(err.value)
    with pytest.raises(SearchError, match="does not exist"):
        search(lite, "no_such_taverns", FROGMORTON, mode="hybrid")
    assert names(search(lite, DENSE_ONLY, FROGMORTON, mode="dense", k=2))  # dense still works


@pytest.mark.parametrize(
    ("version", "full_text", "hybrid"),
    [
        ("milvus_lite-3.2.2", True, True),
        ("v2.3.5-lite", False, False),  # the C++ default_server of the `milvus` package
        ("v2.4.9", False, True),
        ("v2.5.4", True, True),
        ("2.6.0", True, True),
        ("milvus_lite-2.4.10", False, False),
        ("unknown build", False, False),
    ],
)
def test_capabilities_by_server_version(version: str, full_text: bool, hybrid: bool) -> None:
    caps = fulltext.search_capabilities(version)
    assert (caps.full_text, caps.hybrid) == (full_text, hybrid)
    assert bool(caps.reason) is not full_text


def test_the_cpp_server_message_says_which_version_is_needed() -> None:
    reason = fulltext.search_capabilities("v2.3.5-lite").reason
    assert "needs Milvus 2.5 or later" in reason and "2.3.5" in reason
    assert "dense-only schema" in reason and "lite" in reason


def test_asking_for_full_text_on_an_existing_dense_collection_is_an_error(lite) -> None:
    with pytest.raises(schema.SchemaError, match="exists with fields"):
        schema.create_tavern_collection(lite, DENSE_ONLY, full_text=True)
    assert schema.create_tavern_collection(lite, DENSE_ONLY) is False  # automatic keeps it
    assert schema.create_tavern_collection(lite, FT) is False
