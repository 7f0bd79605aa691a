"""Human ratings of generated texts: ``data/feedback/*.csv`` read, checked row by row (an error
names the file, the row and the fix) and looked up per (run, tavern, iteration). The format is
described in ``data/feedback/README.md``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

RATING_COLUMNS: tuple[str, ...] = ("tavern_id", "iteration", "rating", "rater", "note")
OPTIONAL_RATING_COLUMNS: tuple[str, ...] = ("run_id",)
FEEDBACK_DIR = "feedback"


class RatingsError(ValueError):
    """A ratings file cannot be used; the message names the file, the row and the fix."""


@dataclass(frozen=True)
class Rating:
    """One human judgement of one generated text (row ``row`` of ``source``)."""

    tavern_id: str
    iteration: int
    rating: int
    rater: str = ""
    note: str = ""
    run_id: str = ""  # empty: applies to that tavern and iteration in every run
    source: str = ""
    row: int = 0


def _parse_rating_row(values: Mapping[str, str], where: str) -> Rating:
    tid = values.get("tavern_id", "").strip()
    if not tid:
        raise RatingsError(
            f"{where}: tavern_id is empty; write the tavern's id, e.g. prancing-pony."
        )
    try:
        iteration = int(values.get("iteration", "").strip())
    except ValueError:
        raise RatingsError(
            f"{where}: iteration {values.get('iteration')!r} is not a whole number; write the "
            "loop iteration (0, 1, ...) of the text you rated."
        ) from None
    if iteration < 0:
        raise RatingsError(f"{where}: iteration must be 0 or more, got {iteration}.")
    raw = values.get("rating", "").strip()
    try:
        rating = int(raw)
    except ValueError:
        rating = -1
    if not 1 <= rating <= 5:
        raise RatingsError(
            f"{where}: rating {raw!r} must be a whole number from 1 (poor) to 5 (excellent)."
        )
    return Rating(
        tavern_id=tid,
        iteration=iteration,
        rating=rating,
        rater=values.get("rater", "").strip(),
        note=values.get("note", "").strip(),
        run_id=(values.get("run_id") or "").strip(),
    )


def read_ratings_file(path: Path | str) -> list[Rating]:
    """Read and check one ratings CSV (columns in :data:`RATING_COLUMNS`, optional ``run_id``).

    Raises :class:`RatingsError` naming the file and the row (header = row 1) of the first problem.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise RatingsError(f"{path}: not UTF-8; save it again as 'CSV UTF-8'.") from None
    reader = csv.DictReader(text.splitlines())
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in RATING_COLUMNS if c not in header]
    if missing:
        raise RatingsError(
            f"{path}: missing column(s) {', '.join(missing)}; the header must be "
            f"{','.join(RATING_COLUMNS)} (run_id optional)."
        )
    out = []
    for number, row in enumerate(reader, start=2):
        values = {str(k).strip(): (v or "") for k, v in row.items() if k is not None}
        if not any(v.strip() for v in values.values()):
            continue
        rating = _parse_rating_row(values, f"{path}, row {number}")
        out.append(Rating(**{**rating.__dict__, "source": path.name, "row": number}))
    return out


@dataclass(frozen=True)
class Ratings:
    """Human ratings, looked up by (run, tavern, iteration). A rating without a run id applies
    to that tavern and iteration in every run (texts differ between seeds: pin run_id for a
    real study)."""

    items: tuple[Rating, ...] = field(default_factory=tuple)

    def __len__(self) -> int:
        return len(self.items)

    def for_text(self, run_id: str, tavern_id: str, iteration: int) -> list[Rating]:
        return [
            r
            for r in self.items
            if r.tavern_id == tavern_id and r.iteration == iteration and r.run_id in ("", run_id)
        ]

    def mean(self, run_id: str, tavern_id: str, iteration: int) -> float | None:
        """Mean 1-5 rating of that text, or None when nobody rated it."""
        found = self.for_text(run_id, tavern_id, iteration)
        return sum(r.rating for r in found) / len(found) if found else None

    def for_run(self, run_id: str) -> Ratings:
        """Only the ratings that can apply to ``run_id`` (what a run snapshots at its start)."""
        return Ratings(tuple(r for r in self.items if r.run_id in ("", run_id)))

    def to_records(self) -> list[dict[str, Any]]:
        return [dict(r.__dict__) for r in self.items]

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]]) -> Ratings:
        return cls(tuple(Rating(**dict(r)) for r in records))

    def frame(self) -> Any:
        return pd.DataFrame(self.to_records(), columns=[*RATING_COLUMNS, "run_id", "source", "row"])


def load_ratings(folder: Path | str) -> Ratings:
    """Every ``*.csv`` in ``folder`` (normally ``settings.data_dir / "feedback"``), checked.

    A missing folder means no ratings (the loop runs without them).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return Ratings()
    items: list[Rating] = []
    for path in sorted(folder.glob("*.csv")):
        items += read_ratings_file(path)
    return Ratings(tuple(items))
