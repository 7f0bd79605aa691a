"""What an HNSW index buys and costs: recall@k against exact search, and single-query latency.

Used by notebook 03. The ground truth is exact inner-product search in numpy
(:func:`exact_topk`); the index is Milvus HNSW built and searched through ``MilvusClient``
(:func:`measure_hnsw`), for several ``ef`` (search-time beam width) at one ``M`` (graph degree).

Two milvus-lite 3.x traps decide the order of the calls (docs/measured-facts.md):

* index parameters must be nested, ``params={"params": {"M": M, "efConstruction": efc}}``;
  the flat form ``params={"M": M, ...}`` is silently ignored by milvus-lite, which then builds
  M=16 (the C++ server honours the nested form too, so it is the portable one);
* HNSW is used only on flushed segments loaded *after* the index exists. Creating the
  collection with ``index_params`` loads it at once and later rows are searched brute force,
  which gives recall 1.0 at every ``ef``. So: create (no index) -> insert -> flush ->
  create_index -> load -> search, and check with :func:`hnsw_in_use` that recall at a small
  ``ef`` is below 1.0, which brute force can never give.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from helpers import schema

VECTOR_FIELD = "vector"
ID_FIELD = "id"
METRIC = "IP"

# Okabe-Ito: distinguishable with the common forms of colour blindness.
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")

RESULT_COLUMNS = ("M", "ef", "recall_at_10", "p50_ms", "p99_ms", "mean_ms", "build_s", "load_s")


# ── exact search and recall ──────────────────────────────────────────────────────────


def exact_topk(
    corpus: np.ndarray,
    queries: np.ndarray,
    k: int,
    *,
    return_scores: bool = False,
    chunk: int = 1024,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` by inner product: row ids of ``corpus`` for each query, best first.

    ``argpartition`` finds the k best of each row in linear time, then only those k are sorted
    (by score descending, ties by smaller id, so the answer is deterministic). Queries are done
    ``chunk`` at a time to bound memory. With unit vectors inner product is cosine similarity.
    """
    corpus = np.asarray(corpus, dtype=np.float32)
    queries = np.asarray(queries, dtype=np.float32)
    if queries.ndim == 1:
        queries = queries[None, :]
    n = corpus.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the corpus size {n}, got {k}")
    all_ids = np.empty((len(queries), k), dtype=np.int64)
    all_scores = np.empty((len(queries), k), dtype=np.float32)
    for start in range(0, len(queries), chunk):
        scores = queries[start : start + chunk] @ corpus.T
        if k < n:
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        else:
            top = np.broadcast_to(np.arange(n), scores.shape).copy()
        top_scores = np.take_along_axis(scores, top, axis=1)
        # lexsort: last key is primary -> score descending, then id ascending.
        order = np.lexsort((top, -top_scores), axis=1)
        all_ids[start : start + chunk] = np.take_along_axis(top, order, axis=1)
        all_scores[start : start + chunk] = np.take_along_axis(top_scores, order, axis=1)
    return (all_ids, all_scores) if return_scores else all_ids


def ann_recall_at_k(
    approx_ids: Sequence[Sequence[int]] | np.ndarray,
    exact_ids: Sequence[Sequence[int]] | np.ndarray,
    k: int,
) -> float:
    """ANN recall: mean over queries of |approx top-k ∩ exact top-k| / k (how much of the
    exact nearest neighbours an index finds; not :func:`helpers.measures.recall_at_k`, the share
    of the relevant taverns a ranking finds).

    Rows of ``approx_ids`` may be shorter than k (an index may return fewer hits); missing
    hits count as misses. Order inside the top k does not matter.
    """
    if len(approx_ids) != len(exact_ids):
        raise ValueError(f"{len(approx_ids)} approximate rows but {len(exact_ids)} exact rows")
    if len(exact_ids) == 0:
        raise ValueError("no queries")
    hits = 0
    for approx, exact in zip(approx_ids, exact_ids, strict=True):
        exact_set = {int(i) for i in list(exact)[:k]}
        if len(exact_set) < k:
            raise ValueError(f"an exact row has fewer than k={k} distinct ids")
        hits += len({int(i) for i in list(approx)[:k]} & exact_set)
    return hits / (k * len(exact_ids))


def time_exact_search(corpus: np.ndarray, queries: np.ndarray, k: int = 10) -> dict[str, float]:
    """Single-query latency of exact numpy search (ms): the cost HNSW is meant to beat."""
    corpus = np.ascontiguousarray(corpus, dtype=np.float32)
    exact_topk(corpus, queries[:1], k)  # warm-up
    times = []
    for query in queries:
        start = time.perf_counter()
        exact_topk(corpus, query[None, :], k)
        times.append((time.perf_counter() - start) * 1000)
    return _latency_summary(np.asarray(times))


