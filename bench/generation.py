"""Generation: how fast the offline model writes a description, and what the default loop would
cost with Claude.

Why: generation is where the loop's time goes (see loop_breakdown), so its speed sets the
length of every run; and a reader who sets ANTHROPIC_API_KEY should know beforehand how many
tokens, and roughly how many dollars, the default loop spends.

1. Local model (SmolLM2-135M-Instruct Q4_1 via xllamacpp, :class:`LocalGenerator`): the
   article's prompt, word for word, for the first taverns of data/taverns.csv, temperature 0
   (the article's), the generator's own cap of 230 tokens; seconds per description and output
   tokens per second (prompt evaluation included, as a caller sees it). With the kit's 2 threads
   and with 1 thread, alternating, because on a shared 2-core machine 2 threads can be the slower
   choice (llama.cpp's threads wait for each other when one core is busy). Quick: 1 description
   at 20 tokens, 2 threads only.

2. Claude estimate for the default loop (``python -m helpers.feedback_loop`` with no options =
   ``LoopParams()``: 3 iterations x all 47 taverns, k 3, 600-character contexts, accumulate, no
   judge; Claude's cap ``CLAUDE_DESCRIPTION_MAX_TOKENS`` = 600). There is no API key here and no
   Claude tokenizer offline, so input tokens are estimated from the real prompts the loop builds:
   iteration 0 exactly as the loop would (its 3 nearest human references by the same embedding,
   clipped by the loop's own :func:`clip`), iterations 1-2 with every context at the full 600
   characters (a Claude description, ~2,400 characters, is always clipped to 600). Characters are
   turned into tokens at 3.0 characters per token (the kit's own conservative figure,
   ``helpers.feedback_loop._CHARS_PER_TOKEN``; English prose is nearer 4) and, as a cross-check,
   with the SmolLM2 BPE tokenizer measured on sample prompts. Output tokens are the cap (600 per
   generation), an upper bound. Prices: :data:`helpers.generators.PRICES_PER_MTOK`.

3. Claude's ``generate_many`` on one iteration (47 requests; quick: 16) against the loopback
   Messages API answering after 1-2 s, sequential (concurrency 1) and at concurrency 8: wall
   seconds and the ratio (:func:`bench.generation_throughput.claude_concurrency`). The prompt /
   decode split, batching and the prompt diet are in :mod:`bench.generation_throughput`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.common import fmt, loadavg, markdown_table, module_main, prepare_out_dir
from bench.common import write_csv as _write_csv
from bench.generation_throughput import claude_concurrency

NAME = "generation"
FULL = {
    "n_descriptions": 4,
    "max_tokens": None,
    "threads": (2, 1),
    "bpe_samples": 6,
    "claude_n": 47,
}
QUICK = {"n_descriptions": 1, "max_tokens": 20, "threads": (2,), "bpe_samples": 1, "claude_n": 16}

# Where the prices come from (read from helpers/generators.py and its git history).
PRICE_SOURCE = (
    "helpers.generators.PRICES_PER_MTOK: USD per million tokens, 'list prices when this was "
    "written; check https://www.anthropic.com/pricing before quoting a cost'; added to the kit "
    "on 2026-11-26 (commit bfa0de8), no date of its own in the code"
)
STAND_IN_MODEL = "claude-sonnet-4-5"  # priced stand-in when the configured model has no price


def run(quick: bool = False, out_dir: Path | None = None) -> Any:
    import pandas as pd

    out = prepare_out_dir(out_dir)
    size = QUICK if quick else FULL
    rows = local_speed(size)
    rows += claude_estimate(size["bpe_samples"])
    rows += [{**r, "kind": "claude_concurrency"} for r in claude_concurrency(size["claude_n"])]
    df = pd.DataFrame(rows)
    df["quick"] = quick
    _write_csv(df, out, NAME)
    return df


# ---------------------------------------------------------------------------------------------
# 1. The local model


def local_speed(size: dict[str, Any]) -> list[dict[str, Any]]:
    from helpers.data import load_taverns, tavern_records
    from helpers.generators import LocalGenerator, generate_description, loaded_local_models

    taverns = tavern_records(load_taverns())[: size["n_descriptions"]]
    generators = {}
    load_s = {}
    for threads in size["threads"]:
        was_loaded = any(key[2] == threads for key in loaded_local_models())
        start = time.perf_counter()
        generators[threads] = LocalGenerator(n_threads=threads)
        load_s[threads] = float("nan") if was_loaded else time.perf_counter() - start
        # one short call first: the first request pays for buffers and caches, not for tokens
        generators[threads].generate("Hello", max_tokens=4, temperature=0.0, seed=1)
    rows = []
    for i, tavern in enumerate(taverns):
        # alternate which thread count goes first, so neither always runs on a warmer machine
        order = list(size["threads"]) if i % 2 == 0 else list(reversed(size["threads"]))
        for threads in order:
            gen = generators[threads]
            load_before = loadavg()[0]
            g = generate_description(
                gen, tavern["name"], tavern["location"], tavern["famous_visitor"],
                max_tokens=size["max_tokens"], temperature=0.0,
            )  # fmt: skip
            rows.append(
                {
                    "kind": "local",
                    "model": gen.model,
                    "n_threads": threads,
                    "tavern_id": tavern["tavern_id"],
                    "max_tokens": size["max_tokens"] or gen.description_max_tokens,
                    "input_tokens": g.input_tokens,
                    "output_tokens": g.output_tokens,
                    "seconds": round(g.latency_s, 3),
                    "tokens_per_s": round(g.output_tokens / g.latency_s, 2),
                    "stop_reason": g.stop_reason,
                    "words": len(g.text.split()),
                    "model_load_s": round(load_s[threads], 3),
                    "loadavg": load_before,
                }
            )
    return rows


# ---------------------------------------------------------------------------------------------
# 2. Claude, estimated


def default_loop_prompts() -> dict[int, list[str]]:
    """The prompts the default loop would send, per iteration (see the module docstring)."""
    import numpy as np

    from helpers.data import load_taverns, tavern_records
    from helpers.embeddings import encode_documents, encode_queries
    from helpers.feedback_loop import LoopParams, build_prompt, clip, intro_query

    params = LoopParams()
    taverns = tavern_records(load_taverns())
    if params.n_taverns:
        taverns = taverns[: params.n_taverns]
    human = encode_documents([t["description"] for t in taverns])  # human_fraction 1.0: all
    prompts: dict[int, list[str]] = {}
    first: list[str] = []
    full: list[str] = []
    for tavern in taverns:
        query = encode_queries([intro_query(tavern)])[0]
        order = np.argsort(-(human @ query), kind="stable")[: params.k]
        contexts = [taverns[j] for j in order]
        first.append(build_prompt(tavern, contexts, context_chars=params.context_chars))
        long = [
            {**c, "description": clip((c["description"] + " ") * 8, params.context_chars)}
            for c in contexts
        ]
        full.append(build_prompt(tavern, long, context_chars=params.context_chars))
    for iteration in range(params.iterations):
        prompts[iteration] = first if iteration == 0 else full
    return prompts


def smollm2_chars_per_token(prompts: list[str]) -> float:
    """Characters per SmolLM2 BPE token over ``prompts``: the model reports the prompt's tokens;
    the chat template's own tokens (measured on a one-character prompt) are taken off."""
    from helpers.generators import LocalGenerator

    gen = LocalGenerator()
    overhead = gen.generate("x", max_tokens=1, temperature=0.0, seed=1).input_tokens - 1
    chars = tokens = 0
    for prompt in prompts:
        g = gen.generate(prompt, max_tokens=1, temperature=0.0, seed=1)
        chars += len(prompt)
        tokens += g.input_tokens - overhead
    return chars / tokens


