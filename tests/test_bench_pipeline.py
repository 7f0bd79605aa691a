"""Smoke tests of the benchmark scripts (bench/): they run, and their numbers hang together.

These tests time nothing against a threshold: speed depends on the machine and on what else
runs on it, so it is measured by ``./kit.sh bench``, which prints numbers. What is checked here
could fail for a real bug: the phases of a loop iteration add up to its measured wall time (a
phase left out, or counted twice, would not); the kit/raw embedding ratio is a finite positive
number; the local model produced tokens; the memory sampler sees the children of a process,
not just the process; the summary lists every benchmark it ran; an unknown benchmark is refused.

One quick run of the pipeline benchmarks (``python -m bench ... --quick``, as a subprocess, the
way ``./kit.sh bench`` runs it) is shared by the module: about 80 s on two cores.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO

PIPELINE = ("embedding_throughput", "generation", "loop_breakdown", "memory", "main_job")


@dataclass
class QuickRun:
    out: Path
    returncode: int
    output: str

    def csv(self, name: str) -> pd.DataFrame:
        return pd.read_csv(self.out / f"{name}.csv")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> QuickRun:
    out = tmp_path_factory.mktemp("bench-quick")
    env = dict(os.environ, GFL_RUN_DIR=str(out / "runs"))
    proc = subprocess.run(
        [sys.executable, "-m", "bench", *PIPELINE, "--quick", "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    return QuickRun(out, proc.returncode, proc.stdout + proc.stderr)


def test_quick_run_succeeds_and_writes_summary(quick_run: QuickRun) -> None:
    assert quick_run.returncode == 0, quick_run.output[-5000:]
    summary = (quick_run.out / "summary.md").read_text()
    assert f"Summary: {quick_run.out / 'summary.md'}" in quick_run.output
    for name in PIPELINE:
        assert f"## {name}" in summary
        assert f"| {name} | ok |" in summary
        assert (quick_run.out / f"{name}.csv").is_file()
    assert "./kit.sh bench " + " ".join(PIPELINE) + " --quick" in summary
    machine = json.loads((quick_run.out / "machine.json").read_text())
    assert machine["logical_cores"] >= 1 and machine["ram_gb"] > 0
    assert machine["packages"]["pymilvus"] != "not installed"


def test_loop_phases_add_up_to_the_iteration_wall_time(quick_run: QuickRun) -> None:
    df = quick_run.csv("loop_breakdown")
    iterations = df[df["scope"].str.startswith("iteration")]
    assert set(iterations["scope"]) == {"iteration 0", "iteration 1"}
    for scope, part in iterations.groupby("scope"):
        wall = float(part["iteration_wall_s"].iloc[0])
        phases = part.set_index("phase")["seconds"]
        assert wall > 0
        # The phases are measured inside the loop, the wall time around it: 'between steps'
        # is what is left, and must be small next to the rest (not negative, not large).
        assert phases["between steps"] > -0.01 * wall, (scope, phases.to_dict())
        # 'other' is the step's time not in a named phase: negative would mean double counting
        assert phases["other"] > -0.01 * wall, (scope, phases.to_dict())
        named = phases.drop(["between steps"]).sum()
        assert named == pytest.approx(wall, rel=0.05), (scope, phases.to_dict(), wall)
        assert phases["generate"] > 0 and phases["embed"] > 0 and phases["insert"] > 0
        assert part["output_tokens"].iloc[0] > 0


def test_embedding_ratio_is_positive_and_finite(quick_run: QuickRun) -> None:
    from bench.embedding_throughput import ratios

    df = quick_run.csv("embedding_throughput")
    r = ratios(df)
    assert set(r["texts"]) == {"docstrings", "descriptions"}
    for col in ("pooled_ratio", "median_ratio", "median_cpu_ratio"):
        assert all(math.isfinite(v) and v > 0 for v in r[col]), r
    assert (df["texts_per_s"] > 0).all()


def test_local_generation_produced_tokens(quick_run: QuickRun) -> None:
    df = quick_run.csv("generation")
    local = df[df["kind"] == "local"]
    assert len(local) >= 1
    assert (local["tokens_per_s"] > 0).all() and (local["output_tokens"] > 0).all()
    total = df[(df["kind"] == "claude_estimate") & (df["scope"] == "default loop")].iloc[0]
    assert total["generations"] == 3 * 47  # LoopParams() defaults over data/taverns.csv
    assert total["output_tokens_max"] == 141 * 600
    assert 0 < total["input_tokens"] < total["prompt_chars"]
    cost = df[df["kind"] == "claude_cost"]
    assert (cost["usd_estimate"] > 0).all()


def test_memory_sampler_counts_the_children(quick_run: QuickRun) -> None:
    df = quick_run.csv("memory").set_index("workload")
    floor = df.loc["bare python (floor)"]
    job = df.loc["main job --only 02"]
    assert (df["returncode"] == 0).all(), df
    # main_job runs the notebook in a Jupyter kernel: the tree holds more than the parent alone
    assert job["max_processes"] >= 2
    assert job["peak_tree_rss_mb"] > job["root_peak_rss_mb"] > floor["peak_tree_rss_mb"]
    assert job["peak_single_rss_mb"] <= job["peak_tree_rss_mb"]


def test_main_job_cold_and_warm_recorded(quick_run: QuickRun) -> None:
    df = quick_run.csv("main_job")
    totals = df[df["item"] == "total"].set_index("mode")
    assert list(totals.index) == ["cold", "warm"]
    assert (totals["returncode"] == 0).all()
    for mode in ("cold", "warm"):
        notebooks = df[(df["mode"] == mode) & df["item"].str.endswith(".ipynb")]
        assert list(notebooks["item"]) == ["02_schema_and_collection.ipynb"]
        assert 0 < notebooks["seconds"].sum() <= totals.loc[mode, "seconds"]


def test_unknown_benchmark_is_refused() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "nosuch", "--quick"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "unknown benchmark(s) 'nosuch'" in proc.stderr
    assert "loop_breakdown" in proc.stderr  # the message lists what exists


def _clone_rows(totals: list[tuple[str, float, bool]]) -> pd.DataFrame:
    rows = [{"mode": "cold 1", "item": "install (./kit.sh venv)", "seconds": 150.0, "ok": True}]
    for mode, seconds, ok in totals:
        rows.append(
            {"mode": mode, "item": "total", "seconds": seconds, "ok": ok, "returncode": 0 if ok else 1,
             "peak_tree_rss_mb": 1000.0, "peak_single_rss_mb": 900.0, "largest_process": "python",
             "max_processes": 4, "waited_for_cpp_s": 0.0, "loadavg_after": 1.0,
             "command": "./kit.sh run --run-id bench-main-job"}
        )  # fmt: skip
        rows.append({"mode": mode, "item": "01_start.ipynb", "seconds": seconds - 5, "ok": ok})
    df = pd.DataFrame(rows)
    df["quick"] = False
    return df


def test_main_job_target_is_the_mean_of_every_fresh_clone() -> None:
    from bench import main_job

    passing = _clone_rows([("cold 1", 250.0, True), ("cold 2", 280.0, True), ("cold 3", 310.0, True), ("warm", 90.0, True)])  # fmt: skip
    text = main_job.markdown(passing)
    assert "min 4.17, median 4.67, max 5.17 min; mean 4.67 min over 3 of 3 cold runs, PASS" in text
    assert "| cold min s | cold median s | cold max s |" in text
    # a failed clone is not averaged away: the target is not met
    failing = _clone_rows(
        [("cold 1", 250.0, True), ("cold 2", 20.0, False), ("cold 3", 260.0, True)]
    )
    assert main_job.cold_totals(failing) == [250.0, 260.0]
    assert "over 2 of 3 cold runs, FAIL" in main_job.markdown(failing)
    # slower on average than the target
    slow = _clone_rows([("cold 1", 290.0, True), ("cold 2", 320.0, True), ("cold 3", 300.0, True)])
    assert "mean 5.06 min over 3 of 3 cold runs, FAIL" in main_job.markdown(slow)


def test_thread_contention_summary_reads_the_pair_by_its_slower_process() -> None:
    from bench import thread_contention

    rows = [
        (1, "default", 0, 4.0), (1, "1", 0, 8.0),
        (2, "default", 0, 16.0), (2, "default", 1, 18.0), (2, "1", 0, 7.0), (2, "1", 1, 8.0),
    ]  # fmt: skip
    df = pd.DataFrame(
        [{"repetition": 0, "processes": n, "threads": t, "process": i, "texts": 100,
          "seconds": s, "loadavg": 1.0, "cpus": 2} for n, t, i, s in rows]
    )  # fmt: skip
    table = thread_contention.summary(df).set_index(["processes at once", "threads per process"])
    throughput = table["throughput vs one default process"]
    assert throughput[(1, "default")] == 1.0 and throughput[(1, "1")] == 0.5
    assert throughput[(2, "default")] == round(2 * 4.0 / 18.0, 2)  # the pair ends at 18 s
    assert throughput[(2, "1")] == 1.0  # two texts' worth in 8 s, as one alone in 4 s
    assert "| processes at once |" in thread_contention.markdown(df)
