"""Run a policy sweep and keep its result tables under docs/results/<name>/.

    PYTHONPATH=$PWD nice -n 10 .venv/bin/python scripts/run_experiment.py --name pilot \
        --arms replace:0 accumulate:0 accumulate:1 replace:0.5 --seeds 1 2 \
        --iterations 5 --taverns 6 --max-tokens 40

Writes small CSVs (the run table, the unit tables, the claims with their verdicts, the
comparisons with the no-feedback control, the power calculation, every metric per arm and
iteration with intervals, ``curves.png``), ``manifest.json`` (parameters, commit, machine,
timing) and ``runs/`` (each run's params, metrics and ledger without prompts, xz-compressed),
from which ``scripts/make_experiments_doc.py`` writes docs/experiments.md. The loop runs
themselves stay in ``--run-dir`` (ignored by git); running again continues them and generates
nothing twice (progress and ETA per run and per sweep on stderr). Anyone can recompute every
table from the committed ledgers, without generating a text:

    PYTHONPATH=$PWD .venv/bin/python scripts/run_experiment.py --name full --recompute \
        --run-dir runs/recompute-full

Two of the papers' metrics need the model again (``--extras perplexity spread``, with the same
arguments as the sweep and its own ``--run-dir``, whose ledgers still hold the prompts): the
perplexity of every text, and the spread within a tavern from 3 more samples of each
generation's prompt (helpers/text_samples.py), at the first and last iteration by default (the
spread for the first seed only). They are kept as ``units_perplexity.csv`` and ``units_spread.csv``; a
recompute reads them.
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


def _from_manifest(args: argparse.Namespace) -> None:
    """``--recompute``: the sweep's parameters come from its manifest.json."""
    manifest = json.loads((ROOT / "docs" / "results" / args.name / "manifest.json").read_text())
    params = manifest["parameters"]
    args.arms = [_arm(a) for a in params["arms"]]
    args.seeds = list(params["seeds"])
    loop = params["loop"]
    args.iterations, args.taverns = loop["iterations"], loop["n_taverns"]
    args.max_tokens, args.context_chars, args.k = (
        loop["max_tokens"],
        loop["context_chars"],
        loop["k"],
    )
    args.threads, args.model, args.manifest = params["llama_threads"], params["model"], manifest


def _facts_from_ledgers(runs: list) -> dict:
    """When and how much a finished sweep generated, read from its ledgers: the first and last
    record's time, and the distinct requests (prompt, seed, length, temperature): the shared
    generations answer a repeated request from the file, so each distinct one was generated
    once."""
    records = [r for run in runs for r in run.records()]
    times = sorted(datetime.fromisoformat(r["created_at"].replace("Z", "+00:00")) for r in records)
    distinct = {(r["prompt_sha256"], r["seed"], r["max_tokens"], r["temperature"]) for r in records}
    return {
        "started_utc": times[0].isoformat(timespec="seconds"),
        "minutes": round((times[-1] - times[0]).total_seconds() / 60, 1),
        "generated": len(distinct),
        "answered_from_shared": len(records) - len(distinct),
        "timing_from": "ledgers (first to last record)",
    }


EXTRA_TABLES = {"perplexity": "units_perplexity", "spread": "units_spread"}


