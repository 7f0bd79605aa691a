"""Generation speed against quality: the prompt diet and the side-by-side goal of issue 11.

Two parts of ``python -m bench.generation_throughput`` (which dispatches every part):

* ``diet``: seconds per generation, llama.cpp's prompt/decode split and the evaluator's offline
  scores over a grid of intro, k, context_chars and max_tokens (3 seeds x 8 taverns), each point
  against today's default with paired intervals, and the rule that picks the new default
  (:func:`diet_verdicts`);
* ``goal``: the real loop at 47 taverns, as it was and at the new defaults, side by side in one
  process, then Claude's iteration at concurrency 1 and 8.

Why: a faster default is only worth having at a quality that is not worse beyond the
seed-to-seed spread (docs/benchmarks.md section 9).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import loadavg, prepare_out_dir

# ---------------------------------------------------------------------------------------------
# The prompt diet


DIET_GRID = (  # (intro, k, context_chars, max_tokens); the first is today's default
    ("full", 3, 600, 230),
    ("full", 3, 300, 230),
    ("short", 2, 300, 230),
    ("full", 3, 600, 150),
    ("short", 2, 300, 150),
    ("short", 2, 300, 120),
)
DIET_KEYS = ["intro", "k", "context_chars", "max_tokens"]
DIET_QUALITY = ("coverage", "reference_similarity", "distinct_2")  # issue 11's three scores


def diet(
    n_taverns: int = 8,
    seeds: Sequence[int] = (1, 2, 3),
    grid: Sequence[tuple] = DIET_GRID,
    threads: int = 2,
    partial: Path | None = None,
) -> list[dict[str, Any]]:
    """Every grid point on the same taverns and seeds, at later-iteration contexts (each at its
    full ``context_chars``), temperature 0.8 as in the loop. Seed-major, so an interrupted run
    still holds whole seeds; every row carries llama.cpp's prompt/decode split."""
    from helpers.embeddings import encode_documents
    from helpers.evaluation import Evaluator
    from helpers.generators import LocalGenerator

    gen = LocalGenerator(n_threads=threads)
    gen.generate("Hello", max_tokens=4, temperature=0.0, seed=1)
    evaluator = Evaluator()
    from bench.generation_throughput import loop_taverns_and_contexts, prompt

    taverns, contexts = loop_taverns_and_contexts(n_taverns, max(g[1] for g in grid))
    refs = encode_documents([t["description"] for t in taverns])
    rows = []
    for seed in seeds:
        for intro, k, chars, max_tokens in grid:
            for tavern, ctx, ref in zip(taverns, contexts, refs, strict=True):
                p = prompt(tavern, ctx[:k], context_chars=chars, intro=intro, long_contexts=True)
                load = loadavg()[0]
                g = gen.generate(p, max_tokens=max_tokens, temperature=0.8, seed=seed)
                tm = gen.last_timings
                scores = evaluator.offline_scores(
                    g.text, tavern, reference_vector=ref,
                    context_texts=[c["description"] for c in ctx[:k]],
                )  # fmt: skip
                rows.append(
                    {
                        "part": "diet", "n_threads": threads, "intro": intro, "k": k,
                        "context_chars": chars, "max_tokens": max_tokens, "seed": seed,
                        "tavern_id": tavern["tavern_id"], "prompt_tokens": g.input_tokens,
                        "output_tokens": g.output_tokens, "seconds": g.latency_s,
                        "prompt_s": tm.get("prompt_ms", 0.0) / 1e3,
                        "decode_s": tm.get("predicted_ms", 0.0) / 1e3,
                        "coverage": scores["coverage"],
                        "reference_similarity": scores["reference_similarity"],
                        "distinct_2": scores["distinct_2"], "copy_share": scores["copy_share"],
                        "words": scores["words"], "auto_score": scores["auto_score"],
                        "loadavg": load,
                    }
                )  # fmt: skip
                if partial is not None:  # a long run interrupted still leaves its rows
                    with partial.open("a", encoding="utf-8") as f:
                        f.write(json.dumps(rows[-1]) + "\n")
    return rows


# ---------------------------------------------------------------------------------------------