def _latency_summary(times_ms: np.ndarray) -> dict[str, float]:
    return {
        "p50_ms": float(np.percentile(times_ms, 50)),
        "p99_ms": float(np.percentile(times_ms, 99)),
        "mean_ms": float(np.mean(times_ms)),
    }


# ── Milvus HNSW ──────────────────────────────────────────────────────────────────────


def hnsw_index_params(client, M: int, ef_construction: int = 200):
    """HNSW params for this module's vector field (see :func:`helpers.schema.hnsw_index_params`)."""
    return schema.hnsw_index_params(client, M, ef_construction, field_name=VECTOR_FIELD)


def index_build_params(client, collection_name: str) -> dict[str, Any]:
    """What the server says it built (see :func:`helpers.schema.index_info`)."""
    return schema.index_info(client, collection_name, field_name=VECTOR_FIELD)


def _wait_for_index(client, collection_name: str, n_rows: int, timeout: float) -> dict:
    """The C++ server builds indexes asynchronously; wait until every row is indexed."""
    deadline = time.monotonic() + timeout
    while True:
        info = index_build_params(client, collection_name)
        state = str(info.get("state", "Finished"))
        pending = int(info.get("pending_index_rows", 0) or 0)
        indexed = int(info.get("indexed_rows", n_rows) or 0)
        if ("Finished" in state or state == "") and pending == 0 and indexed >= n_rows:
            return info
        if time.monotonic() > deadline:
            raise TimeoutError(f"index on {collection_name} not finished after {timeout} s: {info}")
        time.sleep(0.2)


def build_hnsw_collection(
    client,
    collection_name: str,
    corpus_vectors: np.ndarray,
    M: int,
    ef_construction: int = 200,
    *,
    batch_size: int = 1000,
    index_timeout: float = 600.0,
    progress: bool = True,
) -> dict[str, Any]:
    """(Re)create ``collection_name`` with ids 0..n-1, in the order that makes HNSW real:
    create (no index) -> insert -> flush -> create_index -> load.

    Returns timings (``insert_s``, ``flush_s``, ``build_s`` = create_index until finished,
    ``load_s``) and ``index`` = what :func:`index_build_params` reports. Raises if the server
    reports an ``M`` other than the one asked for (the flat-params trap).
    """
    from pymilvus import DataType
    from tqdm.auto import tqdm

    vectors = np.ascontiguousarray(corpus_vectors, dtype=np.float32)
    n, dim = vectors.shape
    if client.has_collection(collection_name):
        client.drop_collection(collection_name)
    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field(ID_FIELD, DataType.INT64, is_primary=True)
    schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=dim)
    # No index_params here: that would load the collection at once, and rows inserted later
    # would be searched brute force (docs/measured-facts.md).
    client.create_collection(collection_name, schema=schema)

    timings: dict[str, Any] = {}
    start = time.perf_counter()
    for lo in tqdm(
        range(0, n, batch_size), desc=f"insert M={M}", disable=not progress, leave=False
    ):
        rows = [
            {ID_FIELD: i, VECTOR_FIELD: vectors[i].tolist()}
            for i in range(lo, min(lo + batch_size, n))
        ]
        client.insert(collection_name, rows)
    timings["insert_s"] = time.perf_counter() - start

    start = time.perf_counter()
    client.flush(
        collection_name
    )  # HNSW covers flushed segments only; memtable rows are brute force
    timings["flush_s"] = time.perf_counter() - start

    start = time.perf_counter()
    client.create_index(collection_name, hnsw_index_params(client, M, ef_construction))
    info = _wait_for_index(client, collection_name, n, index_timeout)
    timings["build_s"] = time.perf_counter() - start

    start = time.perf_counter()
    client.load_collection(collection_name)  # milvus-lite builds the FAISS graph here
    timings["load_s"] = time.perf_counter() - start

    if info.get("M") is not None and info["M"] != M:
        raise RuntimeError(f"asked for HNSW M={M} but the server built {info}")
    timings["index"] = info
    return timings


def search_one(client, collection_name: str, query: np.ndarray, k: int, ef: int) -> list[int]:
    """Ids of the top ``k`` hits of one query, HNSW beam width ``ef`` (``nprobe`` is IVF's)."""
    result = client.search(
        collection_name,
        data=[np.asarray(query, dtype=np.float32).tolist()],
        anns_field=VECTOR_FIELD,
        limit=k,
        search_params={"metric_type": METRIC, "params": {"ef": int(ef)}},
        output_fields=[],
    )
    return [int(hit["id"]) for hit in result[0]]


