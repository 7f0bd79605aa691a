"""The suite's split over two pytest-xdist workers (tests/conftest.py): what must not overlap
(anything that may start the one C++ server per machine, with the notebooks that need their order)
shares one worker's queue; every other test file stays whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import NOTEBOOK_QUEUE, ONE_AT_A_TIME, xdist_scope


@pytest.mark.parametrize(
    "nodeid",
    [
        "notebooks/01_start_embedded_milvus.ipynb::Cell 0",
        "notebooks/02_schema_and_collection.ipynb::Cell 0",
        "notebooks/06_feedback_loop.ipynb::Cell 3",
        "notebooks/07_drift_and_distance.ipynb::Cell 1",
        "notebooks/08_loop_policy_experiments.ipynb::Cell 25",
        "tests/test_backends.py::test_course_runs_on_every_backend[milvus]",
        "tests/test_notebooks.py::test_01_starts_and_stops_every_local_backend[milvus]",
        "tests/test_schema.py::test_search_returns_the_nearest[milvus]",
        "tests/test_schema.py::test_index_params[milvus-HNSW]",
        "tests/test_milvus_server.py::test_cpp_second_server_while_another_process_runs_one",
    ],
)
def test_what_must_not_overlap_shares_one_queue(nodeid: str) -> None:
    assert xdist_scope(nodeid) == ONE_AT_A_TIME


@pytest.mark.parametrize(
    "nodeid,scope",
    [
        ("tests/test_backends.py::test_course_runs_on_every_backend[lite-server]", "tests/test_backends.py"),
        ("tests/test_schema.py::test_search_returns_the_nearest[lite]", "tests/test_schema.py"),
        ("tests/test_settings.py::test_backend_names[milvus_lite]", "tests/test_settings.py"),
        ("tests/test_stats.py::test_holm", "tests/test_stats.py"),
    ],
)  # fmt: skip
def test_every_other_test_stays_with_its_file(nodeid: str, scope: str) -> None:
    assert xdist_scope(nodeid) == scope


def test_every_collected_cpp_backend_test_is_in_the_serial_queue(
    request: pytest.FixtureRequest,
) -> None:
    """Any collected test parametrized with the C++ backend lands in the serial queue."""
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "milvus" in map(str, callspec.params.values()):
            assert xdist_scope(item.nodeid) == ONE_AT_A_TIME, item.nodeid


@pytest.mark.parametrize("name", ["03_hnsw_index", "04_generate_and_insert", "05_semantic_search"])
def test_notebooks_03_to_05_are_a_queue_of_their_own(name: str) -> None:
    assert xdist_scope(f"notebooks/{name}.ipynb::Cell 4") == NOTEBOOK_QUEUE


def test_a_kernel_that_never_answered_is_started_again_but_a_failed_cell_is_not() -> None:
    """run_notebook retries only when no cell ran (nbclient's start-up errors)."""
    from helpers.main_job import _kernel_never_started

    assert _kernel_never_started(RuntimeError("Kernel didn't respond in 60 seconds"))
    assert _kernel_never_started(RuntimeError("Kernel died before replying to kernel_info"))
    assert not _kernel_never_started(RuntimeError("An error occurred while executing cell 3"))


def test_each_notebook_kernel_has_its_sockets_in_a_folder_of_its_own(tmp_path, monkeypatch) -> None:
    """Not jupyter_client's default ``kernel-ipc-<n>`` in the working directory, where two
    processes starting kernels at once could share sockets ("Invalid Signature")."""
    from jupyter_client.manager import KernelManager

    from helpers.main_job import ipc_kernel_config

    monkeypatch.chdir(tmp_path)
    with ipc_kernel_config() as first, ipc_kernel_config() as second:
        folders = {Path(c.KernelManager.ip).parent for c in (first, second)}
        assert len(folders) == 2 and all(f.is_dir() for f in folders)
        km = KernelManager(config=first, kernel_name="python3")
        km.start_kernel()
        try:
            client = km.client()
            client.start_channels()
            client.wait_for_ready(timeout=60)
            sockets = list(Path(first.KernelManager.ip).parent.iterdir())
            assert sockets and not list(tmp_path.iterdir())  # nothing in the working directory
        finally:
            client.stop_channels()
            km.shutdown_kernel(now=True)
    assert not any(f.exists() for f in folders)  # removed afterwards
