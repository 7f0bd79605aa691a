"""Peak memory of the main job and of a feedback-loop run, over the whole process tree.

Why: a course that runs on a laptop has to say how much RAM it needs. The main job runs each
notebook in its own Jupyter kernel, and the kernels hold torch, the embedding model, the local
LLM and (notebook 01) Milvus servers, so the parent's RSS says little. The tree is polled every
0.2 s with psutil: the sum of the RSS of the process and all its descendants (peak of the sum),
and the largest single process. RSS counts shared pages once per process, so the sum is an upper
bound of what the machine gives up. A bare ``python -c`` is measured too, as the floor.

Workloads (subprocesses, GFL_RUN_DIR in the benchmark folder, fresh run folders):

* ``python -m helpers.main_job`` with its default parameters (quick: ``--only 02``);
* ``python -m helpers.feedback_loop`` on the configured backend (default lite, in-process) with
  the local model: notebook 06's loop, 8 taverns x 3 iterations x 120 tokens (quick: 2 taverns x 1
  iteration x 20 tokens).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from bench.common import (
    markdown_table,
    module_main,
    prepare_out_dir,
    run_waiting_for_cpp,
)
from bench.common import write_csv as _write_csv

NAME = "memory"
LOOP_FULL = ["--iterations", "3", "--n-taverns", "8", "--max-tokens", "120"]
LOOP_QUICK = ["--iterations", "1", "--n-taverns", "2", "--max-tokens", "20"]
TIMEOUT_S = 3600.0


def workloads(quick: bool, runs_root: Path) -> list[tuple[str, list[str], bool]]:
    """(name, python arguments, needs the C++ server slot)."""
    job = ["-m", "helpers.main_job", "--run-id", "bench-memory"]
    loop = [
        "-m", "helpers.feedback_loop", *(LOOP_QUICK if quick else LOOP_FULL),
        "--generator", "local", "--run-id", "bench-memory-loop", "--fresh", "--no-progress",
        "--run-dir", str(runs_root),
    ]  # fmt: skip
    return [
        ("bare python (floor)", ["-c", "import time; time.sleep(1.0)"], False),
        ("main job" + (" --only 02" if quick else ""), [*job, *(["--only", "02"] if quick else [])],
         not quick),
        ("feedback loop", loop, False),
    ]  # fmt: skip


def run(quick: bool = False, out_dir: Path | None = None) -> Any:
    import pandas as pd

    out = prepare_out_dir(out_dir)
    runs_root = out / f"{NAME}_runs"
    if runs_root.exists():
        shutil.rmtree(runs_root)  # fresh folders: a warm cache would hide the real peak
    rows = []
    for i, (name, args, needs_cpp) in enumerate(workloads(quick, runs_root)):
        log = out / f"{NAME}_{i}.log"
        result, _ = run_waiting_for_cpp(
            args, log=log, runs_root=runs_root, needs_cpp=needs_cpp, timeout=TIMEOUT_S
        )
        if result.returncode != 0:
            print(f"{name} failed with exit code {result.returncode}; see {log}")
        rows.append({"workload": name, **result.as_row(), "log": str(log)})
    df = pd.DataFrame(rows)
    df["quick"] = quick
    _write_csv(df, out, NAME)
    return df


def markdown(df: Any) -> str:
    quick = bool(df["quick"].iloc[0])
    view = df.copy()
    view["ok"] = view["returncode"] == 0
    lines = [
        "Peak resident memory (RSS, MB), sampled every 0.2 s over each process tree"
        + (" (QUICK smoke run)" if quick else "")
        + ":",
        "",
        markdown_table(
            view,
            [
                "workload",
                "ok",
                "seconds",
                "peak_tree_rss_mb",
                "peak_single_rss_mb",
                "root_peak_rss_mb",
                "max_processes",
                "largest_process",
            ],
        ),
        "",
        "peak_tree_rss_mb: highest sum over the process and all its descendants (an upper bound: "
        "shared pages count once per process); peak_single_rss_mb: the largest single process; "
        "root_peak_rss_mb: the command's own process.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(module_main(NAME, run, markdown, __doc__.split("\n\n")[0]))
