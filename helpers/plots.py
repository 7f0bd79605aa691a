"""One function per figure. Each returns a matplotlib Figure and, given a folder, saves a PNG.

Colours come from the Okabe-Ito palette, which stays distinguishable with the common forms of
colour blindness.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:  # matplotlib loads lazily: importing this module stays fast
    from matplotlib.figure import Figure

OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")


def _save(fig, out_dir: Path | None, name: str) -> None:
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_dir / f"{name}.png", dpi=120)


def plot_retrieval_bars(
    summary: pd.DataFrame,
    metrics: tuple[str, ...] = ("recall@1", "recall@3", "hit@3", "MRR"),
    *,
    out_dir: Path | None = None,
    name: str = "retrieval_by_collection",
):
    """Grouped bars: one group per metric, one bar per collection (``summary`` rows)."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(8, 4), constrained_layout=True)
    width = 0.8 / max(len(summary), 1)
    x = np.arange(len(metrics))
    for i, (label, row) in enumerate(summary.iterrows()):
        values = [row[m] for m in metrics]
        bars = ax.bar(
            x + i * width, values, width, label=str(label), color=OKABE_ITO[i % len(OKABE_ITO)]
        )
        ax.bar_label(bars, fmt="%.2f", fontsize=8, padding=2)
    ax.set_xticks(x + width * (len(summary) - 1) / 2, metrics)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("score (fraction, mean over queries)")
    ax.set_xlabel("metric")
    ax.set_title("Retrieval on the benchmark queries, by what the collection holds")
    ax.legend(title="collection", loc="upper left", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, out_dir, name)
    return fig


# ---------------------------------------------------------------------------------------------
# Feedback-loop figures (notebook 07). Inputs are the tables of helpers.metrics:
# drift_table(run), retrieval_by_iteration(run) and run_embeddings(run).

FIGSIZE = (10, 4.5)  # notebook width; text stays readable at the default 10 pt
_BANDS = ("iqr", "std")


def _iteration_axis(ax: Any, label: str = "iteration") -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(label)
    ax.grid(alpha=0.3)


def _need_columns(frame: pd.DataFrame, columns: Sequence[str], source: str) -> None:
    """A clear error when a figure is given the wrong table (or an empty one)."""
    if not len(frame):
        raise ValueError(f"The table is empty: nothing to plot. Pass the result of {source}.")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"Columns {missing} are missing; pass the result of {source}.")


def _line_with_band(
    ax: Any, frame: pd.DataFrame, prefix: str, label: str, color: str, band: str
) -> None:
    """Median and interquartile band (``iqr``) or mean and +-1 standard deviation (``std``)."""
    x = frame["iteration"]
    if band == "iqr":
        centre, low, high = (
            frame[f"{prefix}_median"],
            frame[f"{prefix}_q25"],
            frame[f"{prefix}_q75"],
        )
    else:
        centre = frame[f"{prefix}_mean"]
        low, high = centre - frame[f"{prefix}_std"], centre + frame[f"{prefix}_std"]
    ax.plot(x, centre, marker="o", color=color, label=label)
    ax.fill_between(x, low, high, color=color, alpha=0.2, linewidth=0)


