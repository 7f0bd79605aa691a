"""How cost grows with the store: 1k, 10k and 100k descriptions in milvus-lite and the C++ server.

Why this exists: the course stores a few hundred taverns, and the feedback loop only adds to the
store. Before somebody points the loop at a real catalogue they want to know what grows and how
fast: insert time, index build time, load time, memory and query latency.

What is measured, per backend and store size (HNSW, IP, M=48 as in the article,
efConstruction=200; queries at ef=64, top 10):

* ``insert_s``: ``client.insert`` in batches of 1,000 rows; ``flush_s``; ``index_s``:
  ``create_index`` until the server reports every row indexed (the C++ server builds
  asynchronously); ``build_total_s`` = insert + flush + index; ``load_s``: ``load_collection``;
* memory: the resident set (RSS, with children) of the process that holds the data, sampled
  every 0.2 s. For ``lite`` that is the Python process itself (milvus-lite runs in it), so each
  (backend, size) runs in a fresh subprocess and numbers do not pile up; for ``milvus`` it is
  the server process. ``rss_delta_mb`` = RSS after load and queries minus RSS before the first
  insert (vectors already in memory, server started, and a 200-row collection already taken
  through the whole cycle and dropped, so lazy imports and first-use buffers are in the
  baseline); ``peak_delta_mb`` the same for the peak;
* ``p50_ms``/``p99_ms``: single-query latency through ``MilvusClient``, one query per call,
  after a warm-up; ``recall_at_10`` against exact numpy search over the same store;
  ``hnsw_in_use``: answers change between ef=10 and ef=256 (brute force ignores ef; the C++
  server searches segments under 1,024 rows brute force).

The stores: real all-MiniLM-L6-v2 embeddings of docstring paragraphs (the corpus of
:mod:`bench.search_quality`, 20,000 texts) in a seeded random order, extended beyond that with
synthetic variants: a real embedding plus Gaussian noise (sigma 0.02 per dimension, so a
variant's cosine to its source is about 0.93), re-normalised, seed 42. So 1k and 10k are all
real text; 100k is 20k real + 80k variants. Queries are the 200 held-out real texts.

Run: ``python -m bench.scaling [--quick] [--out DIR] [--backends lite milvus]``.
Quick mode: sizes 500 and 2,000, lite only.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import search_quality as sq
from bench.common import TreeSampler, markdown_table, tree_rss
from helpers.settings import REPO_ROOT, Settings, get_settings

NAME = "scaling"
K = 10
EF = 64
M = 48
EF_CONSTRUCTION = 200
NOISE_SIGMA = 0.02
PRIME_ROWS = 200
BACKENDS = ("lite", "milvus")

FULL = {"sizes": (1_000, 10_000, 100_000), "backends": BACKENDS, "base": sq.FULL, "warmup": 10}
QUICK = {"sizes": (500, 2_000), "backends": ("lite",), "base": sq.QUICK, "warmup": 3}
WORKER_TIMEOUT_S = 3600.0


def log(message: str) -> None:
    print(f"[{NAME}] {message}", flush=True)


# ── the stores ───────────────────────────────────────────────────────────────────────


def make_store(
    base: np.ndarray, n: int, seed: int, sigma: float = NOISE_SIGMA, chunk: int = 20_000
) -> tuple[np.ndarray, float]:
    """``(n, d)`` unit vectors: ``base`` rows in a seeded random order, then noisy variants.

    Row ``i >= len(base)`` is base row ``order[i % len(base)]`` plus ``N(0, sigma^2)`` noise per
    dimension, re-normalised. Returns the store and the mean cosine between a variant and its
    source (1.0 when no variant was needed), which says how close the variants are.
    """
    rng = np.random.default_rng(seed)
    n_base, dim = base.shape
    order = rng.permutation(n_base)
    store = np.empty((n, dim), dtype=np.float32)
    real = min(n, n_base)
    store[:real] = base[order[:real]]
    cosines = []
    for lo in range(n_base, n, chunk):
        hi = min(lo + chunk, n)
        src = base[order[np.arange(lo, hi) % n_base]]
        noisy = src + rng.normal(0.0, sigma, size=src.shape).astype(np.float32)
        noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
        store[lo:hi] = noisy
        cosines.append(np.einsum("ij,ij->i", noisy, src))
    mean_cos = float(np.concatenate(cosines).mean()) if cosines else 1.0
    return store, mean_cos


# ── memory ───────────────────────────────────────────────────────────────────────────


# ── one (backend, size) in a fresh process ───────────────────────────────────────────


def worker(backend: str, size: int, work_dir: Path, warmup: int) -> dict[str, Any]:
    """Measure one store size on one backend; runs in its own process (see :func:`run`)."""
    import faiss  # noqa: F401  (imported before the baseline: milvus-lite's index library)
    import milvus_lite  # noqa: F401
    import pymilvus  # noqa: F401

    from helpers import hnsw_eval
    from helpers.milvus_server import leftover_servers

    store = np.ascontiguousarray(np.load(work_dir / "store.npy", mmap_mode="r")[:size])
    queries = np.load(work_dir / "queries.npy")
    exact_ids = hnsw_eval.exact_topk(store, queries, K)
    data_dir = work_dir / f"{backend}-{size}"
    settings = get_settings(run_dir=data_dir)
    handle = sq.fresh_store(settings, backend)
    row: dict[str, Any] = {"backend": backend, "n": size}
    try:
        client = handle.client
        row["server_version"] = client.get_server_version()
        pid = os.getpid() if backend == "lite" else int(handle.pid)  # type: ignore[arg-type]
        # One tiny collection through the whole cycle first: the libraries and buffers every
        # collection needs (lazy imports, Parquet writer, index code) are then in the baseline,
        # and the delta is what the stored rows cost.
        hnsw_eval.build_hnsw_collection(
            client, "prime", store[:PRIME_ROWS], M, EF_CONSTRUCTION, progress=False
        )
        hnsw_eval.search_one(client, "prime", queries[0], K, EF)
        client.drop_collection("prime")
        gc.collect()
        time.sleep(1.0)  # let a fresh server settle before the baseline
        base_rss = tree_rss(pid)
        with TreeSampler(pid) as sampler:
            timings = hnsw_eval.build_hnsw_collection(
                client, "scaling", store, M, EF_CONSTRUCTION, progress=False
            )
            loaded_rss = tree_rss(pid)
            threads = sq.faiss_threads(1) if backend == "lite" else contextlib.nullcontext()
            with threads:
                search = hnsw_eval.measure_search(
                    client, "scaling", queries, exact_ids, [EF], K, warmup=warmup, progress=False
                )
            gc.collect()
            after_rss = tree_rss(pid)
        # Brute force ignores ef: same answers at ef=k and ef=256 (helpers.hnsw_eval).
        row["hnsw_in_use"] = hnsw_eval.results_depend_on_ef(
            client, "scaling", queries[: sq.EF_CHECK_QUERIES], K, high_ef=sq.EF_CHECK_HIGH
        )
        info = timings["index"]
        mib = 1024 * 1024
        row.update(
            {
                "insert_s": timings["insert_s"],
                "flush_s": timings["flush_s"],
                "index_s": timings["build_s"],
                "build_total_s": timings["insert_s"] + timings["flush_s"] + timings["build_s"],
                "load_s": timings["load_s"],
                "rss_base_mb": base_rss / mib,
                "rss_loaded_mb": loaded_rss / mib,
                "rss_delta_mb": (after_rss - base_rss) / mib,
                "peak_delta_mb": sampler.peak.peak_tree_rss_mb - base_rss / mib,
                "raw_vectors_mb": store.nbytes / mib,
                "recall_at_10": float(search["recall_at_10"].iloc[0]),
                "p50_ms": float(search["p50_ms"].iloc[0]),
                "p99_ms": float(search["p99_ms"].iloc[0]),
                "mean_ms": float(search["mean_ms"].iloc[0]),
                "index_M": info.get("M"),
                "indexed_rows": info.get("indexed_rows"),
                "memory_of": "this Python process" if backend == "lite" else "server process",
            }
        )
        client.drop_collection("scaling")
    finally:
        handle.stop()
    row["leftover_servers"] = len(leftover_servers())
    shutil.rmtree(data_dir, ignore_errors=True)
    return row


def _run_worker(backend: str, size: int, work_dir: Path, warmup: int) -> dict[str, Any]:
    """``python -m bench.scaling --worker ...`` in a fresh process; its last stdout line is JSON."""
    cmd = [sys.executable, "-m", "bench.scaling", "--worker", backend, str(size), str(work_dir)]
    cmd += ["--warmup", str(warmup)]
    start = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True, timeout=WORKER_TIMEOUT_S
    )  # stderr passes through: the worker's warnings and errors stay visible
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"scaling worker {backend} n={size} failed (exit {proc.returncode}):\n{proc.stdout}"
        )
    row = json.loads(lines[-1])
    row["worker_wall_s"] = time.perf_counter() - start
    return row


def run(
    quick: bool = False,
    out_dir: Path | None = None,
    *,
    settings: Settings | None = None,
    backends: Sequence[str] | None = None,
    sizes: Sequence[int] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Run every (backend, size) in its own subprocess; write ``<out_dir>/scaling.csv``."""
    settings = settings or get_settings()
    out_dir = Path(out_dir) if out_dir is not None else sq.default_out_dir(settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    grid = QUICK if quick else FULL
    chosen = tuple(backends) if backends else grid["backends"]
    if set(chosen) - set(BACKENDS):
        raise ValueError(f"backends must be among {BACKENDS}, got {chosen}")
    sizes = tuple(sorted(sizes or grid["sizes"]))
    wall = time.perf_counter()

    base, queries, info = sq.real_vectors(
        grid["base"]["n_corpus"], grid["base"]["n_queries"], settings, progress=progress
    )
    store, mean_cos = make_store(base, max(sizes), settings.seed)
    log(
        f"store of {max(sizes):,}: {min(len(base), max(sizes)):,} real embeddings "
        f"({', '.join(info['sources'])} docstrings), "
        f"{max(0, max(sizes) - len(base)):,} noisy variants (sigma {NOISE_SIGMA}, mean cosine to "
        f"source {mean_cos:.3f}); {len(queries)} held-out real queries"
    )
    work_dir = out_dir / "scaling-work"
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    rows = []
    try:
        np.save(work_dir / "store.npy", store)
        np.save(work_dir / "queries.npy", queries)
        del store
        for backend in chosen:
            for size in sizes:
                log(f"{backend} n={size:,}: running in a fresh process ...")
                row = _run_worker(backend, size, work_dir, grid["warmup"])
                log(
                    f"{backend} n={size:,}: insert {row['insert_s']:.1f} s, index "
                    f"{row['index_s']:.1f} s, load {row['load_s']:.2f} s, +{row['rss_delta_mb']:.0f}"
                    f" MB, p50 {row['p50_ms']:.2f} ms, recall@10 {row['recall_at_10']:.3f}"
                )
                rows.append(row)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)

    df = pd.DataFrame(rows)
    df["real_rows"] = df["n"].clip(upper=len(base))
    df["variant_rows"] = df["n"] - df["real_rows"]
    df["noise_sigma"] = NOISE_SIGMA
    df["M"], df["ef"], df["k"], df["ef_construction"] = M, EF, K, EF_CONSTRUCTION
    df["n_queries"] = len(queries)
    df["mode"] = "quick" if quick else "full"
    path = out_dir / f"{NAME}.csv"
    df.to_csv(path, index=False)
    leftovers = int(df["leftover_servers"].sum())
    log(f"wrote {path} ({len(df)} rows) in {time.perf_counter() - wall:.0f} s; "
        f"leftover servers: {leftovers}")  # fmt: skip
    if leftovers:
        raise RuntimeError("a scaling worker left a server running")
    print(markdown(df), flush=True)
    return df