def claude_estimate(bpe_samples: int) -> list[dict[str, Any]]:
    from helpers.feedback_loop import _CHARS_PER_TOKEN, LoopParams
    from helpers.generators import CLAUDE_DESCRIPTION_MAX_TOKENS, PRICES_PER_MTOK, estimate_cost
    from helpers.settings import DEFAULT_CLAUDE_MODEL

    params = LoopParams()
    prompts = default_loop_prompts()
    samples = (
        prompts[0][: max(1, bpe_samples // 2)]
        + prompts[min(1, len(prompts) - 1)][: max(1, bpe_samples - bpe_samples // 2)]
    )
    bpe_cpt = smollm2_chars_per_token(samples)
    rows: list[dict[str, Any]] = []
    totals = {"generations": 0, "prompt_chars": 0}
    for iteration, batch in prompts.items():
        chars = sum(len(p) for p in batch)
        totals["generations"] += len(batch)
        totals["prompt_chars"] += chars
        rows.append(
            {
                "kind": "claude_estimate",
                "scope": f"iteration {iteration}",
                "generations": len(batch),
                "prompt_chars": chars,
            }
        )
    rows.append({"kind": "claude_estimate", "scope": "default loop", **totals})
    for row in rows:
        row["input_tokens"] = round(row["prompt_chars"] / _CHARS_PER_TOKEN)
        row["input_tokens_bpe"] = round(row["prompt_chars"] / bpe_cpt)
        row["output_tokens_max"] = row["generations"] * CLAUDE_DESCRIPTION_MAX_TOKENS
        row["chars_per_token"] = _CHARS_PER_TOKEN
        row["bpe_chars_per_token"] = round(bpe_cpt, 3)
        row["params"] = (
            f"iterations {params.iterations}, k {params.k}, context_chars "
            f"{params.context_chars}, max_tokens {CLAUDE_DESCRIPTION_MAX_TOKENS}"
        )
    total = rows[-1]
    models = [DEFAULT_CLAUDE_MODEL] + [m for m in PRICES_PER_MTOK if m != DEFAULT_CLAUDE_MODEL]
    for model in models:
        priced = model if model in PRICES_PER_MTOK else STAND_IN_MODEL
        p_in, p_out = PRICES_PER_MTOK[priced]
        rows.append(
            {
                "kind": "claude_cost",
                "model": model,
                "priced_as": priced,
                "usd_in_per_mtok": p_in,
                "usd_out_per_mtok": p_out,
                "input_tokens": total["input_tokens"],
                "output_tokens_max": total["output_tokens_max"],
                "usd_estimate": round(
                    estimate_cost(total["input_tokens"], total["output_tokens_max"], p_in, p_out),
                    4,
                ),
                "price_source": PRICE_SOURCE,
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------


def markdown(df: Any) -> str:
    local = df[df["kind"] == "local"]
    est = df[df["kind"] == "claude_estimate"]
    cost = df[df["kind"] == "claude_cost"]
    quick = bool(df["quick"].iloc[0])
    lines = [
        "Local model, the article's prompt, temperature 0"
        + (" (QUICK smoke run)" if quick else "")
        + ":",
        "",
    ]
    by = (
        local.groupby("n_threads", sort=False)
        .agg(
            descriptions=("seconds", "size"),
            max_tokens=("max_tokens", "first"),
            mean_output_tokens=("output_tokens", "mean"),
            mean_s=("seconds", "mean"),
            min_s=("seconds", "min"),
            max_s=("seconds", "max"),
            total_tokens=("output_tokens", "sum"),
            total_s=("seconds", "sum"),
            model_load_s=("model_load_s", "first"),
            loadavg=("loadavg", "mean"),
        )
        .reset_index()
    )
    by["tokens_per_s"] = by["total_tokens"] / by["total_s"]
    lines.append(
        markdown_table(
            by,
            [
                "n_threads",
                "descriptions",
                "max_tokens",
                "mean_output_tokens",
                "mean_s",
                "min_s",
                "max_s",
                "tokens_per_s",
                "model_load_s",
                "loadavg",
            ],
        )
    )
    total = est[est["scope"] == "default loop"].iloc[0]
    lines += [
        "",
        f"Claude, the default loop ({total['params']}; {int(total['generations'])} generations), "
        "estimated without an API key:",
        "",
        markdown_table(
            est,
            [
                "scope",
                "generations",
                "prompt_chars",
                "input_tokens",
                "input_tokens_bpe",
                "output_tokens_max",
            ],
        ),
        "",
        f"input_tokens at {fmt(total['chars_per_token'])} characters/token (the kit's "
        f"conservative figure); input_tokens_bpe at {fmt(total['bpe_chars_per_token'])} "
        "characters/token (SmolLM2's BPE, measured on sample prompts); output = the 600-token cap "
        "per generation (upper bound). Message framing (a few tokens per call) is not counted.",
        "",
        markdown_table(
            cost,
            [
                "model",
                "priced_as",
                "usd_in_per_mtok",
                "usd_out_per_mtok",
                "input_tokens",
                "output_tokens_max",
                "usd_estimate",
            ],
        ),
        "",
        f"Prices: {cost['price_source'].iloc[0]}. The kit's default model has no price of its "
        f"own in that table, so it is priced as {STAND_IN_MODEL}: check before quoting.",
    ]
    conc = df[df["kind"] == "claude_concurrency"]
    if len(conc):
        lines += [
            "",
            f"Claude `generate_many`, {int(conc['requests'].iloc[0])} requests against the "
            "loopback Messages API answering after 1-2 s (uniform, seeded):",
            "",
            markdown_table(
                conc, ["concurrency", "requests", "wall_s", "speedup", "peak_in_flight", "loadavg"]
            ),
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(module_main(NAME, run, markdown, __doc__.split("\n\n")[0]))
