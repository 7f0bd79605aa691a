"""Smoke test of bench/hybrid_search.py at a tiny size: every mode and backend is measured."""

from __future__ import annotations

import pytest

from helpers.settings import get_settings

pytestmark = pytest.mark.slow


def test_tiny_hybrid_bench_measures_every_mode_on_both_lite_backends(tmp_path) -> None:
    from bench import hybrid_search

    settings = get_settings(run_dir=tmp_path / "runs")
    df = hybrid_search.run(
        quick=True, out_dir=tmp_path, settings=settings, n_corpus=200, n_queries=10
    )
    assert (tmp_path / "hybrid_search.csv").exists()
    search = df[df["kind"] == "search"]
    assert set(search["backend"]) == {"lite", "lite-server"}
    assert set(search["item"]) == {
        "dense", "bm25", "hybrid (RRF k=60)", "hybrid (weighted 0.5/0.5)",
    }  # fmt: skip
    assert (search["p95_ms"] >= search["p50_ms"]).all() and (search["p50_ms"] > 0).all()
    build = df[df["kind"] == "build"]
    assert len(build) == 4 and (build["index_s"] > 0).all()
    assert set(df["server_version"]) == {"milvus_lite-3.2.2"}
    text = hybrid_search.markdown(df)
    assert "| bm25 |" in text and "200 docstring paragraphs" in text