def diet_summary(df: Any) -> Any:
    """Per grid point: mean seconds, prompt/decode split and scores over taverns and seeds, and
    the seed-to-seed spread (max - min over seeds of the per-seed mean) of each score."""
    metrics = ["seconds", "prompt_s", "decode_s", *DIET_QUALITY, "words"]
    per_seed = df.groupby([*DIET_KEYS, "seed"], sort=False)[metrics].mean().reset_index()
    mean = per_seed.groupby(DIET_KEYS, sort=False)[metrics].mean()
    spread = per_seed.groupby(DIET_KEYS, sort=False)[list(DIET_QUALITY)].agg(
        lambda x: x.max() - x.min()
    )
    out = mean.join(spread.add_suffix("_spread")).reset_index()
    tokens = df.groupby(DIET_KEYS, sort=False)["prompt_tokens"].mean().reset_index(drop=True)
    out.insert(len(DIET_KEYS), "prompt_tokens", tokens)
    out["speedup"] = out["seconds"].iloc[0] / out["seconds"]
    return out


def diet_verdicts(df: Any, *, seed: int = 0) -> Any:
    """Each grid point against the first (today's default), on the same taverns and seeds.

    For each quality score: the paired difference ``d = score(point) - score(default)`` per
    (seed, tavern), its mean with a 95 % interval (:func:`helpers.stats.estimate_effect`,
    seeds and taverns resampled), and ``not_worse``: the point's mean is at least the default's
    mean minus the default's seed-to-seed spread (issue 11's rule). ``acceptable``: not worse
    on every score. The chosen default is the fastest acceptable point."""
    import numpy as np
    import pandas as pd

    from helpers.stats import estimate_effect

    summary = diet_summary(df)
    base_key = tuple(summary.loc[0, DIET_KEYS])
    indexed = df.set_index(DIET_KEYS)
    base = indexed.loc[base_key].set_index(["seed", "tavern_id"])
    rows = []
    for _, point in summary.iterrows():
        key = tuple(point[DIET_KEYS])
        cur = indexed.loc[key].set_index(["seed", "tavern_id"])
        row: dict[str, Any] = {**dict(zip(DIET_KEYS, key, strict=True))}
        row["seconds"] = point["seconds"]
        row["speedup"] = point["speedup"]
        ok = True
        for score in DIET_QUALITY:
            diff = (cur[score] - base[score]).rename("d")
            effect = estimate_effect(
                diff.unstack("tavern_id").to_numpy(dtype=float), np.random.default_rng(seed)
            )
            floor = summary.loc[0, score] - summary.loc[0, f"{score}_spread"]
            not_worse = bool(point[score] >= floor - 1e-12)
            ok &= not_worse
            row[f"{score}_diff"] = effect.estimate
            row[f"{score}_ci"] = f"[{effect.ci_low:.3f}, {effect.ci_high:.3f}]"
            row[f"{score}_not_worse"] = not_worse
        row["acceptable"] = ok
        rows.append(row)
    out = pd.DataFrame(rows)
    ok = out[out["acceptable"]]
    out["chosen"] = out.index == (ok["seconds"].idxmin() if len(ok) else -1)
    return out


# ---------------------------------------------------------------------------------------------
# The goal, side by side: a loop iteration at 47 taverns, today's defaults against the new ones

TODAY = {"k": 3, "context_chars": 600, "max_tokens": 230}  # the loop before issue 11
TODAY_GENERATOR = {"n_threads": 2, "workers": 1}  # the local model before issue 11


