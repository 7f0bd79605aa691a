"""Server lifecycle on every backend, with real servers and real second processes.

What is checked is what bites notebook users (docs/measured-facts.md): a second
server on a busy port or data folder, a server outliving a killed kernel, a client gone stale
between two cells, and a remote that cannot be reached. Each C++ start costs about 10 s, so the
C++ cases share starts where one start can show several things.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import traceback
from pathlib import Path

import psutil
import pytest
from pymilvus import MilvusClient

from helpers.milvus_server import (
    PIDFILE,
    MilvusHandle,
    MilvusServerError,
    milvus_server,
    running_handles,
    start_milvus,
)
from helpers.servers.handle import Server
from helpers.settings import Settings
from tests.conftest import (
    CHILD_START_SERVER,
    CPP_VERSION,
    EXPECTED_VERSION,
    LITE_VERSION,
    closed_port,
    is_gone,
    listening_ports,
    milvus_processes,
    port_is_free,
    server_kind,
    start_backend,
    started_by_these_tests,
    wait_for_no_cpp_server,
    wait_gone,
    wait_until,
)

LOCAL_BACKENDS = ["lite", "lite-server", "milvus"]
DATA_SUBDIR = {"lite": "milvus.db", "lite-server": "milvus-lite-server", "milvus": "milvus-server"}


def _roundtrip(client: MilvusClient, name: str) -> None:
    """Create a tiny collection, insert two rows and read them back."""
    client.create_collection(name, dimension=2)
    client.insert(name, [{"id": 1, "vector": [1.0, 0.0]}, {"id": 2, "vector": [0.0, 1.0]}])
    got = client.query(name, filter="id >= 1", output_fields=["id"], consistency_level="Strong")
    assert sorted(r["id"] for r in got) == [1, 2]


def _probe_survived_and_flushes(client: MilvusClient) -> None:
    """The rows of :func:`_roundtrip` are still there, and new rows can be inserted and flushed."""
    client.load_collection("probe")
    got = client.query("probe", filter="id >= 1", output_fields=["id"], consistency_level="Strong")
    assert sorted(r["id"] for r in got) == [1, 2]
    client.insert("probe", [{"id": 3, "vector": [0.6, 0.8]}])
    client.flush("probe")
    got = client.query("probe", filter="id >= 1", output_fields=["id"], consistency_level="Strong")
    assert sorted(r["id"] for r in got) == [1, 2, 3]


def _ports(handle: MilvusHandle) -> set[int]:
    """The ports the handle's server listens on (milvus-lite in-process: its gRPC port)."""
    if handle.backend == "lite":
        from milvus_lite.server_manager import server_manager_instance

        return {int(server_manager_instance._servers[str(handle.data_path)][2])}
    return listening_ports(handle.pid)  # type: ignore[arg-type]


def _our_children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _our_servers(kind: str | None = None) -> set[int]:
    """Milvus servers started by this test session (other sessions may run their own)."""
    return {
        pid
        for pid, cmd in milvus_processes().items()
        if started_by_these_tests(pid) and (kind is None or kind in cmd)
    }


def _handles_under(run_dir: Path) -> list[Server]:
    return [
        h
        for h in running_handles()
        if h.data_path is not None and str(h.data_path).startswith(str(run_dir))
    ]


def _stop_handles_under(run_dir: Path) -> None:
    for handle in _handles_under(run_dir):
        handle.stop()