def plot_drift(
    drift: pd.DataFrame,
    *,
    band: str = "iqr",
    out_dir: Path | None = None,
    name: str = "drift_per_iteration",
) -> Figure:
    """How far the descriptions have moved: cosine distance of each tavern's current version
    from its iteration-0 version and from its human reference (line: median over taverns, band:
    middle half of the taverns; ``band="std"``: mean +- 1 standard deviation), and the centroid
    shift of the whole set (dashed). ``drift``: :func:`helpers.metrics.drift_table`.

    What to look for: drift that keeps rising (the loop wanders away) or levels off (bounded,
    as Gerstgrasser et al. predict for ``accumulate``).
    """
    import matplotlib.pyplot as plt

    if band not in _BANDS:
        raise ValueError(f"band must be one of {_BANDS}, got {band!r}.")
    need = ["iteration", "centroid_shift_start", "centroid_shift_reference"]
    need += [f"{p}_{s}" for p in ("drift_start", "drift_reference")
             for s in ("mean", "std", "q25", "median", "q75")]  # fmt: skip
    _need_columns(drift, need, "helpers.metrics.drift_table(run)")
    centre = "median" if band == "iqr" else "mean"
    spread_label = "middle 50% of taverns" if band == "iqr" else "±1 sd over taverns"
    fig, ax = plt.subplots(figsize=FIGSIZE, constrained_layout=True)
    _line_with_band(ax, drift, "drift_reference", f"from its human reference ({centre})",
                    OKABE_ITO[0], band)  # fmt: skip
    _line_with_band(ax, drift, "drift_start", f"from its iteration-0 version ({centre})",
                    OKABE_ITO[1], band)  # fmt: skip
    ax.plot(drift["iteration"], drift["centroid_shift_reference"], ls="--", marker="s",
            color=OKABE_ITO[0], alpha=0.8, label="centroid shift from the references")  # fmt: skip
    ax.plot(drift["iteration"], drift["centroid_shift_start"], ls="--", marker="s",
            color=OKABE_ITO[1], alpha=0.8, label="centroid shift from iteration 0")  # fmt: skip
    ax.set_ylim(bottom=0)
    ax.set_ylabel("cosine distance (1 − cos; 0 = same)")
    ax.set_title(f"Embedding drift of each tavern's current description (band: {spread_label})")
    ax.legend(fontsize=8, loc="upper left")
    _iteration_axis(ax)
    _save(fig, out_dir, name)
    return fig


def plot_dispersion(
    drift: pd.DataFrame, *, out_dir: Path | None = None, name: str = "dispersion_per_iteration"
) -> Figure:
    """Mean pairwise cosine distance among the current descriptions per iteration, against the
    same number for the human references (dashed). ``drift``: :func:`helpers.metrics.drift_table`.

    What to look for: a fall below the human baseline means the descriptions grow alike
    (homogenisation; the lost tails of Shumailov et al.).
    """
    import matplotlib.pyplot as plt

    _need_columns(drift, ["iteration", "dispersion", "reference_dispersion"],
                  "helpers.metrics.drift_table(run)")  # fmt: skip
    fig, ax = plt.subplots(figsize=FIGSIZE, constrained_layout=True)
    ax.plot(drift["iteration"], drift["dispersion"], marker="o", color=OKABE_ITO[0],
            label="current descriptions")  # fmt: skip
    ax.axhline(float(drift["reference_dispersion"].iloc[0]), ls="--", color=OKABE_ITO[7],
               label="human references (baseline)")  # fmt: skip
    ax.set_ylim(bottom=0)
    ax.set_ylabel("mean pairwise cosine distance")
    ax.set_title("Dispersion of the descriptions (lower = more alike)")
    ax.legend(fontsize=8, loc="lower left")
    _iteration_axis(ax)
    _save(fig, out_dir, name)
    return fig


def plot_lexical_diversity(
    drift: pd.DataFrame,
    *,
    out_dir: Path | None = None,
    name: str = "lexical_diversity_per_iteration",
) -> Figure:
    """Distinct-1 and distinct-2 over all current descriptions pooled, Self-BLEU among them,
    and the share of words copied from the prompt's context, per iteration; dashed lines: the
    same for the human references. ``drift``: :func:`helpers.metrics.drift_table`.

    What to look for: distinct-n falling and Self-BLEU rising together (shared phrasing
    spreads); a high copy rate says how it spreads (texts are copied from the context).
    """
    import matplotlib.pyplot as plt

    _need_columns(drift, ["iteration", "corpus_distinct_1", "corpus_distinct_2", "copy_rate"],
                  "helpers.metrics.drift_table(run)")  # fmt: skip
    series = [
        ("corpus_distinct_1", "distinct-1 (pooled)", OKABE_ITO[0]),
        ("corpus_distinct_2", "distinct-2 (pooled)", OKABE_ITO[2]),
        ("self_bleu", "Self-BLEU-4", OKABE_ITO[3]),
        ("copy_rate", "copied from context", OKABE_ITO[4]),
    ]
    fig, ax = plt.subplots(figsize=FIGSIZE, constrained_layout=True)
    for column, label, color in series:
        if column not in drift.columns:
            continue
        ax.plot(drift["iteration"], drift[column], marker="o", color=color, label=label)
        ref = f"reference_{column}"
        if ref in drift.columns:
            ax.axhline(float(drift[ref].iloc[0]), ls="--", color=color, alpha=0.7,
                       label=f"{label}: human references")  # fmt: skip
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("fraction (0–1)")
    ax.set_title("Lexical diversity, Self-BLEU and copying of the current descriptions")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    _iteration_axis(ax)
    _save(fig, out_dir, name)
    return fig


