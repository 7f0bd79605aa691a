"""Sentences computed from numbers: the course's notebooks state a direction or a comparison
only through these functions, so the word ("rose", "fell", "above", ...) always follows from
the numbers printed next to it.

Each statement is also recorded in ``<run folder>/claims/<notebook>.json`` with the numbers it
was computed from; ``tests/test_notebook_statements.py`` executes the notebooks and checks every
recorded word against its numbers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Differences smaller than this (in the metric's own units) are reported as "no change".
DEFAULT_TOLERANCE = 1e-3


def trend_word(values: Sequence[float], tolerance: float = DEFAULT_TOLERANCE) -> str:
    """Say "rose", "fell" or "did not change" from the first to the last finite value."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if len(finite) < 2:
        return "cannot be told (fewer than two values)"
    change = finite[-1] - finite[0]
    if abs(change) <= tolerance:
        return "did not change"
    return "rose" if change > 0 else "fell"


def compare_word(value: float, baseline: float, tolerance: float = DEFAULT_TOLERANCE) -> str:
    """Say "above", "below" or "level with" ``baseline``."""
    if abs(value - baseline) <= tolerance:
        return "level with"
    return "above" if value > baseline else "below"


class Claims:
    """The computed statements of one notebook execution, kept in the run folder."""

    def __init__(self, notebook: str, run_dir: Path | str) -> None:
        self.path = Path(run_dir) / "claims" / f"{notebook}.json"
        self.items: list[dict[str, Any]] = []

    def _keep(self, item: dict[str, Any]) -> str:
        self.items.append(item)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.items, indent=1))
        return item["text"]

    def trend(
        self, what: str, values: Sequence[float], *, digits: int = 3, tolerance: float = 1e-3
    ) -> str:
        """Say "<what> rose from a to b" (or fell, or did not change), with every value listed."""
        nums = [round(float(v), digits) for v in values]
        word = trend_word(nums, tolerance)
        shown = ", ".join(f"{v:.{digits}f}" for v in nums)
        text = f"{what} {word} from the first to the last value ({shown})"
        return self._keep(
            {"kind": "trend", "what": what, "values": nums, "word": word, "tol": tolerance,
             "text": text}
        )  # fmt: skip

    def compare(
        self, what: str, value: float, baseline_name: str, baseline: float, *, digits: int = 3,
        tolerance: float = 1e-3,
    ) -> str:  # fmt: skip
        """Say "<what> (a) is above <baseline_name> (b)" (or below, or level with)."""
        a, b = round(float(value), digits), round(float(baseline), digits)
        word = compare_word(a, b, tolerance)
        text = f"{what} ({a:.{digits}f}) is {word} {baseline_name} ({b:.{digits}f})"
        return self._keep(
            {"kind": "compare", "what": what, "value": a, "baseline": b, "word": word,
             "tol": tolerance, "text": text}
        )  # fmt: skip

    def count(self, what: str, part: int, whole: int) -> str:
        """Say "<part> of <whole> <what>"."""
        text = f"{part} of {whole} {what}"
        return self._keep(
            {"kind": "count", "what": what, "part": int(part), "whole": int(whole), "text": text}
        )

    def noise(self, what: str, across: float, within: float, *, digits: int = 2) -> str:
        """Whether a spread across settings (``across``) exceeds the spread of repeats of one
        setting (``within``): if not, the differences across settings are noise."""
        a, w = round(float(across), digits), round(float(within), digits)
        word = "noise" if a <= w else "a pattern"
        text = (
            f"{what}: the medians differ by {a} across settings and by up to {w} between "
            f"repeats of one setting, so the differences across settings are {word}"
        )
        return self._keep(
            {"kind": "noise", "what": what, "across": a, "within": w, "word": word, "text": text}
        )


def relative_paths(text: object) -> str:
    """``text`` with the project root removed from any path in it: outputs that are committed
    must not show a machine's folders (``/home/someone/kit/runs/x`` -> ``runs/x``)."""
    from helpers.settings import REPO_ROOT

    return str(text).replace(f"{REPO_ROOT}/", "").replace(str(REPO_ROOT), ".")