def goal(n_taverns: int = 47, iterations: int = 2, out: Path | None = None) -> list[dict[str, Any]]:
    """The real loop (:func:`helpers.feedback_loop.run_loop`, milvus-lite, local SmolLM2,
    ``accumulate``, seed 42) run twice in one process on the same taverns: as it was before
    issue 11 (:data:`TODAY`, one 2-thread model) and at the kit's defaults (:class:`LoopParams`
    and the settings' ``GFL_LOCAL_THREADS``/``GFL_LOCAL_WORKERS``). Per iteration: wall seconds
    (first step's start to the metrics' end, from the loop's ``on_timing``), tokens, the three
    quality scores, and the today/new ratio of seconds; then the paired difference (new -
    today, per tavern) of each score with its 95 % interval. Iteration 0 reads human contexts,
    iteration 1 generated ones (the steady state). Then Claude's iteration (part ``claude``) at
    concurrency 1 and 8, so the local and Claude ratios come from one run."""
    import numpy as np
    import pandas as pd

    from helpers.embeddings import encode_documents
    from helpers.feedback_loop import LoopParams, run_loop
    from helpers.generators import GenerationRequest, LocalGenerator, make_generator
    from helpers.milvus_server import start_milvus
    from helpers.settings import get_settings
    from helpers.stats import estimate_effect

    out = Path(out or prepare_out_dir(None))
    encode_documents(["warm up the embedding model"])
    generators = {
        "today": LocalGenerator(**TODAY_GENERATOR),
        "new defaults": make_generator(get_settings(generator="local"), announce=None),
    }
    for gen in generators.values():  # load every worker's model and buffers off the clock
        gen.generate_many([GenerationRequest("Hello", 4, 0.0, 1)] * gen.workers)
    arms = {"today": TODAY, "new defaults": {}}
    rows: list[dict[str, Any]] = []
    scores: dict[str, Any] = {}
    for label, overrides in arms.items():
        params = LoopParams(
            iterations=iterations, policy="accumulate", n_taverns=n_taverns, generator="local",
            seed=42, run_id=f"goal-{label.replace(' ', '-')}", **overrides,
        )  # fmt: skip
        settings = get_settings(run_dir=out / f"goal-{label.replace(' ', '-')}", generator="local")
        timings: list[dict[str, Any]] = []
        load = loadavg()[0]
        with start_milvus(settings, backend="lite") as milvus:
            result = run_loop(
                params, settings, milvus=milvus, generator=generators[label], progress=False,
                announce=None, fresh=True, on_timing=timings.append,
            )  # fmt: skip
        ledger = pd.DataFrame(result.records())
        ledger = ledger.join(pd.json_normalize(ledger["scores"].tolist()))
        scores[label] = ledger.set_index(["iteration", "tavern_id"])
        steps = pd.DataFrame([t for t in timings if t["phase"] == "step"])
        ends = {t["iteration"]: t["t1"] for t in timings if t["phase"] == "metrics"}
        for it, group in steps.groupby("iteration", sort=True):
            led = ledger[ledger["iteration"] == it]
            rows.append(
                {
                    "part": "goal", "arm": label, "iteration": int(it),
                    "n_threads": generators[label].n_threads,
                    "workers": generators[label].workers, "k": params.k, "context_chars": params.context_chars,
                    "max_tokens": int(led["max_tokens"].iloc[0]), "taverns": len(group),
                    "wall_s": round(ends[it] - group["t0"].min(), 2),
                    "generate_s": round(float(group["generate_s"].sum()), 2),
                    "prompt_tokens": float(led["input_tokens"].mean()),
                    "output_tokens": float(led["output_tokens"].mean()),
                    **{q: float(led[q].mean()) for q in DIET_QUALITY},
                    "loadavg": load,
                }
            )  # fmt: skip
    df = pd.DataFrame(rows)
    for it in sorted(df["iteration"].unique()):
        today = df[(df["arm"] == "today") & (df["iteration"] == it)].iloc[0]
        new = df[(df["arm"] == "new defaults") & (df["iteration"] == it)].iloc[0]
        row: dict[str, Any] = {
            "part": "goal", "arm": "new / today", "iteration": int(it),
            "wall_s": round(new["wall_s"] / today["wall_s"], 3),
            "speedup": round(today["wall_s"] / new["wall_s"], 3),
        }  # fmt: skip
        for q in DIET_QUALITY:
            a = scores["new defaults"].xs(it, level="iteration")[q]
            b = scores["today"].xs(it, level="iteration")[q]
            d = (a - b).dropna().to_numpy(dtype=float)[None, :]
            e = estimate_effect(d, np.random.default_rng(0))
            row[q] = round(e.estimate, 4)
            row[f"{q}_ci"] = f"[{e.ci_low:.3f}, {e.ci_high:.3f}]"
        rows.append(row)
    from bench.generation_throughput import claude_concurrency

    for claude_row in claude_concurrency():
        rows.append(
            {
                **claude_row,
                "part": "goal",
                "arm": f"claude, concurrency {claude_row['concurrency']}",
            }
        )
    return rows
