"""Wall time of the README's main command, ``./kit.sh run`` (= ``python -m helpers.main_job``),
cold and warm, in total and per notebook.

Why: the README promises a run time, and the target is under 5 minutes cold with the default
parameters on 2 cores. Cold = a fresh run folder (nothing of the run cached: no embeddings, no
generations, no Milvus data), the venv already installed. Warm = the same command again with the
same ``--run-id``, so it reuses that folder's caches (notebook 03's corpus embeddings, the
loop's ledger, ...). Each run is a subprocess with ``GFL_RUN_DIR`` inside the benchmark's output
folder; the seconds per notebook come from the ``main_job.json`` it writes. The memory of the
whole process tree (kernels, Milvus servers) is sampled every 0.2 s on the side (a sample costs
about a millisecond per process, nothing next to a notebook).

Notebook 01 starts the article's C++ Milvus server, and only one can run per machine: before each
run the benchmark waits while another one runs, and retries a run that failed on the kit's lock.

Quick: ``--only 02`` (one cheap notebook, no C++ server), cold and warm.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from bench.common import (
    loadavg,
    markdown_table,
    module_main,
    prepare_out_dir,
    run_waiting_for_cpp,
    verdict,
)
from bench.common import write_csv as _write_csv

NAME = "main_job"
TARGET_COLD_S = 300.0
RUN_ID = "bench-main-job"
QUICK_ONLY = ("02",)
TIMEOUT_S = 3600.0
LOCK_RETRIES = 3


def run(quick: bool = False, out_dir: Path | None = None) -> Any:
    import pandas as pd

    out = prepare_out_dir(out_dir)
    runs_root = out / f"{NAME}_runs"
    run_folder = runs_root / RUN_ID
    if run_folder.exists():
        shutil.rmtree(run_folder)  # cold means cold, also when the same --out is used again
    args = ["-m", "helpers.main_job", "--run-id", RUN_ID]
    if quick:
        args += ["--only", *QUICK_ONLY]
    rows: list[dict[str, Any]] = []
    for mode in ("cold", "warm"):
        result, waited = _run_once(args, runs_root, out / f"{NAME}_{mode}.log", quick)
        per_notebook = _read_summary(run_folder / "main_job.json")
        notebooks_s = sum(n["seconds"] for n in per_notebook)
        rows.append(
            {
                "mode": mode,
                "item": "total",
                **result.as_row(),
                "ok": result.returncode == 0,
                "waited_for_cpp_s": round(waited, 1),
                "loadavg_after": loadavg()[0],
                "command": "./kit.sh run " + " ".join(args[2:]),
            }
        )
        for nb in per_notebook:
            rows.append(
                {"mode": mode, "item": nb["notebook"], "seconds": nb["seconds"], "ok": nb["ok"]}
            )
        rows.append(
            {
                "mode": mode,
                "item": "start-up, report and exit",
                "seconds": round(result.seconds - notebooks_s, 2),
                "ok": result.returncode == 0,
            }
        )
        if result.returncode != 0:
            print(f"main job ({mode}) failed with exit code {result.returncode}; see {result.log}")
    df = pd.DataFrame(rows)
    df["quick"] = quick
    _write_csv(df, out, NAME)
    return df


def _run_once(args: list[str], runs_root: Path, log: Path, quick: bool) -> tuple[Any, float]:
    """One main-job run; waits for the C++ server slot first when notebook 01 is included."""
    return run_waiting_for_cpp(
        args, log=log, runs_root=runs_root, needs_cpp=not quick, timeout=TIMEOUT_S,
        attempts=LOCK_RETRIES,
    )  # fmt: skip


def _read_summary(path: Path) -> list[dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return []


def markdown(df: Any) -> str:
    import pandas as pd

    quick = bool(df["quick"].iloc[0])
    totals = df[df["item"] == "total"].set_index("mode")
    items = [i for i in pd.unique(df["item"]) if i != "total"]
    table = pd.DataFrame({"step": [*items, "total (wall)"]})
    for mode in ("cold", "warm"):
        part = df[(df["mode"] == mode) & (df["item"] != "total")].set_index("item")
        col = [float(part["seconds"].get(i, float("nan"))) for i in items]
        col.append(float(totals.loc[mode, "seconds"]) if mode in totals.index else float("nan"))
        table[f"{mode} s"] = col
    lines = [
        f"`{totals['command'].iloc[0]}`"
        + (" (QUICK smoke run: one notebook)" if quick else "")
        + ", run as a subprocess with GFL_RUN_DIR in the benchmark folder:",
        "",
        markdown_table(table),
        "",
    ]
    for mode, row in totals.iterrows():
        lines.append(
            f"- {mode}: exit code {int(row['returncode'])}, peak memory of the process tree "
            f"{row['peak_tree_rss_mb']:.0f} MB (largest single process {row['peak_single_rss_mb']:.0f}"
            f" MB: {row['largest_process']}), up to {int(row['max_processes'])} processes"
            + (
                f", waited {row['waited_for_cpp_s']:.0f} s for another C++ server"
                if row["waited_for_cpp_s"]
                else ""
            )
            + "."
        )
    cold = float(totals.loc["cold", "seconds"]) if "cold" in totals.index else float("nan")
    ok = None if quick else bool(cold < TARGET_COLD_S and totals.loc["cold", "ok"])
    lines.append(
        f"- Target: cold under {TARGET_COLD_S / 60:.0f} minutes with the default parameters: "
        f"{cold / 60:.1f} min, {verdict(ok)}"
        + (" (not judged on a quick run)" if quick else "")
        + "."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(module_main(NAME, run, markdown, __doc__.split("\n\n")[0]))