# --- start, reuse, stop, context manager, fresh -----------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("backend", LOCAL_BACKENDS)
def test_start_reuse_stop_and_fresh(backend: str, settings: Settings, no_orphans) -> None:
    handle = start_backend(settings, backend, fresh=True)
    try:
        assert handle.backend == backend and handle.running
        assert handle.version == EXPECTED_VERSION[backend]
        assert handle.client.get_server_version() == EXPECTED_VERSION[backend]
        assert handle.data_path == settings.run_dir / DATA_SUBDIR[backend]
        _roundtrip(handle.client, "probe")
        pid = handle.pid
        if backend == "lite":
            assert pid is None  # in this very process
        else:
            assert pid is not None and not is_gone(pid)
            kind = server_kind(psutil.Process(pid).cmdline())
            assert kind == ("cpp" if backend == "milvus" else "lite")
            assert int(handle.uri.rsplit(":", 1)[1]) in listening_ports(pid)
        ports = _ports(handle)
        assert ports and not any(port_is_free(p) for p in ports)

        # A second start in the same process gives a second handle on the same server.
        again = start_milvus(settings, backend=backend)
        assert again is not handle and again.server is handle.server and again.pid == pid

        # Stale-client guard: a client idle for an hour is pinged (and works) before use.
        handle.server.last_ok -= 3600
        stale = handle.server.last_ok
        assert "probe" in handle.client.list_collections()
        assert handle.server.last_ok > stale + 3000

        if backend == "milvus":  # only one C++ server per machine, also from one process
            with pytest.raises(MilvusServerError, match=r"already runs a C\+\+ Milvus server"):
                start_milvus(settings.replace(run_dir=settings.run_dir / "b"), backend="milvus")

        # One stop of two: still running, even when that caller stops twice.
        handle.stop()
        handle.stop()
        assert not handle.running and again.running and again.server in running_handles()
        assert pid is None or not is_gone(pid)
        assert again.client.get_server_version() == EXPECTED_VERSION[backend]
        with pytest.raises(MilvusServerError, match=r"stopped; call start_milvus\(\) again"):
            handle.client  # noqa: B018
        # The last stop: the server is gone, its ports are free, the handle says so.
        again.stop()
        assert not again.running and again.server not in running_handles()
        with pytest.raises(MilvusServerError, match=r"stopped; call start_milvus\(\) again"):
            again.client  # noqa: B018
        if pid is not None:
            assert wait_gone(pid, 10), f"server pid {pid} still running after stop()"
        for port in ports:
            assert wait_until(lambda p=port: port_is_free(p), 10), f"port {port} still taken"
        handle.stop()  # stopping twice is harmless

        # Data survives a stop and a start on the same folder, and the restarted server takes
        # writes and flushes (issue 16: the C++ server's Flush failed after a restart); the
        # context manager stops the server on the way out.
        with milvus_server(settings, backend=backend) as restarted:
            assert restarted.server is not handle.server
            _probe_survived_and_flushes(restarted.client)
            pid2 = restarted.pid
        assert not restarted.running and restarted.server not in running_handles()
        if pid2 is not None:
            assert wait_gone(pid2, 10)

        # fresh=True wipes the data first (the article's default_server.cleanup()).
        marker = handle.data_path / "marker-from-the-test"  # type: ignore[operator]
        marker.write_text("wipe me")
        with milvus_server(settings, backend=backend, fresh=True) as wiped:
            assert "probe" not in wiped.client.list_collections()
            assert not marker.exists()
            if backend == "milvus":  # binaries unpacked once per user, not per data folder
                import milvus

                from helpers.servers.cpp import binaries_cache

                assert (wiped.data_path / "bin").resolve() == binaries_cache(milvus).resolve()
            pid3 = wiped.pid
        assert not wiped.running
        if pid3 is not None:
            assert wait_gone(pid3, 10)
    finally:
        _stop_handles_under(settings.run_dir)


@pytest.mark.slow
def test_context_manager_stops_even_when_the_cell_fails(settings: Settings, no_orphans) -> None:
    with pytest.raises(ZeroDivisionError), milvus_server(settings, backend="lite-server") as h:
        pid = h.pid
        _ = 1 / 0
    assert not h.running and wait_gone(pid, 10)


# --- lite-server: busy ports and data folders ------------------------------------------------


@pytest.mark.slow
def test_lite_server_port_in_use_is_a_clear_error(settings: Settings, no_orphans) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        children = _our_children()
        with pytest.raises(MilvusServerError) as err:
            start_milvus(settings, backend="lite-server", port=port)
        message = str(err.value)
        assert f"Port {port} is already in use" in message
        assert f"pid {os.getpid()}" in message  # who holds it: this test
        assert _our_children() == children  # no server was started, none left behind
        assert not _handles_under(settings.run_dir)

    # Free again: the same port is used, and again right after a stop (TIME_WAIT is not busy).
    for _ in range(2):
        with milvus_server(settings, backend="lite-server", port=port) as h:
            assert h.uri == f"http://127.0.0.1:{port}"
            assert h.client.get_server_version() == LITE_VERSION
            # The same data folder cannot be asked for on another port at the same time.
            with pytest.raises(MilvusServerError, match="already running here"):
                start_milvus(settings, backend="lite-server", port=closed_port())


