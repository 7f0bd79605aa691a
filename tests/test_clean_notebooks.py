"""The clean twins in notebooks/clean/ (scripts/clean_notebooks.py) are committed up to date:
same cells, prose and code as the course notebooks, no outputs."""

from __future__ import annotations

import json

import pytest

from scripts.clean_notebooks import CLEAN_DIR, clean_text, course_notebooks, stale_twins


def test_every_twin_equals_what_the_script_writes() -> None:
    assert not stale_twins(), (
        f"out of date in notebooks/clean/: {stale_twins()}; run "
        ".venv/bin/python scripts/clean_notebooks.py and commit the result"
    )


@pytest.mark.parametrize("source", course_notebooks(), ids=lambda p: p.name)
def test_a_twin_keeps_every_cell_and_no_output(source) -> None:
    original = json.loads(source.read_text())
    twin = json.loads((CLEAN_DIR / source.name).read_text())

    def text(cell: dict) -> str:
        return "".join(cell["source"])

    assert [text(c) for c in twin["cells"]] == [
        text(c).replace("](../", "](../../") if c["cell_type"] == "markdown" else text(c)
        for c in original["cells"]
    ]
    assert all(not c.get("outputs") for c in twin["cells"] if c["cell_type"] == "code")
    assert twin["metadata"]["kernelspec"]["name"] == "gfl-kit"


def test_clean_text_strips_outputs_of_an_executed_notebook(tmp_path) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("print(1)")
    cell.outputs = [nbformat.v4.new_output("stream", text="1\n")]
    cell.execution_count = 3
    nb.cells = [nbformat.v4.new_markdown_cell("see [x](../docs/x.md)"), cell]
    path = tmp_path / "01_x.ipynb"
    nbformat.write(nb, path)
    twin = json.loads(clean_text(path))
    assert twin["cells"][1]["outputs"] == [] and twin["cells"][1]["execution_count"] is None
    assert "".join(twin["cells"][0]["source"]) == "see [x](../../docs/x.md)"
