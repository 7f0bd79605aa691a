"""Start, reuse and stop the Milvus server a notebook talks to.

The article starts an embedded server with ``default_server.cleanup()`` / ``.start()`` and
connects to it. This module gives the same lifecycle for four backends and fixes what bites
people in practice (see ../shared/FACTS.md):

* ``lite``        milvus-lite in the notebook's own process (``MilvusClient("<run>/milvus.db")``);
* ``lite-server`` ``milvus-lite server`` as a child process on a free loopback port;
* ``milvus``      the article's ``from milvus import default_server`` (C++ Milvus 2.3.5);
* ``remote``      any Milvus standalone / cluster or Zilliz Cloud by URI and token.

Why the extra care:

* a second C++ server on the same machine dies in a Go panic, and a lite server silently keeps
  running when its port is taken, so we check data dirs and ports *before* starting;
* a server whose Python parent was killed (a kernel restart) lived on as an orphan that ignores
  SIGTERM, so every child we start gets ``PR_SET_PDEATHSIG = SIGKILL``;
* a long-lived client can go stale between two notebook cells (milvus-lite #334), so
  :attr:`MilvusHandle.client` pings before use and reconnects.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from pymilvus import MilvusClient

from helpers.settings import Secret, Settings, get_settings

LOCAL_BACKENDS = ("lite", "lite-server", "milvus")
PIDFILE = "gfl-server.json"
_PING_AFTER_S = 20.0  # re-check a client idle for longer than this before handing it out
_STOP_GRACE_S = 10.0
# Milvus 2.3.5 standalone with a collection never finishes a SIGTERM shutdown: its
# coordinators stop within milliseconds, then "Query node stop" retries the stopped rootcoord
# until common.gracefulStopTimeout (1800 s in the wheel's config; measured: still running after
# 120 s). Waiting longer only delays the SIGKILL: the next start with the same data takes about
# 50 s either way (10 s or 5 s of grace, measured), while the killed server's etcd sessions expire.
_CPP_STOP_GRACE_S = 3.0


class MilvusServerError(RuntimeError):
    """A server could not be started, reused or reached; the message says what to do."""


# Runs in the child before the server binary replaces it: ask Linux to SIGKILL us when the
# parent dies (SIGKILL because the C++ server ignores SIGTERM once orphaned, FACTS), then exec.
# A tiny exec wrapper rather than preexec_fn: preexec_fn forces fork() in a process full of
# gRPC threads, which gRPC warns about into the notebook's output.
_EXEC_WITH_PARENT_DEATH = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit('parent already gone')\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def _dies_with_parent(cmd: list[str]) -> list[str]:
    """``cmd`` wrapped so the process it becomes is killed when this Python process dies."""
    return [sys.executable, "-I", "-S", "-c", _EXEC_WITH_PARENT_DEATH, str(os.getpid()), *cmd]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_in_use(port: int) -> bool:
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


def _listener_of(port: int) -> psutil.Process | None:
    """The process listening on ``port``, when the OS lets us see it."""
    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections(kind="tcp"):
            listening = conn.status == psutil.CONN_LISTEN and conn.laddr
            if listening and conn.laddr.port == port and conn.pid:
                return psutil.Process(conn.pid)
    return None


def _describe(proc: psutil.Process | None) -> str:
    if proc is None:
        return "an unknown process"
    try:
        cmd = " ".join(proc.cmdline())[:160]
        return f"pid {proc.pid} ({cmd})"
    except psutil.Error:
        return f"pid {proc.pid}"


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:]) or f"(log {path} is empty)"


def _lock_holder(data_dir: Path) -> tuple[bool, psutil.Process | None]:
    """Whether milvus-lite's advisory LOCK on ``data_dir`` is held, and by which process."""
    lock = data_dir / "LOCK"
    if not lock.exists():
        return False, None
    fd = os.open(lock, os.O_RDWR)
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
    # Locked: find who holds it (ourselves included, for a client opened outside this module).
    target = str(lock.resolve())
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error):
            if any(f.path == target for f in proc.open_files()):
                return True, proc
    return True, None


def _terminate(proc: subprocess.Popen | psutil.Process, grace: float = _STOP_GRACE_S) -> None:
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


def _read_pidfile(data_dir: Path) -> dict:
    try:
        return json.loads((data_dir / PIDFILE).read_text())
    except (OSError, ValueError):
        return {}


