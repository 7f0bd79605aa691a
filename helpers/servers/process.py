"""Process utilities for the servers: spawning children that die with us, ports, pidfiles,
advisory locks, and a polite-then-firm terminate.

Nothing here knows about Milvus clients; the starters in this package build on it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

PIDFILE = "gfl-server.json"
STOP_GRACE_S = 10.0

# Runs in the child before the server binary replaces it: ask Linux to SIGKILL us when the
# parent dies (SIGKILL because the C++ server ignores SIGTERM once orphaned; see
# docs/measured-facts.md), then exec. A tiny exec wrapper rather than preexec_fn: preexec_fn
# forces fork() in a process full of gRPC threads, which gRPC warns about into the notebook.
_EXEC_WITH_PARENT_DEATH = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit('parent already gone')\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def dies_with_parent(cmd: list[str]) -> list[str]:
    """``cmd`` wrapped so the process it becomes is killed when this Python process dies."""
    return [sys.executable, "-I", "-S", "-c", _EXEC_WITH_PARENT_DEATH, str(os.getpid()), *cmd]


class _Spawner:
    """One long-lived daemon thread that runs every ``Popen`` of this package.

    ``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child exits, not the process:
    a server started from a short-lived worker thread (a thread pool, an async executor) would
    be killed the moment that thread ended. Forking from a thread that lives as long as the
    interpreter ties the child to the process, as intended. A daemon thread, so it still runs
    while the exit hook stops the servers gracefully.
    """

    def __init__(self) -> None:
        self._jobs: queue.Queue[tuple[Callable[[], Any], queue.Queue]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _loop(self) -> None:
        while True:
            job, answer = self._jobs.get()
            try:
                answer.put((True, job()))
            except BaseException as exc:  # handed back to the caller's thread
                answer.put((False, exc))

    def run(self, job: Callable[[], Any]) -> Any:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="gfl-spawner", daemon=True)
                self._thread.start()
        if threading.current_thread() is self._thread:
            return job()
        answer: queue.Queue = queue.Queue(maxsize=1)
        self._jobs.put((job, answer))
        ok, value = answer.get()
        if not ok:
            raise value
        return value

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread


SPAWNER = _Spawner()


def spawn(
    popen: Callable[..., subprocess.Popen], cmd: list[str], **kwargs: Any
) -> subprocess.Popen:
    """``popen(cmd, **kwargs)`` from the spawner thread, wrapped to die with this process, in a
    session of its own and without our stdin."""
    kwargs.setdefault("start_new_session", True)
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    wrapped = dies_with_parent(list(cmd))
    return SPAWNER.run(lambda: popen(wrapped, **kwargs))


# --- ports -------------------------------------------------------------------------------------


def free_port() -> int:
    """A loopback port free right now. Another process may take it before our child binds it:
    starters check who listens and retry with another port (see lite_server.py)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    for host in ("127.0.0.1", "0.0.0.0"):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # Like the servers themselves (gRPC, Go): a port whose last connections sit in
            # TIME_WAIT after a stop is free; only a live socket on it counts as in use.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    return True
                raise
    return False


def listener_of(port: int) -> psutil.Process | None:
    """The process listening on ``port``, when the OS lets us see it."""
    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections(kind="tcp"):
            listening = conn.status == psutil.CONN_LISTEN and conn.laddr
            if listening and conn.laddr.port == port and conn.pid:
                return psutil.Process(conn.pid)
    return None


# --- processes ----------------------------------------------------------------------------------


def describe(proc: psutil.Process | None) -> str:
    if proc is None:
        return "an unknown process"
    try:
        cmd = " ".join(proc.cmdline())[:160]
        return f"pid {proc.pid} ({cmd})"
    except psutil.Error:
        return f"pid {proc.pid}"


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:]) or f"(log {path} is empty)"


def terminate(proc: subprocess.Popen | psutil.Process, grace: float = STOP_GRACE_S) -> None:
    """Stop politely, wait, then kill: a stop must never leave a process behind."""
    with contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess):
        proc.terminate()
    try:
        proc.wait(timeout=grace)
    except (subprocess.TimeoutExpired, psutil.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired, psutil.TimeoutExpired):
            proc.wait(timeout=grace)


def server_kind(cmd: list[str]) -> str | None:
    """'cpp' for a ``milvus run standalone`` command line, 'lite' for ``milvus-lite server``
    (run directly or through our exec wrapper), else None: the one test of "is this a Milvus
    server process"."""
    if len(cmd) >= 3 and Path(cmd[0]).name == "milvus" and cmd[1:3] == ["run", "standalone"]:
        return "cpp"
    for arg, nxt in itertools.pairwise(cmd):
        if Path(arg).name == "milvus-lite" and nxt == "server":
            return "lite"
    return None


def milvus_processes(kind: str | None = None) -> list[psutil.Process]:
    """Live (non-zombie) Milvus server processes on this machine, of one kind or both."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        with contextlib.suppress(psutil.Error):
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            got = server_kind(proc.info["cmdline"] or [])
            if got and (kind is None or got == kind):
                found.append(proc)
    return found


# --- pidfiles and milvus-lite's data-folder lock ------------------------------------------------


def read_pidfile(data_dir: Path) -> dict:
    try:
        return json.loads((data_dir / PIDFILE).read_text())
    except (OSError, ValueError):
        return {}


def write_pidfile(data_dir: Path, pid: int, port: int) -> None:
    info = {"pid": pid, "port": port, "owner_pid": os.getpid(), "started": time.time()}
    (data_dir / PIDFILE).write_text(json.dumps(info))


def remove_pidfile(data_dir: Path | None) -> None:
    if data_dir is not None:
        with contextlib.suppress(OSError):
            (data_dir / PIDFILE).unlink()


def is_orphan_of_ours(proc: psutil.Process, data_dir: Path) -> bool:
    """A server this kit started whose owning Python process is gone (a crashed kernel)."""
    info = read_pidfile(data_dir)
    if info.get("pid") != proc.pid:
        return False
    owner = info.get("owner_pid")
    return not (owner and psutil.pid_exists(owner) and owner != proc.pid)


def lock_holder(data_dir: Path) -> tuple[bool, psutil.Process | None]:
    """Whether milvus-lite's advisory LOCK on ``data_dir`` is held, and by which process."""
    lock = data_dir / "LOCK"
    if not lock.exists():
        return False, None
    fd = os.open(lock, os.O_RDONLY)  # flock needs no write access
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False, None
    finally:
        os.close(fd)
    # Locked: find who holds it (ourselves included, for a client opened outside this package).
    target = str(lock.resolve())
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error):
            if any(f.path == target for f in proc.open_files()):
                return True, proc
    return True, None
