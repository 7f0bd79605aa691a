"""Run a course notebook with papermill the way the main job does, and read its outputs."""

from __future__ import annotations

import json
from pathlib import Path

from helpers.main_job import NOTEBOOK_DIR, run_notebook


def execute(name: str, tmp_path: Path, **parameters: object) -> dict:
    """Execute ``notebooks/<name>`` into ``tmp_path`` with a run folder of its own.

    Fails the test with the cell's traceback if any cell raises.
    """
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    result = run_notebook(NOTEBOOK_DIR / name, tmp_path, run_dir, parameters)
    assert result.ok, f"{name} failed under papermill:\n{result.error[-4000:]}"
    return json.loads(result.output.read_text())


def cell_texts(nb: dict) -> list[str]:
    """The text each code cell printed or displayed (stdout, stderr, text/plain), joined per cell."""
    texts = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        parts: list[str] = []
        last_stream = None
        for out in cell.get("outputs", []):
            if "text" in out:
                text = "".join(out["text"])
                # one print may reach the notebook as several stream messages: join them as
                # Jupyter shows them, not line by line
                if out.get("output_type") == "stream" and last_stream == out.get("name") and parts:
                    parts[-1] += text
                else:
                    parts.append(text)
                last_stream = out.get("name") if out.get("output_type") == "stream" else None
            data = out.get("data", {})
            if "text/plain" in data:
                parts.append("".join(data["text/plain"]))
                last_stream = None
        texts.append("\n".join(parts))
    return texts


def all_text(nb: dict) -> str:
    return "\n".join(cell_texts(nb))


def has_image(nb: dict) -> bool:
    return any(
        "image/png" in out.get("data", {})
        for cell in nb["cells"]
        if cell["cell_type"] == "code"
        for out in cell.get("outputs", [])
    )