def _write_pidfile(data_dir: Path, pid: int, port: int) -> None:
    info = {"pid": pid, "port": port, "owner_pid": os.getpid(), "started": time.time()}
    (data_dir / PIDFILE).write_text(json.dumps(info))


def _is_orphan_of_ours(proc: psutil.Process, data_dir: Path) -> bool:
    """A server this kit started whose owning Python process is gone (a crashed kernel)."""
    info = _read_pidfile(data_dir)
    if info.get("pid") != proc.pid:
        return False
    owner = info.get("owner_pid")
    return not (owner and psutil.pid_exists(owner) and owner != proc.pid)


# pymilvus pings every 10 s even while idle; milvus-lite's gRPC server counts those as abuse and,
# after a few minutes without calls (a long notebook cell), answers GOAWAY "too_many_pings" and
# logs errors into the notebook (the root of milvus-lite #334). A local server needs no
# keepalive while idle, so local clients ping only during calls, and rarely.
_LOCAL_GRPC_OPTIONS = {
    "grpc.keepalive_time_ms": 300_000,
    "grpc.keepalive_permit_without_calls": False,
}


def _connect(
    uri: str, token: str = "", timeout: float = 10.0, *, local: bool = True
) -> tuple[MilvusClient, str]:
    options = {"grpc_options": dict(_LOCAL_GRPC_OPTIONS)} if local else {}
    client = MilvusClient(uri=uri, token=token, timeout=timeout, **options)
    return client, client.get_server_version()


@dataclass(eq=False)
class MilvusHandle:
    """A running (or reachable) Milvus and a client for it. Use as a context manager."""

    backend: str
    uri: str
    version: str
    data_path: Path | None = None
    pid: int | None = None
    _client: MilvusClient | None = field(default=None, repr=False)
    _token: Secret = field(default_factory=lambda: Secret(""), repr=False)
    _proc: subprocess.Popen | None = field(default=None, repr=False)
    _refs: int = field(default=1, repr=False)
    _last_ok: float = field(default_factory=time.monotonic, repr=False)
    _key: tuple = field(default=(), repr=False)

    @property
    def running(self) -> bool:
        return self._client is not None

    @property
    def client(self) -> MilvusClient:
        """The client, pinged first if it sat idle (stale gRPC channels, milvus-lite #334)."""
        if self._client is None:
            raise MilvusServerError(
                f"The {self.backend} server was stopped; call start_milvus() again."
            )
        if not self._alive():
            raise self._died()
        if time.monotonic() - self._last_ok > _PING_AFTER_S:
            try:
                self._client.get_server_version(timeout=5)
            except Exception:
                self._reconnect()
        self._last_ok = time.monotonic()
        return self._client

    def _alive(self) -> bool:
        """Whether the server process we started (if any) still runs. A killed child stays a
        zombie until reaped, and ``psutil.pid_exists`` says True for zombies."""
        if self._proc is not None:
            return self._proc.poll() is None
        if self.pid is None:
            return True
        try:
            return psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def _died(self) -> MilvusServerError:
        return MilvusServerError(
            f"The {self.backend} server (pid {self.pid}) is no longer running; "
            "call start_milvus() again (data already flushed to disk is kept)."
        )

    def _reconnect(self) -> None:
        if not self._alive():
            raise self._died()
        with contextlib.suppress(Exception):
            self._client.close()  # type: ignore[union-attr]
        try:
            self._client, _ = _connect(
                self.uri, self._token.reveal(), local=self.backend != "remote"
            )
        except Exception as exc:
            message = str(exc)
            if self._token:
                message = message.replace(self._token.reveal(), "***")
            raise MilvusServerError(
                f"The {self.backend} server at {self.uri} does not answer ({message}); "
                "call start_milvus() again."
            ) from None

    def stop(self, *, force: bool = False) -> None:
        """Release this handle; the server stops when the last user releases it."""
        if self._client is None:
            return
        self._refs -= 1
        if self._refs > 0 and not force:
            return
        if _REGISTRY.get(self._key) is self:  # a newer handle may have replaced a dead one
            _REGISTRY.pop(self._key)
        with contextlib.suppress(Exception):
            self._client.close()
        self._client = None
        if self.backend == "lite":
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(str(self.data_path))
        elif self.backend == "lite-server" and self._proc is not None:
            _terminate(self._proc)
            with contextlib.suppress(OSError):
                (self.data_path / PIDFILE).unlink()  # type: ignore[operator]
        elif self.backend == "milvus":
            _stop_cpp_server(self)

    def __enter__(self) -> MilvusHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __del__(self) -> None:  # the process-exit hook below is the real guarantee
        pass


