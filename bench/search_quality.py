"""Recall@10 and single-query latency against ``ef`` and ``M``, on every backend, same vectors.

Why this exists: notebook 03 shows recall and latency for one backend on 10,000 texts. The
questions people then ask are "how much does Milvus add on top of the HNSW library it wraps?"
and "does the backend change recall?". To answer them every backend here searches the *same*
real-text embeddings with the *same* held-out queries:

* ``numpy``       exact inner product (recall 1.0 by definition; the reference for cost);
* ``faiss``       ``faiss.IndexHNSWFlat`` called directly (the library milvus-lite wraps);
* ``lite``        milvus-lite in this Python process (client calls do not leave the process);
* ``lite-server`` milvus-lite as a child process (every call crosses gRPC on loopback);
* ``milvus``      the article's C++ ``default_server`` (gRPC; knowhere's HNSW, not FAISS's).

Every Milvus collection is built in the order that makes HNSW real (create -> insert -> flush ->
create_index until every row is indexed -> load; :mod:`helpers.hnsw_eval`), with IP,
efConstruction=200. ``hnsw_in_use`` is recorded per backend and M; it needs two things, because
brute force is not always recall 1.0 (its ranking of near-ties may differ from numpy's): recall
below 1.0 at the smallest ``ef`` (:func:`helpers.hnsw_eval.hnsw_in_use`) *and* answers that
change with ``ef`` (:func:`helpers.hnsw_eval.results_depend_on_ef`; brute force ignores ``ef``).
The C++ server, for one, searches segments under 1,024 rows brute force.

Latency is one query per call, timed around the call with :func:`time.perf_counter` after a
warm-up, p50 and p99 over all held-out queries. FAISS direct and numpy run with one thread
(``faiss.omp_set_num_threads(1)``, BLAS limited to 1 thread with threadpoolctl) so they measure
the cost of one query, not of the machine; the same FAISS setting applies to milvus-lite in
this process (it uses the same FAISS library). Servers (lite-server, milvus) use their own
defaults. ``latency_ratio_vs_faiss`` is a row's p50 divided by FAISS-direct's p50 at the same
(M, ef): the price of the database layer (client, serialisation, gRPC, segment merging).

Run: ``python -m bench.search_quality [--quick] [--out DIR] [--backends lite faiss ...]``.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.common import markdown_table
from helpers import hnsw_eval
from helpers.hnsw_eval import _latency_summary
from helpers.settings import Settings, get_settings

NAME = "search_quality"
K = 10
EF_CONSTRUCTION = 200

MILVUS_BACKENDS = ("lite", "lite-server", "milvus")
ALL_BACKENDS = ("numpy", "faiss", *MILVUS_BACKENDS)
TRANSPORT = {
    "numpy": "in-process (numpy @, 1 BLAS thread)",
    "faiss": "in-process (FAISS direct, 1 thread)",
    "lite": "in-process (MilvusClient -> milvus-lite)",
    "lite-server": "gRPC loopback (milvus-lite server)",
    "milvus": "gRPC loopback (C++ Milvus 2.3.5)",
}


# Full mode: the size the brief asks for (>= 20,000 real texts) and the ef/M grid of notebook 03.
FULL = {
    "n_corpus": 20_000,
    "n_queries": 200,
    "ef_values": (10, 16, 32, 64, 128, 256),
    "m_values": (16, 48),
    "backends": ALL_BACKENDS,
    "warmup": 10,
}
# Quick mode: a smoke run (< ~60 s on 2 cores, model load included), in-process backends only.
QUICK = {
    "n_corpus": 1_000,
    "n_queries": 50,
    "ef_values": (10, 32, 128),
    "m_values": (16,),
    "backends": ("numpy", "faiss", "lite"),
    "warmup": 3,
}

# Only one C++ server can run per machine (helpers.milvus_server holds a lock): wait this long
# for another session's (a test, a notebook) to finish before giving up.
CPP_WAIT_S = 900.0
# The brute-force check: top-k at ef=k vs ef=256 for this many queries (brute force: identical).
EF_CHECK_QUERIES = 50
EF_CHECK_HIGH = 256


def log(message: str) -> None:
    """Progress on stdout, flushed at once (the orchestrator streams it)."""
    print(f"[{NAME}] {message}", flush=True)


# ── shared pieces (bench.scaling imports these) ──────────────────────────────────────


def default_out_dir(settings: Settings | None = None) -> Path:
    """``<run_dir>/bench/manual``: everything a benchmark writes stays under the git-ignored run
    dir."""
    settings = settings or get_settings()
    return settings.run_dir / "bench" / "manual"


def real_vectors(
    n_corpus: int, n_queries: int, settings: Settings, *, progress: bool = True
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(corpus, queries, info)``: all-MiniLM-L6-v2 embeddings of real docstring paragraphs.

    The same recipe as notebook 03 (:mod:`helpers.corpus`): ``n_corpus + n_queries`` distinct
    docstrings sampled with the kit's seed, embedded (cached as ``.npy`` under
    ``settings.run_dir / "cache"``, so only the first run pays for it), and ``n_queries`` of them
    held out as queries that are never stored. The installed packages hold about 45,800
    distinct paragraphs and the sampler wants a pool twice the sample, so up to about 22,900
    texts can be drawn.
    """
    from helpers.corpus import corpus_sources, docstring_corpus, embed_corpus, split_queries

    total = n_corpus + n_queries
    start = time.perf_counter()
    texts = docstring_corpus(total, seed=settings.seed)
    parse_s = time.perf_counter() - start
    start = time.perf_counter()
    vectors = embed_corpus(texts, settings.run_dir / "cache", show_progress=progress)
    embed_s = time.perf_counter() - start
    corpus, queries = split_queries(vectors, n_queries, seed=settings.seed)
    info = {
        "texts": total,
        "sources": corpus_sources(total),
        "parse_s": parse_s,
        "embed_or_cache_s": embed_s,
        "mean_words": float(np.mean([len(t.split()) for t in texts])),
    }
    return corpus, queries, info


