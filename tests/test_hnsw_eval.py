"""Tests for the docstring corpus and the HNSW recall/latency measurement (notebook 03).

Fast (well under a minute): the HNSW test runs on real milvus-lite, on unit-normalised random
vectors (embedding thousands of docstrings would take about a minute on 2 cores); one small
test embeds a handful of real docstrings to check the embedding cache.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from helpers import corpus as corpus_mod
from helpers import hnsw_eval

# ── exact search and recall ──────────────────────────────────────────────────────────


def test_exact_topk_hand_made_case():
    corpus = np.array(
        [
            [1.0, 0.0],  # 0
            [0.0, 1.0],  # 1
            [0.6, 0.8],  # 2
            [-1.0, 0.0],  # 3
            [0.8, 0.6],  # 4
        ],
        dtype=np.float32,
    )
    queries = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    ids, scores = hnsw_eval.exact_topk(corpus, queries, 3, return_scores=True)
    assert ids.tolist() == [[0, 4, 2], [1, 2, 4]]
    np.testing.assert_allclose(scores, [[1.0, 0.8, 0.6], [1.0, 0.8, 0.6]], rtol=1e-6)
    # k = n sorts everything; ties are broken by the smaller id
    tied = hnsw_eval.exact_topk(np.ones((4, 2), dtype=np.float32), queries[:1], 4)
    assert tied.tolist() == [[0, 1, 2, 3]]
    with pytest.raises(ValueError):
        hnsw_eval.exact_topk(corpus, queries, 6)


def test_exact_topk_matches_full_sort_in_chunks():
    rng = np.random.default_rng(0)
    corpus = rng.normal(size=(500, 16)).astype(np.float32)
    queries = rng.normal(size=(37, 16)).astype(np.float32)
    expected = np.argsort(-(queries @ corpus.T), axis=1, kind="stable")[:, :10]
    got = hnsw_eval.exact_topk(corpus, queries, 10, chunk=8)
    assert np.array_equal(got, expected)


def test_ann_recall_at_k_known_case():
    exact = [[1, 2, 3, 4], [5, 6, 7, 8]]
    approx = [[4, 3, 9, 1], [5, 6, 7, 8]]  # order does not matter: 3/4 and 4/4
    assert hnsw_eval.ann_recall_at_k(approx, exact, 4) == pytest.approx(7 / 8)
    assert hnsw_eval.ann_recall_at_k([[1, 2], [5]], exact, 2) == pytest.approx(
        3 / 4
    )  # short rows miss
    assert hnsw_eval.ann_recall_at_k(np.array(exact), np.array(exact), 4) == 1.0
    with pytest.raises(ValueError):
        hnsw_eval.ann_recall_at_k(approx[:1], exact, 4)


# ── corpus ───────────────────────────────────────────────────────────────────────────


def test_docstring_extraction_and_filter():
    source = '''
"""Module summary that is long enough to keep.