def _retrieval_k(per_query: pd.DataFrame) -> int:
    _need_columns(per_query, ["iteration", "query_id", "k"],
                  "helpers.metrics.retrieval_by_iteration(run)")  # fmt: skip
    return int(per_query["k"].iloc[0])


def plot_retrieval_by_iteration(
    per_query: pd.DataFrame,
    *,
    out_dir: Path | None = None,
    name: str = "retrieval_per_iteration",
) -> Figure:
    """Left: similarity of the best hit and mean similarity of the top k per iteration (line:
    mean over queries, band: middle half of the queries). Right: recall@k, hit@k and MRR over
    taverns. ``per_query``: :func:`helpers.metrics.retrieval_by_iteration`; iteration -1 is
    the store before the loop (human texts only).

    What to look for: similarity rising while recall and MRR stay flat: generated texts are
    closer to the queries without being more useful.
    """
    import matplotlib.pyplot as plt

    k = _retrieval_k(per_query)
    _need_columns(per_query, ["top1_score", "topk_mean_score", f"recall@{k}", f"hit@{k}", "rr"],
                  "helpers.metrics.retrieval_by_iteration(run)")  # fmt: skip
    grouped = per_query.groupby("iteration", sort=True)
    fig, (left, right) = plt.subplots(1, 2, figsize=FIGSIZE, constrained_layout=True)
    for column, label, color in (("top1_score", "top-1 hit", OKABE_ITO[0]),
                                 ("topk_mean_score", f"mean of top {k}", OKABE_ITO[1])):  # fmt: skip
        mean = grouped[column].mean()
        q25, q75 = grouped[column].quantile(0.25), grouped[column].quantile(0.75)
        left.plot(mean.index, mean.values, marker="o", color=color, label=f"{label} (mean)")
        left.fill_between(mean.index, q25.values, q75.values, color=color, alpha=0.2, lw=0)
    left.set_ylabel("cosine similarity to the query")
    left.set_title("How close the hits are (band: middle 50% of queries)", fontsize=10)
    left.legend(fontsize=8)
    _iteration_axis(left, "iteration (−1 = before the loop)")
    for column, label, color in ((f"recall@{k}", f"recall@{k}", OKABE_ITO[2]),
                                 (f"hit@{k}", f"hit@{k}", OKABE_ITO[5]),
                                 ("rr", "MRR", OKABE_ITO[3])):  # fmt: skip
        mean = grouped[column].mean()
        right.plot(mean.index, mean.values, marker="o", color=color, label=label)
    right.set_ylim(0, 1.05)
    right.set_ylabel("mean over queries (0–1)")
    right.set_title("Whether the relevant taverns are found", fontsize=10)
    right.legend(fontsize=8, loc="lower left")
    _iteration_axis(right, "iteration (−1 = before the loop)")
    fig.suptitle(f"Retrieval on the benchmark queries as the loop rewrites the store (k = {k})")
    _save(fig, out_dir, name)
    return fig


# value -> (colour-bar label, lower is better)
HEATMAP_VALUES: dict[str, tuple[str, bool]] = {
    "top1_score": ("cosine similarity of the top-1 hit", False),
    "topk_mean_score": ("mean cosine similarity of the top k", False),
    "first_relevant_rank": ("rank of the first relevant tavern", True),
    "human_rank": ("rank of the best relevant human text", True),
    "rr": ("reciprocal rank", False),
    "generated_share": ("share of generated texts in the top k", True),
}


