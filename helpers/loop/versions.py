"""Which iterations of a run are finished, and which version of each tavern is current: the one
rule the engine, the per-iteration metrics and the run analysis all read the ledger by.

Pure functions of ledger records (dicts with ``iteration``, ``tavern_id``, ``stored`` and
``vector_b64``), no Milvus and no model.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["current_versions", "finished_iterations", "last_finished_iteration"]


def finished_iterations(records: Sequence[Mapping[str, Any]], n_taverns: int) -> list[int]:
    """Iterations 0, 1, ... for which every tavern has a ledger record: a half-done iteration
    of a crashed run (and anything after it) is left out."""
    counts = Counter(int(r["iteration"]) for r in records)
    out: list[int] = []
    while counts.get(len(out), 0) >= n_taverns > 0:
        out.append(len(out))
    return out


def last_finished_iteration(records: Sequence[Mapping[str, Any]], n_taverns: int) -> int:
    """The last finished iteration, -1 (the human rows' iteration) when none is."""
    done = finished_iterations(records, n_taverns)
    return done[-1] if done else -1


def current_versions(
    records: Sequence[Mapping[str, Any]], upto: int
) -> dict[str, Mapping[str, Any]]:
    """Each tavern's current version after iteration ``upto``: its newest *stored* record with
    ``iteration <= upto`` (a version ``gated`` rejected, or an empty text, never entered the
    store, so the tavern keeps its previous one)."""
    out: dict[str, Mapping[str, Any]] = {}
    for rec in records:
        it = int(rec["iteration"])
        if rec.get("stored") and it <= upto:  # stored implies a non-empty text and vector
            old = out.get(rec["tavern_id"])
            if old is None or int(old["iteration"]) < it:
                out[rec["tavern_id"]] = rec
    return out
