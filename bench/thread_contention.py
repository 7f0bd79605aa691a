"""Two processes on two cores: what computing threads cost when processes share the machine.

Why: the test suite runs on two pytest-xdist workers, and each worker's notebook kernels embed
texts (torch) and generate (llama.cpp). With each process free to use every core, two of them at
once ran far slower than the sum of their parts; tests/conftest.py therefore gives each worker,
and what it starts, one computing thread (``OMP_NUM_THREADS=1`` ...). This measures that choice.

The workload: one process embeds docstrings with the kit's ``encode_documents`` (what notebook 03
and the loop do) after a warm-up call, and prints its seconds. Four cases, each a fresh Python
process (thread settings are read at start-up): alone with the default threads, alone with one
thread, two at once with the default threads, two at once with one thread each. Reported: the
seconds of each process, and the throughput of the pair relative to one process alone.

Full: 1,200 texts, 2 repetitions of every case. Quick: 150 texts, 1 repetition.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.common import loadavg, markdown_table, module_main, prepare_out_dir
from bench.common import write_csv as _write_csv
from helpers.settings import REPO_ROOT

NAME = "thread_contention"
FULL = {"texts": 1200, "repetitions": 2}
QUICK = {"texts": 150, "repetitions": 1}
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
_WORKLOAD = """
import sys, time
from helpers.corpus import docstring_corpus
from helpers.embeddings import encode_documents
texts = docstring_corpus(int(sys.argv[1]), seed=1)
encode_documents(texts[:32])
start = time.perf_counter()
encode_documents(texts)
print(f"SECONDS {time.perf_counter() - start:.3f}", flush=True)
"""


def _env(one_thread: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ONE_THREAD}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return {**env, **ONE_THREAD} if one_thread else env


def _processes(n: int, texts: int, one_thread: bool) -> list[float]:
    """Start ``n`` workload processes at once; the seconds each reports."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKLOAD, str(texts)],
            env=_env(one_thread),
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(n)
    ]
    seconds = []
    for proc in procs:
        out, _ = proc.communicate(timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"the embedding workload failed with exit code {proc.returncode}")
        seconds.append(float(out.split("SECONDS")[-1]))
    return seconds


def run(quick: bool = False, out_dir: Path | None = None) -> Any:
    import pandas as pd

    out = prepare_out_dir(out_dir)
    size = QUICK if quick else FULL
    rows = []
    for rep in range(size["repetitions"]):
        for n, one_thread in ((1, False), (1, True), (2, False), (2, True)):
            for i, s in enumerate(_processes(n, size["texts"], one_thread)):
                rows.append(
                    {"repetition": rep, "processes": n, "threads": "1" if one_thread else "default",
                     "process": i, "texts": size["texts"], "seconds": round(s, 3),
                     "loadavg": loadavg()[0], "cpus": os.cpu_count()}
                )  # fmt: skip
    df = pd.DataFrame(rows)
    _write_csv(df, out, NAME)
    return df


def summary(df: Any) -> Any:
    """Per case: median seconds of one process, and the pair's throughput relative to one process
    alone with the default threads (2 processes in the time of their slower one)."""
    import pandas as pd

    base = df[(df.processes == 1) & (df.threads == "default")]["seconds"].median()
    out = []
    for (n, threads), part in df.groupby(["processes", "threads"], sort=False):
        walls = part.groupby("repetition")["seconds"].max()  # a pair ends with its slower process
        wall = float(statistics.median(walls))
        out.append(
            {"processes at once": n, "threads per process": threads,
             "median s per process": round(float(part["seconds"].median()), 2),
             "throughput vs one default process": round(n * base / wall, 2)}
        )  # fmt: skip
    return pd.DataFrame(out)


def markdown(df: Any) -> str:
    texts = int(df["texts"].iloc[0])
    return "\n".join(
        [
            f"{texts} docstrings embedded by `encode_documents` in each process "
            f"({int(df['cpus'].iloc[0])} CPUs, load average {df['loadavg'].max():.1f} at most):",
            "",
            markdown_table(summary(df)),
        ]
    )


if __name__ == "__main__":
    raise SystemExit(module_main(NAME, run, markdown, __doc__.split("\n\n")[0]))
