"""The ``milvus`` backend: the article's C++ ``default_server`` (Milvus 2.3.5 standalone).

Only one can run per machine (a second dies in a Go panic on the shared etcd ports), so a
machine-wide lock file guards the slot; :class:`CppSlotBusy` says another process holds it and
:func:`wait_for_cpp_slot` / :func:`start_waiting_for_slot` are the one way to wait for it.

Why the stop and the session TTL are tuned (issue 16): on SIGTERM the standalone stops its
coordinators, then its query node, whose graceful stop waits ``queryNode.gracefulStopTimeout``
for its segments to move to another query node, which a standalone does not have; the kit used
to kill it after 3 s, in the middle of that wait. Either way the next server on the same data
folder finds the old sessions (data node, query coordinator) in its embedded etcd until their
leases expire (``common.session.ttl``, 30 s in the wheel's config): it waited about 45 s, and in
that window could send Flush to the old data node ("session not found->datanode-N ...
unrecoverable error"). Now the query node waits 1 s (the stop takes about 1 s and exits by
itself) and the lease TTL is 10 s: a restart on the same data took 7-12 s (docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import stat
import subprocess
import tempfile
import time
import types
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import psutil

from helpers.servers import process
from helpers.servers.handle import (
    MilvusHandle,
    MilvusServerError,
    Server,
    register,
    reuse,
    running_handles,
    stop_key,
)
from helpers.servers.lite import wait_until_up
from helpers.settings import Settings, child_environment

log = logging.getLogger(__name__)
T = TypeVar("T")

# A clean stop takes about 1 s once the query node's wait is short (module docstring); the grace
# only matters for a server that hangs anyway, which is then killed.
CPP_STOP_GRACE_S = 30.0
# Milvus reads its settings from environment variables too (paramtable's env source): the
# query node's graceful-stop wait and the session lease TTL (module docstring).
CPP_ENV = {"QUERYNODE_GRACEFULSTOPTIMEOUT": "1", "COMMON_SESSION_TTL": "10"}

LOCK_PATH = Path(tempfile.gettempdir()) / "gfl-kit-milvus-cpp.lock"
_lock_fd: int | None = None


# In every CppSlotBusy message, so a parent can recognise the error in a child's output.
SLOT_BUSY_HINT = "only one C++ Milvus server can run per machine"


class CppSlotBusy(MilvusServerError):
    """Another process runs (or is starting) the machine's one C++ Milvus server."""


def _open_lock() -> int:
    """The machine-wide lock file, created readable and writable by every user (a lock needs
    only a readable descriptor, so another user's older file still works)."""
    try:
        fd = os.open(LOCK_PATH, os.O_CREAT | os.O_RDWR, 0o666)
    except PermissionError:
        try:
            return os.open(LOCK_PATH, os.O_RDONLY)
        except PermissionError:
            raise MilvusServerError(
                f"The C++ server's machine-wide lock file {LOCK_PATH} belongs to another user "
                "and cannot be read. Ask them (or root) to delete it, or use the 'lite' backend."
            ) from None
    with contextlib.suppress(OSError):  # umask may have narrowed the mode: open it to others
        if os.fstat(fd).st_uid == os.getuid():
            os.fchmod(fd, stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IWGRP
                      | stat.S_IROTH | stat.S_IWOTH)  # fmt: skip
    return fd


def _claim_slot() -> None:
    """Hold the machine-wide lock while our C++ server starts and runs.

    Checking for a running server and then starting one leaves a gap in which two notebooks (or
    a notebook and a test) can both start, and the second one panics. The lock closes the gap.
    """
    global _lock_fd
    if _lock_fd is not None:
        return
    fd = _open_lock()
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise CppSlotBusy(
            f"Another process (pid {holder}) is running a C++ Milvus server with this kit; "
            f"{SLOT_BUSY_HINT} (a second dies in a Go panic). Stop that notebook's server or "
            "kernel first, or use the 'lite' backend."
        ) from None
    with contextlib.suppress(OSError):  # read-only descriptor: the holder's pid stays unknown
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
    _lock_fd = fd


def _release_slot() -> None:
    global _lock_fd
    if _lock_fd is not None:
        os.close(_lock_fd)
        _lock_fd = None


