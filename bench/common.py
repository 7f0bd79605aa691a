"""What the benchmarks share: where results go, the command line of each module, the machine
description, markdown tables, and a subprocess runner that samples the memory of a whole
process tree.

Why a tree sampler: the main job runs every notebook in its own Jupyter kernel and a notebook
may start Milvus servers, so the memory that matters is the sum over the parent and all of its
descendants, not the parent's own RSS (which stays near 100 MB while a kernel holds a GB).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import math
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from helpers.settings import REPO_ROOT, get_settings

MB = 1024 * 1024

# Versions that decide the numbers; machine.json records them next to every result.
KEY_PACKAGES = (
    "pymilvus",
    "milvus-lite",
    "milvus",
    "sentence-transformers",
    "torch",
    "transformers",
    "faiss-cpu",
    "xllamacpp",
    "papermill",
    "numpy",
    "pandas",
    "psutil",
)


# ---------------------------------------------------------------------------------------------
# Output folders and the per-module command line


def default_out_dir() -> Path:
    """Where ``python -m bench.<name>`` writes without ``--out``: under the git-ignored runs/."""
    return get_settings().run_dir / "bench" / "manual"


def prepare_out_dir(out_dir: Path | str | None) -> Path:
    path = Path(out_dir) if out_dir is not None else default_out_dir()
    path = path.expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_csv(df: Any, out_dir: Path, name: str) -> Path:
    """``<out_dir>/<name>.csv``; the CSV is the result, the markdown only a view of it."""
    path = out_dir / f"{name}.csv"
    df.to_csv(path, index=False)
    return path


def module_main(
    name: str,
    run: Callable[..., Any],
    markdown: Callable[[Any], str],
    description: str,
    argv: Sequence[str] | None = None,
) -> int:
    """``python -m bench.<name> [--quick] [--out DIR]``: run, print the markdown and the CSV."""
    parser = argparse.ArgumentParser(prog=f"python -m bench.{name}", description=description)
    parser.add_argument(
        "--quick", action="store_true", help="smoke-size run (seconds, not minutes)"
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        default=None,
        help=f"output folder (default: {default_out_dir()})",
    )
    args = parser.parse_args(argv)
    out_dir = prepare_out_dir(args.out)
    df = run(quick=args.quick, out_dir=out_dir)
    print(markdown(df))
    print(f"\nCSV: {out_dir / f'{name}.csv'}")
    return 0


# ---------------------------------------------------------------------------------------------
# The machine


def package_versions(names: Iterable[str] = KEY_PACKAGES) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def os_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return f"{line.split('=', 1)[1].strip(chr(34))} ({platform.platform()})"
    return platform.platform()


def git_commit() -> str:
    """HEAD, with ``+dirty`` when the work tree has changes: which code made the numbers."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
            text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def loadavg() -> tuple[float, float, float]:
    """The 1/5/15-minute load: on a shared 2-core machine it says how busy the cores were."""
    try:
        return tuple(round(x, 2) for x in os.getloadavg())  # type: ignore[return-value]
    except OSError:
        return (math.nan, math.nan, math.nan)


def machine_info() -> dict[str, Any]:
    import psutil

    return {
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "ram_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "os": os_name(),
        "python": platform.python_version(),
        "packages": package_versions(),
        "git_commit": git_commit(),
        "loadavg_at_start": list(loadavg()),
        "milvus_backend": get_settings().milvus_backend,
    }


def machine_markdown(info: Mapping[str, Any]) -> str:
    packages = ", ".join(f"{k} {v}" for k, v in info["packages"].items())
    return "\n".join(
        [
            f"- date (UTC): {info['date_utc']}",
            f"- CPU: {info['cpu_model']}, {info['logical_cores']} logical cores "
            f"({info['physical_cores']} physical), {info['ram_gb']} GB RAM",
            f"- OS: {info['os']}; Python {info['python']}",
            f"- packages: {packages}",
            f"- kit commit: {info['git_commit']}; Milvus backend: {info['milvus_backend']}",
            f"- load average at start (1/5/15 min): {info['loadavg_at_start']}",
        ]
    )