@contextlib.contextmanager
def faiss_threads(n: int) -> Iterator[None]:
    """FAISS (OpenMP) with ``n`` threads inside the block, the previous count restored after.

    Single-query latency is a one-thread quantity; builds may use every core, as Milvus does.
    """
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def fresh_store(settings: Settings, backend: str) -> Any:
    """A fresh store on ``backend`` (``fresh=True``); for the C++ server, wait while another
    session holds the machine's one slot (the lead may be running tests)."""
    from helpers.milvus_server import start_backend as start

    return start(settings, backend, wait_s=CPP_WAIT_S, on_wait=log, fresh=True)


# ── the measurements ─────────────────────────────────────────────────────────────────


def _time_single_queries(
    search: Callable[[np.ndarray], np.ndarray | list[int]],
    queries: np.ndarray,
    exact_ids: np.ndarray,
    warmup: int,
) -> dict[str, float]:
    """Warm up, then time ``search`` one query at a time: recall@K and latency summary."""
    for query in queries[:warmup]:
        search(query)
    found, times = [], []
    for query in queries:
        start = time.perf_counter()
        ids = search(query)
        times.append((time.perf_counter() - start) * 1000)
        found.append(ids)
    return {
        "recall_at_10": hnsw_eval.ann_recall_at_k(found, exact_ids, K),
        **_latency_summary(np.asarray(times)),
    }


def measure_numpy(
    corpus: np.ndarray, queries: np.ndarray, exact_ids: np.ndarray, warmup: int
) -> pd.DataFrame:
    """Exact search, one query per call, with one BLAS thread: the cost HNSW must beat."""
    corpus = np.ascontiguousarray(corpus, dtype=np.float32)
    try:  # threadpoolctl is in the lock (through scikit-learn), not a direct requirement
        from threadpoolctl import threadpool_limits

        one_thread = threadpool_limits(limits=1, user_api="blas")
    except ImportError:
        one_thread = contextlib.nullcontext()
    with one_thread:
        stats = _time_single_queries(
            lambda q: hnsw_eval.exact_topk(corpus, q[None, :], K)[0], queries, exact_ids, warmup
        )
    return pd.DataFrame([{"backend": "numpy", "M": pd.NA, "ef": pd.NA, **stats, "build_s": 0.0}])


