"""What a finished sweep leaves behind, so its numbers can be checked without generating again.

A full experiment takes an hour of generation; its loop runs live in an ignored run folder.
This module turns them into small committed files and back:

* :func:`export_runs` writes each run's ``params.json``, ``metrics.csv`` and its ledger
  *without the prompts* (``ledger.jsonl.xz``: texts, vectors, contexts and lineage stay), and
  :func:`restore_runs` puts them back into a run folder, where the loop's resume rebuilds each
  store from its ledger. :class:`FrozenGenerator` stands in for the model while recomputing:
  asked to generate, it raises, so a recomputation provably generates nothing.
* :func:`paper_metric_tables`: the metrics the papers use, per iteration of every run (fact
  retention per tavern; k-NN precision and recall against the human texts, Vendi score, and the
  hubness and Gini coefficient of what the loop retrieved as context, per run).
* :func:`arm_curves`: every metric per arm and iteration with a 95 % interval from the same
  cluster bootstrap the claims use (:func:`helpers.stats.estimate_effect`), and
  :func:`plot_arm_curves` draws them.
"""

from __future__ import annotations

import dataclasses
import json
import lzma
import shutil
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from helpers import stats as st
from helpers.claims import metric_source
from helpers.generators.base import Generation, GenerationRequest, TokenLedger

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from helpers.feedback_loop import LoopRun

ARM_KEYS = ["run_id", "policy", "human_fraction", "seed"]
LEDGER_FILE = "ledger.jsonl.xz"
DROPPED_FIELDS = ("prompt",)  # the prompt is rebuilt from data + context; it is most of the bytes

# Metrics drawn per arm (unit-table metrics get intervals over seeds and taverns or queries;
# run-level ones over seeds), with the label a reader sees.
CURVE_METRICS: dict[str, str] = {
    "drift_reference_mean": "drift from the human text",
    "dispersion": "dispersion (across taverns)",
    "corpus_distinct_2": "pooled distinct-2",
    "fact_retention": "fact retention",
    "vendi": "Vendi score",
    "knn_recall": "k-NN recall vs human texts",
    "knn_precision": "k-NN precision vs human texts",
    "context_gini": "Gini of context retrievals",
    "over_representation": "over-representation (top-3)",
    "human_percentile": "human text's rank percentile",
    "context_own_share": "context from the tavern itself",
    "perplexity": "perplexity under SmolLM2",
    "within_tavern_spread": "spread within a tavern (4 samples)",
}


# ---------------------------------------------------------------------------------------------
# Export and restore


def export_runs(runs: Sequence[LoopRun], out: Path) -> list[Path]:
    """``out/<run_id>/`` per run: params.json, metrics.csv and the ledger without prompts, xz."""
    folders = []
    for run in runs:
        folder = Path(out) / run.run_id
        folder.mkdir(parents=True, exist_ok=True)
        src = Path(run.ledger.folder)
        for name in ("params.json", "metrics.csv"):
            shutil.copyfile(src / name, folder / name)
        lines = []
        for rec in run.records():
            kept = {k: v for k, v in rec.items() if k not in DROPPED_FIELDS}
            lines.append(json.dumps(kept, sort_keys=True, ensure_ascii=False))
        with lzma.open(folder / LEDGER_FILE, "wt", encoding="utf-8", preset=9) as fh:
            fh.write("\n".join(lines) + "\n")
        folders.append(folder)
    return folders


def restore_runs(src: Path, loops_dir: Path) -> list[str]:
    """Unpack every exported run under ``src`` into ``loops_dir/<run_id>/`` (the layout the
    loop reads); a run already there is left alone. Returns the run ids."""
    ids = []
    for folder in sorted(p.parent for p in Path(src).glob(f"*/{LEDGER_FILE}")):
        target = Path(loops_dir) / folder.name
        ids.append(folder.name)
        if (target / "ledger.jsonl").is_file():
            continue
        target.mkdir(parents=True, exist_ok=True)
        for name in ("params.json", "metrics.csv"):
            shutil.copyfile(folder / name, target / name)
        with lzma.open(folder / LEDGER_FILE, "rt", encoding="utf-8") as fh:
            (target / "ledger.jsonl").write_text(fh.read(), encoding="utf-8")
    if not ids:
        raise FileNotFoundError(f"No exported run (*/{LEDGER_FILE}) under {src}.")
    return ids


