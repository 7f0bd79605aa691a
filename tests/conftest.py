"""Shared fixtures for the helper tests: settings, child Python processes, and process checks.

The server tests start real servers (milvus-lite in-process, ``milvus-lite server`` and the C++
``milvus`` binary). Two guards make sure none of them outlives the tests:

* ``no_orphans`` (per test): snapshot the Milvus server processes (``milvus-lite server``,
  ``milvus run standalone``) before the test; none that appeared during it may remain after it;
* ``_no_servers_left_at_session_end`` (whole session, automatic): a server started by these
  tests, or a handle still registered, at the end fails the run (servers are killed so they do
  not linger).

Both only judge servers started by this session (data under pytest's temporary root, or a
descendant of pytest): other sessions on the same machine may run servers of their own.

The suite runs on two pytest-xdist workers (``-n 2 --dist loadscope`` in pyproject.toml, with the scheduler below; ``-n 0``
runs it in one process). Most of its time is one Python process waiting on a notebook kernel, so
the second core was idle. What must not overlap joins one queue, run in order by one worker
(:func:`xdist_scope`): every test that may start the article's C++ server (only one can run per
machine) with the committed notebooks that depend on it or on each other; notebooks 03-05 are a
second queue. Each worker's notebooks use a run folder of its own. Every other test file stays
whole on one worker, so its module fixtures are built once.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from helpers.servers import CppSlotBusy, process, start_backend, wait_for_cpp_slot
from helpers.servers.process import server_kind
from helpers.settings import Settings, get_settings

__all__ = ["server_kind", "start_backend"]  # re-exported for the tests

REPO = Path(__file__).resolve().parent.parent
LITE_VERSION = "milvus_lite-3.2.2"
CPP_VERSION = "v2.3.5-lite"
EXPECTED_VERSION = {"lite": LITE_VERSION, "lite-server": LITE_VERSION, "milvus": CPP_VERSION}

_BASETEMP: list[Path] = []  # pytest's temporary root, where every test server keeps its data


# --- two workers ---------------------------------------------------------------------------------

ONE_AT_A_TIME = "one-at-a-time"  # the worker's share that must not overlap (see the docstring)
# Committed notebooks that start no C++ server and read nothing another notebook made: nbval runs
# them as a second queue, on whichever worker is free, in that worker's own run folder. The others
# stay with the C++ tests: 01 starts the C++ server, and 07 measures the loop run 06 made.
OWN_QUEUE_NOTEBOOKS = ("03_", "04_", "05_")
NOTEBOOK_QUEUE = "notebooks-03-05"


def xdist_scope(nodeid: str) -> str:
    """Which worker's queue a test joins. Cells of notebooks 03-05 (nbval): :data:`NOTEBOOK_QUEUE`;
    cells of the other notebooks, and tests that may start the article's C++ server (a backend
    parameter ``milvus``, or ``cpp`` in the name): :data:`ONE_AT_A_TIME`; any other test: its
    file. A queue runs in order on one worker."""
    path, _, rest = nodeid.partition("::")
    if path.endswith(".ipynb"):
        name = path.rsplit("/", 1)[-1]
        return NOTEBOOK_QUEUE if name.startswith(OWN_QUEUE_NOTEBOOKS) else ONE_AT_A_TIME
    params = rest[rest.find("[") :] if "[" in rest else ""
    starts_cpp = "cpp" in rest.split("[")[0] or any(
        p == "milvus" for p in params.strip("[]").split("-")
    )
    return ONE_AT_A_TIME if starts_cpp else path


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """pytest-xdist's ``loadscope`` with :func:`xdist_scope` as the scope (its ``loadgroup``
    marks do not reach the scheduler under pytest 9)."""
    from xdist.scheduler import LoadScopeScheduling

    class OneAtATimeScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_scope(nodeid)

    return OneAtATimeScheduling(config, log)


# Two workers share two cores: each worker, and every kernel and server it starts (they inherit
# the environment), computes on one thread. Two processes with two threads each ran 4.7x slower
# than one alone; with one thread each, 1.6x (bench/thread_contention.py, docs/benchmarks.md
# section 13). Embeddings then differ in the 7th decimal (1.5e-7), and
# llama.cpp writes the same texts (tests/test_generators.py).
ONE_THREAD = {
    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
    "GFL_LOCAL_THREADS": "1",
}  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        for name, value in ONE_THREAD.items():
            os.environ.setdefault(name, value)
        # Each worker's notebooks (nbval) keep their runs, Milvus data and caches in a run folder
        # of the worker's own, fresh every session: two queues never share a milvus-lite file.
        # xdist gives each worker its own pytest temporary root (".../popen-gw0").
        os.environ["GFL_RUN_DIR"] = str(Path(config.option.basetemp) / "runs")


# --- processes and ports -----------------------------------------------------------------------


def milvus_processes() -> dict[int, str]:
    """Live (non-zombie) Milvus server processes on this machine: pid -> command line."""
    found: dict[int, str] = {}
    for proc in process.milvus_processes():
        with contextlib.suppress(psutil.Error):
            found[proc.pid] = " ".join(proc.cmdline())[:200]
    return found


def started_by_these_tests(pid: int) -> bool:
    """A server whose data lives under pytest's temporary root, or a descendant of pytest.

    Other sessions on the same machine may run servers of their own; they are not ours to judge.
    """
    try:
        proc = psutil.Process(pid)
        if any(p.pid == os.getpid() for p in proc.parents()):
            return True
        text = " ".join(proc.cmdline()) + " " + proc.cwd()
    except psutil.Error:
        return False
    return any(str(base) in text for base in _BASETEMP)


def is_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs. A zombie waiting to be reaped counts as gone, but only
    once all its threads have exited: /proc shows a killed process as a zombie as soon as its
    main thread is dead, while other threads may still hold its files (milvus-lite's LOCK)."""
    try:
        if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            return False
        return len(os.listdir(f"/proc/{pid}/task")) <= 1
    except (psutil.NoSuchProcess, FileNotFoundError):
        return True


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(step)


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    return wait_until(lambda: is_gone(pid), timeout)


