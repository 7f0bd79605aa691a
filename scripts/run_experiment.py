"""Run a policy sweep and keep its result tables under docs/results/<name>/.

    PYTHONPATH=$PWD nice -n 10 .venv/bin/python scripts/run_experiment.py --name pilot \
        --arms replace:0 accumulate:0 accumulate:1 replace:0.5 --seeds 1 2 \
        --iterations 5 --taverns 6 --max-tokens 40

Writes small CSVs (the run table, the unit tables, the claims with their verdicts, the power
calculation) and ``manifest.json`` (parameters, commit, machine, timing), from which
``scripts/make_experiments_doc.py`` writes docs/experiments.md. The loop runs themselves stay
in ``--run-dir`` (ignored by git); running again continues them and generates nothing twice.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _arm(text: str) -> tuple[str, float]:
    policy, _, fraction = text.partition(":")
    return policy, float(fraction)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--name", required=True, help="folder under docs/results/")
    ap.add_argument("--arms", nargs="+", type=_arm, required=True, help="policy:human_fraction")
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--taverns", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=40)
    ap.add_argument("--context-chars", type=int, default=400)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads (1 on a busy box)")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "experiments")
    args = ap.parse_args(argv)

    from helpers import experiments as ex
    from helpers.feedback_loop import LoopParams
    from helpers.generators import LocalGenerator
    from helpers.milvus_server import start_milvus
    from helpers.settings import get_settings

    started, t0 = datetime.now(UTC), time.perf_counter()
    # the commit of the code that runs (read now: the tree may move on during a long sweep)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True, check=False).stdout.strip()  # fmt: skip
    load_before = os.getloadavg()
    settings = get_settings(milvus_backend="lite", run_dir=args.run_dir, generator="local")
    milvus = start_milvus(settings)
    try:
        inner = LocalGenerator(n_threads=args.threads)
        generator = ex.SharedGenerations(inner, ex.shared_generations_file(settings, inner))
        policies = list(dict.fromkeys(p for p, _ in args.arms))
        fractions = list(dict.fromkeys(f for _, f in args.arms))
        points = [p for p in ex.sweep_points(policies, fractions, args.seeds)
                  if (p.policy, p.human_fraction) in set(args.arms)]  # fmt: skip
        base = LoopParams(iterations=args.iterations, n_taverns=args.taverns,
                          max_tokens=args.max_tokens, context_chars=args.context_chars,
                          k=args.k, generator="local")  # fmt: skip
        runs = ex.run_sweep(points, base, settings, milvus=milvus, generator=generator,
                            prefix=args.name)  # fmt: skip
        table = ex.experiment_table(runs, k=args.k, milvus=milvus)
        units = ex.unit_tables(runs, k=args.k, milvus=milvus)
    finally:
        milvus.stop()
    checks = ex.literature_checks(table, units=units, n_boot=args.n_boot)
    power = ex.power_table(table, units=units, n_boot=args.n_boot)

    out = ROOT / "docs" / "results" / args.name
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "experiments.csv", index=False, float_format="%.6g")
    for name, frame in zip(("units_taverns", "units_queries", "units_ranks"), units, strict=True):
        frame.to_csv(out / f"{name}.csv", index=False, float_format="%.6g")
    checks.to_csv(out / "checks.csv", index=False, float_format="%.6g")
    power.to_csv(out / "power.csv", index=False, float_format="%.6g")
    manifest = {
        "name": args.name,
        "parameters": {
            "arms": [f"{p}:{f:g}" for p, f in args.arms],
            "seeds": args.seeds,
            "loop": {
                k: v
                for k, v in dataclasses.asdict(base).items()
                if k not in ("policy", "human_fraction", "seed", "run_id")
            },
            "model": inner.model,
            "llama_threads": args.threads,
            "n_boot": args.n_boot,
            "backend": "lite",
        },
        "commit": commit,
        "machine": {
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
            "load_average_at_start": load_before,
        },
        "started_utc": started.isoformat(timespec="seconds"),
        "minutes": round((time.perf_counter() - t0) / 60, 1),
        "generated": generator.misses,
        "answered_from_shared": generator.hits,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out.relative_to(ROOT)} in {manifest['minutes']} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
