"""The run folder of a feedback loop: parameters, an append-only ledger, per-iteration metrics.

Why a ledger: generating is the slow (and with Claude the paid) step, and a notebook kernel or a
server can die half-way through a run. Each generation is written here, flushed and fsync'ed,
*before* its row is inserted into Milvus, so after a crash

* every row that may be in the store is in the ledger (the store never knows more than the ledger);
* a ledgered row that is missing from the store is re-inserted from the ledger (upserts with
  deterministic ids are idempotent), never generated again.

Layout of ``settings.run_dir / "loops" / <run_id>``::

    params.json     what the run was asked to do, resolved (taverns, generator, model, ...)
    ratings.json    the human ratings the run scores with, frozen at its start
    ledger.jsonl    one JSON record per generation, in the order they were made
    metrics.csv     one row per finished iteration, rewritten from the ledger after each one

Only the last line of the ledger can be torn (a kill during a write); :meth:`RunLedger.repair`
cuts it off before a run continues, so the file stays valid JSON Lines.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

PARAMS_FILE = "params.json"
RATINGS_FILE = "ratings.json"
LEDGER_FILE = "ledger.jsonl"
METRICS_FILE = "metrics.csv"
LOOPS_SUBDIR = "loops"


class LedgerError(RuntimeError):
    """The run folder is missing or unreadable; the message says which file and what to do."""


def runs_root(run_dir: Path) -> Path:
    """Where every loop run keeps its folder: ``<run_dir>/loops``."""
    return Path(run_dir) / LOOPS_SUBDIR


def _fsync_dir(path: Path) -> None:
    """Make a new or renamed directory entry durable (a file fsync alone does not)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so a reader sees the old or the new file, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; these files are meant to be read and shared
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def encode_vector(vector: Any) -> str:
    """A float32 vector as base64 of its bytes: exact (JSON floats would be too, but 4x longer),
    so a row rebuilt from the ledger is bit-for-bit the row that was inserted."""
    arr = np.ascontiguousarray(np.asarray(vector, dtype="<f4").reshape(-1))
    return base64.b64encode(arr.tobytes()).decode("ascii")


def decode_vector(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").astype(np.float32)


class RunLedger:
    """The files of one run. Cheap to create; nothing is written until asked."""

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)
        self.params_path = self.folder / PARAMS_FILE
        self.ratings_path = self.folder / RATINGS_FILE
        self.ledger_path = self.folder / LEDGER_FILE
        self.metrics_path = self.folder / METRICS_FILE

    def __repr__(self) -> str:
        return f"RunLedger({str(self.folder)!r})"

    @property
    def exists(self) -> bool:
        return self.params_path.is_file()

    # -- params and other JSON files -------------------------------------------------------------

    def write_params(self, params: Mapping[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        _fsync_dir(self.folder.parent)
        write_atomic(self.params_path, json.dumps(dict(params), indent=2, sort_keys=True) + "\n")

    def read_params(self) -> dict[str, Any]:
        if not self.params_path.is_file():
            raise LedgerError(
                f"No run at {self.folder} ({PARAMS_FILE} is missing). Check the run id and "
                "GFL_RUN_DIR; runs live in <run_dir>/loops/<run_id>/."
            )
        try:
            return json.loads(self.params_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise LedgerError(f"{self.params_path} is not valid JSON ({exc}).") from None

    def write_json(self, path: Path, obj: Any) -> None:
        write_atomic(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")

    def read_json(self, path: Path, default: Any = None) -> Any:
        if not path.is_file():
            return default
        return json.loads(path.read_text(encoding="utf-8"))

    # -- the ledger ------------------------------------------------------------------------------

    def append(self, record: Mapping[str, Any]) -> None:
        """Append one record and make it durable (flush + fsync) before returning.

        The caller inserts the row only after this returns: that order is the whole point.
        """
        line = json.dumps(dict(record), sort_keys=True, ensure_ascii=False) + "\n"
        self.folder.mkdir(parents=True, exist_ok=True)
        new = not self.ledger_path.exists()
        with open(self.ledger_path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        if new:
            _fsync_dir(self.folder)

    def _raw_lines(self) -> list[bytes]:
        if not self.ledger_path.is_file():
            return []
        return self.ledger_path.read_bytes().splitlines(keepends=True)

    def records(self) -> list[dict[str, Any]]:
        """Every complete record, in order. A torn last line (killed mid-write) is left out; a
        bad line anywhere else is an error, since it means the file was edited or corrupted."""
        lines = self._raw_lines()
        out = []
        for number, raw in enumerate(lines, start=1):
            last = number == len(lines)
            try:
                if last and not raw.endswith(b"\n"):
                    raise ValueError("no newline")
                out.append(json.loads(raw.decode("utf-8")))
            except ValueError:
                if last:
                    break
                raise LedgerError(
                    f"{self.ledger_path}, line {number}, is not a JSON record. The ledger is "
                    "append-only: restore it from a backup, or start the run again."
                ) from None
        return out

    def repair(self) -> int:
        """Cut a torn last line off the ledger; returns the number of bytes removed."""
        lines = self._raw_lines()
        if not lines:
            return 0
        last = lines[-1]
        try:
            ok = last.endswith(b"\n") and bool(json.loads(last.decode("utf-8")))
        except ValueError:
            ok = False
        if ok:
            return 0
        keep = sum(len(line) for line in lines[:-1])
        with open(self.ledger_path, "r+b") as fh:
            fh.truncate(keep)
            fh.flush()
            os.fsync(fh.fileno())
        return len(last)

    def count(self) -> int:
        return len(self.records())

    # -- metrics ---------------------------------------------------------------------------------

    def write_metrics(self, rows: Iterable[Mapping[str, Any]]) -> None:
        import pandas as pd

        frame = pd.DataFrame(list(rows))
        write_atomic(self.metrics_path, frame.to_csv(index=False))

    def read_metrics(self) -> Any:
        import pandas as pd

        if not self.metrics_path.is_file() or self.metrics_path.stat().st_size == 0:
            return pd.DataFrame()  # no iteration finished yet
        try:
            return pd.read_csv(self.metrics_path)
        except pd.errors.EmptyDataError:
            return pd.DataFrame()
