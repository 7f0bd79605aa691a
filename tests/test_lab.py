"""``./kit.sh lab`` as a reader meets it: JupyterLab starts (as root too, as in a container),
serves the course notebooks with the kit's kernel, and renders notebook 01 in a real browser.

The test drives the README's command itself, opens notebook 01 through JupyterLab's own URL in
headless Chromium (Debian's package; skipped outside CI when missing, see tests/test_report.py)
and reads the rendered page: the notebook's title and the kit's kernel name must be on it.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.test_report import CHROMIUM, FLAGS, require_chromium

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = "01_start_embedded_milvus.ipynb"
TITLE = "Start an embedded Milvus server"

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


class Lab:
    def __init__(self, proc: subprocess.Popen, base: str, token: str, log: Path) -> None:
        self.proc, self.base, self.token, self.log = proc, base, token, log

    def api(self, path: str) -> dict:
        return _get(f"{self.base}{path}?token={self.token}")


def _kernels_under(runtime: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "ipykernel_launcher" in cmd and str(runtime) in cmd:
            found.append(proc)
    return found


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    port, token = _free_port(), secrets.token_hex(16)
    runtime = tmp_path / "runtime"
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(runtime)}
    log = tmp_path / "lab.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["bash", "kit.sh", "lab", "--no-browser", f"--port={port}", "--ServerApp.port_retries=0",
             "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    lab = Lab(proc, f"http://127.0.0.1:{port}", token, log)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, f"./kit.sh lab exited:\n{log.read_text()[-3000:]}"
            try:
                lab.api("/api/status")
                break
            except OSError:
                assert time.monotonic() < deadline, (
                    f"JupyterLab did not answer:\n{log.read_text()[-3000:]}"
                )
                time.sleep(0.5)
        yield lab
    finally:
        for session in lab.api("/api/sessions") if proc.poll() is None else []:
            request = urllib.request.Request(
                f"{lab.base}/api/sessions/{session['id']}?token={token}", method="DELETE"
            )
            urllib.request.urlopen(request, timeout=30).close()
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        psutil.wait_procs(_kernels_under(runtime), timeout=20)
        assert not _kernels_under(runtime), "a kernel outlived JupyterLab"


def test_kit_lab_serves_notebook_01_with_the_kit_kernel(lab: Lab) -> None:
    specs = lab.api("/api/kernelspecs")["kernelspecs"]
    assert "gfl-kit" in specs, sorted(specs)
    notebook = lab.api(f"/api/contents/{NOTEBOOK}")
    assert notebook["content"]["metadata"]["kernelspec"]["name"] == "gfl-kit"
    if os.geteuid() == 0:  # as root JupyterLab refuses to start unless told; kit.sh says so
        assert "running as root" in lab.log.read_text()


def test_notebook_01_renders_in_jupyterlab_in_headless_chromium(lab: Lab, tmp_path: Path) -> None:
    require_chromium()
    url = f"{lab.base}/lab/tree/{NOTEBOOK}?token={lab.token}"
    result = subprocess.run(
        [str(CHROMIUM), *FLAGS[:-1], f"--user-data-dir={tmp_path / 'profile'}",
         "--window-size=1280,900", "--virtual-time-budget=30000", "--dump-dom", url],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    dom = result.stdout
    assert TITLE in dom, f"notebook 01 did not render:\n{dom[-2000:]}"
    assert "gfl kit)" in dom, "the notebook did not open with the kit's kernel"
    started = [s["kernel"]["name"] for s in lab.api("/api/sessions")]
    assert started == ["gfl-kit"], started