def cpp_slot_busy() -> bool:
    """True while a C++ Milvus server runs on this machine or the kit's lock for one is held
    (a start is under way). Testing the lock means taking it for a moment and letting go."""
    if _lock_fd is not None or process.milvus_processes("cpp"):
        return True
    fd = _open_lock()
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases the lock if we got it
    return False


def wait_for_cpp_slot(
    timeout: float = 900.0, on_wait: Callable[[str], object] | None = None, step: float = 2.0
) -> float:
    """Wait until no C++ Milvus server runs on this machine; the seconds waited. Raises
    :class:`CppSlotBusy` after ``timeout``."""
    start = time.monotonic()
    told = False
    while cpp_slot_busy():
        if not told and on_wait is not None:
            on_wait("waiting: another C++ Milvus server runs on this machine (only one can)...")
            told = True
        if time.monotonic() - start > timeout:
            raise CppSlotBusy(
                f"a C++ Milvus server kept running for {timeout:.0f} s; {SLOT_BUSY_HINT}"
            )
        time.sleep(step)
    return time.monotonic() - start


def start_waiting_for_slot(
    start: Callable[[], T], timeout: float = 900.0, on_wait: Callable[[str], object] | None = None
) -> T:
    """``start()``, and while it fails with :class:`CppSlotBusy`, wait for the slot and retry
    (another session's notebook may hold it for a minute)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return start()
        except CppSlotBusy:
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            wait_for_cpp_slot(left, on_wait)


@contextlib.contextmanager
def _children_die_with_parent(module: types.ModuleType) -> Iterator[None]:
    """Make ``module``'s ``subprocess.Popen`` go through :func:`process.spawn` (dies with us,
    forked from the long-lived spawner thread, Milvus settings in its environment), for this
    call only. ``default_server.start()`` spawns the binary itself and offers no hook."""
    real = module.subprocess  # type: ignore[attr-defined]

    def popen(cmd: list[str], **kwargs: object) -> subprocess.Popen:
        env = kwargs.get("env") or child_environment()
        kwargs["env"] = {**env, **CPP_ENV}  # type: ignore[dict-item]
        return process.spawn(real.Popen, list(cmd), **kwargs)

    shim = types.SimpleNamespace(
        **{k: getattr(real, k) for k in dir(real) if not k.startswith("__")}
    )
    shim.Popen = popen
    module.subprocess = shim  # type: ignore[attr-defined]
    try:
        yield
    finally:
        module.subprocess = real  # type: ignore[attr-defined]


def start_cpp_server(
    settings: Settings, port: int | None, fresh: bool, timeout: float
) -> MilvusHandle:
    import milvus
    from milvus import default_server

    base = (settings.run_dir / "milvus-server").resolve()
    key = ("milvus", str(base))
    if fresh:
        stop_key(key)
    if (handle := reuse(key)) is not None:
        return handle
    for other in [s for s in running_handles() if s.backend == "milvus" and not s.shared]:
        if not other.alive():
            other.stop()
            continue
        raise MilvusServerError(
            f"This process already runs a C++ Milvus server (pid {other.pid}) with data in "
            f"{other.data_path}; only one can run per machine. Stop it (handle.stop()) before "
            f"starting one for {base}."
        )
    if default_server.running:
        raise MilvusServerError(
            "default_server is already running in this process but was not started by "
            "helpers.milvus_server; call default_server.stop() first."
        )
    _claim_slot()
    try:
        return _start_claimed(default_server, milvus, base, key, port, fresh, timeout)
    except BaseException:
        _release_slot()
        raise


def _start_claimed(
    default_server, milvus, base: Path, key: tuple, port: int | None, fresh: bool, timeout: float
) -> MilvusHandle:
    for other in process.milvus_processes("cpp"):
        if process.is_orphan_of_ours(other, base):
            log.warning(
                "Stopping a leftover Milvus server from an earlier session (%s).",
                process.describe(other),
            )
            process.terminate(other, grace=CPP_STOP_GRACE_S)
            continue
        where = ""
        with contextlib.suppress(psutil.Error):
            where = f" with data in {other.cwd()}"
        raise CppSlotBusy(
            f"Another C++ Milvus server is already running on this machine: "
            f"{process.describe(other)}{where}; {SLOT_BUSY_HINT} (the second dies in a Go panic "
            f"on the shared etcd ports). Stop it first (kill {other.pid}; kill -9 if it ignores "
            "that), or use the 'lite' backend."
        )
    if port is not None and process.port_in_use(port):
        raise MilvusServerError(
            f"Port {port} is already in use by {process.describe(process.listener_of(port))}; "
            "pick another port or leave it unset."
        )
    default_server.set_base_dir(str(base))
    if fresh:
        default_server.cleanup()  # the article's optional step: deletes data and logs
    if port is not None:
        default_server.listen_port = port
    default_server.wait_for_started = False  # we wait ourselves, watching for an early exit
    base.mkdir(parents=True, exist_ok=True)
    _link_binaries(milvus, base)
    try:
        with _children_die_with_parent(milvus):
            default_server.start()
    except RuntimeError as exc:
        default_server.stop()
        raise MilvusServerError(f"The C++ Milvus server could not start: {exc}") from exc
    proc = default_server.server_proc
    process.write_pidfile(base, proc.pid, default_server.listen_port)
    uri = f"http://127.0.0.1:{default_server.listen_port}"
    log_path = base / "logs" / "milvus-stderr.log"
    try:
        _wait_healthy(default_server.webservice_port, proc, log_path, timeout)
        client, version = wait_until_up(uri, proc, log_path, timeout, "C++ Milvus server")
    except BaseException:
        process.terminate(proc, grace=CPP_STOP_GRACE_S)
        default_server.stop()
        raise
    server = Server(
        "milvus", uri, version, key, client, data_path=base, pid=proc.pid, proc=proc,
        release=_stop_cpp_server,
    )  # fmt: skip
    return register(server)


def binaries_cache(milvus: types.ModuleType) -> Path:
    """Where the server's binaries are unpacked once per user and version."""
    return Path.home() / ".cache" / "gfl-kit" / f"milvus-{milvus.__version__}" / "bin"


