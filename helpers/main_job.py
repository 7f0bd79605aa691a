"""The main job: execute every course notebook headless with papermill into a run folder,
then render its HTML report (:mod:`helpers.report`): ``<run folder>/index.html``.

``./kit.sh run`` calls ``python -m helpers.main_job``. Each notebook gets the run folder as a
parameter so its Milvus data, caches and figures land there, never in the repository.

For a backend that runs as a server (``lite-server``, ``milvus``) the main job starts it once in
the run folder, hands its URI to every notebook kernel (``GFL_MILVUS_BACKEND=remote``,
``GFL_MILVUS_URI``, and ``GFL_MILVUS_SHARED_BACKEND`` naming the backend), and stops it at the
end: one server start for the course instead of one per notebook. A notebook run alone starts
and stops its own.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from helpers.settings import (
    REPO_ROOT,
    SHAREABLE_BACKENDS,
    Settings,
    exported,
    settings_or_exit,
)

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
KERNEL_NAME = "gfl-kit"

# The default run finishes in under 5 minutes on 2 cores (docs/benchmarks.md section 1):
# smaller versions of the notebooks whose own parameters take longest. Notebook 05 reads back
# notebook 04's descriptions, so both describe the same taverns; notebook 06's loop is read again
# by 07, so both get the same loop values (and its own run id: the committed ratings of
# notebook 06, data/feedback/, are for its own run).
_QUICK_LOOP = {"N_TAVERNS": 3, "MAX_TOKENS": 60, "RUN_ID": "nb06-quick"}
_QUICK_DESCRIPTIONS = {"N_TAVERNS": 4}
QUICK_PARAMETERS: dict[str, dict[str, object]] = {
    "03_hnsw_index.ipynb": {"CORPUS_SIZE": 1000, "N_QUERIES": 50},
    "04_generate_and_insert.ipynb": _QUICK_DESCRIPTIONS,
    "05_semantic_search.ipynb": _QUICK_DESCRIPTIONS,
    "06_feedback_loop.ipynb": _QUICK_LOOP,
    "07_drift_and_distance.ipynb": _QUICK_LOOP,
    # the four arms of the committed experiment, two seeds, short texts: a smoke sweep
    "08_loop_policy_experiments.ipynb": {"MAX_TOKENS": 16, "CONTEXT_CHARS": 150, "SEEDS": [1, 2]},
}
# `--full`: every notebook with the values of its own parameters cell, except notebook 08,
# whose own values are a small sweep (it is re-executed by the tests): the full experiment
# has 6 iterations over 6 taverns.
FULL_PARAMETERS: dict[str, dict[str, object]] = {
    "08_loop_policy_experiments.ipynb": {"ITERATIONS": 6, "N_TAVERNS": 6, "MAX_TOKENS": 60,
                                         "CONTEXT_CHARS": 400},
}  # fmt: skip


def parameters_for(notebook: str, full: bool) -> dict[str, object]:
    """The papermill parameters the main job gives a notebook (besides RUN_DIR)."""
    return dict((FULL_PARAMETERS if full else QUICK_PARAMETERS).get(notebook, {}))


@contextlib.contextmanager
def ipc_kernel_config() -> Iterator[object]:
    """Kernels talk to papermill over Unix sockets, not TCP on loopback: nothing else on the
    machine can connect to them, and ipykernel stops printing its "running over TCP without
    encryption" warning into the main job's progress for every notebook.

    Each kernel gets its sockets in a folder of its own. jupyter_client's default for them is
    ``kernel-ipc-<n>`` in the working directory (the notebooks folder), where two kernels
    started at once by two processes (the test workers) could pick the same sockets and read
    each other's messages: "Invalid Signature" at start-up, seen in a CI run."""
    import shutil
    import tempfile

    from traitlets.config import Config

    folder = tempfile.mkdtemp(prefix="gfl-kernel-")  # short: a socket path has 107 bytes
    try:
        yield Config({"KernelManager": {"transport": "ipc", "ip": f"{folder}/kernel"}})
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class NotebookResult:
    notebook: str
    output: Path
    seconds: float
    ok: bool
    error: str = ""


def notebooks(selected: list[str] | None = None) -> list[Path]:
    """The numbered notebooks in order, optionally only those whose name starts with a prefix."""
    found = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    if selected:
        found = [nb for nb in found if any(nb.name.startswith(s) for s in selected)]
        if not found:
            raise SystemExit(f"No notebook matches {selected}; see {NOTEBOOK_DIR}.")
    return found


def new_run_dir(settings: Settings, run_id: str | None = None) -> Path:
    run_id = run_id or datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = settings.run_dir / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def run_notebook(
    notebook: Path, out_dir: Path, run_dir: Path, extra: dict[str, object] | None = None,
    kernel_name: str = KERNEL_NAME,
) -> NotebookResult:  # fmt: skip
    """Execute one notebook with papermill; its parameters point it at ``run_dir``."""
    import papermill as pm

    output = out_dir / notebook.name
    params = {"RUN_DIR": str(run_dir), **(extra or {})}
    start = time.perf_counter()
    for attempt in (1, 2):
        try:
            with ipc_kernel_config() as config:
                pm.execute_notebook(
                    str(notebook), str(output), parameters=params, kernel_name=kernel_name,
                    cwd=str(NOTEBOOK_DIR), progress_bar=False, log_output=False, config=config,
                    start_timeout=KERNEL_START_TIMEOUT_S,
                )  # fmt: skip
        except Exception as exc:  # PapermillExecutionError carries the cell's traceback
            if attempt == 1 and _kernel_never_started(exc):
                continue  # no cell ran: start a new kernel once (seen once in a CI run)
            seconds = time.perf_counter() - start
            return NotebookResult(notebook.name, output, seconds, False, str(exc))
        break
    return NotebookResult(notebook.name, output, time.perf_counter() - start, True)


