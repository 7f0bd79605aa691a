"""Mode comparison metrics on hand-computed cases: nDCG, bootstrap intervals, paired verdicts."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from helpers import retrieval_eval as rev


def test_ndcg_on_known_rankings() -> None:
    assert rev.ndcg_at_k(["a", "b", "c"], {"a"}, 10) == 1.0
    assert rev.ndcg_at_k(["x", "a"], {"a"}, 10) == pytest.approx(1 / math.log2(3))
    assert rev.ndcg_at_k(["x", "y"], {"a"}, 10) == 0.0
    assert rev.ndcg_at_k(["x", "a"], {"a"}, 1) == 0.0  # outside the cut
    # two relevant, found at ranks 1 and 3: (1 + 1/2) / (1 + 1/log2(3))
    expected = (1 + 1 / 2) / (1 + 1 / math.log2(3))
    assert rev.ndcg_at_k(["a", "x", "b"], {"a", "b"}, 10) == pytest.approx(expected)
    # graded: the better answer first is ideal, the other order is not
    grades = {"a": 2.0, "b": 1.0}
    assert rev.ndcg_at_k(["a", "b"], {"a", "b"}, 10, grades) == pytest.approx(1.0)
    assert rev.ndcg_at_k(["b", "a"], {"a", "b"}, 10, grades) < 1.0
    with pytest.raises(ValueError):
        rev.ndcg_at_k(["a"], set(), 10)


def test_bootstrap_interval_is_seeded_and_brackets_the_mean() -> None:
    values = [0, 1, 1, 0, 1, 1, 1, 0, 1, 1]
    mean, low, high = rev.bootstrap_ci(values, n_boot=500, seed=3)
    assert mean == pytest.approx(0.7) and low < mean < high and low >= 0 and high <= 1
    assert rev.bootstrap_ci(values, n_boot=500, seed=3) == (mean, low, high)
    assert rev.bootstrap_ci([0.5] * 5) == (0.5, 0.5, 0.5)
    assert all(math.isnan(x) for x in rev.bootstrap_ci([]))


def _queries() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "query_id": [f"q{i}" for i in range(8)],
            "query": [f"query {i}" for i in range(8)],
            "relevant": [("a",)] * 6 + [("a", "b")] * 2,
            "difficulty": ["easy"] * 4 + ["hard"] * 4,
        }
    )


def test_score_summarize_compare_and_wins() -> None:
    queries = _queries()
    good = {q: ["a", "b", "x"] for q in queries["query_id"]}
    bad = {q: ["x", "y", "a"] for q in queries["query_id"]}
    bad["q0"] = ["a", "x"]  # one tie
    per_query = rev.score_modes({"good": good, "bad": bad}, queries)
    assert len(per_query) == 16
    row = per_query[(per_query["mode"] == "bad") & (per_query["query_id"] == "q1")].iloc[0]
    assert row["success@1"] == 0 and row["success@3"] == 1 and row["MRR"] == pytest.approx(1 / 3)
    assert row["first_rank"] == 3
    two = per_query[(per_query["mode"] == "good") & (per_query["query_id"] == "q7")].iloc[0]
    assert two["recall@10"] == 1.0 and two["nDCG@10"] == pytest.approx(1.0)

    summary = rev.summarize(per_query, by="difficulty", n_boot=200)
    assert set(summary["group"]) == {"all", "easy", "hard"}
    grid = rev.interval_table(summary)
    assert grid.loc[("all", "good"), "success@1"] == "1.00 [1.00, 1.00]"

    cmp = rev.compare_modes(per_query, "good", "bad", n_boot=200)
    overall = cmp[(cmp["group"] == "all") & (cmp["metric"] == "MRR")].iloc[0]
    assert overall["verdict"] == "higher" and overall["difference"] > 0
    text = rev.sentence(overall, "good", "bad")
    assert "higher" in text and "95 % CI" in text and "n=8" in text
    flat = rev.compare_modes(per_query, "good", "good", by=None, n_boot=200)
    assert set(flat["verdict"]) == {"no clear difference"}

    table = rev.wins(per_query, "good", "bad", queries)
    assert len(table) == 7 and set(table["winner"]) == {"good"}  # q0 tied, left out
    assert list(table.columns[:3]) == ["query_id", "query", "difficulty"]


def test_verdict_words() -> None:
    assert rev.verdict(0.1, 0.3) == "higher"
    assert rev.verdict(-0.3, -0.1) == "lower"
    assert rev.verdict(-0.1, 0.2) == "no clear difference"


def test_proper_names_shared() -> None:
    texts = ["The Floating Log is a good inn at Frogmorton, east of Hobbiton."]
    query = "An inn in Frogmorton on the road home to Hobbiton"
    assert rev.proper_names_shared(query, texts) == ["Frogmorton", "Hobbiton"]
    assert rev.proper_names_shared("Where the Firstborn linger", texts) == []
    assert rev.proper_names_shared("Frogmorton alone", texts) == []  # first word not counted
