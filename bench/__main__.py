"""``./kit.sh bench [names...] [--quick] [--out DIR]``: run the kit's benchmarks into one folder.

Why one command: numbers are only comparable with the machine they were measured on and the
command that made them, so every run writes, in ``runs/bench/<UTC time>/`` (git-ignored):
``machine.json`` (CPU, cores, RAM, OS, Python, package versions, commit, load), one CSV per
benchmark, and ``summary.md`` = the machine, each benchmark's markdown summary, and the command
that reproduces it. A benchmark that fails is reported and the others still run; the exit code
is then 1. Speed and memory are measured here, by scripts that print numbers, never by timed
tests.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

# The order they run in: cheap and in-process first, the ones that start subprocesses last.
ORDER = (
    "embedding_throughput",
    "generation",
    "description_length",
    "loop_breakdown",
    "search_quality",
    "hybrid_search",
    "scaling",
    "memory",
    "thread_contention",
    "server_lifecycle",
    "main_job",
)


@dataclass
class Outcome:
    name: str
    status: str  # ok | failed | skipped
    seconds: float = 0.0
    markdown: str = ""
    error: str = ""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="./kit.sh bench",
        description=(
            "Run the kit's benchmarks (speed, memory, search quality) and write machine.json, "
            "one CSV per benchmark and summary.md into runs/bench/<UTC time>/."
        ),
        epilog=(
            "Examples:\n"
            "  ./kit.sh bench                       every benchmark, full size (long: the main\n"
            "                                       job alone takes minutes; run on a quiet machine)\n"
            "  ./kit.sh bench --quick               every benchmark, smoke size\n"
            "  ./kit.sh bench loop_breakdown generation\n"
            "  .venv/bin/python -m bench.loop_breakdown --quick   one benchmark on its own\n"
            f"Benchmarks, in the order they run: {', '.join(ORDER)}."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help="benchmarks to run (default: all, in order)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke-size runs (about a minute)")
    parser.add_argument(
        "--out", metavar="DIR", default=None, help="output folder (default: runs/bench/<UTC time>)"
    )
    return parser


def load(name: str) -> ModuleType | None:
    """The benchmark module, or None when its file does not exist (written separately)."""
    try:
        return importlib.import_module(f"bench.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"bench.{name}":
            return None
        raise


def run_one(name: str, quick: bool, out_dir: Path, explicit: bool) -> Outcome:
    print(f"\n=== {name}{' (quick)' if quick else ''} ===", flush=True)
    start = time.perf_counter()
    try:
        module = load(name)
        if module is None:
            why = f"bench/{name}.py does not exist (yet)"
            print(f"{name}: skipped: {why}", flush=True)
            return Outcome(name, "failed" if explicit else "skipped", error=why)
        df = module.run(quick=quick, out_dir=out_dir)
        text = module.markdown(df)
    except Exception as exc:
        traceback.print_exc()
        return Outcome(
            name,
            "failed",
            time.perf_counter() - start,
            error=f"{type(exc).__name__}: {exc}",
        )
    seconds = time.perf_counter() - start
    print(text, flush=True)
    print(f"({name}: {seconds:.1f} s)", flush=True)
    return Outcome(name, "ok", seconds, text)


def reproduce_command(names: Sequence[str], quick: bool) -> str:
    parts = ["./kit.sh", "bench", *names] + (["--quick"] if quick else [])
    return " ".join(shlex.quote(p) for p in parts)


def write_summary(
    out_dir: Path, machine: dict, outcomes: list[Outcome], command: str, seconds: float
) -> Path:
    from bench.common import machine_markdown

    lines = [
        f"# Benchmarks, {machine['date_utc']}",
        "",
        f"Reproduce: `{command}` (this run took {seconds / 60:.1f} min).",
        "",
        "## Machine",
        "",
        machine_markdown(machine),
        "",
        "## Overview",
        "",
        "| benchmark | status | seconds | CSV |",
        "|---|---|---|---|",
    ]
    for o in outcomes:
        csv = f"{o.name}.csv" if (out_dir / f"{o.name}.csv").exists() else ""
        lines.append(f"| {o.name} | {o.status} | {o.seconds:.1f} | {csv} |")
    for o in outcomes:
        lines += ["", f"## {o.name}", ""]
        if o.status == "ok":
            lines.append(o.markdown)
        else:
            lines.append(f"**{o.status.upper()}**: {o.error}")
        lines += ["", f"Alone: `.venv/bin/python -m bench.{o.name}` (add `--quick`, `--out DIR`)."]
    path = out_dir / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in ORDER]
    if unknown:
        parser.error(
            f"unknown benchmark(s) {', '.join(map(repr, unknown))}; choose from: {', '.join(ORDER)}"
        )
    selected = [n for n in ORDER if n in args.names] if args.names else list(ORDER)

    from bench.common import json_dump, machine_info
    from helpers.settings import get_settings

    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out_dir = Path(args.out) if args.out else get_settings().run_dir / "bench" / stamp
    out_dir = out_dir.expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    json_dump(out_dir / "machine.json", machine)
    print(f"Benchmark folder: {out_dir}", flush=True)

    start = time.perf_counter()
    outcomes = [run_one(n, args.quick, out_dir, explicit=bool(args.names)) for n in selected]
    command = reproduce_command(args.names, args.quick)
    summary = write_summary(out_dir, machine, outcomes, command, time.perf_counter() - start)

    failed = [o for o in outcomes if o.status == "failed"]
    print("\n" + "\n".join(f"{o.name:<22} {o.status:<8} {o.seconds:7.1f} s" for o in outcomes))
    for o in failed:
        print(f"FAILED {o.name}: {o.error}", file=sys.stderr)
    print(f"\nSummary: {summary}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
