"""Where the time of one feedback-loop iteration goes, phase by phase.

Why: the loop should spend its time generating. Everything else (retrieval, embedding, scoring,
the ledger, the Milvus insert, the per-iteration metrics) is overhead the kit adds, and the
target is that it stays under 15% of an iteration. A phase that grows with the store (a query
per row, a flush per row, re-embedding) shows up here before it hurts a long run.

Set-up: the local model (SmolLM2 via xllamacpp, ``generator="local"``), milvus-lite in-process
(``lite``), ``max_tokens=120`` as notebooks 06 and 07 use, all 47 taverns of data/taverns.csv,
``k=3``, 600-character contexts, policy ``accumulate``, seed 42 (the loop's defaults). Two iterations are run: iteration 0 retrieves from the
human references only and embeds an intro query per tavern; iteration 1 is the steady state
(retrieval from the tavern's current vector over human and generated rows). Both are reported;
the target is judged on the last one. Models are loaded and Milvus started before the clock
starts. The per-phase seconds come from the loop's ``on_timing`` hook (:class:`helpers.loop.engine.FeedbackLoop`).

Quick mode: 2 taverns, 2 iterations, 16 tokens, 150-character contexts.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.common import fmt, loadavg, markdown_table, module_main, prepare_out_dir, verdict
from bench.common import write_csv as _write_csv

NAME = "loop_breakdown"
TARGET_NON_GENERATION_SHARE = 0.15
MAX_TOKENS = 120  # what notebooks 06 and 07 pass (MAX_TOKENS parameter)
FULL = {"n_taverns": 47, "iterations": 2, "max_tokens": MAX_TOKENS, "context_chars": 600}
QUICK = {"n_taverns": 2, "iterations": 2, "max_tokens": 16, "context_chars": 150}

# Phases of a step, in the order they happen; "other" is the step's own bookkeeping (the
# record dict, sha256 of the prompt, the gate decision, the vector's base64).
STEP_PHASES = (
    "retrieve",
    "prompt",
    "generate",
    "embed",
    "evaluate",
    "ledger",
    "insert",
)
PHASE_NOTES = {
    "retrieve": "Milvus search (k+5, ef 512, filter) + exact re-rank; iteration 0 also embeds "
    "an intro query",
    "prompt": "build_prompt",
    "generate": "the LLM call",
    "embed": "all-MiniLM-L6-v2 of the new text (one call per text, by design)",
    "evaluate": "offline scores (coverage, similarity, copy spans, distinct-n)",
    "ledger": "append + flush + fsync of ledger.jsonl",
    "insert": "one upsert per text (no flush)",
    "other": "the step's own bookkeeping (record, sha256, gate)",
    "flush/index": "none inside an iteration: the loop flushes and builds HNSW once, in prepare",
    "metrics": "metrics.csv rewritten from the ledger, once per iteration",
    "between steps": "progress bar and loop control",
}


def run(quick: bool = False, out_dir: Path | None = None) -> Any:
    """Run the loop with per-phase timing and return one row per (scope, phase)."""

    from helpers.embeddings import encode_documents
    from helpers.feedback_loop import LoopParams, run_loop
    from helpers.generators import make_generator
    from helpers.milvus_server import start_milvus
    from helpers.settings import get_settings

    out = prepare_out_dir(out_dir)
    size = QUICK if quick else FULL
    settings = get_settings(run_dir=out / f"{NAME}_run", generator="local")
    generator = make_generator(settings, announce=None)  # loads the model: not on the clock
    encode_documents(["warm up the embedding model"])
    params = LoopParams(
        iterations=size["iterations"],
        policy="accumulate",
        n_taverns=size["n_taverns"],
        generator="local",
        max_tokens=size["max_tokens"],
        context_chars=size["context_chars"],
        seed=42,
        run_id="bench-loop-breakdown",
    )
    load_before = loadavg()
    collected: list[dict[str, Any]] = []
    with start_milvus(settings, backend="lite") as milvus:
        start = time.perf_counter()
        run_loop(
            params, settings, milvus=milvus, generator=generator, progress=False,
            announce=None, fresh=True, on_timing=collected.append,
        )  # fmt: skip
        run_s = time.perf_counter() - start
    df = breakdown(collected, run_s=run_s)
    df["n_taverns"] = size["n_taverns"]
    df["max_tokens"] = size["max_tokens"]
    df["context_chars"] = size["context_chars"]
    df["quick"] = quick
    df["loadavg_before"] = load_before[0]
    df["loadavg_after"] = loadavg()[0]
    _write_csv(df, out, NAME)
    return df


def breakdown(timings: list[dict[str, Any]], *, run_s: float) -> Any:
    """The timing dicts of one run as a table: per iteration, seconds and share of every phase.

    ``iteration_wall_s`` is measured independently of the phases (first step's start to the
    metrics' end), so ``sum of phases / wall`` checks that nothing was left out.
    """
    import pandas as pd

    steps = pd.DataFrame([t for t in timings if t["phase"] == "step"])
    metrics = {t["iteration"]: t for t in timings if t["phase"] == "metrics"}
    prepare = next((t for t in timings if t["phase"] == "prepare"), None)
    rows: list[dict[str, Any]] = []
    for iteration, group in steps.groupby("iteration", sort=True):
        m = metrics[iteration]
        wall = m["t1"] - group["t0"].min()
        seconds = {p: float(group[f"{p}_s"].sum()) for p in STEP_PHASES}
        step_total = float((group["t1"] - group["t0"]).sum())
        seconds["other"] = step_total - sum(seconds.values())
        seconds["flush/index"] = 0.0
        seconds["metrics"] = float(m["metrics_s"])
        seconds["between steps"] = wall - step_total - seconds["metrics"]
        n = len(group)
        tokens = int(group["output_tokens"].sum())
        for phase, secs in seconds.items():
            rows.append(
                {
                    "scope": f"iteration {iteration}",
                    "phase": phase,
                    "seconds": round(secs, 4),
                    "share": round(secs / wall, 5) if wall > 0 else float("nan"),
                    "ms_per_tavern": round(1000 * secs / n, 2),
                    "iteration_wall_s": round(wall, 3),
                    "steps": n,
                    "output_tokens": tokens,
                    "note": PHASE_NOTES.get(phase, ""),
                }
            )
    if prepare is not None:
        wall = prepare["t1"] - prepare["t0"]
        for key, secs in prepare.items():
            if key.endswith("_s"):
                rows.append(
                    {
                        "scope": "prepare (once per run)",
                        "phase": key[:-2],
                        "seconds": round(secs, 4),
                        "share": round(secs / wall, 5) if wall > 0 else float("nan"),
                        "iteration_wall_s": round(wall, 3),
                        "note": "",
                    }
                )
    rows.append({"scope": "run", "phase": "run_loop total", "seconds": round(run_s, 3), "note": ""})
    return pd.DataFrame(rows)


def non_generation_share(df: Any, scope: str) -> float:
    part = df[df["scope"] == scope]
    gen = float(part.loc[part["phase"] == "generate", "share"].iloc[0])
    return 1.0 - gen


def markdown(df: Any) -> str:
    import pandas as pd

    iterations = [s for s in pd.unique(df["scope"]) if str(s).startswith("iteration")]
    last = iterations[-1]
    first = df.iloc[0]
    share = non_generation_share(df, last)
    ok = share < TARGET_NON_GENERATION_SHARE
    lines = [
        f"One loop iteration, {int(first['n_taverns'])} taverns, local SmolLM2, milvus-lite "
        f"in-process, max_tokens {int(first['max_tokens'])}, k 3, contexts of "
        f"{int(first['context_chars'])} characters, accumulate"
        + (" (QUICK smoke run)" if bool(first["quick"]) else "")
        + f"; load average {fmt(first['loadavg_before'])} before, "
        f"{fmt(first['loadavg_after'])} after.",
        "",
    ]
    wide = df[df["scope"].isin(iterations)].pivot_table(
        index="phase", columns="scope", values=["seconds", "share"], sort=False
    )
    table = pd.DataFrame({"phase": wide.index})
    for it in iterations:
        short = it.replace("iteration ", "it ")
        table[f"{short} s"] = wide[("seconds", it)].to_numpy()
        table[f"{short} share"] = [f"{100 * v:.1f}%" for v in wide[("share", it)].to_numpy()]
    table["what"] = [PHASE_NOTES.get(p, "") for p in table["phase"]]
    lines.append(markdown_table(table))
    lines.append("")
    for it in iterations:
        part = df[df["scope"] == it]
        wall = float(part["iteration_wall_s"].iloc[0])
        covered = float(part["seconds"].sum())
        tokens = int(part["output_tokens"].iloc[0])
        gen_s = float(part.loc[part["phase"] == "generate", "seconds"].iloc[0])
        lines.append(
            f"- {it}: wall {wall:.1f} s for {int(part['steps'].iloc[0])} taverns "
            f"({wall / int(part['steps'].iloc[0]):.2f} s each); phases sum to "
            f"{100 * covered / wall:.1f}% of the wall time; {tokens} tokens generated "
            f"({tokens / gen_s:.0f} tokens/s); outside generation "
            f"{100 * non_generation_share(df, it):.1f}%."
        )
    prep = df[df["scope"].str.startswith("prepare")]
    if len(prep):
        parts = ", ".join(f"{r.phase} {r.seconds:.2f} s" for r in prep.itertuples())
        lines.append(f"- prepare, once per run (not in the iteration): {parts}.")
    lines.append(
        f"- Target: everything except generation under {100 * TARGET_NON_GENERATION_SHARE:.0f}% "
        f"of the iteration ({last}): {100 * share:.1f}%, {verdict(ok)}."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(module_main(NAME, run, markdown, __doc__.split("\n\n")[0]))
