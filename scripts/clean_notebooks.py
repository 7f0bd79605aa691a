"""Write the clean twins of the course notebooks: notebooks/clean/<name>.ipynb, with every output
and execution count stripped and all prose and code kept.

Why: the committed notebooks carry the outputs of a real run, for reading. A learner who wants to
work through a notebook in JupyterLab, running each cell and seeing only their own results,
opens its twin in notebooks/clean/ instead (the idea of fastbook's ``clean/`` folder). CI checks
that the twins equal what this script writes (tests/test_clean_notebooks.py).

Usage: .venv/bin/python scripts/clean_notebooks.py          # rewrite notebooks/clean/
       .venv/bin/python scripts/clean_notebooks.py --check  # exit 1 if a twin is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
CLEAN_DIR = NOTEBOOK_DIR / "clean"

# Metadata that belongs to one execution, not to the notebook.
_RUN_METADATA = ("papermill", "execution", "widgets")


def clean_text(source: Path) -> str:
    """The clean twin of one notebook, as the text to write."""
    nb = nbformat.read(source, as_version=4)
    for key in _RUN_METADATA:
        nb.metadata.pop(key, None)
    for cell in nb.cells:
        for key in _RUN_METADATA:
            cell.metadata.pop(key, None)
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        else:  # the twin sits one folder deeper: links out of notebooks/ need one more ../
            cell.source = cell.source.replace("](../", "](../../")
    return nbformat.writes(nb) + "\n"


def course_notebooks() -> list[Path]:
    """The numbered notebooks the twins are made from (the main job's glob)."""
    return sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def stale_twins() -> list[str]:
    """Names of twins that are missing, differ from their notebook, or have no notebook."""
    wanted = {nb.name: clean_text(nb) for nb in course_notebooks()}
    have = {p.name for p in CLEAN_DIR.glob("*.ipynb")} if CLEAN_DIR.is_dir() else set()
    stale = [n for n, text in wanted.items() if n not in have or
             (CLEAN_DIR / n).read_text(encoding="utf-8") != text]  # fmt: skip
    return sorted(stale + sorted(have - set(wanted)))


def write_twins() -> list[Path]:
    """Rewrite notebooks/clean/ from the notebooks; remove twins whose notebook is gone."""
    CLEAN_DIR.mkdir(exist_ok=True)
    written = []
    names = set()
    for source in course_notebooks():
        target = CLEAN_DIR / source.name
        target.write_text(clean_text(source), encoding="utf-8")
        written.append(target)
        names.add(source.name)
    for orphan in CLEAN_DIR.glob("*.ipynb"):
        if orphan.name not in names:
            orphan.unlink()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report out-of-date twins")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_twins()
        for name in stale:
            print(f"notebooks/clean/{name} is out of date: run scripts/clean_notebooks.py")
        return 1 if stale else 0
    for path in write_twins():
        print(path.relative_to(NOTEBOOK_DIR.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
