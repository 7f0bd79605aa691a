"""Description length: how long the offline model's descriptions are when nothing cuts them.

Why: notebook 04 caps each description at ``LOCAL_DESCRIPTION_MAX_TOKENS`` tokens. A cap below
the length the model wants cuts almost every text mid-sentence; a cap far above it only costs
time where the model would have stopped anyway. So: the article's prompt, word for word, for the
first taverns of data/taverns.csv, at the notebook's settings (seed 42, temperature 0 as in the
article), with a cap of ``OPEN_CAP`` tokens that SmolLM2 rarely reaches; per description
its output tokens, whether it stopped by itself, its words and its UTF-8 bytes (the collection's
description field holds at most 3,000). Quick: 2 taverns.

Run: ``python -m bench.description_length [--quick] [--out DIR]``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.common import fmt, loadavg, markdown_table, module_main, prepare_out_dir

NAME = "description_length"
OPEN_CAP = 1024
N_TAVERNS = 8


def run(quick: bool = False, out_dir: Path | None = None) -> Any:
    import pandas as pd

    from helpers.data import load_taverns
    from helpers.generators import LocalGenerator, article_prompt

    out_dir = prepare_out_dir(out_dir)
    generator = LocalGenerator()
    rows = []
    for t in load_taverns().head(2 if quick else N_TAVERNS).itertuples():
        t0 = time.perf_counter()
        gen = generator.generate(
            article_prompt(t.name, t.location, t.famous_visitor),
            max_tokens=OPEN_CAP,
            temperature=0.0,  # the article's, as notebook 04 uses it
            seed=42,
        )
        rows.append({
            "tavern": t.name, "output_tokens": gen.output_tokens,
            "stopped_by_itself": gen.stop_reason != "max_tokens", "words": len(gen.text.split()),
            "utf8_bytes": len(gen.text.encode("utf-8")), "seconds": time.perf_counter() - t0,
            "load_1min": loadavg()[0],
        })  # fmt: skip
        r = rows[-1]
        print(f"{r['tavern']}: {r['output_tokens']} tokens, stopped by itself "
              f"{r['stopped_by_itself']}, {r['seconds']:.1f} s", flush=True)  # fmt: skip
        pd.DataFrame(rows).to_csv(out_dir / f"{NAME}.csv", index=False)  # kept if stopped
    return pd.DataFrame(rows)


def markdown(df: Any) -> str:
    stopped = int(df["stopped_by_itself"].sum())
    q = df["output_tokens"].quantile([0.5, 0.9]).tolist()
    lines = [
        f"{len(df)} descriptions with a cap of {OPEN_CAP} tokens: {stopped} stopped by themselves; "
        f"output tokens median {fmt(q[0])}, 90th percentile {fmt(q[1])}, max "
        f"{int(df['output_tokens'].max())}; UTF-8 bytes max {int(df['utf8_bytes'].max())}; "
        f"load average {fmt(df['load_1min'].mean())}.",
        "",
        markdown_table(df.round(2)),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(module_main(NAME, run, markdown, __doc__.split("\n\n")[0]))