def measure_search(
    client,
    collection_name: str,
    query_vectors: np.ndarray,
    exact_ids: np.ndarray,
    ef_values: Iterable[int],
    k: int = 10,
    *,
    warmup: int = 5,
    progress: bool = True,
) -> pd.DataFrame:
    """Search a loaded collection one query at a time for each ``ef``; recall@k and latency.

    Each search is timed with :func:`time.perf_counter` around the client call, so latency
    includes the client round trip, as an application would see it. ``warmup`` untimed
    queries run first at each ``ef``.
    """
    from tqdm.auto import tqdm

    rows = []
    for ef in ef_values:
        for query in query_vectors[:warmup]:
            search_one(client, collection_name, query, k, ef)
        found, times = [], []
        for query in tqdm(query_vectors, desc=f"search ef={ef}", disable=not progress, leave=False):
            start = time.perf_counter()
            ids = search_one(client, collection_name, query, k, ef)
            times.append((time.perf_counter() - start) * 1000)
            found.append(ids)
        rows.append(
            {
                "ef": int(ef),
                f"recall_at_{k}": ann_recall_at_k(found, exact_ids, k),
                **_latency_summary(np.asarray(times)),
            }
        )
    return pd.DataFrame(rows)


def measure_hnsw(
    client,
    collection_name: str,
    corpus_vectors: np.ndarray,
    query_vectors: np.ndarray,
    ef_values: Iterable[int],
    M: int,
    ef_construction: int = 200,
    k: int = 10,
    *,
    exact_ids: np.ndarray | None = None,
    batch_size: int = 1000,
    warmup: int = 5,
    drop_after: bool = True,
    progress: bool = True,
) -> pd.DataFrame:
    """Build an HNSW collection over ``corpus_vectors`` and measure it at each ``ef``.

    One row per ``ef`` with columns ``M, ef, recall_at_10, p50_ms, p99_ms, mean_ms, build_s,
    load_s`` (the recall column is ``recall_at_{k}``) plus ``k, n_corpus, n_queries,
    ef_construction, insert_s, flush_s, index_M`` (the M the server reports building).
    Recall is against exact numpy inner product; pass ``exact_ids`` to reuse a ground truth.
    The collection is dropped afterwards unless ``drop_after=False``.

    Note: Milvus documents HNSW's ``ef`` range as ``[k, ...]`` and the C++ server refuses a
    smaller ``ef``; milvus-lite (FAISS) accepts ``ef < k`` and simply searches a narrower beam.
    Keep ``ef >= k`` in code that must run on both.
    """
    corpus_vectors = np.ascontiguousarray(corpus_vectors, dtype=np.float32)
    query_vectors = np.ascontiguousarray(query_vectors, dtype=np.float32)
    if exact_ids is None:
        exact_ids = exact_topk(corpus_vectors, query_vectors, k)
    timings = build_hnsw_collection(
        client,
        collection_name,
        corpus_vectors,
        M,
        ef_construction,
        batch_size=batch_size,
        progress=progress,
    )
    try:
        df = measure_search(
            client,
            collection_name,
            query_vectors,
            exact_ids,
            ef_values,
            k,
            warmup=warmup,
            progress=progress,
        )
    finally:
        if drop_after:
            client.drop_collection(collection_name)
    df.insert(0, "M", int(M))
    df["build_s"] = timings["build_s"]
    df["load_s"] = timings["load_s"]
    df["k"] = k
    df["n_corpus"] = len(corpus_vectors)
    df["n_queries"] = len(query_vectors)
    df["ef_construction"] = ef_construction
    df["insert_s"] = timings["insert_s"]
    df["flush_s"] = timings["flush_s"]
    df["index_M"] = timings["index"].get("M")
    return df


# ── checks and plots ─────────────────────────────────────────────────────────────────


def recall_column(df: pd.DataFrame) -> str:
    """The ``recall_at_<k>`` column of a :func:`measure_hnsw` table."""
    columns = [c for c in df.columns if str(c).startswith("recall_at_")]
    if len(columns) != 1:
        raise ValueError(f"expected one recall_at_<k> column, found {columns}")
    return columns[0]


def hnsw_in_use(df: pd.DataFrame) -> bool:
    """True when every ``M`` in ``df`` has recall below 1.0 at its smallest ``ef``.

    Brute force (what milvus-lite silently does on unflushed rows or a collection loaded before
    its index existed) returns the exact top k and so recall exactly 1.0 at every ``ef``. An
    approximate graph search at a small ``ef`` on a corpus of thousands of vectors misses some
    neighbours. The test is one-sided: a real index on a tiny or easy corpus may still reach
    1.0, so use a corpus of several thousand vectors and a small ``ef``.
    """
    if df.empty:
        return False
    col = recall_column(df)
    smallest = df.loc[df.groupby("M")["ef"].idxmin()]
    return bool((smallest[col] < 1.0).all())