def listening_ports(pid: int) -> set[int]:
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return set()
    return {c.laddr.port for c in conns if c.status == psutil.CONN_LISTEN and c.laddr}


def port_is_free(port: int) -> bool:
    """Nobody listens on ``port`` and a server (SO_REUSEADDR, as servers do) could bind it."""
    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                return False
    for host in ("127.0.0.1", "0.0.0.0"):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
                sock.listen()
            except OSError:
                return False
    return True


def closed_port() -> int:
    """A loopback port nobody listens on (bound and released by us a moment ago)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_no_cpp_server(timeout: float = 90.0) -> None:
    """Before a child process starts a C++ server: wait while another one runs on this machine
    (another session's notebook, say); only one can run at a time."""
    try:
        wait_for_cpp_slot(timeout)
    except CppSlotBusy:
        pytest.fail(f"a C++ Milvus server kept running for {timeout:.0f} s: {milvus_processes()}")


# --- child Python processes -------------------------------------------------------------------


class Child:
    """A second Python process (another notebook, another kernel) driven over stdin/stdout."""

    def __init__(self, script: str, args: list[str], log: Path) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        self.log = log
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", script, *args],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                cwd=REPO, env=env, text=True,
            )  # fmt: skip
        self.pid = self.proc.pid
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def read_json(self, timeout: float) -> dict:
        """The next JSON line the child prints; fails with the child's stderr if none comes."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.05, deadline - time.monotonic()))
            except queue.Empty:
                line = ""
            if line is None or (line == "" and time.monotonic() >= deadline):
                tail = self.log.read_text(errors="replace")[-3000:]
                pytest.fail(
                    f"child {self.pid} gave no answer within {timeout} s "
                    f"(exit code {self.proc.poll()}); its stderr ends with:\n{tail}"
                )
            if line and line.lstrip().startswith("{"):
                answer = json.loads(line)
                if "error" in answer:
                    pytest.fail(f"child {self.pid} failed: {answer['error']}")
                return answer

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 30.0) -> int:
        """Close its stdin so it returns normally, and wait for it."""
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


# Started in a child: start a backend with the kit, report, serve "ping" lines, and on EOF
# return normally *without* calling stop() (the kit's exit hook must clean up).
CHILD_START_SERVER = """
import json, sys
from helpers.milvus_server import start_milvus
from helpers.settings import get_settings
try:
    handle = start_milvus(get_settings(run_dir=sys.argv[1]), backend=sys.argv[2])