def _extras(args: argparse.Namespace, runs: list, out: Path) -> dict:
    """The extra unit tables: computed for ``--extras`` with the local model
    (``--extras-threads`` x ``--workers``; the extra samples are new texts, so they need not
    share the sweep's thread count), else read from ``out`` where they were kept."""
    import pandas as pd

    tables = {}
    for extra, name in EXTRA_TABLES.items():
        if extra in args.extras:
            from helpers import text_samples as ts
            from helpers.generators import LocalGenerator

            gen = LocalGenerator(n_threads=args.extras_threads, workers=args.workers)
            its = args.extras_iterations or [0, args.iterations - 1]
            if extra == "perplexity":
                tables[name] = ts.perplexity_units(runs, gen, iterations=its)
            else:
                seeds = set(args.spread_seeds or args.seeds[:1])
                chosen = [r for r in runs if int(r.params["seed"]) in seeds]
                tables[name] = ts.spread_units(chosen, gen, iterations=its)
            tables[name]["llama_threads"] = args.extras_threads
            print(f"{name}: {len(tables[name])} rows", file=sys.stderr)
        elif (out / f"{name}.csv").is_file():
            tables[name] = pd.read_csv(out / f"{name}.csv")
    return tables


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--name", required=True, help="folder under docs/results/")
    ap.add_argument("--arms", nargs="+", type=_arm, help="policy:human_fraction")
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--taverns", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=40)
    ap.add_argument("--context-chars", type=int, default=400)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="llama.cpp threads per model instance (part of what fixes a text)",
    )
    ap.add_argument("--workers", type=int, default=2,
                    help="model instances generating an iteration side by side (texts unchanged)")  # fmt: skip
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "experiments")
    ap.add_argument("--recompute", action="store_true",
                    help="rebuild the runs from docs/results/<name>/runs/ (the committed ledgers)\n"
                         "and recompute every table without generating a text")  # fmt: skip
    ap.add_argument(
        "--extras",
        nargs="*",
        choices=["perplexity", "spread"],
        default=[],
        help="also compute these unit tables with the local model (kept as\n"
        "units_perplexity.csv / units_spread.csv; a recompute reads them)",
    )
    ap.add_argument(
        "--extras-iterations",
        nargs="+",
        type=int,
        default=None,
        help="iterations the extras cover (default: the first and the last)",
    )
    ap.add_argument(
        "--extras-threads",
        type=int,
        default=1,
        help="llama.cpp threads of the extras' model instances (--workers of them)",
    )
    ap.add_argument("--spread-seeds", nargs="+", type=int, default=None,
                    help="sweep seeds whose runs get extra samples (default: the first)")  # fmt: skip
    args = ap.parse_args(argv)
    if args.recompute:
        _from_manifest(args)
    elif not args.arms:
        ap.error("--arms is required (policy:human_fraction ...), unless --recompute")

    from helpers import experiment_results as er
    from helpers import experiments as ex
    from helpers.claims import CONTROL_CLAIMS
    from helpers.feedback_loop import LoopParams
    from helpers.generators import LocalGenerator
    from helpers.milvus_server import start_milvus
    from helpers.settings import get_settings

    out = ROOT / "docs" / "results" / args.name
    started, t0 = datetime.now(UTC), time.perf_counter()
    # the commit of the code that runs (read now: the tree may move on during a long sweep)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True, check=False).stdout.strip()  # fmt: skip
    load_before = os.getloadavg()
    settings = get_settings(milvus_backend="lite", run_dir=args.run_dir, generator="local")
    if args.recompute:
        er.restore_runs(out / "runs", settings.run_dir / "loops")
        inner = er.FrozenGenerator(args.model)
    else:
        inner = LocalGenerator(n_threads=args.threads, workers=args.workers)
    milvus = start_milvus(settings)
    try:
        generator = ex.SharedGenerations(inner, ex.shared_generations_file(settings, inner))
        # seed-major, arms in the order given: an interrupted sweep leaves whole seeds behind
        order = {arm: i for i, arm in enumerate(args.arms)}
        points = sorted((p for p in ex.sweep_points(dict.fromkeys(p for p, _ in args.arms),
                                                    dict.fromkeys(f for _, f in args.arms),
                                                    args.seeds)
                         if (p.policy, p.human_fraction) in order),
                        key=lambda p: (args.seeds.index(p.seed), order[(p.policy, p.human_fraction)]))  # fmt: skip
        base = LoopParams(iterations=args.iterations, n_taverns=args.taverns,
                          max_tokens=args.max_tokens, context_chars=args.context_chars,
                          k=args.k, generator="local")  # fmt: skip
        runs = ex.run_sweep(points, base, settings, milvus=milvus, generator=generator,
                            prefix=args.name, loop_progress=True)  # fmt: skip
        minutes = round((time.perf_counter() - t0) / 60, 1)
        table = ex.experiment_table(runs, k=args.k, milvus=milvus)
        units = ex.unit_tables(runs, k=args.k, milvus=milvus)
    finally:
        milvus.stop()
    per_run, facts = er.paper_metric_tables(runs, k=args.k)
    table = table.merge(per_run, on=[*er.ARM_KEYS, "iteration"], how="left")
    units = (*units, facts)
    extras = _extras(args, runs, out)
    checks = ex.literature_checks(table, units=units, n_boot=args.n_boot)
    control = ex.literature_checks(table, CONTROL_CLAIMS, units=units, n_boot=args.n_boot)
    power = ex.power_table(table, units=units, n_boot=args.n_boot)
    curves = er.arm_curves(table, (*units, *extras.values()))

    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "experiments.csv", index=False, float_format="%.6g")
    names = ("units_taverns", "units_queries", "units_ranks", "units_facts")
    for name, frame in zip(names, units, strict=True):
        frame.to_csv(out / f"{name}.csv", index=False, float_format="%.6g")
    for name, frame in extras.items():
        frame.to_csv(out / f"{name}.csv", index=False, float_format="%.6g")
    checks.to_csv(out / "checks.csv", index=False, float_format="%.6g")
    control.to_csv(out / "control_checks.csv", index=False, float_format="%.6g")
    power.to_csv(out / "power.csv", index=False, float_format="%.6g")
    curves.to_csv(out / "curves.csv", index=False, float_format="%.6g")
    er.plot_arm_curves(curves, out / "curves.png")
    if args.recompute:
        print(f"recomputed the tables of {out.relative_to(ROOT)} from its committed runs "
              f"(generated {generator.misses} texts)")  # fmt: skip
        return 0
    er.export_runs(runs, out / "runs")
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
        "minutes": minutes,
        "generated": generator.misses,
        "answered_from_shared": generator.hits,
    }
    previous = out / "manifest.json"
    if generator.misses == 0 and not previous.is_file():
        # every run was finished by an earlier process that left no manifest (stopped after
        # its last generation): its facts from the ledgers themselves
        manifest |= _facts_from_ledgers(runs)
        manifest["machine"]["load_average_at_start"] = None  # not known for that process
    if previous.is_file() and generator.misses == 0:
        # every run was finished already: keep the facts of the run that generated the texts
        before = json.loads(previous.read_text(encoding="utf-8"))
        # compared as JSON: the parameters hold tuples that come back from the file as lists
        if before.get("parameters") == json.loads(json.dumps(manifest["parameters"])):
            for key in ("commit", "machine", "started_utc", "minutes", "generated",
                        "answered_from_shared"):  # fmt: skip
                manifest[key] = before[key]
            manifest["tables_from_commit"] = commit
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    print(
        f"wrote {out.relative_to(ROOT)}: {manifest['generated']} texts in {manifest['minutes']} min"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