def measure_faiss(
    corpus: np.ndarray,
    queries: np.ndarray,
    exact_ids: np.ndarray,
    m_values: Sequence[int],
    ef_values: Sequence[int],
    warmup: int,
) -> pd.DataFrame:
    """``faiss.IndexHNSWFlat(d, M, METRIC_INNER_PRODUCT)``, efConstruction=200, efSearch=ef.

    The build uses every core (like the servers' builds); the searches use one thread.
    """
    import faiss

    corpus = np.ascontiguousarray(corpus, dtype=np.float32)
    rows = []
    for m in m_values:
        index = faiss.IndexHNSWFlat(corpus.shape[1], int(m), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = EF_CONSTRUCTION
        start = time.perf_counter()
        index.add(corpus)
        build_s = time.perf_counter() - start
        log(f"faiss M={m}: built in {build_s:.1f} s")
        with faiss_threads(1):
            index.hnsw.efSearch = K
            narrow = index.search(queries[:EF_CHECK_QUERIES], K)[1]
            index.hnsw.efSearch = EF_CHECK_HIGH
            wide = index.search(queries[:EF_CHECK_QUERIES], K)[1]
            ef_matters = not np.array_equal(narrow, wide)
            for ef in ef_values:
                index.hnsw.efSearch = int(ef)

                def search(q: np.ndarray, index=index) -> np.ndarray:
                    return index.search(q[None, :], K)[1][0]

                stats = _time_single_queries(search, queries, exact_ids, warmup)
                rows.append(
                    {
                        "backend": "faiss",
                        "M": int(m),
                        "ef": int(ef),
                        **stats,
                        "build_s": build_s,
                        "ef_changes_results": ef_matters,
                    }
                )
        rows_m = [r for r in rows if r["M"] == m]
        log(f"faiss M={m}: " + ", ".join(f"ef={r['ef']} r={r['recall_at_10']:.3f}" for r in rows_m))
        del index
    return pd.DataFrame(rows)


def measure_milvus(
    backend: str,
    settings: Settings,
    corpus: np.ndarray,
    queries: np.ndarray,
    exact_ids: np.ndarray,
    m_values: Sequence[int],
    ef_values: Sequence[int],
    warmup: int,
    *,
    progress: bool = True,
) -> pd.DataFrame:
    """One Milvus backend: start it fresh, build and measure each M, stop it (always)."""
    handle = fresh_store(settings, backend)
    frames = []
    try:
        client = handle.client
        version = client.get_server_version()
        log(f"{backend}: started ({version})")
        for m in m_values:
            name = f"bench_hnsw_m{m}"
            timings = hnsw_eval.build_hnsw_collection(
                client, name, corpus, int(m), EF_CONSTRUCTION, progress=progress
            )
            # The lite in-process search runs FAISS in this process: one thread, like FAISS direct.
            threads = faiss_threads(1) if backend == "lite" else contextlib.nullcontext()
            with threads:
                df = hnsw_eval.measure_search(
                    client, name, queries, exact_ids, ef_values, K, warmup=warmup, progress=progress
                )
            ef_matters = hnsw_eval.results_depend_on_ef(
                client, name, queries[:EF_CHECK_QUERIES], K, high_ef=EF_CHECK_HIGH
            )
            client.drop_collection(name)
            info = timings["index"]
            df.insert(0, "backend", backend)
            df.insert(1, "M", int(m))
            df["insert_s"] = timings["insert_s"]
            df["flush_s"] = timings["flush_s"]
            df["build_s"] = timings["build_s"]
            df["load_s"] = timings["load_s"]
            df["index_M"] = info.get("M")
            df["indexed_rows"] = info.get("indexed_rows")
            df["server_version"] = version
            df["ef_changes_results"] = ef_matters
            log(
                f"{backend} M={m}: insert {timings['insert_s']:.1f} s, index {timings['build_s']:.1f}"
                f" s, load {timings['load_s']:.1f} s; "
                + ", ".join(f"ef={r.ef} r={r.recall_at_10:.3f}" for r in df.itertuples())
            )
            frames.append(df)
    finally:
        handle.stop()
        data = handle.data_path
        if data is not None:
            shutil.rmtree(data, ignore_errors=True)  # scratch; a fresh start wipes it anyway
    return pd.concat(frames, ignore_index=True)


def add_ratios(df: pd.DataFrame) -> pd.DataFrame:
    """``latency_ratio_vs_faiss`` = p50 / FAISS-direct p50 at the same (M, ef) on the same
    queries. FAISS itself is 1.0; numpy has no (M, ef), so its ratio is empty."""
    faiss_p50 = {
        (int(r.M), int(r.ef)): r.p50_ms for r in df[df.backend == "faiss"].itertuples(index=False)
    }

    def ratio(row: pd.Series) -> float:
        if pd.isna(row["M"]) or pd.isna(row["ef"]):
            return float("nan")
        ref = faiss_p50.get((int(row["M"]), int(row["ef"])))
        return float(row["p50_ms"] / ref) if ref else float("nan")

    df = df.copy()
    df["latency_ratio_vs_faiss"] = df.apply(ratio, axis=1)
    return df


def add_hnsw_check(df: pd.DataFrame) -> pd.DataFrame:
    """``hnsw_in_use`` per (backend, M): recall < 1.0 at the smallest ef *and* answers that
    change with ef. Either alone can be fooled by brute force (module docstring)."""
    df = df.copy()
    df["hnsw_in_use"] = pd.NA
    for (backend, m), group in df.dropna(subset=["M"]).groupby(["backend", "M"]):
        below_one = hnsw_eval.hnsw_in_use(group[["M", "ef", "recall_at_10"]].astype({"ef": int}))
        ok = bool(below_one and group["ef_changes_results"].all())
        df.loc[(df["backend"] == backend) & (df["M"] == m), "hnsw_in_use"] = ok
    return df


def run(
    quick: bool = False,
    out_dir: Path | None = None,
    *,
    settings: Settings | None = None,
    backends: Sequence[str] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Run the benchmark and write ``<out_dir>/search_quality.csv``.

    ``quick=True`` is the smoke size (1,000 texts, 50 queries, ef 10/32/128, M=16, numpy + FAISS
    + lite); full mode is 20,000 texts, 200 queries, ef 10..256, M 16 and 48, all backends.
    Milvus data go to ``<out_dir>/milvus-data`` and are deleted after each backend.
    """
    from helpers.milvus_server import leftover_servers

    settings = settings or get_settings()
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    grid = dict(QUICK if quick else FULL)
    grid["ef_values"] = sorted(grid["ef_values"])  # the HNSW check reads the smallest ef first
    chosen = tuple(backends) if backends else grid["backends"]
    unknown = set(chosen) - set(ALL_BACKENDS)
    if unknown:
        raise ValueError(f"unknown backends {sorted(unknown)}; choose from {ALL_BACKENDS}")
    if "faiss" not in chosen and set(chosen) & set(MILVUS_BACKENDS):
        chosen = ("faiss", *chosen)  # the ratio column needs the FAISS reference
    wall = time.perf_counter()

    corpus, queries, info = real_vectors(
        grid["n_corpus"], grid["n_queries"], settings, progress=progress
    )
    log(
        f"corpus {len(corpus):,} docstring paragraphs (mean {info['mean_words']:.0f} words; "
        f"from {', '.join(info['sources'])}), {len(queries)} held-out queries; "
        f"texts parsed in {info['parse_s']:.0f} s, embedded/cache read in "
        f"{info['embed_or_cache_s']:.0f} s"
    )
    exact_ids = hnsw_eval.exact_topk(corpus, queries, K)

    frames = []
    if "numpy" in chosen:
        frames.append(measure_numpy(corpus, queries, exact_ids, grid["warmup"]))
        log(f"numpy exact: p50 {frames[-1].p50_ms.iloc[0]:.3f} ms")
    if "faiss" in chosen:
        frames.append(
            measure_faiss(
                corpus, queries, exact_ids, grid["m_values"], grid["ef_values"], grid["warmup"]
            )
        )
    server_settings = settings.replace(run_dir=out_dir / "milvus-data")
    for backend in MILVUS_BACKENDS:
        if backend in chosen:
            frames.append(
                measure_milvus(
                    backend,
                    server_settings,
                    corpus,
                    queries,
                    exact_ids,
                    grid["m_values"],
                    grid["ef_values"],
                    grid["warmup"],
                    progress=progress,
                )
            )
    left = leftover_servers()
    if left:
        raise RuntimeError(f"servers this benchmark started are still running: {left}")
    shutil.rmtree(out_dir / "milvus-data", ignore_errors=True)

    df = pd.concat(frames, ignore_index=True)
    df["M"] = df["M"].astype("Int64")
    df["ef"] = df["ef"].astype("Int64")
    df = add_hnsw_check(add_ratios(df))
    df["transport"] = df["backend"].map(TRANSPORT)
    df["k"] = K
    df["ef_construction"] = EF_CONSTRUCTION
    df["n_corpus"] = len(corpus)
    df["n_queries"] = len(queries)
    df["mode"] = "quick" if quick else "full"
    first = [
        "backend", "M", "ef", "recall_at_10", "p50_ms", "p99_ms", "mean_ms",
        "latency_ratio_vs_faiss", "build_s", "hnsw_in_use",
    ]  # fmt: skip
    df = df[first + [c for c in df.columns if c not in first]]
    path = out_dir / f"{NAME}.csv"
    df.to_csv(path, index=False)
    log(
        f"wrote {path} ({len(df)} rows) in {time.perf_counter() - wall:.0f} s; leftover servers: []"
    )
    print(markdown(df), flush=True)
    return df


def markdown(df: pd.DataFrame) -> str:
    """Recall and p50 per (backend, M, ef), the ratio to FAISS, build times and the HNSW check."""
    n = int(df["n_corpus"].iloc[0]) if "n_corpus" in df else 0
    nq = int(df["n_queries"].iloc[0]) if "n_queries" in df else 0
    main = df[
        ["backend", "M", "ef", "recall_at_10", "p50_ms", "p99_ms", "latency_ratio_vs_faiss"]
    ].copy()
    main.columns = ["backend", "M", "ef", "recall@10", "p50 ms", "p99 ms", "p50 / FAISS"]
    fmt = {"recall@10": ".3f", "p50 ms": ".3f", "p99 ms": ".3f", "p50 / FAISS": ".1f"}
    builds = (
        df.dropna(subset=["M"])
        .groupby(["backend", "M"], sort=False)
        .agg(
            build_s=("build_s", "first"),
            hnsw_in_use=("hnsw_in_use", "first"),
            recall_min_ef=("recall_at_10", "first"),
        )
        .reset_index()
    )
    builds.columns = ["backend", "M", "index build s", "HNSW in use", "recall@10 at smallest ef"]
    parts = [
        f"Recall@10 against exact inner product and single-query latency on {n:,} real-text "
        f"embeddings (all-MiniLM-L6-v2 of docstring paragraphs), {nq} held-out queries; HNSW "
        f"IP, efConstruction={EF_CONSTRUCTION}. FAISS direct and numpy on 1 thread; lite is "
        "in-process, lite-server and milvus cross gRPC on loopback.",
        "",
        markdown_table(main, floatfmt=fmt),
        "",
        "Index build (Milvus: create_index until every row is indexed; FAISS: add):",
        "",
        markdown_table(
            builds, floatfmt={"index build s": ".2f", "recall@10 at smallest ef": ".3f"}
        ),
    ]
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.search_quality", description=__doc__.split("\n", 1)[0]
    )
    parser.add_argument("--quick", action="store_true", help="smoke size (about a minute)")
    parser.add_argument("--out", type=Path, default=None, help="output folder")
    parser.add_argument(
        "--backends", nargs="+", choices=ALL_BACKENDS, default=None, help="subset of backends"
    )
    args = parser.parse_args(argv)
    run(quick=args.quick, out_dir=args.out, backends=args.backends)
    return 0


if __name__ == "__main__":
    sys.exit(main())
