"""Smoke tests of ``bench.search_quality`` and ``bench.scaling`` in quick mode.

Speed is measured by the benchmark scripts, never asserted here: these tests check that the
quick runs produce tables whose numbers mean what the columns say (exact search has recall 1.0,
HNSW recall is a fraction that grows with ``ef``, the FAISS ratio is positive, every size has a
row, the CSV is written). Quick mode uses only in-process backends (numpy, FAISS, milvus-lite);
no C++ server is started. Both runs share one run dir, so the 1,050 docstrings are embedded once
(about 20 s with the model load); the whole module takes under a minute on 2 cores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import scaling, search_quality
from helpers.settings import Settings, get_settings

RECALL_NOISE = 0.02  # recall may dip this much as ef grows (ties, graph randomness)


@pytest.fixture(scope="module")
def bench_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """One run dir for the module: the embedding cache is shared by both quick runs."""
    return get_settings(run_dir=tmp_path_factory.mktemp("bench") / "run")


@pytest.fixture(scope="module")
def quality(bench_settings: Settings) -> tuple[pd.DataFrame, Path]:
    out = bench_settings.run_dir / "bench" / "test"
    df = search_quality.run(quick=True, out_dir=out, settings=bench_settings, progress=False)
    return df, out


@pytest.fixture(scope="module")
def scaled(bench_settings: Settings, quality) -> tuple[pd.DataFrame, Path]:
    out = bench_settings.run_dir / "bench" / "test"
    df = scaling.run(quick=True, out_dir=out, settings=bench_settings, progress=False)
    return df, out


# ── search_quality ───────────────────────────────────────────────────────────────────


def test_quick_search_quality_writes_its_csv(quality) -> None:
    df, out = quality
    path = out / "search_quality.csv"
    assert path.exists()
    back = pd.read_csv(path)
    assert len(back) == len(df)
    assert set(back["backend"]) == {"numpy", "faiss", "lite"}
    assert (back["n_corpus"] == 1_000).all()
    assert (back["n_queries"] == 50).all()
    # Everything a benchmark writes stays in the run dir, never in the repository.
    assert not (Path(search_quality.__file__).parent / "search_quality.csv").exists()


def test_exact_numpy_search_has_recall_one(quality) -> None:
    df, _ = quality
    exact = df[df.backend == "numpy"]
    assert len(exact) == 1
    assert exact["recall_at_10"].iloc[0] == 1.0
    assert exact["p50_ms"].iloc[0] > 0


@pytest.mark.parametrize("backend", ["faiss", "lite"])
def test_hnsw_recall_is_a_fraction_that_grows_with_ef(quality, backend: str) -> None:
    df, _ = quality
    rows = df[df.backend == backend].sort_values("ef")
    assert list(rows["ef"]) == sorted(search_quality.QUICK["ef_values"])
    recall = rows["recall_at_10"].to_numpy(dtype=float)
    assert ((recall > 0) & (recall <= 1)).all(), recall
    assert (np.diff(recall) >= -RECALL_NOISE).all(), f"recall falls as ef grows: {recall}"
    # HNSW, not brute force: a narrow beam misses some neighbours (brute force gives 1.0).
    assert recall[0] < 1.0, (
        f"{backend}: recall 1.0 at ef={rows['ef'].iloc[0]} looks like brute force"
    )
    assert rows["hnsw_in_use"].all()
    assert (rows["build_s"] > 0).all()


def test_lite_and_faiss_direct_agree_on_recall(quality) -> None:
    """milvus-lite wraps the same FAISS IndexHNSWFlat with the same M and efConstruction."""
    df, _ = quality
    by = df.dropna(subset=["ef"]).pivot_table(index="ef", columns="backend", values="recall_at_10")
    assert (abs(by["lite"] - by["faiss"]) <= 0.05).all(), by


def test_latency_ratio_vs_faiss_is_positive(quality) -> None:
    df, _ = quality
    ratios = df.loc[df.backend.isin(["faiss", "lite"]), "latency_ratio_vs_faiss"]
    assert ratios.notna().all()
    assert (ratios > 0).all()
    assert (df.loc[df.backend == "faiss", "latency_ratio_vs_faiss"] == 1.0).all()
    assert df.loc[df.backend == "numpy", "latency_ratio_vs_faiss"].isna().all()


def test_search_quality_markdown_has_every_row(quality) -> None:
    df, _ = quality
    text = search_quality.markdown(df)
    assert "| backend | M | ef | recall@10 |" in text
    assert text.count("| lite | 16 |") == len(search_quality.QUICK["ef_values"]) + 1  # + build row
    assert "<NA>" not in text and "nan" not in text


def test_add_ratios_divides_by_faiss_at_the_same_m_and_ef() -> None:
    df = pd.DataFrame(
        {
            "backend": ["faiss", "faiss", "lite", "lite", "numpy"],
            "M": [16, 16, 16, 16, pd.NA],
            "ef": [10, 32, 10, 32, pd.NA],
            "p50_ms": [0.1, 0.2, 2.0, 3.0, 0.5],
        }
    )
    got = search_quality.add_ratios(df)["latency_ratio_vs_faiss"].tolist()
    assert got[:4] == pytest.approx([1.0, 1.0, 20.0, 15.0])
    assert np.isnan(got[4])


# ── scaling ──────────────────────────────────────────────────────────────────────────


def test_quick_scaling_has_a_row_per_size(scaled) -> None:
    df, out = scaled
    assert (out / "scaling.csv").exists()
    assert not (out / "scaling-work").exists(), "the temporary store must be deleted"
    assert sorted(df["n"]) == sorted(scaling.QUICK["sizes"])
    assert set(df["backend"]) == {"lite"}
    for col in ("insert_s", "index_s", "load_s", "build_total_s"):
        assert (df[col] >= 0).all(), col
    assert (df["build_total_s"] >= df["index_s"]).all()
    assert (df["p50_ms"] > 0).all()
    assert ((df["recall_at_10"] > 0) & (df["recall_at_10"] <= 1)).all()
    assert np.isfinite(df["rss_delta_mb"]).all()
    assert (df["peak_delta_mb"] >= df["rss_delta_mb"] - 1).all()  # peak within sampling noise
    assert (df["indexed_rows"] == df["n"]).all()
    assert (df["index_M"] == scaling.M).all()
    assert (df["leftover_servers"] == 0).all()
    assert "| lite | 2,000 |" in scaling.markdown(df)


def test_make_store_keeps_real_rows_and_adds_close_unit_variants() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(50, 384)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    store, mean_cos = scaling.make_store(base, 180, seed=7)
    assert store.shape == (180, 384) and store.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(store, axis=1), 1.0, atol=1e-5)
    # The first 50 rows are the real ones, in a seeded order; then variants, none a copy.
    assert {tuple(r) for r in store[:50]} == {tuple(r) for r in base}
    assert len({tuple(r) for r in store}) == 180
    assert 0.85 < mean_cos < 0.99
    again, _ = scaling.make_store(base, 180, seed=7)
    assert np.array_equal(store, again)
    small, cos = scaling.make_store(base, 20, seed=7)
    assert cos == 1.0 and np.array_equal(small, store[:20])