# ---------------------------------------------------------------------------------------------
# Markdown


def fmt(value: Any, digits: int = 3) -> str:
    """A cell: floats with ``digits`` significant figures (at least the integer part)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if value.is_integer() and abs(value) < 1e15:  # an int column that pandas made float
            return f"{int(value):,}"
        if value != 0 and abs(value) < 10 ** (digits - 1):
            places = max(0, digits - 1 - math.floor(math.log10(abs(value))))
            return f"{value:,.{places}f}"
        return f"{value:,.0f}"
    if hasattr(value, "item"):  # numpy scalars
        return fmt(value.item(), digits)
    return str(value)


def markdown_table(
    df: Any,
    columns: Sequence[str] | None = None,
    digits: int = 3,
    floatfmt: Mapping[str, str] | None = None,
) -> str:
    """A GitHub markdown table of ``df`` (no tabulate dependency). ``floatfmt`` gives some
    columns a ``format`` spec of their own (e.g. ``{"recall": ".3f"}``)."""
    cols = list(columns) if columns is not None else list(df.columns)
    floatfmt = floatfmt or {}

    def cell(col: str, value: Any) -> str:
        if value is None or type(value).__name__ == "NAType":  # pandas' NA: an empty cell
            return ""
        if hasattr(value, "item"):  # numpy scalars
            value = value.item()
        if col in floatfmt and isinstance(value, float) and not math.isnan(value):
            return format(value, floatfmt[col])
        return fmt(value, digits)

    lines = [
        "| " + " | ".join(str(c) for c in cols) + " |",
        "|" + "|".join("---" for _ in cols) + "|",
    ]
    for _, row in df[cols].iterrows():
        lines.append("| " + " | ".join(cell(c, row[c]) for c in cols) + " |")
    return "\n".join(lines)


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


# ---------------------------------------------------------------------------------------------
# Memory of a process tree


@dataclass
class TreePeak:
    """Peaks seen while sampling a process tree (RSS, in MB)."""

    peak_tree_rss_mb: float = 0.0  # the sum over the root and all descendants, at its highest
    peak_single_rss_mb: float = 0.0  # the largest single process at any sample
    largest_process: str = ""  # its command line (shortened)
    root_peak_rss_mb: float = 0.0  # the root process alone
    max_processes: int = 0
    samples: int = 0


def _describe(proc: Any) -> str:
    try:
        cmd = proc.cmdline()
    except Exception:
        cmd = []
    if not cmd:
        with contextlib.suppress(Exception):
            return str(proc.name())
        return "?"
    names = [Path(cmd[0]).name, *cmd[1:4]]
    return " ".join(names)[:80]


class TreeSampler:
    """Polls ``pid`` and all its descendants every ``interval`` seconds in a thread.

    RSS of each process is summed: shared pages (libraries, torch) are counted once per process,
    so the sum over-states what the machine really gives up; it is what ``ps`` and most
    monitors show, and an upper bound. One sample costs about 1 ms per process.
    """

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        import psutil

        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak = TreePeak()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"tree-sampler-{pid}", daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sample()  # the state at the end counts too (it may be the peak)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        members = tree_members_rss(self.root)
        if not members:
            return
        total = sum(rss for _, rss in members)
        largest, largest_rss = max(members, key=lambda m: m[1])
        root_rss = next((rss for proc, rss in members if proc.pid == self.root.pid), 0)
        p = self.peak
        p.root_peak_rss_mb = max(p.root_peak_rss_mb, root_rss / MB)
        p.samples += 1
        p.max_processes = max(p.max_processes, len(members))
        p.peak_tree_rss_mb = max(p.peak_tree_rss_mb, total / MB)
        if largest_rss / MB > p.peak_single_rss_mb:
            p.peak_single_rss_mb = largest_rss / MB
            p.largest_process = _describe(largest)


def tree_members_rss(root: Any) -> list[tuple[Any, int]]:
    """``root`` (a pid or a psutil.Process) and its descendants, each with its RSS in bytes;
    processes that vanish while being read are left out (empty when ``root`` is gone)."""
    import psutil

    try:
        root = root if isinstance(root, psutil.Process) else psutil.Process(root)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return []
    members = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            members.append((proc, proc.memory_info().rss))
    return members


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and its descendants right now (0 when it is gone)."""
    return sum(rss for _, rss in tree_members_rss(pid))


