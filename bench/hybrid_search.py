"""Latency of dense, BM25 and hybrid search, and what the BM25 index costs to build and hold.

Why this exists: notebook 05 shows that full-text (BM25) and hybrid search change *what* is
found on the tavern benchmark; a user choosing a mode also needs what each costs. The corpus is
the one of ``bench.search_quality`` (:mod:`helpers.corpus`: real docstring paragraphs, sampled
with the kit's seed, embedded with all-MiniLM-L6-v2 and cached), so the dense numbers line up
with that benchmark. The first ``n_corpus`` texts are stored; the first eight words of each of
the next ``n_queries`` texts are the queries (short, like a typed search), embedded with
``encode_queries`` for the dense side.

Per backend (milvus-lite in this process, and ``milvus-lite server`` over gRPC on loopback):

* **BM25 only**: a collection with the analyzed text and the BM25 sparse field alone. Insert
  (Milvus tokenises and weighs every text on insert), flush, create the
  ``SPARSE_INVERTED_INDEX``, load; ``rss_delta_mb`` is the resident memory that index building
  and loading add to the process that holds the data (this Python process for ``lite``, the
  server for ``lite-server``; milvus-lite builds in ``create_index``): the memory of the index.
* **dense + BM25**: the same texts with their vectors, HNSW (M=48, efConstruction=200, the
  kit's) beside the sparse index, the collection searched below.
* **search**: one query per call, timed around the raw ``client.search`` /
  ``client.hybrid_search`` call after a warm-up, top 10, p50 and p95 over the queries. Dense
  with ``ef=64``; BM25 with the query text; hybrid with one request of each kind (20 candidates
  each) fused by RRF (k=60) or by weights 0.5/0.5.

The machine is shared: the load average is recorded with each run, and latencies under load are
upper bounds. Run: ``python -m bench.hybrid_search [--quick] [--out DIR]``.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
from pymilvus import AnnSearchRequest, DataType, MilvusClient, RRFRanker, WeightedRanker

from bench.common import markdown_table, module_main, prepare_out_dir, write_csv
from helpers import fulltext
from helpers.schema import hnsw_index_params, search_params
from helpers.settings import Settings, get_settings

NAME = "hybrid_search"
K = 10
EF = 64
CANDIDATES = 20
QUERY_WORDS = 8
TEXT_MAX_BYTES = 4000
BATCH = 1000
FULL = {"n_corpus": 20_000, "n_queries": 200, "warmup": 10, "backends": ("lite", "lite-server")}
QUICK = {"n_corpus": 1_000, "n_queries": 50, "warmup": 3, "backends": ("lite", "lite-server")}
VECTOR = "vector"


def log(message: str) -> None:
    print(f"[{NAME}] {message}", flush=True)


def corpus(n_corpus: int, n_queries: int, settings: Settings) -> tuple[list[str], Any, list[str]]:
    """(stored texts, their vectors, query texts): the cached docstring corpus of
    ``bench.search_quality``, the queries being the first words of held-out texts."""
    from helpers.corpus import docstring_corpus, embed_corpus

    texts = docstring_corpus(n_corpus + n_queries, seed=settings.seed)
    vectors = embed_corpus(texts, settings.run_dir / "cache", show_progress=False)
    stored = [t.encode("utf-8")[:TEXT_MAX_BYTES].decode("utf-8", "ignore") for t in texts]
    queries = [" ".join(t.split()[:QUERY_WORDS]) for t in texts[n_corpus:]]
    return stored[:n_corpus], vectors[:n_corpus], queries


def _schema(with_vectors: bool) -> Any:
    schema = MilvusClient.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    if with_vectors:
        schema.add_field(VECTOR, DataType.FLOAT_VECTOR, dim=384)
    return fulltext.add_full_text_fields(schema, TEXT_MAX_BYTES)


def _rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def build(
    client: MilvusClient, name: str, texts: Sequence[str], vectors: Any, pid: int
) -> dict[str, float]:
    """Create, insert, flush, index and load one collection; seconds per step and the RSS the
    load adds to process ``pid``."""
    with_vectors = vectors is not None
    if client.has_collection(name):
        client.drop_collection(name)
    client.create_collection(name, schema=_schema(with_vectors))
    start = time.perf_counter()
    for lo in range(0, len(texts), BATCH):
        rows = [
            {"id": i, fulltext.TEXT_FIELD: texts[i]}
            | ({VECTOR: vectors[i].tolist()} if with_vectors else {})
            for i in range(lo, min(lo + BATCH, len(texts)))
        ]
        client.insert(name, rows)
    marks = {"insert_s": time.perf_counter() - start}
    start = time.perf_counter()
    client.flush(name)
    marks["flush_s"] = time.perf_counter() - start
    before = _rss_mb(pid)  # milvus-lite builds the indexes in create_index, not at load
    start = time.perf_counter()
    params = fulltext.add_bm25_index(client.prepare_index_params())
    if with_vectors:
        params = hnsw_index_params(client, field_name=VECTOR)
        fulltext.add_bm25_index(params)
    client.create_index(name, params)
    marks["index_s"] = time.perf_counter() - start
    start = time.perf_counter()
    client.load_collection(name)
    marks["load_s"] = time.perf_counter() - start
    marks["rss_delta_mb"] = _rss_mb(pid) - before
    return marks


def _timed(call: Callable[[int], Any], n: int, warmup: int) -> dict[str, float]:
    for i in range(min(warmup, n)):
        call(i)
    times = []
    for i in range(n):
        start = time.perf_counter()
        call(i)
        times.append((time.perf_counter() - start) * 1000)
    arr = np.asarray(times)
    return {
        "p50_ms": float(np.percentile(arr, 50)),
        "p95_ms": float(np.percentile(arr, 95)),
        "mean_ms": float(arr.mean()),
    }


def search_calls(
    client: MilvusClient, name: str, queries: Sequence[str], qvecs: Any
) -> dict[str, Callable[[int], Any]]:
    """One callable per mode, taking the query's index: the raw pymilvus call of each mode."""
    bm25 = {"metric_type": fulltext.BM25_METRIC}

    def requests(i: int) -> list[AnnSearchRequest]:
        return [
            AnnSearchRequest([qvecs[i]], VECTOR, search_params(EF), limit=CANDIDATES),
            AnnSearchRequest([queries[i]], fulltext.SPARSE_FIELD, bm25, limit=CANDIDATES),
        ]

    return {
        "dense": lambda i: client.search(
            name, [qvecs[i]], anns_field=VECTOR, search_params=search_params(EF), limit=K
        ),
        "bm25": lambda i: client.search(
            name, [queries[i]], anns_field=fulltext.SPARSE_FIELD, search_params=bm25, limit=K
        ),
        "hybrid (RRF k=60)": lambda i: client.hybrid_search(
            name, requests(i), ranker=RRFRanker(60), limit=K
        ),
        "hybrid (weighted 0.5/0.5)": lambda i: client.hybrid_search(
            name, requests(i), ranker=WeightedRanker(0.5, 0.5), limit=K
        ),
    }