@pytest.mark.slow
def test_lite_server_data_dir_held_by_another_process(
    settings: Settings, spawn, no_orphans
) -> None:
    child = spawn(CHILD_START_SERVER, str(settings.run_dir), "lite-server")
    info = child.read_json(timeout=60)
    data_dir = settings.run_dir / "milvus-lite-server"
    for fresh in (False, True):
        with pytest.raises(MilvusServerError) as err:
            start_milvus(settings, backend="lite-server", fresh=fresh)
        message = str(err.value)
        assert f"pid {info['pid']}" in message and str(data_dir) in message
        assert "already in use" in message
    assert not _handles_under(settings.run_dir)
    # Nothing crashed and nothing was wiped: the other process still serves its data.
    assert not is_gone(info["pid"])
    child.send("ping")
    assert child.read_json(timeout=30)["collections"] == ["child_data"]
    assert child.finish() == 0
    assert wait_gone(info["pid"], 10)


CHILD_OPEN_LITE = """
import json, os, sys
from pymilvus import MilvusClient
client = MilvusClient(sys.argv[1])
client.create_collection("child_data", dimension=2)
print(json.dumps({"pid": os.getpid()}), flush=True)
for line in sys.stdin:
    if line.strip() == "ping":
        print(json.dumps({"collections": client.list_collections()}), flush=True)
"""


@pytest.mark.slow
def test_lite_data_dir_open_in_another_process(settings: Settings, spawn, no_orphans) -> None:
    db = settings.run_dir / "milvus.db"
    settings.run_dir.mkdir(parents=True)
    child = spawn(CHILD_OPEN_LITE, str(db))  # another notebook, plain MilvusClient("....db")
    info = child.read_json(timeout=60)
    for fresh in (False, True):
        with pytest.raises(MilvusServerError) as err:
            start_milvus(settings, backend="lite", fresh=fresh)
        message = str(err.value)
        assert f"pid {info['pid']}" in message and str(db) in message
        assert "another process" in message
    assert not _handles_under(settings.run_dir)
    child.send("ping")
    assert child.read_json(timeout=30)["collections"] == ["child_data"]
    assert child.finish() == 0
    # Once the other process is gone the folder opens, with that process's data in it.
    with milvus_server(settings, backend="lite") as h:
        assert h.client.list_collections() == ["child_data"]


