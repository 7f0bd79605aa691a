"""The two milvus-lite backends: ``lite`` (in this process) and ``lite-server`` (a child
process serving gRPC on a free loopback port)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from pymilvus import MilvusClient

from helpers.servers import process
from helpers.servers.handle import (
    MilvusHandle,
    MilvusServerError,
    Server,
    connect,
    register,
    reuse,
    stop_key,
)
from helpers.settings import Settings

log = logging.getLogger(__name__)

PORT_ATTEMPTS = 4  # a free port can be taken by someone else before our child binds it


# --- lite: milvus-lite inside this process ------------------------------------------------------


def _release_lite(server: Server) -> None:
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_server(str(server.data_path))


def start_lite(settings: Settings, fresh: bool) -> MilvusHandle:
    db = (settings.run_dir / "milvus.db").resolve()
    key = ("lite", str(db))
    if fresh:
        stop_key(key)
    if (handle := reuse(key)) is not None:
        return handle
    locked, holder = process.lock_holder(db)
    if locked and (holder is None or holder.pid != os.getpid()):
        raise MilvusServerError(
            f"{db} is open in another process, {process.describe(holder)}. milvus-lite lets one "
            "process use a data folder at a time: shut down the other notebook's kernel (or stop "
            "that process), or point this one elsewhere with GFL_RUN_DIR."
        )
    if fresh and db.exists():
        shutil.rmtree(db)
    db.parent.mkdir(parents=True, exist_ok=True)  # milvus-lite needs the parent to exist
    try:
        client, version = connect(str(db))
    except Exception as exc:
        raise MilvusServerError(f"Could not open milvus-lite at {db}: {exc}") from exc
    return register(
        Server("lite", str(db), version, key, client, data_path=db, release=_release_lite)
    )


# --- lite-server: `milvus-lite server` as a child process ---------------------------------------


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


def _release_child(server: Server) -> None:
    if server.proc is not None:
        process.terminate(server.proc)  # type: ignore[arg-type]
    process.remove_pidfile(server.data_path)


class PortTaken(MilvusServerError):
    """Another process listens on the port our child was told to use (it lost the race)."""


def start_lite_server(
    settings: Settings, port: int | None, fresh: bool, timeout: float
) -> MilvusHandle:
    data_dir = (settings.run_dir / "milvus-lite-server").resolve()
    key = ("lite-server", str(data_dir))
    if fresh:
        stop_key(key)
    if (handle := reuse(key)) is not None:
        if port is not None and not handle.uri.endswith(f":{port}"):
            handle.stop()  # not handed out: a refused start must not keep the server alive
            raise MilvusServerError(
                f"A lite server for {data_dir} is already running here on {handle.uri}; "
                f"stop it before asking for port {port}."
            )
        return handle
    locked, holder = process.lock_holder(data_dir)
    if locked:
        if (
            holder is not None
            and holder.pid != os.getpid()
            and process.is_orphan_of_ours(holder, data_dir)
        ):
            log.warning(
                "Stopping a leftover lite server from an earlier session (%s).",
                process.describe(holder),
            )
            process.terminate(holder)
        else:
            raise MilvusServerError(
                f"{data_dir} is already in use by {process.describe(holder)}. Stop that process "
                "or use another GFL_RUN_DIR."
            )
    if port is not None and process.port_in_use(port):
        raise MilvusServerError(
            f"Port {port} is already in use by {process.describe(process.listener_of(port))}; "
            "pick another port or leave it unset to get a free one."
        )
    if fresh and data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, PORT_ATTEMPTS + 1):
        try:
            return _launch_lite_server(data_dir, key, port or process.free_port(), timeout)
        except PortTaken as exc:
            if port is not None or attempt == PORT_ATTEMPTS:
                raise MilvusServerError(str(exc)) from None
            log.info("%s; retrying with another port", exc)
    raise AssertionError("unreachable")


def _launch_lite_server(data_dir: Path, key: tuple, port: int, timeout: float) -> MilvusHandle:
    log_path = data_dir / "server.log"
    cmd = [_lite_server_exe(), "server", "--data-dir", str(data_dir),
           "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    with open(log_path, "wb") as out:
        proc = process.spawn(subprocess.Popen, cmd, stdout=out, stderr=subprocess.STDOUT)
    process.write_pidfile(data_dir, proc.pid, port)
    uri = f"http://127.0.0.1:{port}"
    try:
        client, version = wait_until_up(uri, proc, log_path, timeout, "milvus-lite server")
    except BaseException:
        process.terminate(proc)
        process.remove_pidfile(data_dir)
        raise
    server = Server(
        "lite-server", uri, version, key, client, data_path=data_dir, pid=proc.pid, proc=proc,
        release=_release_child,
    )  # fmt: skip
    return register(server)


def wait_until_up(
    uri: str, proc: subprocess.Popen, log_path: Path, timeout: float, what: str
) -> tuple[MilvusClient, str]:
    """Wait until our child ``proc`` listens on ``uri``'s port and answers. Raises
    :class:`PortTaken` when another process listens there (milvus-lite then keeps running
    without serving, so waiting would only time out)."""
    deadline = time.monotonic() + timeout
    port = int(uri.rsplit(":", 1)[1])
    while True:
        if proc.poll() is not None:
            raise MilvusServerError(
                f"The {what} exited with code {proc.returncode} before it answered. "
                f"Last lines of {log_path}:\n{process.tail(log_path)}"
            )
        listener = process.listener_of(port)
        if listener is not None and listener.pid == proc.pid:
            try:
                return connect(uri, timeout=5)
            except Exception:
                pass
        elif listener is not None:
            raise PortTaken(
                f"Port {port} was taken by {process.describe(listener)} before the {what} "
                "could bind it"
            )
        if time.monotonic() > deadline:
            raise MilvusServerError(
                f"The {what} did not answer on {uri} within {timeout:.0f} s "
                f"(raise GFL_SERVER_START_TIMEOUT if the machine is slow). "
                f"Last lines of {log_path}:\n{process.tail(log_path)}"
            )
        time.sleep(0.2)
