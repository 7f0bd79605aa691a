"""Re-execute committed notebooks in place so they carry outputs from a real offline run.

Usage: .venv/bin/python scripts/refresh_notebook_outputs.py notebooks/01_*.ipynb ...
Runs each notebook top to bottom in a fresh kernel (the kit's), with its own parameters, from
the notebooks/ folder, exactly as a reader would; fails on the first error.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbconvert.preprocessors import ExecutePreprocessor

from helpers.main_job import KERNEL_NAME, NOTEBOOK_DIR


def refresh(path: Path) -> float:
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    ExecutePreprocessor(timeout=3600, kernel_name=KERNEL_NAME).preprocess(
        nb, {"metadata": {"path": str(NOTEBOOK_DIR)}}
    )
    nbformat.write(nb, path)
    return time.perf_counter() - start


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        seconds = refresh(Path(arg))
        print(f"{arg}: {seconds:.1f} s")
