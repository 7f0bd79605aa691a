"""Retrieval metrics on hand-computed cases, and search errors on a real milvus-lite."""

from __future__ import annotations

import pandas as pd
import pytest

from helpers import metrics, schema
from helpers.data import load_taverns
from helpers.embeddings import encode_documents
from helpers.milvus_server import start_milvus
from helpers.search import SearchError, hits_frame, rank_taverns, search_many, search_taverns


def test_metrics_on_a_known_ranking() -> None:
    ranked = ["a", "b", "c", "d"]
    assert metrics.first_relevant_rank(ranked, {"c"}) == 3
    assert metrics.first_relevant_rank(ranked, {"z"}) is None
    assert metrics.recall_at_k(ranked, {"b", "d"}, 1) == 0.0
    assert metrics.recall_at_k(ranked, {"b", "d"}, 2) == 0.5
    assert metrics.recall_at_k(ranked, {"b", "d"}, 4) == 1.0
    assert metrics.hit_at_k(ranked, {"b", "d"}, 1) == 0.0
    assert metrics.hit_at_k(ranked, {"b", "d"}, 2) == 1.0
    assert metrics.reciprocal_rank(ranked, {"c", "d"}) == pytest.approx(1 / 3)
    assert metrics.reciprocal_rank(ranked, {"z"}) == 0.0
    with pytest.raises(ValueError):
        metrics.recall_at_k(ranked, set(), 1)


def test_two_texts_of_one_tavern_count_once_at_their_best_rank() -> None:
    assert metrics.dedupe_ranking(["a", "a", "b", "a", "c"]) == ["a", "b", "c"]
    queries = pd.DataFrame(
        {"query_id": ["q1", "q2"], "relevant": [("b",), ("a", "c")], "difficulty": ["easy", "hard"]}
    )
    scores = metrics.score_rankings({"q1": ["a", "a", "b"], "q2": ["c", "c", "a"]}, queries)
    assert scores.loc[0, "rr"] == 0.5  # b is second once a's duplicate is dropped
    assert scores.loc[1, "recall@1"] == 0.5 and scores.loc[1, "recall@3"] == 1.0
    summary = metrics.summarize_scores(scores)
    assert summary["MRR"] == pytest.approx(0.75)


def test_restrict_queries_and_generated_share() -> None:
    queries = pd.DataFrame(
        {"query_id": ["q1", "q2"], "relevant": [("a", "b"), ("c",)], "difficulty": ["e", "e"]}
    )
    cut = metrics.restrict_queries(queries, ["a"])
    assert list(cut["query_id"]) == ["q1"] and cut.loc[0, "relevant"] == ("a",)
    assert metrics.generated_share([["generated", "human"], ["human", "human"]], k=2) == 0.25


@pytest.fixture(scope="module")
def small_collection(tmp_path_factory):
    from helpers.settings import get_settings

    settings = get_settings(run_dir=tmp_path_factory.mktemp("search"))
    taverns = load_taverns(settings=settings).head(6)
    rows = schema.tavern_rows(
        taverns, encode_documents(taverns["description"].tolist()), source="human"
    )
    with start_milvus(settings, backend="lite") as milvus:
        schema.fill_collection(milvus.client, "taverns_small", rows)
        yield milvus.client, taverns


def test_search_finds_the_inn_a_query_describes(small_collection) -> None:
    client, _ = small_collection
    hits = search_taverns(
        client,
        "The inn at Stock whose ale Pippin rates above any other in the Eastfarthing",
        collection="taverns_small",
    )
    assert hits[0]["name"] == "The Golden Perch"
    assert (
        hits[0]["similarity"] >= hits[1]["similarity"] >= hits[2]["similarity"]
    )  # IP: higher is closer
    table = hits_frame(hits)
    assert list(table["rank"]) == [1, 2, 3] and "similarity" in table


def test_rank_taverns_maps_hits_to_tavern_ids(small_collection) -> None:
    client, taverns = small_collection
    queries = pd.DataFrame({"query_id": ["q"], "query": ["Sam Gamgee argues with Ted Sandyman"]})
    ranking = rank_taverns(
        client,
        queries,
        dict(zip(taverns["name"], taverns["tavern_id"], strict=True)),
        collection="taverns_small",
        limit=4,
    )
    assert "green-dragon" in ranking["q"][:2] and len(ranking["q"]) == 4


@pytest.mark.parametrize("query", ["", "   ", "\n\t"])
def test_empty_queries_are_refused(small_collection, query) -> None:
    client, _ = small_collection
    with pytest.raises(SearchError, match="empty"):
        search_taverns(client, query, collection="taverns_small")


def test_missing_and_unloaded_collections_get_clear_errors(small_collection) -> None:
    client, _ = small_collection
    with pytest.raises(SearchError, match="does not exist"):
        search_many(client, ["an inn"], collection="no_such_collection")
    client.release_collection("taverns_small")
    try:
        with pytest.raises(SearchError, match=r"not loaded.*load_collection"):
            search_many(client, ["an inn"], collection="taverns_small")
    finally:
        client.load_collection("taverns_small")
    assert search_taverns(client, "an inn", collection="taverns_small")
