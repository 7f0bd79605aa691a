"""Where the time of notebook 04's Milvus work goes on each local backend (issue 16).

Notebook 04 took about 3x longer on the C++ server than on milvus-lite. This times the Milvus
side of it, phase by phase, on ``lite``, ``lite-server`` and ``milvus``: start on a fresh data
folder, create the collection, upsert the taverns (random unit vectors; the embedding and the
generation are the same on every backend and timed elsewhere), flush, build the HNSW index,
load, stop, then a start on the same data folder and an upsert + flush there (the step that
failed in notebook 05). The row ``milvus (old stop)`` repeats the C++ run with the stop as it
was before issue 16 (SIGTERM, 3 s, SIGKILL during the query node's graceful stop).

``python -m bench.server_lifecycle [--quick] [--out DIR]``
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import markdown_table, module_main, prepare_out_dir, write_csv

NAME = "server_lifecycle"
DIM = 384
VARIANTS = ("lite", "lite-server", "milvus", "milvus (old stop)")
PHASES = ("start", "create", "upsert", "flush", "index", "load", "stop", "restart",
          "flush_after_restart")  # fmt: skip


@contextlib.contextmanager
def _old_cpp_stop() -> Iterator[None]:
    """The C++ stop before issue 16: no short query-node wait, killed after 3 s."""
    from helpers.servers import cpp

    env, grace = cpp.CPP_ENV, cpp.CPP_STOP_GRACE_S
    cpp.CPP_ENV, cpp.CPP_STOP_GRACE_S = {}, 3.0
    try:
        yield
    finally:
        cpp.CPP_ENV, cpp.CPP_STOP_GRACE_S = env, grace


def _rows(n: int, seed: int = 42) -> list[dict[str, Any]]:
    from helpers import schema
    from helpers.data import load_taverns

    taverns = load_taverns().head(n)
    vectors = np.random.default_rng(seed).normal(size=(len(taverns), DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return schema.tavern_rows(taverns, vectors, source="generated")


def measure(variant: str, run_dir: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One pass of notebook 04's Milvus calls, then a restart on the same data."""
    from helpers import schema
    from helpers.milvus_server import start_backend
    from helpers.settings import get_settings

    backend = variant.split(" ")[0]
    settings = get_settings(run_dir=run_dir)
    row: dict[str, Any] = {"backend": variant, "rows": len(rows)}
    context = _old_cpp_stop() if "old stop" in variant else contextlib.nullcontext()

    def timed(phase: str, call: Any) -> Any:
        start = time.perf_counter()
        result = call()
        row[f"{phase}_s"] = time.perf_counter() - start
        return result

    with context:
        handle = timed("start", lambda: start_backend(settings, backend, fresh=True))
        client = handle.client
        timed("create", lambda: schema.create_tavern_collection(client, "taverns10"))
        timed("upsert", lambda: schema.upsert_rows(client, rows, "taverns10", batch_size=16))
        timed("flush", lambda: client.flush("taverns10"))
        client.release_collection("taverns10")
        params = schema.hnsw_index_params(client, 48, 200)
        timed("index", lambda: client.create_index("taverns10", params))
        timed("load", lambda: client.load_collection("taverns10"))
        timed("stop", handle.stop)
        again = timed("restart", lambda: start_backend(settings, backend))
        client = again.client
        client.load_collection("taverns10")
        got = client.query("taverns10", filter="id >= 0", output_fields=["count(*)"],
                           consistency_level="Strong")  # fmt: skip
        row["rows_after_restart"] = int(got[0]["count(*)"])
        client.upsert("taverns10", rows[:1])
        try:
            timed("flush_after_restart", lambda: client.flush("taverns10"))
            row["flush_after_restart_ok"] = True
        except Exception as exc:  # the failure issue 16 is about, recorded rather than raised
            row["flush_after_restart_ok"] = False
            row["error"] = str(exc)[:120]
        again.stop()
    row["total_s"] = sum(row.get(f"{p}_s", 0.0) for p in PHASES)
    return row


def run(quick: bool = False, out_dir: Path | None = None) -> Any:
    import pandas as pd

    from helpers.milvus_server import wait_for_cpp_slot

    out = prepare_out_dir(out_dir)
    rows = _rows(47)
    variants = VARIANTS[:3] if quick else VARIANTS
    results = []
    for variant in variants:
        if variant.startswith("milvus"):
            wait_for_cpp_slot(900.0, on_wait=print)
        work = Path(tempfile.mkdtemp(prefix="gfl-lifecycle-"))
        try:
            results.append(measure(variant, work, rows))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    df = pd.DataFrame(results)
    write_csv(df, out, NAME)
    return df


def markdown(df: Any) -> str:
    cols = ["backend", *[f"{p}_s" for p in PHASES if f"{p}_s" in df.columns], "total_s",
            "rows_after_restart", "flush_after_restart_ok"]  # fmt: skip
    return markdown_table(df, cols, floatfmt={c: ".2f" for c in cols if c.endswith("_s")})


def main(argv: list[str] | None = None) -> int:
    return module_main(NAME, run, markdown, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    raise SystemExit(main())