def markdown(df: pd.DataFrame) -> str:
    """One row per (backend, size): times, memory, p50 and recall."""
    table = df[
        [
            "backend", "n", "insert_s", "index_s", "build_total_s", "load_s", "rss_delta_mb",
            "peak_delta_mb", "p50_ms", "p99_ms", "recall_at_10", "hnsw_in_use",
        ]
    ].copy()  # fmt: skip
    table.columns = [
        "backend", "stored", "insert s", "index s", "insert+flush+index s", "load s",
        "memory +MB", "peak +MB", "p50 ms", "p99 ms", "recall@10", "HNSW in use",
    ]  # fmt: skip
    table["stored"] = table["stored"].map(lambda n: f"{int(n):,}")
    fmt = {
        "insert s": ".2f", "index s": ".2f", "insert+flush+index s": ".2f", "load s": ".2f",
        "memory +MB": ".0f", "peak +MB": ".0f", "p50 ms": ".2f", "p99 ms": ".2f",
        "recall@10": ".3f",
    }  # fmt: skip
    nq = int(df["n_queries"].iloc[0]) if "n_queries" in df else 0
    note = (
        f"HNSW M={M}, efConstruction={EF_CONSTRUCTION}, IP; {nq} single queries at ef={EF}, "
        f"top {K}. Memory: RSS growth of the process holding the data (lite: the Python process, "
        "milvus: the C++ server) from before the first insert to after load and queries. Stores "
        "up to 20,000 rows are real docstring embeddings; beyond that, real embeddings plus "
        f"Gaussian noise (sigma {NOISE_SIGMA}), re-normalised."
    )
    return note + "\n\n" + markdown_table(table, floatfmt=fmt)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scaling", description=__doc__.split("\n", 1)[0]
    )
    parser.add_argument("--quick", action="store_true", help="sizes 500 and 2,000, lite only")
    parser.add_argument("--out", type=Path, default=None, help="output folder")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=None)
    parser.add_argument("--sizes", nargs="+", type=int, default=None)
    parser.add_argument(
        "--worker", nargs=3, metavar=("BACKEND", "SIZE", "WORK_DIR"), help=argparse.SUPPRESS
    )
    parser.add_argument("--warmup", type=int, default=10, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        backend, size, work_dir = args.worker
        row = worker(backend, int(size), Path(work_dir), args.warmup)
        print(json.dumps(row, default=float), flush=True)
        return 0
    run(quick=args.quick, out_dir=args.out, backends=args.backends, sizes=args.sizes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