Second paragraph is dropped."""

def f():
    """Short one."""

class C:
    """A class whose first paragraph
    spans two lines.

    Parameters
    ----------
    """
    def g(self):
        """
        >>> g()  # a doctest is not prose at all
        """
'''
    paragraphs = corpus_mod.docstrings_in_source(source)
    assert "Module summary that is long enough to keep." in paragraphs
    assert "A class whose first paragraph spans two lines." in paragraphs
    kept = [p for p in paragraphs if corpus_mod.keep_text(p)]
    assert kept == [
        "Module summary that is long enough to keep.",
        "A class whose first paragraph spans two lines.",
    ]
    assert corpus_mod.docstrings_in_source("def broken(:\n") == []
    assert not corpus_mod.keep_text("Parameters ---------- x : int the value")
    assert not corpus_mod.keep_text(" ".join(["word"] * 201))
    assert corpus_mod.keep_text(" ".join(["word"] * 200))


def test_docstring_corpus_is_deterministic_and_filtered():
    a = corpus_mod.docstring_corpus(500, seed=7)
    b = corpus_mod.docstring_corpus(500, seed=7)
    c = corpus_mod.docstring_corpus(500, seed=8)
    assert a == b
    assert a != c
    assert len(a) == 500
    assert len({t.lower() for t in a}) == 500  # distinct, even ignoring case
    for text in a:
        assert corpus_mod.MIN_WORDS <= len(text.split()) <= corpus_mod.MAX_WORDS
        assert "\n" not in text and "  " not in text
    sources = corpus_mod.corpus_sources(500)
    assert next(iter(sources)) == "numpy"


def test_split_queries_holds_out_other_rows():
    vectors = np.arange(100, dtype=np.float32).reshape(50, 2)
    stored, queries = corpus_mod.split_queries(vectors, 10, seed=3)
    assert stored.shape == (40, 2) and queries.shape == (10, 2)
    assert not {tuple(r) for r in stored} & {tuple(r) for r in queries}
    again_stored, again_queries = corpus_mod.split_queries(vectors, 10, seed=3)
    assert np.array_equal(queries, again_queries) and np.array_equal(stored, again_stored)
    with pytest.raises(ValueError):
        corpus_mod.split_queries(vectors, 50, seed=3)


def test_embed_corpus_unit_rows_and_cache(tmp_path):
    texts = corpus_mod.docstring_corpus(500, seed=1)[:12]
    vectors = corpus_mod.embed_corpus(texts, tmp_path, show_progress=False)
    assert vectors.shape == (12, corpus_mod.EMBED_DIM) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cached = list(tmp_path.glob("docstrings-*.npy"))
    assert len(cached) == 1
    # the second call reads the cache: a model that must not be used proves it
    again = corpus_mod.embed_corpus(texts, tmp_path, model=object(), show_progress=False)
    assert np.array_equal(vectors, again)


# ── HNSW on milvus-lite ──────────────────────────────────────────────────────────────


def test_index_params_use_the_nested_form():
    from pymilvus import MilvusClient

    index_params = hnsw_eval.hnsw_index_params(MilvusClient, M=48, ef_construction=100)
    configs = index_params[0].get_index_configs()
    # milvus-lite reads build parameters only from the JSON "params" key; flat M= is ignored
    assert configs["params"] == {"M": 48, "efConstruction": 100}
    assert "M" not in configs
    assert configs["index_type"] == "HNSW" and configs["metric_type"] == "IP"


@pytest.fixture(scope="module")
def hnsw_table(tmp_path_factory):
    from pymilvus import MilvusClient

    rng = np.random.default_rng(42)
    vectors = rng.normal(size=(3100, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    stored, queries = corpus_mod.split_queries(vectors, 100, seed=42)
    folder = tmp_path_factory.mktemp("hnsw")  # a .db path's parent must exist
    client = MilvusClient(str(folder / "hnsw.db"))
    try:
        df = hnsw_eval.measure_hnsw(
            client, "hnsw_test", stored, queries, ef_values=(8, 256), M=48, progress=False
        )
        index_gone = not client.has_collection("hnsw_test")
    finally:
        client.close()
    return df, index_gone


def test_measure_hnsw_columns_and_index(hnsw_table):
    df, index_gone = hnsw_table
    for column in hnsw_eval.RESULT_COLUMNS:
        assert column in df.columns
    assert df["ef"].tolist() == [8, 256]
    assert (df["M"] == 48).all()
    # the server reports the M we asked for, not its default 16 (the flat-params trap)
    assert (df["index_M"] == 48).all()
    assert (df["p50_ms"] > 0).all() and (df["p99_ms"] >= df["p50_ms"]).all()
    assert index_gone


def test_recall_grows_with_ef_and_real_hnsw_is_used(hnsw_table):
    df, _ = hnsw_table
    recall = dict(zip(df["ef"], df["recall_at_10"], strict=True))
    assert recall[256] >= recall[8]
    # 3,000 random 384-d unit vectors are hard for a graph: ef=8 misses many neighbours
    # (measured: recall 0.43 at ef=8 and 1.0 at ef=256 with M=48)
    assert recall[8] < 0.9
    assert hnsw_eval.hnsw_in_use(df)
    hnsw_eval.assert_hnsw_in_use(df)


def test_hnsw_in_use_rejects_brute_force_table(hnsw_table):
    df, _ = hnsw_table
    brute = df.copy()
    brute["recall_at_10"] = 1.0
    assert not hnsw_eval.hnsw_in_use(brute)
    with pytest.raises(AssertionError, match="brute force"):
        hnsw_eval.assert_hnsw_in_use(brute)


def test_plot_returns_figure(hnsw_table):
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    df, _ = hnsw_table
    two_m = df.assign(M=16, recall_at_10=df["recall_at_10"] * 0.5 + 0.5)
    import pandas as pd

    fig = hnsw_eval.plot_recall_latency(pd.concat([df, two_m]), exact_ms=1.5)
    assert isinstance(fig, Figure)
    recall_ax, latency_ax = fig.axes[:2]
    assert "ef" in recall_ax.get_xlabel() and "ms" in latency_ax.get_ylabel()
    assert len(recall_ax.get_lines()) == 3  # two M lines + the exact-search line
    plt.close(fig)