_REGISTRY: dict[tuple, MilvusHandle] = {}
_LOCK = threading.RLock()
# Everything this process started, by registry key: (backend, server pid or None, data path).
_STARTED: dict[tuple, tuple[str, int | None, str]] = {}


def running_handles() -> list[MilvusHandle]:
    return list(_REGISTRY.values())


def stop_all() -> None:
    """Stop every server this process started. Registered to run at interpreter exit."""
    for handle in list(_REGISTRY.values()):
        with contextlib.suppress(Exception):
            handle.stop(force=True)


atexit.register(stop_all)


def start_milvus(
    settings: Settings | None = None,
    *,
    backend: str | None = None,
    port: int | None = None,
    fresh: bool = False,
    timeout: float | None = None,
) -> MilvusHandle:
    """Start (or reuse) the configured backend and return a handle with a connected client.

    ``fresh=True`` wipes that backend's data first, like the article's ``default_server.cleanup()``.
    Starting twice in one process hands back the same server (reference counted).
    """
    settings = settings or get_settings()
    backend = backend or settings.milvus_backend
    timeout = timeout if timeout is not None else settings.server_start_timeout
    with _LOCK:
        if backend == "lite":
            return _start_lite(settings, fresh)
        if backend == "lite-server":
            return _start_lite_server(settings, port, fresh, timeout)
        if backend == "milvus":
            return _start_cpp_server(settings, port, fresh, timeout)
        if backend == "remote":
            return _connect_remote(settings)
    raise MilvusServerError(
        f"Unknown backend {backend!r}; use one of lite, lite-server, milvus, remote."
    )


@contextlib.contextmanager
def milvus_server(settings: Settings | None = None, **kwargs: object) -> Iterator[MilvusHandle]:
    """``with milvus_server() as m: m.client...``: the server is stopped on the way out."""
    handle = start_milvus(settings, **kwargs)  # type: ignore[arg-type]
    try:
        yield handle
    finally:
        handle.stop()


def _reuse(key: tuple) -> MilvusHandle | None:
    handle = _REGISTRY.get(key)
    if handle is None:
        return None
    if not handle._alive():
        handle.stop(force=True)  # it died: reap it, free default_server and the slot, start anew
        return None
    handle._refs += 1
    return handle


# --- lite: milvus-lite inside this process ----------------------------------------------------


def _start_lite(settings: Settings, fresh: bool) -> MilvusHandle:
    db = (settings.run_dir / "milvus.db").resolve()
    key = ("lite", str(db))
    if fresh and key in _REGISTRY:
        _REGISTRY[key].stop(force=True)
    if (handle := _reuse(key)) is not None:
        return handle
    locked, holder = _lock_holder(db)
    if locked and (holder is None or holder.pid != os.getpid()):
        raise MilvusServerError(
            f"{db} is open in another process, {_describe(holder)}. milvus-lite lets one process "
            "use a data folder at a time: shut down the other notebook's kernel (or stop that "
            "process), or point this one elsewhere with GFL_RUN_DIR."
        )
    if fresh and db.exists():
        shutil.rmtree(db)
    db.parent.mkdir(parents=True, exist_ok=True)  # milvus-lite needs the parent to exist
    try:
        client, version = _connect(str(db))
    except Exception as exc:
        raise MilvusServerError(f"Could not open milvus-lite at {db}: {exc}") from exc
    handle = MilvusHandle("lite", str(db), version, data_path=db, _client=client, _key=key)
    _REGISTRY[key] = handle
    if handle.backend != "remote":
        _STARTED[key] = (handle.backend, handle.pid, str(handle.data_path))
    return handle


# --- lite-server: `milvus-lite server` as a child process --------------------------------------


def _lite_server_exe() -> str:
    exe = Path(sys.executable).with_name("milvus-lite")
    if exe.exists():
        return str(exe)
    found = shutil.which("milvus-lite")
    if not found:
        raise MilvusServerError(
            "The milvus-lite command is not installed; run ./kit.sh to set up .venv."
        )
    return found


