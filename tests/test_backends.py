"""The backend matrix: notebooks 02, 04, 05 and 06 on each of the four backends (issue 16).

Each backend runs its notebooks the way the main job does: ``lite`` inside each kernel;
``lite-server`` and ``milvus`` started once (``helpers.main_job.shared_backend``) and reached by
every kernel through its URI; ``remote`` pointed at a milvus-lite server started here on
127.0.0.1. Parameters are tiny so the matrix fits CI, and the texts come from the real
anthropic SDK talking to the local fake Messages API (tests/fake_anthropic.py): generation is
the same on every backend and tested elsewhere, while the local model on a loaded machine would
dominate the time. The notebooks' own tests (tests/test_notebooks.py) check what they teach;
these check that every backend runs them.
"""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from helpers.main_job import shared_backend
from helpers.settings import exported, get_settings
from tests.conftest import (
    EXPECTED_VERSION,
    LITE_VERSION,
    milvus_processes,
    wait_gone,
)
from tests.notebook_runner import all_text, execute

pytest_plugins = ["tests.fixtures_anthropic"]
pytestmark = pytest.mark.slow
ANSWER = "A low smoky inn by the river, where travellers swap songs about the road."

BACKENDS = ["lite", "lite-server", "milvus", "remote"]
# In course order: 05 and 06 read what 04 stored and generated.
COURSE = [
    ("02_schema_and_collection.ipynb", {}),
    ("04_generate_and_insert.ipynb", {"N_TAVERNS": 3}),
    ("05_semantic_search.ipynb", {"N_TAVERNS": 3}),
    # The local model here, so the offline generator runs on every backend too (a Claude loop
    # and its resume are tested in tests/test_loop_generate_many.py).
    ("06_feedback_loop.ipynb", {"N_TAVERNS": 2, "ITERATIONS": 2, "MAX_TOKENS": 16,
                                "GENERATOR": "local"}),
]  # fmt: skip


def _servers_under(folder: Path) -> set[int]:
    found = set()
    for pid in milvus_processes():
        try:
            proc = psutil.Process(pid)
            where = " ".join(proc.cmdline()) + " " + proc.cwd()
        except psutil.Error:
            continue
        if str(folder) in where:
            found.add(pid)
    return found


@pytest.mark.parametrize("backend", BACKENDS)
def test_course_runs_on_every_backend(
    backend: str, tmp_path: Path, request, fake_anthropic, no_orphans
) -> None:
    from tests.fake_anthropic import FAKE_KEY, ok

    fake_anthropic.set_default(ok(ANSWER, input_tokens=40, output_tokens=20))
    claude = {"ANTHROPIC_API_KEY": FAKE_KEY, "ANTHROPIC_BASE_URL": fake_anthropic.base_url,
              "GFL_GENERATOR": "claude"}  # fmt: skip
    if backend == "remote":
        uri, _ = request.getfixturevalue("external_lite_server")
        env = {"GFL_MILVUS_BACKEND": "remote", "GFL_MILVUS_URI": uri}
        shown, version = "remote", LITE_VERSION
    else:
        env = {"GFL_MILVUS_BACKEND": backend}
        shown, version = backend, EXPECTED_VERSION[backend]
    if backend == "milvus":
        from helpers.milvus_server import wait_for_cpp_slot

        wait_for_cpp_slot(600)
    with exported({**env, **claude}):
        settings = get_settings(run_dir=tmp_path / "run")
        with shared_backend(settings) as shared:
            servers = _servers_under(tmp_path / "run")
            # One server for the whole course when the backend runs as one, none otherwise.
            assert len(servers) == (1 if backend in ("lite-server", "milvus") else 0)
            assert bool(shared) == (backend in ("lite-server", "milvus"))
            texts = {}
            for name, params in COURSE:
                nb = execute(name, tmp_path, RUN_DIR=str(tmp_path / "run"), **params)
                texts[name] = all_text(nb)
                assert "servers this notebook started that are still running: []" in texts[name]
            assert (
                _servers_under(tmp_path / "run") == servers
            )  # the same server served every notebook
    # The notebooks name the backend that served them, and its version.
    assert f"{shown} {version}" in texts["02_schema_and_collection.ipynb"]
    assert "rows upserted: 3" in texts["04_generate_and_insert.ipynb"]
    assert "generator: claude" in texts["04_generate_and_insert.ipynb"]
    assert "finished: True | generations in the ledger: 4" in texts["06_feedback_loop.ipynb"]
    assert "generated texts in the top 3:" in texts["05_semantic_search.ipynb"]
    for pid in servers:  # stopped at the end of the block, nothing left behind
        assert wait_gone(pid, 30), f"server {pid} outlived the course"
    assert not _servers_under(tmp_path / "run")
