"""Start, reuse and stop the Milvus server a notebook talks to.

The article starts an embedded server with ``default_server.cleanup()`` / ``.start()`` and
connects to it. This package gives the same lifecycle for four backends, one starter each, and
fixes what bites people in practice (docs/measured-facts.md):

* ``lite``        milvus-lite in the notebook's own process (``MilvusClient("<run>/milvus.db")``);
* ``lite-server`` ``milvus-lite server`` as a child process on a free loopback port;
* ``milvus``      the article's ``from milvus import default_server`` (C++ Milvus 2.3.5);
* ``remote``      any Milvus standalone / cluster or Zilliz Cloud by URI and token.

Why the extra care:

* a second C++ server on the same machine dies in a Go panic, and a lite server silently keeps
  running when its port is taken, so data folders and ports are checked *before* starting, and
  a lost race for a port is retried on another;
* a server whose Python parent was killed (a kernel restart) lived on as an orphan that ignores
  SIGTERM, so every child we start gets ``PR_SET_PDEATHSIG = SIGKILL`` (process.py);
* a long-lived client can go stale between two notebook cells (milvus-lite #334), so
  :attr:`MilvusHandle.client` pings before use and reconnects;
* a C++ server killed in the middle of its stop leaves etcd sessions that break the next start
  on the same data (cpp.py), so it is stopped cleanly.

Modules: ``process`` (children, ports, pidfiles, locks), ``handle`` (handles and the registry),
``lite`` (lite, lite-server), ``cpp`` (milvus), ``remote`` (remote and the main job's shared
server).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from helpers.servers import process
from helpers.servers.cpp import (
    CppSlotBusy,
    cpp_slot_busy,
    start_cpp_server,
    start_waiting_for_slot,
    wait_for_cpp_slot,
)
from helpers.servers.handle import (
    MilvusHandle,
    MilvusServerError,
    leftover_servers,
    running_handles,
    stop_all,
)
from helpers.servers.lite import start_lite, start_lite_server
from helpers.servers.process import PIDFILE
from helpers.servers.remote import connect_remote
from helpers.settings import BACKENDS, Settings, get_settings

LOCAL_BACKENDS = ("lite", "lite-server", "milvus")

__all__ = [
    "LOCAL_BACKENDS",
    "PIDFILE",
    "CppSlotBusy",
    "MilvusHandle",
    "MilvusServerError",
    "cpp_slot_busy",
    "leftover_servers",
    "milvus_server",
    "running_handles",
    "server_processes",
    "start_backend",
    "start_milvus",
    "start_waiting_for_slot",
    "stop_all",
    "wait_for_cpp_slot",
]


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
    Starting twice in one process gives two handles on the same server; it stops when both are
    released. Under the main job (``settings.milvus_shared_backend`` set) a request for the
    shared backend connects to the main job's server instead of starting one.
    """
    settings = settings or get_settings()
    backend = backend or settings.milvus_backend
    timeout = timeout if timeout is not None else settings.server_start_timeout
    if backend not in BACKENDS:
        raise MilvusServerError(
            f"Unknown backend {backend!r}; use one of lite, lite-server, milvus, remote."
        )
    if backend == "remote" or backend == settings.milvus_shared_backend:
        return connect_remote(settings, fresh=fresh)
    if backend == "lite":
        return start_lite(settings, fresh)
    if backend == "lite-server":
        return start_lite_server(settings, port, fresh, timeout)
    return start_cpp_server(settings, port, fresh, timeout)


def start_backend(
    settings: Settings,
    backend: str,
    *,
    wait_s: float = 900.0,
    on_wait: Callable[[str], object] | None = None,
    **kwargs: object,
) -> MilvusHandle:
    """:func:`start_milvus` of ``backend``; for the C++ server, wait up to ``wait_s`` while
    another process holds the machine's one slot (a test session, a bench, a notebook)."""
    return start_waiting_for_slot(
        lambda: start_milvus(settings, backend=backend, **kwargs),  # type: ignore[arg-type]
        wait_s,
        on_wait,
    )


@contextlib.contextmanager
def milvus_server(settings: Settings | None = None, **kwargs: object) -> Iterator[MilvusHandle]:
    """``with milvus_server() as m: m.client...``: the server is stopped on the way out."""
    handle = start_milvus(settings, **kwargs)  # type: ignore[arg-type]
    try:
        yield handle
    finally:
        handle.stop()


def server_processes() -> list[dict[str, object]]:
    """Milvus server processes running on this machine (lite servers and C++ standalones)."""
    found = []
    for proc in process.milvus_processes():
        with contextlib.suppress(Exception):
            cmd = proc.cmdline()
            kind = process.server_kind(cmd)
            found.append(
                {
                    "pid": proc.pid,
                    "kind": "C++ milvus" if kind == "cpp" else "milvus-lite server",
                    "cmd": " ".join(cmd)[:120],
                }
            )
    return found