except Exception as exc:
    print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
    raise
client = handle.client
if "child_data" not in client.list_collections():
    client.create_collection("child_data", dimension=2)
print(json.dumps({"pid": handle.pid, "uri": handle.uri, "version": handle.version}), flush=True)
for line in sys.stdin:
    if line.strip() == "ping":
        print(json.dumps({"collections": sorted(handle.client.list_collections())}), flush=True)
"""


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Child]]:
    """Start child Python processes; any still running at the end of the test is killed."""
    children: list[Child] = []

    def _spawn(script: str, *args: str) -> Child:
        child = Child(script, list(args), tmp_path / f"child-{len(children)}.stderr")
        children.append(child)
        return child

    yield _spawn
    for child in children:
        if child.proc.poll() is None:
            child.kill()


@pytest.fixture
def external_lite_server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """A milvus-lite server somebody else runs (started here directly, not by the kit)."""
    port = closed_port()
    exe = Path(sys.executable).with_name("milvus-lite")
    proc = subprocess.Popen(
        [str(exe), "server", "--data-dir", str(tmp_path / "external"), "--host", "127.0.0.1",
         "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        assert wait_until(lambda: port in listening_ports(proc.pid), 30)
        yield f"http://127.0.0.1:{port}", proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


# --- settings and process guards --------------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """The kit's settings with a run directory of this test's own."""
    return get_settings(run_dir=tmp_path / "run")


@pytest.fixture
def no_orphans(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Fail the test if a Milvus server process it started is still running after it."""
    _BASETEMP.append(tmp_path_factory.getbasetemp().resolve())
    before = set(milvus_processes())
    yield

    def new_ours() -> dict[int, str]:
        return {
            pid: cmd
            for pid, cmd in milvus_processes().items()
            if pid not in before and started_by_these_tests(pid)
        }

    wait_until(lambda: not new_ours(), timeout=10)
    left = new_ours()
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"the test left Milvus server processes running: {left}"


@pytest.fixture(scope="session", autouse=True)
def _no_servers_left_at_session_end(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Fail the session if a server these tests started (or a handle) is still alive at the end."""
    _BASETEMP.append(tmp_path_factory.getbasetemp().resolve())
    before = set(milvus_processes())
    yield
    from helpers.milvus_server import running_handles, stop_all

    handles = [repr(h) for h in running_handles()]
    stop_all()

    def left_ours() -> dict[int, str]:
        return {
            pid: cmd
            for pid, cmd in milvus_processes().items()
            if pid not in before and started_by_these_tests(pid)
        }

    wait_until(lambda: not left_ours(), timeout=10)
    left = left_ours()
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    problems = []
    if handles:
        problems.append(f"handles still registered at the end of the session: {handles}")
    if left:
        problems.append(f"Milvus servers started by the tests outlived them: {left}")
    if problems and request.session.testsfailed:
        # Already failing (perhaps stopped by -x, whose teardown would hide the report): say it
        # without raising over the real failure.
        sys.stderr.write("\n".join(["", *problems, ""]))
        return
    assert not problems, "\n".join(problems)