@pytest.mark.slow
def test_leftover_lite_server_of_a_dead_session(settings: Settings, no_orphans) -> None:
    """milvus-lite #64/#22/#195: an earlier server still holds the folder."""
    data_dir = settings.run_dir / "milvus-lite-server"
    data_dir.mkdir(parents=True)
    port = closed_port()
    exe = Path(sys.executable).with_name("milvus-lite")
    leftover = subprocess.Popen(
        [str(exe), "server", "--data-dir", str(data_dir), "--host", "127.0.0.1",
         "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        assert wait_until(lambda: port in listening_ports(leftover.pid), 30)
        # Not recorded as ours: refused, and left alone.
        with pytest.raises(MilvusServerError, match=f"pid {leftover.pid}"):
            start_milvus(settings, backend="lite-server")
        assert leftover.poll() is None
        # Recorded by a session whose Python has exited: stopped and replaced.
        gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)  # fmt: skip
        (data_dir / PIDFILE).write_text(
            json.dumps({"pid": leftover.pid, "port": port, "owner_pid": int(gone.stdout)})
        )
        with milvus_server(settings, backend="lite-server") as h:
            assert is_gone(leftover.pid)
            assert h.pid != leftover.pid
            assert h.client.get_server_version() == LITE_VERSION
    finally:
        if leftover.poll() is None:
            leftover.kill()
        leftover.wait(timeout=10)


# --- no orphans: killed kernels, kernels that exit without stop() ------------------------------


@pytest.mark.slow
def test_sigkilled_parent_takes_its_lite_server_along(
    settings: Settings, spawn, no_orphans
) -> None:
    child = spawn(CHILD_START_SERVER, str(settings.run_dir), "lite-server")
    info = child.read_json(timeout=60)
    assert not is_gone(info["pid"])
    child.kill()  # SIGKILL: no atexit, no finally
    assert wait_gone(info["pid"], 10), "the lite server outlived its killed parent"
    # The stale pidfile and LOCK file it leaves do not block the next start.
    assert (settings.run_dir / "milvus-lite-server" / PIDFILE).exists()
    with milvus_server(settings, backend="lite-server") as h:
        assert "child_data" in h.client.list_collections()


@pytest.mark.slow
def test_cpp_second_server_while_another_process_runs_one(
    settings: Settings, tmp_path: Path, spawn, no_orphans
) -> None:
    child_run = tmp_path / "child-run"
    wait_for_no_cpp_server()
    child = spawn(CHILD_START_SERVER, str(child_run), "milvus")
    info = child.read_json(timeout=120)
    server_pid = info["pid"]
    assert info["version"] == CPP_VERSION
    cpp_before = _our_servers("run standalone")
    assert server_pid in cpp_before
    # Another data folder, and the same one: a clear error, quickly, no Go panic, no hang.
    for run_dir in (settings.run_dir, child_run):
        with pytest.raises(MilvusServerError) as err:
            start_milvus(settings.replace(run_dir=run_dir), backend="milvus", timeout=60)
        message = str(err.value)
        assert f"pid {child.pid}" in message or f"pid {server_pid}" in message, message
        assert "exited with code" not in message and "Last lines" not in message
    assert _our_servers("run standalone") == cpp_before
    assert not [h for h in running_handles() if h.backend == "milvus"]
    # The running server was not disturbed.
    other = MilvusClient(uri=info["uri"])
    try:
        assert other.get_server_version() == CPP_VERSION
    finally:
        other.close()
    child.send("ping")
    assert child.read_json(timeout=30)["collections"] == ["child_data"]
    # A killed kernel takes its C++ server along (it would ignore SIGTERM as an orphan).
    child.kill()
    assert wait_gone(server_pid, 10), "the C++ server outlived its killed parent"


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["lite-server", "milvus"])
def test_child_exiting_without_stop_leaves_no_server(
    backend: str, tmp_path: Path, spawn, no_orphans
) -> None:
    run_dir = tmp_path / "child-run"
    if backend == "milvus":
        wait_for_no_cpp_server()
    child = spawn(CHILD_START_SERVER, str(run_dir), backend)
    info = child.read_json(timeout=120)
    assert not is_gone(info["pid"])
    assert child.finish(timeout=60) == 0  # returns normally, never calls stop()
    assert wait_gone(info["pid"], 10)
    # The pidfile is removed by stop(): the exit hook ran (not only the kernel's death signal).
    assert not (run_dir / DATA_SUBDIR[backend] / PIDFILE).exists()


# --- stale clients -------------------------------------------------------------------------------


@pytest.mark.slow
def test_client_of_a_killed_lite_server_says_start_again(settings: Settings, no_orphans) -> None:
    handle = start_milvus(settings, backend="lite-server")
    try:
        handle.server.last_ok -= 3600
        assert handle.client.list_collections() == []
        os.kill(handle.pid, signal.SIGKILL)  # behind our back
        # Dead for good (exited, not just dying: /proc says "zombie" while threads still exit).
        assert wait_until(lambda: not handle.server.alive(), 10)
        for idle in (False, True):
            if idle:
                handle.server.last_ok -= 3600
            with pytest.raises(MilvusServerError, match=r"no longer running.*start_milvus\(\)"):
                handle.client  # noqa: B018
        # Starting again gives a new, working server.
        new = start_milvus(settings, backend="lite-server")
        assert new.server is not handle.server and new.pid != handle.pid
        assert new.client.get_server_version() == LITE_VERSION
        handle.stop()  # the dead handle's stop leaves the new one alone
        assert new.server in running_handles() and new.running
        assert new.client.list_collections() == []
        new.stop()
        assert wait_gone(new.pid, 10)
    finally:
        _stop_handles_under(settings.run_dir)


# --- remote --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_remote_connects_and_starts_nothing(
    settings: Settings, external_lite_server, no_orphans
) -> None:
    uri, proc = external_lite_server
    token = "remote-token-c0ffee"
    remote = settings.replace(milvus_backend="remote", milvus_uri=uri, milvus_token=token)
    servers, children = _our_servers(), _our_children()
    handle = start_milvus(remote)
    try:
        assert handle.backend == "remote" and handle.uri == uri and handle.pid is None
        assert handle.version == LITE_VERSION
        assert token not in repr(handle)
        _roundtrip(handle.client, "remote_probe")
        again = start_milvus(remote)
        assert again.server is handle.server
        again.stop()
        assert handle.running  # the other caller's stop leaves this handle working
        assert _our_servers() == servers and _our_children() == children
    finally:
        handle.stop()
        handle.stop()
    assert not handle.running
    # Not ours to stop: the server still runs and still has the data.
    assert proc.poll() is None
    other = MilvusClient(uri=uri)
    try:
        assert "remote_probe" in other.list_collections()
    finally:
        other.close()


