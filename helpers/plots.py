"""One function per figure. Each returns a matplotlib Figure and, given a folder, saves a PNG.

Colours come from the Okabe-Ito palette, which stays distinguishable with the common forms of
colour blindness.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

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
