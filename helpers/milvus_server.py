"""Facade: the server lifecycle now lives in the :mod:`helpers.servers` package (one module per
concern). Notebooks, tests and benches import these names from here, unchanged."""

from __future__ import annotations

from helpers.servers import *  # noqa: F403  (the public names, re-exported)
from helpers.servers import __all__  # noqa: F401
