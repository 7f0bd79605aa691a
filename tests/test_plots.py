"""Every figure of helpers.plots returns a matplotlib Figure, saves a non-empty PNG, fits the
notebook width and labels its axes; fed with the tables of a tiny real loop run."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # no display in CI; must come before pyplot is imported

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from helpers import plots

if TYPE_CHECKING:
    from tests.fixtures_loop import TinyLoop

pytest_plugins = ["tests.fixtures_loop"]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _close_figures() -> Iterator[None]:
    yield
    plt.close("all")


def check_figure(fig: Any, folder: Path, name: str) -> None:
    """A Figure, saved as a real PNG, at most 10 inches wide, every axis titled and labelled."""
    assert isinstance(fig, Figure)
    path = folder / f"{name}.png"
    assert path.is_file(), f"{path} was not written"
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000, f"{path}: {len(data)} bytes"
    height, width = plt.imread(path).shape[:2]
    assert width >= 900 and height >= 300  # 120 dpi: ~1200 px at notebook width
    assert fig.get_size_inches()[0] <= 10
    data_axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert data_axes
    for ax in data_axes:
        assert ax.get_xlabel() and ax.get_ylabel(), f"{name}: an axis has no label"
        assert ax.get_title() or fig.get_suptitle(), f"{name}: no title"


FIGURES: dict[str, tuple[Callable[..., Any], str, dict[str, Any]]] = {
    # name -> (function, which table of the tiny run, extra arguments)
    "drift_per_iteration": (plots.plot_drift, "drift", {}),
    "drift_std": (plots.plot_drift, "drift", {"band": "std", "name": "drift_std"}),
    "dispersion_per_iteration": (plots.plot_dispersion, "drift", {}),
    "lexical_diversity_per_iteration": (plots.plot_lexical_diversity, "drift", {}),
    "retrieval_per_iteration": (plots.plot_retrieval_by_iteration, "retrieval", {}),
    "retrieval_heatmap_top1_score": (plots.plot_retrieval_heatmap, "retrieval", {}),
    "retrieval_heatmap_first_relevant_rank": (
        plots.plot_retrieval_heatmap,
        "retrieval",
        {"value": "first_relevant_rank"},
    ),
    "retrieval_heatmap_human_rank": (
        plots.plot_retrieval_heatmap,
        "retrieval",
        {"value": "human_rank"},
    ),
    "source_share_per_iteration": (plots.plot_source_share, "retrieval", {}),
}


@pytest.mark.parametrize("name", list(FIGURES))
def test_loop_figures(name: str, tiny_loop: TinyLoop, tmp_path: Path) -> None:
    function, table, extra = FIGURES[name]
    fig = function(getattr(tiny_loop, table), out_dir=tmp_path, **extra)
    check_figure(fig, tmp_path, name)


def test_umap_figure(tiny_loop: TinyLoop, tmp_path: Path) -> None:
    fig = plots.plot_umap(tiny_loop.points, tiny_loop.vectors, out_dir=tmp_path)
    check_figure(fig, tmp_path, "umap_trajectories")
    title = fig.axes[0].get_title()
    assert "9 descriptions" in title and "random_state=42" in title
    # a fixed random_state gives the same layout again (reproducible figures)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = plots.umap_coordinates(tiny_loop.vectors)
    # a warning would print the venv's path into a notebook's committed output
    assert not [str(w.message) for w in caught if "umap" in w.filename], caught
    b = plots.umap_coordinates(tiny_loop.vectors)
    assert a.shape == (9, 2) and (a == b).all()
    # precomputed coordinates skip the fit
    fig = plots.plot_umap(tiny_loop.points, tiny_loop.vectors, coords=a, out_dir=tmp_path,
                          name="umap_again", label_taverns=False)  # fmt: skip
    check_figure(fig, tmp_path, "umap_again")


def test_retrieval_bars_figure(tmp_path: Path) -> None:
    summary = pd.DataFrame(
        {"recall@1": [0.5, 0.4], "recall@3": [0.8, 0.7], "hit@3": [0.9, 0.8], "MRR": [0.6, 0.5]},
        index=["human", "generated"],
    )
    check_figure(plots.plot_retrieval_bars(summary, out_dir=tmp_path), tmp_path,
                 "retrieval_by_collection")  # fmt: skip


def test_figures_refuse_the_wrong_table(tiny_loop: TinyLoop) -> None:
    with pytest.raises(ValueError, match="drift_table"):
        plots.plot_drift(tiny_loop.retrieval)
    with pytest.raises(ValueError, match="retrieval_by_iteration"):
        plots.plot_source_share(tiny_loop.drift)
    with pytest.raises(ValueError, match="empty"):
        plots.plot_dispersion(tiny_loop.drift.iloc[0:0])
    with pytest.raises(ValueError, match="value must be one of"):
        plots.plot_retrieval_heatmap(tiny_loop.retrieval, value="nonsense")
    with pytest.raises(ValueError, match="band"):
        plots.plot_drift(tiny_loop.drift, band="minmax")
    with pytest.raises(ValueError, match="at least 4"):
        plots.umap_coordinates(tiny_loop.vectors[:3])
    with pytest.raises(ValueError, match="n_neighbors"):
        plots.umap_coordinates(tiny_loop.vectors, n_neighbors=9)


def test_cosine_knn_is_the_exact_neighbour_graph() -> None:
    """The graph handed to UMAP equals a brute-force cosine search (scikit-learn's), each
    point first in its own row at distance 0."""
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 16)).astype(np.float32)
    indices, distances = plots.cosine_knn(x, 5)
    assert indices.shape == distances.shape == (40, 5)
    assert indices.dtype == np.int32 and distances.dtype == np.float32
    assert (indices[:, 0] == np.arange(40)).all() and (distances[:, 0] == 0).all()
    brute = NearestNeighbors(n_neighbors=5, metric="cosine", algorithm="brute").fit(x)
    want_dist, want_idx = brute.kneighbors(x)
    assert (indices == want_idx).all()
    np.testing.assert_allclose(distances[:, 1:], want_dist[:, 1:], atol=1e-5)
    # a zero vector (an empty text's embedding would be one) gives distances, not NaN
    x[7] = 0
    assert np.isfinite(plots.cosine_knn(x, 5)[1]).all()


def test_default_n_neighbors() -> None:
    assert [plots.default_n_neighbors(n) for n in (4, 9, 50, 300, 5000)] == [2, 3, 7, 15, 15]
