"""One tiny real feedback-loop run, shared by the drift, plot and report tests.

Load it in a test module with ``pytest_plugins = ["tests.fixtures_loop"]``.

``tiny_loop`` (session scope): 3 taverns x 2 iterations x 40 tokens with the offline model on
milvus-lite (about 20 s on two cores, model loading included), and the tables the notebooks
compute from it: ``drift_table``, ``retrieval_by_iteration`` and ``run_embeddings``. The run
keeps 2 of its 3 human references in the store (``human_fraction`` 0.5), so the "reference not
in the store" paths are exercised too. Milvus is stopped before the fixture returns (a handle
left open across modules would trip the server guards of other tests); a test that needs the
store opens it again with ``open_store``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pytest

from helpers.feedback_loop import LoopParams, LoopRun, run_loop
from helpers.metrics import drift_table, retrieval_by_iteration, run_embeddings
from helpers.settings import Settings, get_settings

TINY = {
    "iterations": 2,
    "k": 2,
    "taverns": ("prancing-pony", "green-dragon", "golden-perch"),
    "context_chars": 150,
    "max_tokens": 40,
    "seed": 11,
    "generator": "local",
    "use_ratings": False,
    "human_fraction": 0.5,
    "run_id": "tiny-drift",
}
RETRIEVAL_K = 3


@dataclass
class TinyLoop:
    settings: Settings
    run: LoopRun  # without a Milvus handle: pass milvus= where a method needs one
    drift: pd.DataFrame
    retrieval: pd.DataFrame
    points: pd.DataFrame
    vectors: np.ndarray

    def open_store(self) -> Any:
        """The run's milvus-lite, started again (a context manager: ``with t.open_store() as m``)."""
        from helpers.milvus_server import start_milvus

        return start_milvus(self.settings, backend="lite")


@pytest.fixture(scope="session")
def tiny_loop(tmp_path_factory: pytest.TempPathFactory) -> TinyLoop:
    from helpers.milvus_server import start_milvus

    settings = get_settings(run_dir=tmp_path_factory.mktemp("tiny-loop"), generator="local")
    with start_milvus(settings, backend="lite") as milvus:
        run = run_loop(LoopParams(**TINY), settings, milvus=milvus, progress=False)
        retrieval = retrieval_by_iteration(run, k=RETRIEVAL_K, milvus=milvus)
    run.milvus = None
    points, vectors = run_embeddings(run)
    return TinyLoop(settings, run, drift_table(run), retrieval, points, vectors)
