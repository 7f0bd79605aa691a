"""The running servers of this process, and the handles callers get for them.

One :class:`Server` per backend and data folder (the registry key); every ``start_milvus`` call
gets its own :class:`MilvusHandle` on it. The server stops when the last handle is released,
and a handle can be released only once: one caller's double ``stop()`` cannot stop the server
under another caller.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from pymilvus import MilvusClient

from helpers.settings import Secret

log = logging.getLogger(__name__)

PING_AFTER_S = 20.0  # re-check a client idle for longer than this before handing it out

# pymilvus pings every 10 s even while idle; milvus-lite's gRPC server counts those as abuse and,
# after a few minutes without calls (a long notebook cell), answers GOAWAY "too_many_pings" and
# logs errors into the notebook (the root of milvus-lite #334). A local server needs no
# keepalive while idle, so local clients ping only during calls, and rarely.
_LOCAL_GRPC_OPTIONS = {
    "grpc.keepalive_time_ms": 300_000,
    "grpc.keepalive_permit_without_calls": False,
}


class MilvusServerError(RuntimeError):
    """A server could not be started, reused or reached; the message says what to do."""


def connect(
    uri: str, token: str = "", timeout: float = 10.0, *, local: bool = True
) -> tuple[MilvusClient, str]:
    """A client for ``uri`` and the server version it reports (which proves it answers)."""
    options = {"grpc_options": dict(_LOCAL_GRPC_OPTIONS)} if local else {}
    client = MilvusClient(uri=uri, token=token, timeout=timeout, **options)
    return client, client.get_server_version()


@dataclass(eq=False)
class Server:
    """A running (or reachable) Milvus shared by every handle on it.

    ``release`` is the backend's own stop (None: nothing of ours to stop, e.g. a remote server).
    ``local`` says whether the client gets the local gRPC options.
    """

    backend: str
    uri: str
    version: str
    key: tuple
    client: MilvusClient | None
    data_path: Path | None = None
    pid: int | None = None
    proc: object | None = field(default=None, repr=False)  # subprocess.Popen when we started it
    token: Secret = field(default_factory=Secret, repr=False)
    release: Callable[[Server], None] | None = field(default=None, repr=False)
    local: bool = True
    shared: bool = False  # started by the main job, reached by URI
    refs: int = 0
    last_ok: float = field(default_factory=time.monotonic, repr=False)

    @property
    def running(self) -> bool:
        return self.client is not None

    def alive(self) -> bool:
        """Whether the server process we started (if any) still runs. A killed child stays a
        zombie until reaped, and ``psutil.pid_exists`` says True for zombies."""
        if self.proc is not None:
            return self.proc.poll() is None  # type: ignore[attr-defined]
        if self.pid is None:
            return True
        try:
            return psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def died(self) -> MilvusServerError:
        return MilvusServerError(
            f"The {self.backend} server (pid {self.pid}) is no longer running; "
            "call start_milvus() again (data already flushed to disk is kept)."
        )

    def live_client(self) -> MilvusClient:
        """The client, pinged first if it sat idle (stale gRPC channels, milvus-lite #334)."""
        if self.client is None:
            raise MilvusServerError(
                f"The {self.backend} server was stopped; call start_milvus() again."
            )
        if not self.alive():
            raise self.died()
        if time.monotonic() - self.last_ok > PING_AFTER_S:
            try:
                self.client.get_server_version(timeout=5)
            except Exception:
                self._reconnect()
        self.last_ok = time.monotonic()
        return self.client

    def _reconnect(self) -> None:
        if not self.alive():
            raise self.died()
        with contextlib.suppress(Exception):
            self.client.close()  # type: ignore[union-attr]
        try:
            self.client, _ = connect(self.uri, self.token.reveal(), local=self.local)
        except Exception as exc:
            message = str(exc)
            if self.token:
                message = message.replace(self.token.reveal(), "***")
            raise MilvusServerError(
                f"The {self.backend} server at {self.uri} does not answer ({message}); "
                "call start_milvus() again."
            ) from None

    def stop(self) -> None:
        """Stop now, whoever else holds a handle (stop_all, ``fresh=True``, a dead server)."""
        with _LOCK:
            if self.client is None:
                return
            if _REGISTRY.get(self.key) is self:
                _REGISTRY.pop(self.key)
            with contextlib.suppress(Exception):
                self.client.close()
            self.client = None
            self.refs = 0
        if self.release is not None:
            self.release(self)


class MilvusHandle:
    """One caller's use of a running Milvus: ``.client``, ``.uri``, ``.stop()``. Use it as a
    context manager. Several handles may share one server; the server stops with the last."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self._released = False

    backend = property(lambda self: self.server.backend)
    uri = property(lambda self: self.server.uri)
    version = property(lambda self: self.server.version)
    data_path = property(lambda self: self.server.data_path)
    pid = property(lambda self: self.server.pid)
    shared = property(lambda self: self.server.shared)

    @property
    def running(self) -> bool:
        return not self._released and self.server.running

    @property
    def client(self) -> MilvusClient:
        if self._released:
            raise MilvusServerError(
                f"This handle on the {self.backend} server was stopped; call start_milvus() again."
            )
        return self.server.live_client()

    def stop(self, *, force: bool = False) -> None:
        """Release this handle (once; later calls do nothing). The server stops when its last
        handle is released, or at once with ``force=True``."""
        if force:
            self._released = True
            self.server.stop()
            return
        with _LOCK:
            if self._released:
                return
            self._released = True
            self.server.refs -= 1
            last = self.server.refs <= 0
        if last:
            self.server.stop()

    def __enter__(self) -> MilvusHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "released" if self._released else "in use"
        return f"MilvusHandle({self.backend!r}, {self.uri!r}, pid={self.pid}, {state})"


_REGISTRY: dict[tuple, Server] = {}
_LOCK = threading.RLock()
# Everything this process started, by registry key: (backend, server pid or None, data path).
_STARTED: dict[tuple, tuple[str, int | None, str]] = {}


def register(server: Server) -> MilvusHandle:
    """Record a newly started server and hand out its first handle."""
    with _LOCK:
        _REGISTRY[server.key] = server
        if server.release is not None:
            _STARTED[server.key] = (server.backend, server.pid, str(server.data_path))
        server.refs = 1
    return MilvusHandle(server)


def reuse(key: tuple) -> MilvusHandle | None:
    """A new handle on the running server for ``key``, if there is one and it is alive."""
    with _LOCK:
        server = _REGISTRY.get(key)
        if server is None:
            return None
        if server.alive():
            server.refs += 1
            return MilvusHandle(server)
    server.stop()  # it died: reap it, free default_server and the slot, start anew
    return None


def stop_key(key: tuple) -> None:
    """Stop the server for ``key`` now, if one runs (``fresh=True`` wipes its data next)."""
    server = _REGISTRY.get(key)
    if server is not None:
        server.stop()


def running_handles() -> list[Server]:
    """The servers this process runs or is connected to (one entry per server)."""
    return list(_REGISTRY.values())


def stop_all() -> None:
    """Stop every server this process started. Registered to run at interpreter exit."""
    for server in list(_REGISTRY.values()):
        try:
            server.stop()
        except Exception:
            log.exception("stopping the %s server failed", server.backend)


atexit.register(stop_all)


def leftover_servers() -> list[dict[str, object]]:
    """Servers this process started that are still running: empty after a clean stop.

    Unlike :func:`helpers.servers.server_processes` this ignores servers other programs run on
    the machine, so a notebook can show, reproducibly, that it left nothing behind.
    """
    from milvus_lite.server_manager import server_manager_instance

    left: list[dict[str, object]] = []
    for backend, pid, path in _STARTED.values():
        if pid is None:  # in-process milvus-lite: running while its server thread is registered
            if path in server_manager_instance._servers:
                left.append({"backend": backend, "where": "this process"})
            continue
        with contextlib.suppress(psutil.NoSuchProcess):
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                left.append({"backend": backend, "pid": pid})
    return left