@dataclass
class SampledRun:
    """A finished subprocess: exit code, wall time, memory peaks and where its output went."""

    command: list[str]
    returncode: int
    seconds: float
    log: Path
    peak: TreePeak = field(default_factory=TreePeak)
    timed_out: bool = False

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def as_row(self) -> dict[str, Any]:
        return {
            "returncode": self.returncode,
            "seconds": round(self.seconds, 2),
            **{
                k: (round(v, 1) if isinstance(v, float) else v)
                for k, v in asdict(self.peak).items()
            },
            "timed_out": self.timed_out,
        }


def run_sampled(
    command: Sequence[str],
    *,
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path = REPO_ROOT,
    timeout: float | None = None,
    interval: float = 0.2,
) -> SampledRun:
    """Run ``command`` to the end with its output in ``log``, timing it and sampling the memory
    of its process tree.

    The child stays in our process group, so Ctrl-C reaches it too. After a timeout, or when we
    are interrupted, the child and its descendants are killed by pid (only what it started).
    """
    full_env = dict(os.environ if env is None else env)
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    log.parent.mkdir(parents=True, exist_ok=True)
    timed_out = False
    with open(log, "wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(
            list(command), stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=full_env
        )
        sampler = TreeSampler(proc.pid, interval)
        try:
            with sampler:
                proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_tree(proc.pid)
            proc.wait(timeout=30)
        except BaseException:  # Ctrl-C or an error here: leave nothing running behind
            kill_tree(proc.pid)
            proc.wait(timeout=30)
            raise
        seconds = time.perf_counter() - start
    return SampledRun(list(command), proc.returncode, seconds, log, sampler.peak, timed_out)


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every descendant of it, each by its pid."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.Error:
        return
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGKILL)


def python_command(*args: str) -> list[str]:
    """The kit's Python (the one running the benchmark, i.e. .venv's) with ``args``."""
    return [sys.executable, *args]


def child_env(**overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(overrides)
    return env


# ---------------------------------------------------------------------------------------------
# The one C++ Milvus server per machine


def run_waiting_for_cpp(
    args: Sequence[str],
    *,
    log: Path,
    runs_root: Path,
    needs_cpp: bool,
    timeout: float,
    attempts: int = 3,
) -> tuple[Any, float]:
    """``python args`` with GFL_RUN_DIR=runs_root, through :func:`run_in_cpp_slot`."""
    return run_in_cpp_slot(
        python_command(*args), log=log, env=child_env(GFL_RUN_DIR=str(runs_root)),
        needs_cpp=needs_cpp, timeout=timeout, attempts=attempts,
    )  # fmt: skip


def run_in_cpp_slot(
    command: Sequence[str],
    *,
    log: Path,
    env: Mapping[str, str],
    needs_cpp: bool,
    timeout: float,
    attempts: int = 3,
    cwd: Path = REPO_ROOT,
) -> tuple[Any, float]:
    """``run_sampled`` of ``command``; when the command starts the C++ server, wait for the
    machine's one slot first and retry a run that lost the race for it. Returns the last result
    and the seconds spent waiting."""
    waited = 0.0
    from helpers.servers.cpp import SLOT_BUSY_HINT, wait_for_cpp_slot

    for attempt in range(attempts):
        if needs_cpp:
            waited += wait_for_cpp_slot(900.0, on_wait=print)
        result = run_sampled(command, log=log, env=env, cwd=cwd, timeout=timeout)
        if result.returncode == 0 or SLOT_BUSY_HINT not in result.log_tail(20_000):
            break
        print(f"attempt {attempt + 1}: another C++ Milvus server held the slot; retrying")
    return result, waited


def json_dump(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