# papermill's own default is 60 s; a kernel that has not answered by then has hung
KERNEL_START_TIMEOUT_S = 120


def _kernel_never_started(exc: Exception) -> bool:
    """The kernel did not answer its first request (nbclient's wording), so no cell ran and the
    notebook can be started again from the top."""
    return "Kernel didn't respond" in str(exc) or "Kernel died before replying" in str(exc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="./kit.sh run",
        description="Execute the course notebooks headless into a run folder (git-ignored).",
    )
    parser.add_argument(
        "--only",
        nargs="*",
        metavar="PREFIX",
        help="run only notebooks starting with these prefixes, e.g. 01 03",
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="the full experiment: each notebook's own (larger) parameters, and notebook 08's "
        "sweep with 6 iterations over 6 taverns (about 20 minutes more)",
    )
    parser.add_argument(
        "--run-id", help="name of the run folder under the runs directory (default: a timestamp)"
    )
    parser.add_argument(
        "--keep-going", action="store_true", help="run the remaining notebooks after a failure"
    )
    args = parser.parse_args(argv)

    settings = settings_or_exit()
    started = time.perf_counter()
    run_dir = new_run_dir(settings, args.run_id)
    out_dir = run_dir / "notebooks"
    out_dir.mkdir(exist_ok=True)
    todo = notebooks(args.only)
    print(f"Run folder: {run_dir}")
    mode = "full" if args.full else "quick"
    print(f"Backend: {settings.milvus_backend}   notebooks: {len(todo)}   parameters: {mode}")

    from helpers.milvus_server import MilvusServerError

    try:
        with shared_backend(settings.replace(run_dir=run_dir)):
            results = _run_all(todo, out_dir, run_dir, args.full, args.keep_going)
    except MilvusServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    summary = [
        {
            "notebook": r.notebook,
            "ok": r.ok,
            "seconds": round(r.seconds, 1),
            "output": str(r.output),
        }
        for r in results
    ]
    (run_dir / "main_job.json").write_text(json.dumps(summary, indent=2))
    failed = [r for r in results if not r.ok]
    print(f"\nExecuted notebooks: {out_dir}")
    report_ok = write_report(run_dir)  # after a failure too: the report shows where it stopped
    if failed:
        for r in failed:
            print(f"\n{r.notebook} failed:\n{r.error[-3000:]}", file=sys.stderr)
    print(closing_line(results, run_dir / "index.html", time.perf_counter() - started, report_ok))
    return 1 if failed or not report_ok else 0


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s" if minutes else f"{rest} s"


def closing_line(
    results: list[NotebookResult], index: Path, seconds: float, report_ok: bool
) -> str:
    """The main job's last line: how it went, how long it took, the slowest notebook, and
    where the report is (what a newcomer looks for after the progress scrolls by)."""
    failed = [r.notebook for r in results if not r.ok]
    status = f"{len(failed)} of {len(results)} notebooks FAILED" if failed else (
        f"{len(results)} notebooks ok")  # fmt: skip
    slowest = max(results, key=lambda r: r.seconds, default=None)
    longest = (
        f"; longest {Path(slowest.notebook).stem} ({slowest.seconds:.0f} s)" if slowest else ""
    )
    where = f"report: {index}" if report_ok else "no report (see the error above)"
    return f"Done in {_duration(seconds)}: {status}{longest}; {where}"


def _run_all(
    todo: list[Path], out_dir: Path, run_dir: Path, full: bool, keep_going: bool
) -> list[NotebookResult]:
    from tqdm.auto import tqdm

    results: list[NotebookResult] = []
    bar = tqdm(todo, unit="notebook", file=sys.stdout, dynamic_ncols=True)
    for nb in bar:
        bar.set_description(nb.stem)
        result = run_notebook(nb, out_dir, run_dir, parameters_for(nb.name, full))
        results.append(result)
        status = "ok" if result.ok else "FAILED"
        bar.write(f"  {nb.name:<40} {status:>6}  {result.seconds:6.1f} s")
        if not result.ok and not keep_going:
            break
    bar.close()
    return results


@contextlib.contextmanager
def shared_backend(settings: Settings) -> Iterator[dict[str, str]]:
    """Start ``settings``' backend once, if it runs as a server, and export its URI to the
    notebook kernels started inside the block; stop it on the way out. Yields the variables
    exported (none for ``lite``, which runs inside each kernel, and for ``remote``)."""
    backend = settings.milvus_backend
    if backend not in SHAREABLE_BACKENDS or settings.milvus_shared_backend:
        yield {}
        return
    from helpers.milvus_server import start_backend

    handle = start_backend(settings, backend, wait_s=settings.server_start_timeout, on_wait=print)
    try:
        print(f"One {backend} server for every notebook: {handle.uri} (pid {handle.pid})")
        values = {
            "GFL_MILVUS_BACKEND": "remote",
            "GFL_MILVUS_URI": handle.uri,
            "GFL_MILVUS_SHARED_BACKEND": backend,
        }
        with exported(values):
            yield values
    finally:
        handle.stop()


def write_report(run_dir: Path) -> bool:
    """Render the HTML report of the run (helpers.report) and print where it is."""
    from helpers.report import render_report

    print("Rendering the HTML report ...", flush=True)
    start = time.perf_counter()
    try:
        index = render_report(run_dir)
    except Exception as exc:  # the notebooks ran; say why the report did not, do not hide it
        print(
            f"The HTML report could not be rendered: {type(exc).__name__}: {exc}", file=sys.stderr
        )
        return False
    print(f"Report ({time.perf_counter() - start:.1f} s): {index}")
    return True


if __name__ == "__main__":
    raise SystemExit(main())
