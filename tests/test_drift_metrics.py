"""Drift, dispersion, lexical diversity and retrieval-by-iteration metrics (helpers.metrics).

Hand-computed cases first (identical and orthogonal vectors, identical texts, a known ranking,
a hand-made ledger), then a tiny real loop run whose numbers must agree with what the loop
itself wrote to metrics.csv and with direct searches of its store.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pytest

from helpers import metrics
from helpers.feedback_loop import POLICIES, LoopRun, ViewRule, view_rule
from helpers.ledger import RunLedger, encode_vector
from helpers.settings import REPO_ROOT, get_settings

if TYPE_CHECKING:  # the plugin module is loaded by pytest (below), not imported here
    from tests.fixtures_loop import TinyLoop

pytest_plugins = ["tests.fixtures_loop"]

E = np.eye(4)  # e1..e4: orthonormal


# ---------------------------------------------------------------------------------------------
# Embedding geometry


def test_cosine_distance_of_identical_orthogonal_and_opposite_vectors() -> None:
    d = metrics.cosine_distances([E[0], E[0], E[0], 3 * E[1]], [E[0], E[1], -E[0], E[1]])
    assert d.tolist() == [0.0, 1.0, 2.0, 0.0]  # length does not matter: 3*e2 vs e2 is 0
    v = np.array([0.3, -0.2, 0.9, 0.1])
    assert metrics.cosine_distances([v], [v * 7.5])[0] == 0.0  # exactly 0, no 1e-16 left over
    assert metrics.cosine_distances([[1.0, 1.0]], [[1.0, 0.0]])[0] == pytest.approx(
        1 - 1 / math.sqrt(2)
    )
    with pytest.raises(ValueError, match="same shape"):
        metrics.cosine_distances([E[0]], [E[0], E[1]])
    with pytest.raises(ValueError, match="all zeros"):
        metrics.cosine_distances([np.zeros(4)], [E[0]])


def test_centroid_shift() -> None:
    assert metrics.centroid_shift([E[0], E[1]], [E[1], E[0]]) == pytest.approx(0.0)
    assert metrics.centroid_shift([E[0]], [E[1]]) == pytest.approx(1.0)
    # {e1, e2} and the single vector e1 + e2 have centroids in the same direction
    assert metrics.centroid_shift([E[0], E[1]], [E[0] + E[1]]) == pytest.approx(0.0, abs=1e-12)
    # centroids (0, .5, .5, 0) and (.5, 0, .5, 0): cos = 0.25 / 0.5 = 0.5
    assert metrics.centroid_shift([E[1], E[2]], [E[0], E[2]]) == pytest.approx(0.5)
    assert math.isnan(metrics.centroid_shift([E[0], -E[0]], [E[1]]))  # no direction left
    assert math.isnan(metrics.centroid_shift(np.zeros((0, 4)), [E[1]]))


def test_dispersion_and_spread() -> None:
    assert metrics.embedding_dispersion([E[0], E[1], E[2]]) == pytest.approx(1.0)
    assert metrics.embedding_dispersion([E[0], 2 * E[0]]) == pytest.approx(0.0)
    # pairs (e1, e1) 0, (e1, e2) 1, (e1, e2) 1 -> mean 2/3
    assert metrics.embedding_dispersion([E[0], E[0], E[1]]) == pytest.approx(2 / 3)
    assert math.isnan(metrics.embedding_dispersion([E[0]]))
    s = metrics.spread([0, 1, 2, 3, float("nan")], "d")
    assert s == pytest.approx(
        {
            "d_mean": 1.5,
            "d_std": math.sqrt(1.25),
            "d_q25": 0.75,
            "d_median": 1.5,
            "d_q75": 2.25,
            "d_n": 4,
        }
    )
    assert math.isnan(metrics.spread([], "d")["d_mean"]) and metrics.spread([], "d")["d_n"] == 0


# ---------------------------------------------------------------------------------------------
# Lexical diversity, copying, Self-BLEU


def test_distinct_n_pooled_over_texts() -> None:
    # unigrams a b a | b c -> 3 distinct of 5; bigrams (a b) (b a) | (b c) -> 3 of 3
    assert metrics.corpus_distinct_n(["A b, a!", "b c"], 1) == pytest.approx(3 / 5)
    assert metrics.corpus_distinct_n(["A b, a!", "b c"], 2) == 1.0  # no bigram spans two texts
    same = ["The inn is warm.", "The inn is warm."]
    assert metrics.corpus_distinct_n(same, 1) == 0.5 and metrics.corpus_distinct_n(same, 2) == 0.5
    assert metrics.mean_distinct_n(same, 2) == 1.0  # each text alone repeats nothing
    assert metrics.corpus_distinct_n([], 1) == 0.0
    with pytest.raises(ValueError):
        metrics.corpus_distinct_n(same, 0)


def test_copy_rate_is_the_mean_copied_share() -> None:
    context = "the old inn stands by the river road in bree"
    copied = "the old inn stands by the river and six more words follow here"  # 13 words
    fresh = "nothing here comes from the context at all really"
    assert metrics.copy_rate([copied], [[context]]) == pytest.approx(7 / 13)  # "...the river"
    assert metrics.copy_rate([copied, fresh], [[context], [context]]) == pytest.approx(7 / 26)
    assert metrics.copy_rate([copied], [[]]) == 0.0
    assert math.isnan(metrics.copy_rate([], []))
    with pytest.raises(ValueError, match="one each"):
        metrics.copy_rate([copied], [])


def test_self_bleu() -> None:
    same = "the prancing pony is an old inn in bree"
    assert metrics.self_bleu([same, same, same]) == pytest.approx(1.0)
    disjoint = metrics.self_bleu(["alpha beta gamma delta", "one two three four"])
    assert 0 < disjoint < 0.05  # only the 0.1 smoothing of empty matches is left
    # half the bigrams shared: in between
    partly = metrics.self_bleu(["the old inn of bree", "the old inn of stock"])
    assert disjoint < partly < 1.0
    assert math.isnan(metrics.self_bleu([same])) and math.isnan(metrics.self_bleu([same, ""]))


def naive_bleu(hyp: list[str], refs: list[list[str]], max_n: int = 4) -> float:
    """Textbook multi-reference BLEU (NLTK method1 smoothing), merging reference counts."""
    from collections import Counter

    log_p = 0.0
    for n in range(1, max_n + 1):
        grams = Counter(tuple(hyp[i : i + n]) for i in range(len(hyp) - n + 1))
        most = Counter()
        for ref in refs:
            most |= Counter(tuple(ref[i : i + n]) for i in range(len(ref) - n + 1))
        clipped = sum(min(c, most[g]) for g, c in grams.items())
        log_p += math.log((clipped or 0.1) / max(1, sum(grams.values()))) / max_n
    ref_len = min((len(r) for r in refs), key=lambda r: (abs(r - len(hyp)), r))
    return (1.0 if len(hyp) > ref_len else math.exp(1 - ref_len / len(hyp))) * math.exp(log_p)


def test_self_bleu_equals_the_textbook_computation() -> None:
    import random

    rng = random.Random(3)
    for _ in range(20):
        texts = [" ".join(rng.choices("abcdef", k=rng.randint(1, 15))) for _ in range(6)]
        toks = [t.split() for t in texts]
        expected = np.mean([naive_bleu(h, toks[:i] + toks[i + 1 :]) for i, h in enumerate(toks)])
        assert metrics.self_bleu(texts) == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# A known ranking


def _hit(tavern: str, source: str, similarity: float) -> dict[str, Any]:
    return {"tavern_id": tavern, "source": source, "similarity": similarity}


RANKING = [
    _hit("a", "generated", 0.9),
    _hit("b", "human", 0.8),
    _hit("b", "generated", 0.7),
    _hit("a", "human", 0.6),
    _hit("c", "generated", 0.5),
]


def test_score_hits_on_a_known_ranking() -> None:
    row = metrics.score_hits(RANKING, {"b"}, 3, human_stored={"a", "b"},
                             corpus_generated_share=0.6)  # fmt: skip
    assert row["top1_score"] == 0.9 and row["top1_source"] == "generated"
    assert row["topk_mean_score"] == pytest.approx(0.8)
    assert row["generated_share"] == pytest.approx(2 / 3)
    assert row["over_representation"] == pytest.approx((2 / 3) / 0.6)
    # taverns: a, b, c -> b is second
    assert row["first_relevant_rank"] == 2 and row["rr"] == 0.5
    assert row["recall@3"] == 1.0 and row["hit@3"] == 1.0
    assert row["human_rank"] == 2 and row["human_ref_in_topk"] == 1.0
    # c's human text is not in the store: in-top-k undefined, not "no"
    row = metrics.score_hits(RANKING, {"c"}, 2, human_stored={"a", "b"})
    assert math.isnan(row["human_ref_in_topk"]) and math.isnan(row["human_rank"])
    assert row["first_relevant_rank"] == 3 and row["recall@2"] == 0.0
    assert math.isnan(row["over_representation"])  # no corpus share given
    # a's human text is in the store but ranked 4th: not in the top 3
    row = metrics.score_hits(RANKING, {"a"}, 3, human_stored={"a"})
    assert row["human_ref_in_topk"] == 0.0 and row["human_rank"] == 4
    empty = metrics.score_hits([], {"a"}, 3)
    assert math.isnan(empty["top1_score"]) and math.isnan(empty["first_relevant_rank"])
    with pytest.raises(ValueError):
        metrics.score_hits(RANKING, set(), 3)


def test_searchable_counts_follow_the_policy_views() -> None:
    records = [{"iteration": it, "stored": True} for it in (0, 0, 1, 1)]
    records.append({"iteration": 1, "stored": False})
    expected = {
        "accumulate": [(2, 0), (2, 2), (2, 4)],
        "gated": [(2, 0), (2, 2), (2, 4)],
        "replace": [(2, 0), (0, 2), (0, 2)],
        "replace-keep-human": [(2, 0), (2, 2), (2, 2)],
        "no-feedback": [(2, 0), (2, 0), (2, 0)],
    }
    assert set(expected) == set(POLICIES)
    for policy, counts in expected.items():
        assert [
            metrics.searchable_counts(records, policy, 2, upto) for upto in (-1, 0, 1)
        ] == counts
        assert view_rule(policy, -1) == ViewRule(True, "none")


# ---------------------------------------------------------------------------------------------
# drift_table on a hand-made ledger


def _record(iteration: int, tavern: str, vector: Any, stored: bool = True,
            text: str = "a warm inn by the road", copy: float = 0.0) -> dict[str, Any]:  # fmt: skip
    return {
        "iteration": iteration,
        "tavern_id": tavern,
        "stored": stored,
        "vector_b64": encode_vector(np.asarray(vector, dtype=np.float32)),
        "text": text,
        "scores": {"copy_share": copy, "score": 0.5},
    }


def hand_made_run(folder: Path) -> LoopRun:
    """Two taverns: A moves from e1 to e2; B's iteration-1 version is rejected (gated), so it
    keeps e3. References: A e1, B e3. Iteration 2 is half done (crash) and must be ignored."""
    ledger = RunLedger(folder)
    params = {"tavern_ids": ["prancing-pony", "green-dragon"], "policy": "gated",
              "human_taverns": ["prancing-pony", "green-dragon"],
              "data_file": str(REPO_ROOT / "data" / "taverns.csv"), "collection": "none"}  # fmt: skip
    ledger.write_params(params)
    for rec in [
        _record(0, "prancing-pony", E[0], copy=0.2),
        _record(0, "green-dragon", E[2], copy=0.4),
        _record(1, "prancing-pony", E[1], copy=0.6),
        _record(1, "green-dragon", E[3], stored=False, copy=1.0),
        _record(2, "prancing-pony", E[3]),
    ]:
        ledger.append(rec)
    return LoopRun("hand", folder, params, get_settings())


def test_drift_table_on_a_hand_made_ledger(tmp_path: Path) -> None:
    run = hand_made_run(tmp_path)
    refs = {"prancing-pony": E[0], "green-dragon": E[2]}
    per_tavern = metrics.drift_per_tavern(run, reference_vectors=refs)
    assert per_tavern[["iteration", "tavern_id", "version_iteration"]].values.tolist() == [
        [0, "prancing-pony", 0], [0, "green-dragon", 0],
        [1, "prancing-pony", 1], [1, "green-dragon", 0],  # rejected: keeps its iteration-0 text
    ]  # fmt: skip
    assert per_tavern["drift_from_start"].tolist() == [0.0, 0.0, 1.0, 0.0]
    assert per_tavern["drift_from_reference"].tolist() == [0.0, 0.0, 1.0, 0.0]

    table = metrics.drift_table(run, reference_vectors=refs)
    assert table["iteration"].tolist() == [0, 1]  # the half-done iteration 2 is left out
    first, second = table.iloc[0], table.iloc[1]
    assert first["drift_start_mean"] == 0 and first["drift_reference_mean"] == 0
    assert second["drift_start_mean"] == 0.5 and second["drift_start_median"] == 0.5
    assert second["drift_start_std"] == 0.5 and second["drift_start_n"] == 2
    assert first["centroid_shift_start"] == pytest.approx(0.0, abs=1e-12)
    assert second["centroid_shift_start"] == pytest.approx(0.5)  # {e2, e3} vs {e1, e3}
    assert second["centroid_shift_reference"] == pytest.approx(0.5)
    assert first["dispersion"] == pytest.approx(1.0) and first["reference_dispersion"] == 1.0
    assert second["copy_rate"] == pytest.approx((0.6 + 0.4) / 2)  # current versions only
    # identical texts: Self-BLEU 1, pooled distinct-1 = 5 distinct words / 10
    assert second["self_bleu"] == pytest.approx(1.0)
    assert second["corpus_distinct_1"] == pytest.approx(0.5)
    assert second["text_distinct_2"] == 1.0
    assert 0 < first["reference_self_bleu"] < 0.5  # two different human descriptions
    assert "self_bleu" not in metrics.drift_table(run, reference_vectors=refs,
                                                  with_self_bleu=False)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# A tiny real run: the metrics agree with the loop's own numbers and with direct searches


def test_drift_table_agrees_with_the_loops_metrics(tiny_loop: TinyLoop) -> None:
    drift, loop_metrics = tiny_loop.drift, tiny_loop.run.metrics()
    assert drift["iteration"].tolist() == [0, 1] == loop_metrics["iteration"].tolist()
    assert (drift["taverns"] == 3).all()
    assert drift.loc[0, "drift_start_mean"] == 0 and drift.loc[0, "centroid_shift_start"] == 0
    assert drift["drift_reference_mean"].between(0, 1).all()
    # accumulate stores every text, so "current versions" are the iteration's texts: the
    # loop's reference_similarity, dispersion and copy_share describe the same set
    sim = loop_metrics["reference_similarity"]
    assert (1 - drift["drift_reference_mean"]).to_numpy() == pytest.approx(sim, abs=1e-5)
    assert drift["dispersion"].to_numpy() == pytest.approx(loop_metrics["dispersion"], abs=1e-5)
    assert drift["copy_rate"].to_numpy() == pytest.approx(loop_metrics["copy_share"], abs=1e-5)
    for column in ("corpus_distinct_1", "corpus_distinct_2", "self_bleu", "copy_rate"):
        assert drift[column].between(0, 1).all(), column


def test_retrieval_by_iteration_on_a_real_store(tiny_loop: TinyLoop) -> None:
    from helpers.data import load_queries
    from helpers.embeddings import encode_queries

    table, run = tiny_loop.retrieval, tiny_loop.run
    k = int(table["k"].iloc[0])
    queries = metrics.restrict_queries(
        load_queries(settings=tiny_loop.settings), run.params["tavern_ids"]
    )
    assert len(queries) >= 3
    assert sorted(table["iteration"].unique()) == [-1, 0, 1]
    assert len(table) == 3 * len(queries)
    by_it = table.groupby("iteration")
    # human_fraction 0.5 of 3 taverns keeps 2 references; accumulate adds 3 texts an iteration
    assert by_it["searchable_rows"].first().tolist() == [2, 5, 8]
    assert by_it["corpus_generated_share"].first().tolist() == pytest.approx([0, 3 / 5, 6 / 8])
    before = table[table["iteration"] == -1]
    assert (before["generated_share"] == 0).all() and before["over_representation"].isna().all()
    assert (before["top1_source"] == "human").all()
    # a query whose relevant taverns all lost their human reference: "in top k" is undefined
    stored = set(run.params["human_taverns"])
    relevant = dict(zip(queries["query_id"], queries["relevant"], strict=True))
    undefined = np.array([not stored.intersection(relevant[q]) for q in table["query_id"]])
    assert table.loc[undefined, "human_ref_in_topk"].isna().all()
    assert table.loc[~undefined, "human_ref_in_topk"].isin([0.0, 1.0]).all()

    # before the loop the store holds the 2 stored references: top-1 = the best cosine
    from helpers.metrics import reference_embeddings

    refs = reference_embeddings(run)
    ref_matrix = np.stack([refs[t] for t in run.params["human_taverns"]])
    q_vectors = encode_queries(queries["query"].tolist())
    best = (q_vectors @ ref_matrix.T).max(axis=1)
    assert before["top1_score"].to_numpy() == pytest.approx(best, abs=1e-5)

    with tiny_loop.open_store() as milvus:
        # tavern-level numbers agree with score_rankings on the same (full) rankings
        hit_lists = run.search_many(queries["query"].tolist(), after_iteration=1, limit=8,
                                    milvus=milvus)  # fmt: skip
        rankings = {
            qid: [h["tavern_id"] for h in hits]
            for qid, hits in zip(queries["query_id"], hit_lists, strict=True)
        }
        expected = metrics.score_rankings(rankings, queries, ks=(k,))
        after = table[table["iteration"] == 1].reset_index(drop=True)
        for column in (f"recall@{k}", f"hit@{k}", "rr"):
            assert after[column].tolist() == expected[column].tolist(), column
        # the top hit is the one the single-query search returns
        first = run.search(queries["query"].iloc[0], after_iteration=0, limit=1, milvus=milvus)[0]
        row = table[(table["iteration"] == 0) & (table["query_id"] == queries["query_id"].iloc[0])]
        assert row["top1_score"].iloc[0] == pytest.approx(first["similarity"], abs=1e-5)
        assert row["top1_source"].iloc[0] == first["source"]
        assert len(hit_lists[0]) == 8  # the whole store is ranked: nothing missing below k

    summary = metrics.retrieval_summary(tiny_loop.retrieval)
    assert summary["iteration"].tolist() == [-1, 0, 1]
    assert summary["queries"].tolist() == [len(queries)] * 3
    assert summary["MRR"].between(0, 1).all()
    ratio = summary["generated_share"] / summary["corpus_generated_share"]
    assert summary["over_representation"].iloc[1:].to_numpy() == pytest.approx(ratio.iloc[1:])


def test_retrieval_by_iteration_refuses_unknown_iterations(tiny_loop: TinyLoop) -> None:
    with pytest.raises(ValueError, match="not finished"):
        metrics.retrieval_by_iteration(tiny_loop.run, iterations=[5])
    no_match = pd.DataFrame(
        {"query_id": ["x"], "query": ["an inn"], "relevant": [("ivy-bush",)], "difficulty": ["e"]}
    )
    with pytest.raises(ValueError, match="No query"):
        metrics.retrieval_by_iteration(tiny_loop.run, no_match)


def test_run_embeddings_marks_references_and_versions(tiny_loop: TinyLoop) -> None:
    points, vectors = tiny_loop.points, tiny_loop.vectors
    assert len(points) == len(vectors) == 3 + 6 and vectors.shape[1] == 384
    humans = points[points["source"] == "human"]
    assert humans["iteration"].eq(-1).all() and len(humans) == 3
    assert humans["in_store"].sum() == 2  # human_fraction 0.5 of 3
    assert sorted(points.loc[points["source"] == "generated", "iteration"]) == [0, 0, 0, 1, 1, 1]
    assert np.linalg.norm(vectors, axis=1) == pytest.approx(1.0, abs=1e-5)