def plot_retrieval_heatmap(
    per_query: pd.DataFrame,
    value: str = "top1_score",
    *,
    out_dir: Path | None = None,
    name: str | None = None,
) -> Figure:
    """One cell per (query, iteration), coloured by ``value`` (see :data:`HEATMAP_VALUES`;
    the colour map is reversed for ranks so that bright is always good). Grey: undefined (no
    relevant human text in the store, say). ``per_query``:
    :func:`helpers.metrics.retrieval_by_iteration`. Saved as ``retrieval_heatmap_<value>.png``.

    What to look for: rows that change colour (queries whose answer the loop changed) against
    rows that stay put.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    _retrieval_k(per_query)
    if value not in HEATMAP_VALUES:
        raise ValueError(f"value must be one of {sorted(HEATMAP_VALUES)}, got {value!r}.")
    label, lower_better = HEATMAP_VALUES[value]
    table = per_query.pivot_table(index="query_id", columns="iteration", values=value,
                                  aggfunc="first", dropna=False)  # fmt: skip
    table = table.sort_index()
    texts = per_query.drop_duplicates("query_id").set_index("query_id")
    ylabels = [
        f"{qid}  {_short(str(texts.at[qid, 'query']), 38)}" if "query" in texts.columns else qid
        for qid in table.index
    ]
    n_rows, n_cols = table.shape
    fig, ax = plt.subplots(figsize=(10, max(3.0, 0.24 * n_rows + 1.6)), constrained_layout=True)
    cmap = plt.get_cmap("cividis_r" if lower_better else "cividis").with_extremes(bad="#DDDDDD")
    data = np.ma.masked_invalid(table.to_numpy(dtype=float))
    image = ax.imshow(data, aspect="auto", cmap=cmap, interpolation="nearest")
    ax.set_xticks(range(n_cols), [str(c) for c in table.columns])
    ax.set_yticks(range(n_rows), ylabels, fontsize=7 if n_rows > 20 else 8)
    ax.set_xlabel("iteration (−1 = before the loop)")
    ax.set_ylabel("query")
    if n_rows * n_cols <= 160:
        fmt = "{:.0f}" if "rank" in value else "{:.2f}"
        mid = float(np.nanmean(table.to_numpy(dtype=float))) if data.count() else 0.0
        for (i, j), v in np.ndenumerate(table.to_numpy(dtype=float)):
            if np.isfinite(v):
                dark = (v > mid) != lower_better  # cividis: light at the top end
                ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=7,
                        color="black" if dark else "white")  # fmt: skip
    fig.colorbar(image, ax=ax, label=label, shrink=0.8)
    ax.set_title(f"{label[0].upper() + label[1:]}, per query and iteration")
    _save(fig, out_dir, name or f"retrieval_heatmap_{value}")
    return fig


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def plot_source_share(
    per_query: pd.DataFrame,
    *,
    out_dir: Path | None = None,
    name: str = "source_share_per_iteration",
) -> Figure:
    """The spiral of silence (Chen et al. 2024). Left: share of generated texts in the top k
    (mean over queries) against their share of the whole searchable store, the share of queries
    answered first by a generated text, and the share whose relevant human text is still in
    the top k. Right: over-representation = top-k share / store share (above 1: the retriever
    prefers generated texts beyond their number). ``per_query``:
    :func:`helpers.metrics.retrieval_by_iteration`.
    """
    import matplotlib.pyplot as plt

    from helpers.metrics import retrieval_summary

    k = _retrieval_k(per_query)
    _need_columns(per_query, ["generated_share", "corpus_generated_share", "human_ref_in_topk",
                              "top1_source"],
                  "helpers.metrics.retrieval_by_iteration(run)")  # fmt: skip
    summary = retrieval_summary(per_query)
    x = summary["iteration"]
    fig, (left, right) = plt.subplots(1, 2, figsize=FIGSIZE, constrained_layout=True)
    left.plot(x, summary["generated_share"], marker="o", color=OKABE_ITO[3],
              label=f"generated share of the top {k}")  # fmt: skip
    left.plot(x, summary["corpus_generated_share"], ls="--", marker="s", color=OKABE_ITO[7],
              label="generated share of the store")  # fmt: skip
    left.plot(x, summary["top1_generated"], marker="^", color=OKABE_ITO[4],
              label="queries whose top-1 hit is generated")  # fmt: skip
    left.plot(x, summary["human_ref_in_topk"], marker="D", color=OKABE_ITO[0],
              label=f"relevant human text still in the top {k}")  # fmt: skip
    left.set_ylim(0, 1.05)
    left.set_ylabel("fraction (0–1)")
    left.set_title("Who answers: generated vs human texts", fontsize=10)
    left.legend(fontsize=8, loc="center left")
    _iteration_axis(left, "iteration (−1 = before the loop)")
    right.axhline(1.0, ls="--", color=OKABE_ITO[7], label="in proportion to the store")
    right.plot(x, summary["over_representation"], marker="o", color=OKABE_ITO[3],
               label="top-k share / store share")  # fmt: skip
    right.set_ylim(bottom=0)
    right.set_ylabel("over-representation (ratio)")
    right.set_title("Are generated texts favoured beyond their number?", fontsize=10)
    right.legend(fontsize=8, loc="lower right")
    _iteration_axis(right, "iteration (−1 = before the loop)")
    fig.suptitle(f"Source of the top-{k} results per iteration (spiral of silence)")
    _save(fig, out_dir, name)
    return fig


def default_n_neighbors(n_points: int) -> int:
    """UMAP's ``n_neighbors`` for a small set: about sqrt(n), from 2 to 15 (UMAP's default).

    Why not 15 always: with 50 points, 15 neighbours is a third of the data and UMAP shows
    only the global blob; sqrt(n) keeps local structure (a tavern's versions) visible.
    """
    return int(min(15, max(2, round(n_points**0.5))))


def cosine_knn(vectors: Any, k: int) -> tuple[Any, Any]:
    """Exact ``k`` nearest neighbours of every row by cosine distance, each row's own index
    first (distance 0), as UMAP's ``precomputed_knn`` wants them: (int32 indices, float32
    distances), both ``(n, k)``. Ties are broken by the lower index, so the graph is the same
    on every machine."""
    import numpy as np

    x = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    unit = x / np.where(norms == 0, 1.0, norms)
    distances = np.clip(1.0 - unit @ unit.T, 0.0, 2.0)
    np.fill_diagonal(distances, -1.0)  # each point is its own first neighbour
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    knn = np.take_along_axis(distances, order, axis=1)
    knn[:, 0] = 0.0
    return order.astype(np.int32), knn.astype(np.float32)


def umap_coordinates(
    vectors: Any,
    *,
    n_neighbors: int | None = None,
    min_dist: float = 0.1,
    random_state: int = 42,
) -> Any:
    """2-D UMAP coordinates (cosine metric, fixed ``random_state``: the same picture every run).

    The neighbour graph is computed here, exactly, with numpy (:func:`cosine_knn`) and handed to
    UMAP as ``precomputed_knn``: for fewer than 4,096 points UMAP would compute the same exact
    graph itself, but through numba functions compiled anew in every process (about 11 s of the
    first fit on 2 cores, docs/benchmarks.md section 1). What remains is compiled on the first
    fit (~6 s) and by ``import umap`` in a fresh environment (~20 s, once: ``./kit.sh venv``
    does it during the install). Fewer than 4 points cannot be laid out (ValueError).
    """
    import warnings

    import numpy as np

    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2 or len(x) < 4:
        raise ValueError(f"UMAP needs at least 4 vectors (rows of a 2-D array), got {x.shape}.")
    n_neighbors = default_n_neighbors(len(x)) if n_neighbors is None else int(n_neighbors)
    if not 2 <= n_neighbors < len(x):
        raise ValueError(f"n_neighbors must be from 2 to {len(x) - 1}, got {n_neighbors}.")
    import umap

    with warnings.catch_warnings():
        # n_jobs: see below; precomputed_knn: "transform will be unavailable" (it is not used)
        warnings.filterwarnings(
            "ignore", message=".*(n_jobs|gradient function|Spectral|precomputed_knn).*"
        )
        reducer = umap.UMAP(
            n_neighbors=n_neighbors,
            min_dist=min_dist,
            metric="cosine",
            random_state=random_state,
            n_jobs=1,  # a fixed random_state forces one thread anyway; saying so silences a warning
            init="spectral" if len(x) > 30 else "random",  # spectral init fails on tiny graphs
            precomputed_knn=(*cosine_knn(x, n_neighbors), None),
        )
        return reducer.fit_transform(x)


def plot_umap(
    points: pd.DataFrame,
    vectors: Any,
    *,
    coords: Any = None,
    n_neighbors: int | None = None,
    random_state: int = 42,
    label_taverns: bool | None = None,
    out_dir: Path | None = None,
    name: str = "umap_trajectories",
) -> Figure:
    """UMAP of every description of a run: generated versions coloured by iteration, each
    tavern's path from its human reference (star; hollow when ``human_fraction`` kept it out of
    the store) through its versions in order. ``points, vectors``:
    :func:`helpers.metrics.run_embeddings`; ``coords``: precomputed 2-D coordinates (skips
    the fit). Tavern names are written next to their references when there are at most 12
    taverns (``label_taverns`` forces either way).

    What to look for: paths that run off together (the collection drifts one way), versions
    that gather in one spot (collapse), references left alone in their corners. UMAP keeps
    neighbourhoods, not distances: compare the numbers of :func:`plot_drift`, not the lengths
    of the paths. See :func:`umap_coordinates` for the time the first fit takes.
    """
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import BoundaryNorm
    from matplotlib.lines import Line2D

    _need_columns(points, ["tavern_id", "iteration", "source", "in_store"],
                  "helpers.metrics.run_embeddings(run)")  # fmt: skip
    if len(points) != len(vectors):
        raise ValueError(f"{len(points)} points but {len(vectors)} vectors; pass both from "
                         "helpers.metrics.run_embeddings(run).")  # fmt: skip
    n_neighbors = default_n_neighbors(len(points)) if n_neighbors is None else n_neighbors
    xy = np.asarray(
        coords if coords is not None
        else umap_coordinates(vectors, n_neighbors=n_neighbors, random_state=random_state)
    )  # fmt: skip
    frame = points.reset_index(drop=True).assign(x=xy[:, 0], y=xy[:, 1])
    generated = frame[frame["source"] == "generated"]
    humans = frame[frame["source"] == "human"]
    n_iter = int(generated["iteration"].max()) + 1 if len(generated) else 1
    cmap = plt.get_cmap("viridis", max(n_iter, 1))
    norm = BoundaryNorm(np.arange(-0.5, n_iter + 0.5), cmap.N)
    fig, ax = plt.subplots(figsize=(10, 7), constrained_layout=True)
    for _tid, group in frame.groupby("tavern_id", sort=False):
        path = group.sort_values("iteration")
        ax.plot(path["x"], path["y"], color="#888888", lw=0.8, alpha=0.6, zorder=1)
    scatter = ax.scatter(generated["x"], generated["y"], c=generated["iteration"], cmap=cmap,
                         norm=norm, s=36, edgecolors="white", linewidths=0.4, zorder=2)  # fmt: skip
    stored = humans[humans["in_store"].astype(bool)]
    absent = humans[~humans["in_store"].astype(bool)]
    star = 180 if len(humans) <= 12 else 110  # many taverns: smaller stars, less overlap
    ax.scatter(stored["x"], stored["y"], marker="*", s=star, color="black", zorder=3)
    ax.scatter(absent["x"], absent["y"], marker="*", s=star, facecolors="none",
               edgecolors="black", zorder=3)  # fmt: skip
    if label_taverns is None:
        label_taverns = humans["tavern_id"].nunique() <= 12
    if label_taverns:
        for row in humans.itertuples():
            ax.annotate(row.tavern_id, (row.x, row.y), xytext=(4, 4), textcoords="offset points",
                        fontsize=7)  # fmt: skip
    colorbar = fig.colorbar(scatter, ax=ax, ticks=range(n_iter), shrink=0.8)
    colorbar.set_label("iteration of the generated version")
    handles = [
        Line2D([], [], marker="*", ls="", color="black", ms=12, label="human reference (stored)"),
        Line2D([], [], marker="*", ls="", color="black", mfc="none", ms=12,
               label="human reference (not in the store)"),
        Line2D([], [], color="#888888", label="one tavern's path: reference → versions"),
    ]  # fmt: skip
    ax.legend(handles=handles, fontsize=8, loc="best")
    ax.set_xlabel("UMAP 1 (no unit: only neighbourhoods are meaningful)")
    ax.set_ylabel("UMAP 2 (no unit)")
    ax.set_title(
        f"UMAP of {len(frame)} descriptions: {len(humans)} human references, "
        f"{len(generated)} generated versions (cosine, n_neighbors={n_neighbors}, "
        f"random_state={random_state})",
        fontsize=10,
    )
    ax.grid(alpha=0.2)
    _save(fig, out_dir, name)
    return fig


# ---------------------------------------------------------------------------------------------
# Policy sweep figures (notebook 08). Input: helpers.experiments.seed_summary(table).

POLICY_COLORS = {"accumulate": OKABE_ITO[0], "replace": OKABE_ITO[3], "gated": OKABE_ITO[2]}
POLICY_MARKERS = {"accumulate": "o", "replace": "s", "gated": "^"}


def plot_policy_sweep(
    summary: pd.DataFrame,
    metric: str,
    *,
    ylabel: str,
    title: str | None = None,
    out_dir: Path | None = None,
    name: str | None = None,
) -> Figure:
    """One panel per ``human_fraction`` (share of the taverns whose human text is stored), one
    line per policy: the mean over seeds, with a band from the lowest to the highest seed.
    ``summary``: :func:`helpers.experiments.seed_summary`; ``metric``: one of its metrics
    (``dispersion``, ``drift_reference_median``, ``generated_share``, ...).

    What to look for: lines that part as the iterations go on (the policy matters) and bands
    that do not overlap (the difference is larger than the seed-to-seed noise).
    """
    import matplotlib.pyplot as plt

    need = ["policy", "human_fraction", "iteration", f"{metric}_mean", f"{metric}_min",
            f"{metric}_max", "seeds"]  # fmt: skip
    _need_columns(summary, need, "helpers.experiments.seed_summary(table)")
    data = summary[summary[f"{metric}_mean"].notna()]
    if not len(data):
        raise ValueError(f"{metric} has no values in this sweep: nothing to plot.")
    fractions = sorted(data["human_fraction"].unique(), reverse=True)
    fig, axes = plt.subplots(
        1, len(fractions), figsize=(FIGSIZE[0], 3.8), sharey=True, constrained_layout=True,
        squeeze=False,
    )  # fmt: skip
    for ax, fraction in zip(axes[0], fractions, strict=True):
        part = data[data["human_fraction"] == fraction]
        for i, (policy, g) in enumerate(part.groupby("policy", sort=True)):
            g = g.sort_values("iteration")
            color = POLICY_COLORS.get(policy, OKABE_ITO[(i + 4) % len(OKABE_ITO)])
            ax.plot(g["iteration"], g[f"{metric}_mean"], marker=POLICY_MARKERS.get(policy, "o"),
                    color=color, label=f"{policy} (n={int(g['seeds'].max())} seeds)")  # fmt: skip
            ax.fill_between(g["iteration"], g[f"{metric}_min"], g[f"{metric}_max"], color=color,
                            alpha=0.15, linewidth=0)  # fmt: skip
        ax.set_title(f"human texts kept: {fraction:.0%}", fontsize=10)
        below = part["iteration"].min() < 0
        _iteration_axis(ax, "iteration (−1 = before the loop)" if below else "iteration")
    axes[0][0].set_ylabel(ylabel)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(
        title or f"{metric} per iteration by policy (line: mean over seeds; band: min–max)"
    )
    _save(fig, out_dir, name or f"sweep_{metric.replace('@', '_at_')}")
    return fig