def _start_lite_server(
    settings: Settings, port: int | None, fresh: bool, timeout: float
) -> MilvusHandle:
    data_dir = (settings.run_dir / "milvus-lite-server").resolve()
    key = ("lite-server", str(data_dir))
    if fresh and key in _REGISTRY:
        _REGISTRY[key].stop(force=True)
    if (handle := _reuse(key)) is not None:
        if port is not None and not handle.uri.endswith(f":{port}"):
            handle._refs -= 1  # not handed out: a refused start must not keep the server alive
            raise MilvusServerError(
                f"A lite server for {data_dir} is already running here on {handle.uri}; "
                f"stop it before asking for port {port}."
            )
        return handle
    locked, holder = _lock_holder(data_dir)
    if locked:
        if (
            holder is not None
            and holder.pid != os.getpid()
            and _is_orphan_of_ours(holder, data_dir)
        ):
            print(f"Stopping a leftover lite server from an earlier session ({_describe(holder)}).")
            _terminate(holder)
        else:
            raise MilvusServerError(
                f"{data_dir} is already in use by {_describe(holder)}. Stop that process "
                "or use another GFL_RUN_DIR."
            )
    if port is None:
        port = _free_port()
    elif _port_in_use(port):
        raise MilvusServerError(
            f"Port {port} is already in use by {_describe(_listener_of(port))}; "
            "pick another port or leave it unset to get a free one."
        )
    if fresh and data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            _dies_with_parent([_lite_server_exe(), "server", "--data-dir", str(data_dir),
                               "--host", "127.0.0.1", "--port", str(port)]),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    _write_pidfile(data_dir, proc.pid, port)
    uri = f"http://127.0.0.1:{port}"
    try:
        client, version = _wait_until_up(uri, proc, log_path, timeout, "milvus-lite server")
    except BaseException:
        _terminate(proc)
        raise
    handle = MilvusHandle(
        "lite-server", uri, version, data_path=data_dir, pid=proc.pid,
        _client=client, _proc=proc, _key=key,
    )  # fmt: skip
    _REGISTRY[key] = handle
    if handle.backend != "remote":
        _STARTED[key] = (handle.backend, handle.pid, str(handle.data_path))
    return handle


def _wait_until_up(
    uri: str, proc: subprocess.Popen, log_path: Path, timeout: float, what: str
) -> tuple[MilvusClient, str]:
    deadline = time.monotonic() + timeout
    port = int(uri.rsplit(":", 1)[1])
    while True:
        if proc.poll() is not None:
            raise MilvusServerError(
                f"The {what} exited with code {proc.returncode} before it answered. "
                f"Last lines of {log_path}:\n{_tail(log_path)}"
            )
        listener = _listener_of(port)
        if listener is not None and listener.pid == proc.pid:
            try:
                return _connect(uri, timeout=5)
            except Exception:
                pass
        if time.monotonic() > deadline:
            raise MilvusServerError(
                f"The {what} did not answer on {uri} within {timeout:.0f} s "
                f"(raise GFL_SERVER_START_TIMEOUT if the machine is slow). "
                f"Last lines of {log_path}:\n{_tail(log_path)}"
            )
        time.sleep(0.2)


# --- milvus: the article's C++ default_server --------------------------------------------------


_CPP_LOCK_PATH = Path(tempfile.gettempdir()) / "gfl-kit-milvus-cpp.lock"
_cpp_lock_fd: int | None = None