class FrozenGenerator:
    """A generator that never generates: the model name of the runs being recomputed, and an
    error if the loop asks for a text (it should find every text in the ledgers)."""

    name = "local"
    description_max_tokens = 0
    default_seed = 0
    text_settings = None  # it makes no text, so no setting of it can change one

    def __init__(self, model: str) -> None:
        self.model = model
        self.usage = TokenLedger()

    def generate(self, prompt: str, **_: Any) -> Generation:
        raise RuntimeError(
            "A recomputation asked for a new generation: a ledger is incomplete. Rerun "
            "scripts/run_experiment.py without --recompute to generate what is missing."
        )

    def generate_many(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        return [self.generate(r.prompt) for r in requests]


# ---------------------------------------------------------------------------------------------
# The papers' metrics per iteration


def _context_counts(records: Sequence[dict[str, Any]], it: int, searchable: int) -> np.ndarray:
    """How often each searchable row was retrieved as context in iteration ``it`` (rows never
    retrieved count 0)."""
    counts = Counter(int(c) for r in records if r["iteration"] == it for c in r["context_ids"])
    values = list(counts.values())
    return np.asarray(values + [0] * max(searchable - len(values), 0), dtype=float)


def paper_metric_tables(
    runs: Sequence[LoopRun], *, k: int = 3
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(per_run, per_tavern)``. ``per_run``: one row per (run, iteration) with
    ``context_own_share`` (share of the iteration's context rows that belong to the tavern
    being written: its human text or its own earlier versions), ``vendi``,
    ``knn_precision``/``knn_recall`` (k-NN, ``k``) of the current versions against the run's
    human references, and ``context_hubness``/``context_gini`` of the iteration's context
    retrievals over the rows it could retrieve. ``per_tavern``: one row per (run, iteration,
    tavern) with ``fact_retention`` (overall), ``fact_fields`` and ``fact_reference``
    (:func:`helpers.paper_metrics.fact_retention`); ``cluster`` is the tavern id."""
    from helpers import paper_metrics as pm
    from helpers.data import load_taverns, tavern_records
    from helpers.ledger import decode_vector
    from helpers.metrics import current_versions, reference_embeddings
    from helpers.run_analysis import searchable_counts

    taverns = {t["tavern_id"]: t for t in tavern_records(load_taverns())}
    run_rows, tavern_rows = [], []
    refs: dict[str, Any] = {}
    for run in runs:
        arm = {"run_id": run.run_id, "policy": run.params["policy"],
               "human_fraction": float(run.params["human_fraction"]),
               "seed": int(run.params["seed"])}  # fmt: skip
        ids = list(run.params["tavern_ids"])
        if any(t not in refs for t in ids):
            refs |= reference_embeddings(run)
        real = np.asarray([refs[t] for t in ids])
        records = run.records()
        n_human = len(run.params.get("human_taverns", []))
        for it in sorted({int(r["iteration"]) for r in records}):
            current = current_versions(records, it)
            present = [t for t in ids if t in current]
            vectors = np.asarray([decode_vector(current[t]["vector_b64"]) for t in present])
            precision, recall = (pm.knn_precision_recall(real, vectors, k=k)
                                 if len(present) > k else (np.nan, np.nan))  # fmt: skip
            counts = _context_counts(records, it, sum(searchable_counts(
                records, run.params["policy"], n_human, it - 1)))  # fmt: skip
            contexts = [(r["tavern_id"], c) for r in records if r["iteration"] == it
                        for c in r["context"]]  # fmt: skip
            own = np.mean([c["tavern_id"] == t for t, c in contexts]) if contexts else np.nan
            run_rows.append(arm | {
                "iteration": it, "context_own_share": own,
                "vendi": pm.vendi_score(vectors) if len(present) else np.nan,
                "knn_precision": precision, "knn_recall": recall,
                "context_hubness": pm.hubness(counts) if len(counts) else np.nan,
                "context_gini": pm.gini(counts) if len(counts) else np.nan,
            })  # fmt: skip
            for t in present:
                kept = pm.fact_retention(current[t]["text"], taverns[t])
                tavern_rows.append(arm | {
                    "iteration": it, "cluster": t, "fact_retention": kept.overall,
                    "fact_fields": kept.fields, "fact_reference": kept.reference,
                })  # fmt: skip
    return pd.DataFrame(run_rows), pd.DataFrame(tavern_rows)


# ---------------------------------------------------------------------------------------------
# Curves per arm


def arm_curves(
    table: pd.DataFrame,
    units: Sequence[pd.DataFrame] = (),
    metrics: Sequence[str] = tuple(CURVE_METRICS),
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per (metric, policy, human_fraction, iteration): ``estimate`` (the mean over
    seeds and clusters), ``ci_low``/``ci_high`` (95 %, cluster bootstrap over seeds and clusters
    as for the claims), ``seeds`` and ``clusters``. Metrics missing from every table are
    skipped; iteration -1 (the store before the loop) is kept where a metric has it."""
    rng = np.random.default_rng(seed)
    rows = []
    for metric in metrics:
        try:
            source = metric_source(metric, table, units)
        except KeyError:
            continue
        part = source[np.isfinite(source[metric].to_numpy(dtype=float))]
        for (policy, fraction, it), g in part.groupby(["policy", "human_fraction", "iteration"]):
            d = st.effect_matrix(g.groupby(["seed", "cluster"])[metric].mean())
            e = st.estimate_effect(d, rng, n_boot=n_boot)
            if not np.isfinite(e.estimate):  # one unit only: its value, no interval
                e = dataclasses.replace(e, estimate=float(np.nanmean(d)))
            rows.append({"metric": metric, "policy": policy, "human_fraction": fraction,
                         "iteration": int(it), "estimate": e.estimate, "ci_low": e.ci_low,
                         "ci_high": e.ci_high, "seeds": e.n_seeds, "clusters": e.n_clusters})  # fmt: skip
    return pd.DataFrame(rows)


ARM_COLORS = ("#000000", "#E69F00", "#56B4E9", "#009E73", "#CC79A7", "#D55E00", "#0072B2")


def plot_arm_curves(curves: pd.DataFrame, path: Path | None = None, *, columns: int = 2) -> Figure:
    """One panel per metric, one line per arm with its 95 % band; writes a PNG when ``path``."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    metrics = [m for m in CURVE_METRICS if m in set(curves["metric"])]
    rows = -(-len(metrics) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 2.6 * rows), squeeze=False)
    arms = list(dict.fromkeys(zip(curves["policy"], curves["human_fraction"], strict=True)))
    for ax, metric in zip(axes.flat, metrics, strict=False):
        part = curves[(curves["metric"] == metric) & (curves["iteration"] >= 0)]
        for (policy, fraction), color in zip(arms, ARM_COLORS, strict=False):
            g = part[(part["policy"] == policy) & (part["human_fraction"] == fraction)]
            g = g.sort_values("iteration")
            label = policy if fraction == 1 else f"{policy} hf={fraction:g}"
            ax.plot(g["iteration"], g["estimate"], marker="o", ms=3, color=color, label=label)
            ax.fill_between(g["iteration"], g["ci_low"], g["ci_high"], color=color, alpha=0.15,
                            linewidth=0)  # fmt: skip
        ax.set_title(CURVE_METRICS[metric], fontsize=10)
        ax.set_xlabel("iteration", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(arms), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    if path is not None:
        fig.savefig(path, dpi=110, metadata={"Software": None})
    return fig


# ---------------------------------------------------------------------------------------------
# The committed results, for notebook 08 and the doc

RESULTS_DIR = Path(__file__).resolve().parents[1] / "docs" / "results"


@dataclasses.dataclass(frozen=True)
class SweepResults:
    """A sweep's committed tables (``scripts/run_experiment.py`` writes them)."""

    folder: Path
    manifest: dict[str, Any]
    checks: pd.DataFrame
    control: pd.DataFrame | None
    curves: pd.DataFrame | None

    @property
    def figure(self) -> Path:
        return self.folder / "curves.png"

    def describe(self) -> str:
        """One sentence on the sweep's size, model, time and commit, from its manifest."""
        m, p = self.manifest, self.manifest["parameters"]
        loop = p["loop"]
        return (
            f"{len(p['arms'])} arms ({', '.join(p['arms'])}) x {len(p['seeds'])} seeds, "
            f"{loop['iterations']} iterations over {loop['n_taverns']} taverns, "
            f"{loop['max_tokens']}-token texts from {p['model']}: {m['generated']} texts "
            f"generated in {m['minutes']} minutes (commit {m['commit'][:12]})"
        )

    def verdicts(self, which: str = "checks") -> str:
        """``"8 claims: 2 reproduced, 6 not detected"``, counted from the table."""
        table = self.checks if which == "checks" else self.control
        if table is None:
            return "no table"
        counts = table["verdict"].value_counts()
        order = [st.REPRODUCED, st.OPPOSITE, st.NOT_DETECTED, st.NOT_MEASURABLE]
        parts = [f"{int(counts[v])} {v}" for v in order if v in counts]
        return f"{len(table)} claims: {', '.join(parts)}"


def load_results(name: str, root: Path = RESULTS_DIR) -> SweepResults:
    """The committed results of sweep ``name`` (``docs/results/<name>/``)."""
    folder = Path(root) / name
    if not (folder / "manifest.json").is_file():
        known = sorted(p.parent.name for p in Path(root).glob("*/manifest.json"))
        raise FileNotFoundError(
            f"No results named {name!r} under {root}; there are: {known}. Make them with "
            "scripts/run_experiment.py."
        )

    def table(file: str) -> pd.DataFrame | None:
        return pd.read_csv(folder / file) if (folder / file).is_file() else None

    checks = table("checks.csv")
    if checks is None:
        raise FileNotFoundError(f"{folder} has no checks.csv: rerun scripts/run_experiment.py.")
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    return SweepResults(folder, manifest, checks, table("control_checks.csv"), table("curves.csv"))