def _link_binaries(milvus: types.ModuleType, base: Path) -> None:
    """Point ``base/bin`` at binaries unpacked once, instead of unpacking them per data folder.

    ``default_server.start()`` LZMA-decompresses about 170 MB of binaries into every new base
    folder, and ``cleanup()`` (``fresh=True``) deletes them with the data: measured 8-40 s of
    every fresh start (docs/benchmarks.md). With ``bin`` a symlink to a per-user cache, start()
    finds the checksums matching and only hashes the archives; ``cleanup()`` removes the link,
    not the cache. A folder that already has a real ``bin`` keeps it.
    """
    cache = binaries_cache(milvus)
    if not cache.is_dir():
        cache.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="unpack-", dir=cache.parent))
        try:
            milvus._initialize_data_files(str(staging))
            with contextlib.suppress(OSError):  # another process finished first: use theirs
                (staging / "bin").rename(cache)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    link = base / "bin"
    if link.is_symlink() and link.resolve() != cache.resolve():
        link.unlink()
    if not link.exists() and not link.is_symlink():
        base.mkdir(parents=True, exist_ok=True)
        link.symlink_to(cache, target_is_directory=True)


def _wait_healthy(web_port: int, proc: subprocess.Popen, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{web_port}/healthz"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            hint = (
                " A Go panic at start-up means another Milvus server holds the etcd ports "
                "(2379/2380); stop it and try again."
                if "panic" in process.tail(log_path, 400)
                else ""
            )
            raise MilvusServerError(
                f"The C++ Milvus server exited with code {proc.returncode} while starting.{hint} "
                f"Last lines of {log_path}:\n{process.tail(log_path)}"
            )
        with (
            contextlib.suppress(OSError, urllib.error.URLError),
            urllib.request.urlopen(url, timeout=2) as resp,
        ):
            if b"OK" in resp.read():
                return
        time.sleep(0.2)
    raise MilvusServerError(
        f"The C++ Milvus server was not healthy within {timeout:.0f} s. "
        f"Last lines of {log_path}:\n{process.tail(log_path)}"
    )


def _stop_cpp_server(server: Server) -> None:
    from milvus import default_server

    if server.proc is not None:
        process.terminate(server.proc, grace=CPP_STOP_GRACE_S)  # type: ignore[arg-type]
    default_server.stop()  # closes its log files; the process is already gone
    _release_slot()
    process.remove_pidfile(server.data_path)