def _claim_cpp_slot() -> None:
    """Hold a machine-wide lock while our C++ server starts and runs.

    Checking for a running server and then starting one leaves a gap in which two notebooks (or
    a notebook and a test) can both start, and the second one panics. The lock closes the gap.
    """
    global _cpp_lock_fd
    if _cpp_lock_fd is not None:
        return
    fd = os.open(_CPP_LOCK_PATH, os.O_CREAT | os.O_RDWR, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise MilvusServerError(
            f"Another process (pid {holder}) is running a C++ Milvus server with this kit; only "
            "one can run per machine (a second dies in a Go panic). Stop that notebook's server "
            "or kernel first, or use the 'lite' backend."
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _cpp_lock_fd = fd


def _release_cpp_slot() -> None:
    global _cpp_lock_fd
    if _cpp_lock_fd is not None:
        os.close(_cpp_lock_fd)
        _cpp_lock_fd = None


def cpp_slot_busy() -> bool:
    """True while a C++ Milvus server runs on this machine or the kit's lock for one is held
    (a start is under way). Testing the lock means taking it for a moment and letting go."""
    if _cpp_servers():
        return True
    fd = os.open(_CPP_LOCK_PATH, os.O_CREAT | os.O_RDWR, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases the lock if we got it
    return False


def _cpp_servers() -> list[psutil.Process]:
    """Every C++ Milvus standalone running on this machine (ours or not)."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            cmd = proc.info["cmdline"] or []
            if (
                len(cmd) >= 3
                and Path(cmd[0]).name == "milvus"
                and cmd[1:3] == ["run", "standalone"]
            ):
                found.append(proc)
    return found


@contextlib.contextmanager
def _children_die_with_parent(module: types.ModuleType) -> Iterator[None]:
    """Make ``module``'s ``subprocess.Popen`` set PDEATHSIG, for this call only.

    ``default_server.start()`` spawns the binary itself and offers no hook; without this, a
    killed kernel leaves a server that ignores SIGTERM (FACTS).
    """
    real = module.subprocess  # type: ignore[attr-defined]

    def popen(cmd: list[str], *args: object, **kwargs: object) -> subprocess.Popen:
        cmd = _dies_with_parent(list(cmd))
        kwargs.setdefault("start_new_session", True)
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        return real.Popen(cmd, *args, **kwargs)  # type: ignore[arg-type]

    shim = types.SimpleNamespace(
        **{k: getattr(real, k) for k in dir(real) if not k.startswith("__")}
    )
    shim.Popen = popen
    module.subprocess = shim  # type: ignore[attr-defined]
    try:
        yield
    finally:
        module.subprocess = real  # type: ignore[attr-defined]


def _start_cpp_server(
    settings: Settings, port: int | None, fresh: bool, timeout: float
) -> MilvusHandle:
    import milvus
    from milvus import default_server

    base = (settings.run_dir / "milvus-server").resolve()
    key = ("milvus", str(base))
    if fresh and key in _REGISTRY:
        _REGISTRY[key].stop(force=True)
    if (handle := _reuse(key)) is not None:
        return handle
    for other in [h for h in _REGISTRY.values() if h.backend == "milvus"]:
        if not other._alive():
            other.stop(force=True)
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
    _claim_cpp_slot()
    try:
        return _start_cpp_server_claimed(default_server, milvus, base, key, port, fresh, timeout)
    except BaseException:
        _release_cpp_slot()
        raise


def _start_cpp_server_claimed(
    default_server, milvus, base: Path, key: tuple, port: int | None, fresh: bool, timeout: float
) -> MilvusHandle:
    for other in _cpp_servers():
        if _is_orphan_of_ours(other, base):
            print(
                f"Stopping a leftover Milvus server from an earlier session ({_describe(other)})."
            )
            _terminate(other)
            continue
        where = ""
        with contextlib.suppress(psutil.Error):
            where = f" with data in {other.cwd()}"
        raise MilvusServerError(
            f"Another C++ Milvus server is already running on this machine: {_describe(other)}"
            f"{where}. Two cannot run at once (the second dies in a Go panic on the shared etcd "
            f"ports). Stop it first (kill {other.pid}; kill -9 if it ignores that), or use the "
            "'lite' backend."
        )
    if port is not None and _port_in_use(port):
        raise MilvusServerError(
            f"Port {port} is already in use by {_describe(_listener_of(port))}; "
            "pick another port or leave it unset."
        )
    default_server.set_base_dir(str(base))
    if fresh:
        default_server.cleanup()  # the article's optional step: deletes data and logs
    if port is not None:
        default_server.listen_port = port
    default_server.wait_for_started = False  # we wait ourselves, watching for an early exit
    base.mkdir(parents=True, exist_ok=True)
    try:
        with _children_die_with_parent(milvus):
            default_server.start()
    except RuntimeError as exc:
        default_server.stop()
        raise MilvusServerError(f"The C++ Milvus server could not start: {exc}") from exc
    proc = default_server.server_proc
    _write_pidfile(base, proc.pid, default_server.listen_port)
    uri = f"http://127.0.0.1:{default_server.listen_port}"
    log_path = base / "logs" / "milvus-stderr.log"
    try:
        _wait_healthy(default_server.webservice_port, proc, log_path, timeout)
        client, version = _wait_until_up(uri, proc, log_path, timeout, "C++ Milvus server")
    except BaseException:
        _terminate(proc)
        default_server.stop()
        raise
    handle = MilvusHandle(
        "milvus", uri, version, data_path=base, pid=proc.pid, _client=client, _proc=proc, _key=key
    )
    _REGISTRY[key] = handle
    if handle.backend != "remote":
        _STARTED[key] = (handle.backend, handle.pid, str(handle.data_path))
    return handle


def _wait_healthy(web_port: int, proc: subprocess.Popen, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{web_port}/healthz"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = _tail(log_path)
            hint = (
                " A Go panic at start-up means another Milvus server holds the etcd ports "
                "(2379/2380); stop it and try again."
                if "panic" in _tail(log_path, 400)
                else ""
            )
            raise MilvusServerError(
                f"The C++ Milvus server exited with code {proc.returncode} while starting.{hint} "
                f"Last lines of {log_path}:\n{tail}"
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
        f"Last lines of {log_path}:\n{_tail(log_path)}"
    )


def _stop_cpp_server(handle: MilvusHandle) -> None:
    from milvus import default_server

    if handle._proc is not None:
        _terminate(handle._proc, grace=_CPP_STOP_GRACE_S)
    default_server.stop()  # closes its log files; the process is already gone
    _release_cpp_slot()
    with contextlib.suppress(OSError):
        (handle.data_path / PIDFILE).unlink()  # type: ignore[operator]


# --- remote: a server somebody else runs -------------------------------------------------------


def _connect_remote(settings: Settings) -> MilvusHandle:
    if not settings.milvus_uri:
        raise MilvusServerError(
            "The remote backend needs GFL_MILVUS_URI (and GFL_MILVUS_TOKEN for Zilliz Cloud)."
        )
    key = ("remote", settings.milvus_uri)
    if (handle := _reuse(key)) is not None:
        return handle
    try:
        client, version = _connect(settings.milvus_uri, settings.milvus_token.reveal(), local=False)
    except Exception as exc:
        message = str(exc)
        if settings.milvus_token:
            message = message.replace(settings.milvus_token.reveal(), "***")
        raise MilvusServerError(
            f"Could not reach Milvus at {settings.milvus_uri}: {message}. Check GFL_MILVUS_URI, "
            "GFL_MILVUS_TOKEN and that the server is up."
        ) from None
    handle = MilvusHandle(
        "remote",
        settings.milvus_uri,
        version,
        _client=client,
        _token=settings.milvus_token,
        _key=key,
    )
    _REGISTRY[key] = handle
    if handle.backend != "remote":
        _STARTED[key] = (handle.backend, handle.pid, str(handle.data_path))
    return handle


def server_processes() -> list[dict[str, object]]:
    """Milvus server processes running on this machine (lite servers and C++ standalones).

    A notebook ends by showing this list is empty: nothing it started outlives it.
    """
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            cmd = proc.info["cmdline"] or []
            lite = (
                len(cmd) >= 2
                and Path(cmd[0]).name in ("milvus-lite", "python", "python3")
                and "server" in cmd
                and any("milvus-lite" in c or "milvus_lite" in c for c in cmd)
            )
            cpp = (
                len(cmd) >= 3
                and Path(cmd[0]).name == "milvus"
                and cmd[1:3] == ["run", "standalone"]
            )
            if lite or cpp:
                found.append(
                    {
                        "pid": proc.pid,
                        "kind": "C++ milvus" if cpp else "milvus-lite server",
                        "cmd": " ".join(cmd)[:120],
                    }
                )
    return found


def leftover_servers() -> list[dict[str, object]]:
    """Servers this process started that are still running: empty after a clean stop.

    Unlike :func:`server_processes` this ignores servers other programs run on the machine, so a
    notebook can show, reproducibly, that it left nothing behind.
    """
    from milvus_lite.server_manager import server_manager_instance

    left = []
    for backend, pid, path in _STARTED.values():
        if pid is None:  # in-process milvus-lite: running while its server thread is registered
            if path in server_manager_instance._servers:
                left.append({"backend": backend, "where": "this process"})
            continue
        with contextlib.suppress(psutil.NoSuchProcess):
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                left.append({"backend": backend, "pid": pid})
    return left