def measure_backend(
    backend: str, settings: Settings, texts: Sequence[str], vectors: Any, queries: Sequence[str],
    qvecs: Any, warmup: int,
) -> list[dict[str, Any]]:  # fmt: skip
    """Start ``backend`` fresh, build both collections, time every mode, stop it (always)."""
    from helpers.milvus_server import start_milvus

    handle = start_milvus(settings, backend=backend, fresh=True)
    rows: list[dict[str, Any]] = []
    try:
        client = handle.client
        version = client.get_server_version()
        pid = handle.pid if backend != "lite" and handle.pid else os.getpid()
        common = {"backend": backend, "server_version": version, "n_corpus": len(texts)}
        for label, name, vecs in (
            ("BM25 only", "bench_bm25", None),
            ("dense + BM25", "bench_hybrid", vectors),
        ):
            marks = build(client, name, texts, vecs, pid)
            log(f"{backend} {label}: " + ", ".join(f"{k} {v:.1f}" for k, v in marks.items()))
            rows.append({**common, "kind": "build", "item": label, **marks})
            if vecs is None:
                client.drop_collection(name)
        for mode, call in search_calls(client, "bench_hybrid", queries, qvecs).items():
            stats = _timed(call, len(queries), warmup)
            log(f"{backend} {mode}: p50 {stats['p50_ms']:.1f} ms, p95 {stats['p95_ms']:.1f} ms")
            rows.append({**common, "kind": "search", "item": mode, **stats})
        client.drop_collection("bench_hybrid")
    finally:
        handle.stop()
        if handle.data_path is not None:
            shutil.rmtree(handle.data_path, ignore_errors=True)
    return rows


def run(
    quick: bool = False,
    out_dir: Path | None = None,
    *,
    settings: Settings | None = None,
    n_corpus: int | None = None,
    n_queries: int | None = None,
) -> pd.DataFrame:
    """Run the benchmark and write ``<out_dir>/hybrid_search.csv``. ``n_corpus`` and
    ``n_queries`` override the size of the chosen mode (e.g. on a loaded machine)."""
    from helpers.embeddings import encode_queries

    grid = dict(QUICK if quick else FULL)
    grid["n_corpus"] = n_corpus or grid["n_corpus"]
    grid["n_queries"] = n_queries or grid["n_queries"]
    out_dir = prepare_out_dir(out_dir)
    settings = settings or get_settings()
    start = time.perf_counter()
    texts, vectors, queries = corpus(grid["n_corpus"], grid["n_queries"], settings)
    qvecs = [v.tolist() for v in encode_queries(queries)]
    log(
        f"{len(texts):,} texts, {len(queries)} queries ready in {time.perf_counter() - start:.0f} s"
    )
    scratch = settings.replace(run_dir=out_dir / "milvus-data")
    rows = []
    for backend in grid["backends"]:
        rows += measure_backend(backend, scratch, texts, vectors, queries, qvecs, grid["warmup"])
    df = pd.DataFrame(rows)
    df["n_queries"] = len(queries)
    df["loadavg_1m"] = os.getloadavg()[0]
    write_csv(df, out_dir, NAME)
    return df


def markdown(df: pd.DataFrame) -> str:
    """Two tables: build and memory per collection, latency per mode; backends side by side."""
    build_rows = df[df["kind"] == "build"]
    search_rows = df[df["kind"] == "search"]
    latency = search_rows.pivot_table(
        index="item", columns="backend", values=["p50_ms", "p95_ms"], sort=False
    )
    latency.columns = [f"{backend} {stat.removesuffix('_ms')} (ms)" for stat, backend in latency]
    latency = latency.reset_index().rename(columns={"item": "mode"})
    n = int(df["n_corpus"].iloc[0])
    return "\n".join(
        [
            f"{n:,} docstring paragraphs, {int(df['n_queries'].iloc[0])} queries of "
            f"{QUERY_WORDS} words, top {K}; load average {df['loadavg_1m'].iloc[0]:.1f} on 2 "
            "cores while measured.",
            "",
            markdown_table(
                build_rows,
                ["backend", "item", "insert_s", "flush_s", "index_s", "load_s", "rss_delta_mb"],
            ),
            "",
            markdown_table(latency),
        ]
    )


if __name__ == "__main__":
    raise SystemExit(
        module_main(
            NAME, run, markdown, "Latency of dense, BM25 and hybrid search; BM25 index cost."
        )
    )