def test_remote_unreachable_is_quick_clear_and_hides_the_token(settings: Settings) -> None:
    uri = f"http://127.0.0.1:{closed_port()}"
    token = "tok-5ecre7-9f81d2"
    remote = settings.replace(milvus_backend="remote", milvus_uri=uri, milvus_token=token)
    with pytest.raises(MilvusServerError) as err:
        start_milvus(remote)
    message = str(err.value)
    assert uri in message and "GFL_MILVUS_URI" in message
    shown = "".join(traceback.format_exception(err.value)) + repr(err.value)
    assert token not in shown and "5ecre7" not in shown
    assert not [h for h in running_handles() if h.backend == "remote"]


def test_remote_without_uri_and_unknown_backend(settings: Settings) -> None:
    with pytest.raises(MilvusServerError, match="GFL_MILVUS_URI"):
        start_milvus(settings.replace(milvus_backend="remote", milvus_uri=""))
    with pytest.raises(MilvusServerError, match="Unknown backend 'cloud'"):
        start_milvus(settings, backend="cloud")
    assert not [h for h in running_handles() if h.backend == "remote"]


# --- issue 10's server bugs ----------------------------------------------------------------------


@pytest.mark.slow
def test_a_port_taken_before_the_child_binds_it_is_retried(
    settings: Settings, monkeypatch, no_orphans
) -> None:
    """``free_port()`` can race with another process; the start retries on another port."""
    from helpers.servers import process

    real = process.free_port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        handed_out = iter([taken])
        monkeypatch.setattr(process, "free_port", lambda: next(handed_out, None) or real())
        with milvus_server(settings, backend="lite-server", timeout=60) as handle:
            assert not handle.uri.endswith(f":{taken}")
            assert handle.client.get_server_version() == LITE_VERSION
            pid = handle.pid
    assert wait_gone(pid, 10)


@pytest.mark.slow
def test_a_server_started_from_a_worker_thread_outlives_the_thread(
    settings: Settings, no_orphans
) -> None:
    """PR_SET_PDEATHSIG fires when the forking *thread* exits: children are forked from one
    long-lived thread, so a server started in a thread pool survives the pool."""
    import threading

    started: dict[str, object] = {}
    worker = threading.Thread(
        target=lambda: started.update(h=start_milvus(settings, backend="lite-server"))
    )
    worker.start()
    worker.join()
    handle = started["h"]
    assert isinstance(handle, MilvusHandle)
    try:
        # Were it tied to the finished thread, the kernel would have SIGKILLed it by now.
        assert not wait_gone(handle.pid, 3), "the server died with the thread that started it"
        assert handle.client.get_server_version() == LITE_VERSION
    finally:
        handle.stop()
    assert wait_gone(handle.pid, 10)


def test_a_lock_file_that_cannot_be_written_still_guards_the_cpp_slot(
    tmp_path: Path, monkeypatch
) -> None:
    """The machine-wide lock in /tmp may belong to another user (read-only for us): it must
    still work as a lock, not end in a bare PermissionError."""
    import shutil

    from helpers.servers import cpp

    lock = tmp_path / "cpp.lock"
    lock.write_text("")
    if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(lock)]).returncode:
        pytest.skip("needs chattr +i to make a file nobody may open for writing")
    try:
        with pytest.raises(PermissionError):
            os.open(lock, os.O_RDWR)  # the situation: not writable, even for root
        monkeypatch.setattr(cpp, "LOCK_PATH", lock)
        monkeypatch.setattr(cpp, "_lock_fd", None)
        cpp._claim_slot()
        try:
            assert cpp._lock_fd is not None
            # Held: another claimant (another process, seen through a new descriptor) is refused.
            fd = os.open(lock, os.O_RDONLY)
            try:
                import fcntl

                with pytest.raises(BlockingIOError):
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            finally:
                os.close(fd)
        finally:
            cpp._release_slot()
        assert cpp._lock_fd is None
    finally:
        subprocess.run(["chattr", "-i", str(lock)], check=True)
