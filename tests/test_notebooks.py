"""Execute the course notebooks with papermill, with small parameters, and check what they show.

Notebooks 03, 04, 06, 07 and 08 are executed by tests/test_notebook_statements.py, which also
checks their computed statements.

(`pytest --nbval-lax` separately re-runs the committed notebooks and compares checked cells.)
"""

from __future__ import annotations

import json

import nbformat
import pytest

from helpers.main_job import NOTEBOOK_DIR, parameters_for
from helpers.milvus_server import server_processes
from tests.notebook_runner import all_text, execute, has_image

pytestmark = pytest.mark.slow

NOTEBOOKS = sorted(p.name for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_has_one_parameters_cell_and_the_kit_kernel(name: str) -> None:
    nb = json.loads((NOTEBOOK_DIR / name).read_text())
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{name}: papermill needs exactly one cell tagged 'parameters'"
    # Every assignment must be one papermill can read (it silently skips lines it cannot parse).
    from papermill.translators import PythonTranslator

    assigned = [
        line.split(":")[0].split("=")[0].strip()
        for line in "".join(tagged[0]["source"]).splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    cell = nbformat.v4.new_code_cell("".join(tagged[0]["source"]))
    inferred = [p.name for p in PythonTranslator.inspect(cell)]
    assert inferred == assigned, (
        f"{name}: papermill cannot read some parameters: {set(assigned) - set(inferred)}"
    )
    assert nb["metadata"]["kernelspec"]["name"] == "gfl-kit"
    # the main job's quick and full values must name parameters this notebook has
    for full in (False, True):
        unknown = set(parameters_for(name, full)) - set(inferred)
        assert not unknown, f"helpers/main_job.py gives {name} unknown parameters {unknown}"
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(
        c.get("outputs") for c in code[1:] if "NBVAL_CHECK_OUTPUT" in "".join(c["source"])
    ), f"{name}: a checked cell was committed without outputs"


@pytest.mark.parametrize("backend", ["lite", "lite-server", "milvus"])
def test_01_starts_and_stops_every_local_backend(backend: str, tmp_path) -> None:
    nb = execute("01_start_embedded_milvus.ipynb", tmp_path, BACKEND=backend)
    text = all_text(nb)
    assert f"backend: {backend}" in text
    expected = "v2.3.5-lite" if backend == "milvus" else "milvus_lite-3.2.2"
    assert f"server version: {expected}" in text
    assert "server version: v2.3.5-lite" in text  # the article's default_server, second way
    assert "servers this notebook started that are still running: []" in text
    assert not _servers_under(tmp_path), "a server started by the notebook outlived it"


def _servers_under(folder, wait_s: float = 10.0) -> list[dict]:
    """Server processes whose data lives under ``folder`` (so other sessions' servers on this
    machine do not count), after giving a killed one up to ``wait_s`` to disappear."""
    import time

    import psutil

    deadline = time.monotonic() + wait_s
    while True:
        mine = []
        for proc in server_processes():
            try:
                where = (
                    " ".join(psutil.Process(proc["pid"]).cmdline())
                    + " "
                    + psutil.Process(proc["pid"]).cwd()
                )
            except psutil.Error:
                continue
            if str(folder) in where:
                mine.append(proc)
        if not mine or time.monotonic() > deadline:
            return mine
        time.sleep(0.5)


def test_02_creates_the_article_schema(tmp_path) -> None:
    nb = execute("02_schema_and_collection.ipynb", tmp_path)
    text = all_text(nb)
    assert "vector_embedding FLOAT_VECTOR" in text and "384" in text
    assert "created again: False" in text
    assert "name is empty" in text and "has 2 dimensions" in text and "limit is 255 bytes" in text


def test_05_searches_and_scores_retrieval(tmp_path) -> None:
    nb = execute("05_semantic_search.ipynb", tmp_path, N_TAVERNS=4, GENERATOR="local")
    text = all_text(nb)
    assert "LoadState: Loaded" in text
    assert "Query 0 is empty" in text and "does not exist" in text and "is not loaded" in text
    for label in ("human", "generated", "both"):
        assert f"\n{label} " in text  # a row of the summary table
    assert "generated texts in the top 3:" in text
    assert has_image(nb)
    assert (tmp_path / "run" / "figures" / "retrieval_by_collection.png").stat().st_size > 0


def test_errata_exist_and_are_linked_from_the_readme_and_notebooks_02_to_05() -> None:
    errata = NOTEBOOK_DIR.parent / "docs" / "article-errata.md"
    assert errata.exists() and "nprobe" in errata.read_text()
    assert "docs/article-errata.md" in (NOTEBOOK_DIR.parent / "README.md").read_text()
    for name in NOTEBOOKS:
        if name[:2] in {"02", "03", "04", "05"}:
            assert "../docs/article-errata.md" in (NOTEBOOK_DIR / name).read_text(), name
