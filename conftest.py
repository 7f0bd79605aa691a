"""Root pytest configuration: applies to tests/ and to the nbval run over notebooks/.

Notebook kernels inherit the environment of pytest, so pointing GFL_RUN_DIR at a throw-away
folder here keeps every test and every notebook execution out of the repository's runs/.
"""

from __future__ import annotations

import os
import shutil
import tempfile

_created: list[str] = []


def pytest_configure(config) -> None:
    if not os.environ.get("GFL_RUN_DIR"):
        path = tempfile.mkdtemp(prefix="gfl-test-run-")
        os.environ["GFL_RUN_DIR"] = path
        _created.append(path)


def pytest_unconfigure(config) -> None:
    for path in _created:
        shutil.rmtree(path, ignore_errors=True)
