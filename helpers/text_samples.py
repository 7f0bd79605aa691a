"""Two of the papers' metrics that need the model again after a sweep has run.

* **Perplexity** of every generated text under the frozen local SmolLM2
  (:func:`helpers.perplexity.perplexity`): Shumailov et al.'s tails; a text the model finds
  ever more probable is a sign of the distribution narrowing.
* **Spread within a tavern** (:func:`helpers.paper_metrics.within_tavern_spread`): at chosen
  iterations, each ledgered generation's own prompt is sampled ``samples - 1`` more times with
  other seeds, and the mean pairwise cosine distance of the ``samples`` texts (the ledgered one
  and the new ones) is the generator's own variance at that point of the loop.

Both give *unit tables* (one row per run, iteration and tavern, ``cluster`` = the tavern) that
:func:`helpers.experiment_results.arm_curves` turns into per-arm curves with intervals, like
every other metric. They are computed once by ``scripts/run_experiment.py --extras`` and kept as
CSVs beside the sweep's other tables, so a recompute reads them instead of generating.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pandas as pd

ARM_COLUMNS = ["run_id", "policy", "human_fraction", "seed"]
SPREAD_SAMPLES = 4  # the ledgered text and 3 more: within_tavern_spread needs >= 4
SPREAD_SEED_STEP = 7919  # extra sample j of a generation uses its seed + j * this (a prime)


def _arm(run: Any) -> dict[str, Any]:
    p = run.params
    return {"run_id": p["run_id"], "policy": p["policy"],
            "human_fraction": float(p["human_fraction"]), "seed": int(p["seed"])}  # fmt: skip


def _records(runs: Sequence[Any], iterations: Sequence[int] | None) -> list[tuple[dict, dict]]:
    chosen = None if iterations is None else set(iterations)
    return [
        (_arm(run), rec)
        for run in runs
        for rec in run.records()
        if chosen is None or rec["iteration"] in chosen
    ]


def perplexity_units(
    runs: Sequence[Any], generator: Any, *, iterations: Sequence[int] | None = None
) -> pd.DataFrame:
    """``perplexity`` of every generated text of ``runs`` (at ``iterations``, default all) under
    ``generator`` (a :class:`~helpers.generators.LocalGenerator`; its workers score side by
    side: each text is scored alone in its context, so the value does not depend on them)."""
    from helpers.perplexity import perplexity

    items = _records(runs, iterations)
    servers = [generator._server]
    if getattr(generator, "workers", 1) > 1:
        idle = generator._worker_queue()
        servers = [idle.get() for _ in range(generator.workers)]
        for s in servers:
            idle.put(s)

    def score(i: int) -> float:
        return perplexity(
            items[i][1]["text"], generator=generator, server=servers[i % len(servers)]
        )

    with ThreadPoolExecutor(len(servers), "ppl") as pool:
        values = list(pool.map(score, range(len(items))))
    return pd.DataFrame(
        [
            {
                **arm,
                "iteration": int(rec["iteration"]),
                "cluster": rec["tavern_id"],
                "perplexity": value,
            }
            for (arm, rec), value in zip(items, values, strict=True)
        ]
    )


def spread_units(
    runs: Sequence[Any],
    generator: Any,
    *,
    iterations: Sequence[int],
    samples: int = SPREAD_SAMPLES,
) -> pd.DataFrame:
    """``within_tavern_spread`` at ``iterations``: each ledgered generation's prompt sampled
    ``samples - 1`` more times (same length cap and temperature; seed ``+ j * 7919``), the
    spread taken over the ledgered text and the new ones. Needs the ledgers' prompts (the local
    run folders: the committed ledgers leave them out)."""
    from helpers.embeddings import encode_documents
    from helpers.generators import GenerationRequest
    from helpers.paper_metrics import within_tavern_spread

    items = _records(runs, iterations)
    missing = [rec["tavern_id"] for _, rec in items if not rec.get("prompt")]
    if missing:
        raise ValueError(
            f"{len(missing)} ledger records have no prompt (committed ledgers drop it): compute "
            "the spread from the sweep's own run folders (--run-dir of the run that generated)."
        )
    requests = [
        GenerationRequest(
            rec["prompt"],
            int(rec["max_tokens"]),
            float(rec["temperature"]),
            (int(rec["seed"]) + j * SPREAD_SEED_STEP) % (2**32 - 1),
        )
        for _, rec in items
        for j in range(1, samples)
    ]
    extra = generator.generate_many(requests)
    rows = []
    for n, (arm, rec) in enumerate(items):
        texts = [rec["text"], *(g.text for g in extra[n * (samples - 1) : (n + 1) * (samples - 1)])]
        spread = within_tavern_spread({rec["tavern_id"]: encode_documents(texts)})
        rows.append({**arm, "iteration": int(rec["iteration"]), "cluster": rec["tavern_id"],
                     "within_tavern_spread": spread[rec["tavern_id"]]})  # fmt: skip
    return pd.DataFrame(rows)