def results_depend_on_ef(
    client,
    collection_name: str,
    query_vectors: np.ndarray,
    k: int = 10,
    *,
    low_ef: int | None = None,
    high_ef: int = 256,
) -> bool:
    """True when some query's top ``k`` ids differ between a narrow beam and a wide one.

    The second half of the "is it really HNSW?" check (:func:`hnsw_in_use` is the first):
    brute force ignores ``ef`` and answers the same at every beam width, even where its
    ranking of near-ties differs from numpy's (then recall is just below 1.0 at every ``ef``
    and the recall test alone is fooled). Measured: the C++ server does not index a segment of
    fewer than 1,024 rows (``minSegmentSizeToEnableIndex``) and searches it brute force while
    ``describe_index`` reports the index finished for every row. ``low_ef`` defaults to ``k``
    (the smallest beam the C++ server accepts).
    """
    low_ef = k if low_ef is None else low_ef
    for query in np.asarray(query_vectors, dtype=np.float32):
        narrow = search_one(client, collection_name, query, k, low_ef)
        wide = search_one(client, collection_name, query, k, high_ef)
        if narrow != wide:
            return True
    return False


def assert_hnsw_in_use(df: pd.DataFrame) -> None:
    """Raise AssertionError, naming the likely cause, unless :func:`hnsw_in_use` holds."""
    if not hnsw_in_use(df):
        col = recall_column(df)
        smallest = df.loc[df.groupby("M")["ef"].idxmin(), ["M", "ef", col]]
        raise AssertionError(
            "recall is 1.0 at the smallest ef, so the search looks like brute force, not HNSW. "
            "Usual causes: rows not flushed before create_index, the collection created with "
            "index_params (loaded before the rows arrived), or a corpus too small to miss "
            f"anything.\n{smallest.to_string(index=False)}"
        )


def plot_recall_latency(
    df: pd.DataFrame,
    exact_ms: float | None = None,
    *,
    title: str | None = None,
):
    """Two panels: recall@k vs ef and median single-query latency vs ef, one line per M.

    The dashed black line on the left is exact search (recall 1.0 by definition); on the right,
    if ``exact_ms`` is given, the median latency of exact numpy search over the same corpus.
    Shaded bands on the right reach up to the p99 latency. Returns the matplotlib Figure
    (made with pyplot: in a notebook end the cell with ``;`` so it shows once).
    """
    import matplotlib.pyplot as plt

    col = recall_column(df)
    k = col.rsplit("_", 1)[-1]
    fig, (ax_recall, ax_latency) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    markers = ("o", "s", "^", "D", "v", "P")
    for i, (m_value, group) in enumerate(df.sort_values("ef").groupby("M", sort=True)):
        colour = OKABE_ITO[i % len(OKABE_ITO)]
        marker = markers[i % len(markers)]
        label = f"HNSW M={m_value}"
        ax_recall.plot(group["ef"], group[col], marker=marker, color=colour, label=label)
        ax_latency.plot(
            group["ef"], group["p50_ms"], marker=marker, color=colour, label=f"{label} (p50)"
        )
        if "p99_ms" in group:
            ax_latency.fill_between(
                group["ef"],
                group["p50_ms"],
                group["p99_ms"],
                color=colour,
                alpha=0.15,
                label=f"{label} p50-p99",
            )

    ax_recall.axhline(1.0, color="black", linestyle="--", linewidth=1, label="exact search (numpy)")
    ax_recall.set_xscale("log", base=2)
    ax_recall.set_xlabel("ef (search beam width, candidates; log scale)")
    ax_recall.set_ylabel(f"recall@{k} vs exact inner product (fraction)")
    ax_recall.set_title(f"Recall@{k}: approximate search vs exact")
    ax_recall.set_ylim(top=1.02)
    ax_recall.grid(True, alpha=0.3)
    ax_recall.legend(loc="lower right")

    if exact_ms is not None:
        ax_latency.axhline(
            exact_ms,
            color="black",
            linestyle="--",
            linewidth=1,
            label=f"exact numpy search (p50 {exact_ms:.2f} ms)",
        )
    ax_latency.set_xscale("log", base=2)
    ax_latency.set_xlabel("ef (search beam width, candidates; log scale)")
    ax_latency.set_ylabel("single-query latency (ms): line p50, band to p99")
    ax_latency.set_title("Single-query latency through MilvusClient")
    ax_latency.set_ylim(bottom=0)
    ax_latency.grid(True, alpha=0.3)
    ax_latency.legend(loc="best", fontsize="small")

    ef_ticks = sorted({int(e) for e in df["ef"]})
    for ax in (ax_recall, ax_latency):
        ax.set_xticks(ef_ticks, [str(e) for e in ef_ticks])
        ax.minorticks_off()

    if title is None and "n_corpus" in df:
        title = f"HNSW on {int(df['n_corpus'].iloc[0]):,} vectors, inner product, top {k}"
    if title:
        fig.suptitle(title)
    return fig
