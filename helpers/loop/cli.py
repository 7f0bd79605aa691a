"""The command line: ``python -m helpers.feedback_loop --help``.

Every option is checked by argparse before anything starts (exit 2 with a message naming the
option and its range); a run that fails later exits 1 with the error on stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from helpers.data import DataError
from helpers.evaluation import RatingsError
from helpers.generators import GenerationError
from helpers.ledger import LedgerError
from helpers.loop.api import resume, run_loop
from helpers.loop.params import (
    CONTEXT_CHARS_RANGE,
    ITERATIONS_RANGE,
    JUDGE_MODES,
    MAX_K,
    POLICIES,
    QUERY_MODES,
    RETRIEVERS,
    SOURCES,
    LoopError,
    LoopParams,
)
from helpers.milvus_server import MilvusServerError
from helpers.settings import BACKENDS, GENERATORS, settings_or_exit, show_path


def _number(kind: type, low: float, high: float | None, what: str) -> Callable[[str], Any]:
    """An argparse converter: ``kind`` (int or float) within [low, high], with a clear error."""

    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            noun = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value:g} is not {what}")
        return value

    return convert


_positive_int = _number(int, 1, None, "a positive whole number (>= 1)")
_iterations = _number(
    int, *ITERATIONS_RANGE, "a whole number from {} to {}".format(*ITERATIONS_RANGE)
)
_k = _number(int, 1, MAX_K, f"a whole number from 1 to {MAX_K}")
_context_chars = _number(
    int, *CONTEXT_CHARS_RANGE, "a whole number from {} to {}".format(*CONTEXT_CHARS_RANGE)
)
_max_tokens = _number(int, 1, 8192, "a whole number from 1 to 8192")
_non_negative_int = _number(int, 0, None, "0 or more")
_fraction = _number(float, 0.0, 1.0, "between 0 and 1 (e.g. 1.0, 0.5, 0)")
_temperature = _number(float, 0.0, 2.0, "between 0 and 2")


def _tavern_list(text: str) -> tuple[str, ...]:
    ids = tuple(t.strip() for t in text.split(",") if t.strip())
    if not ids:
        raise argparse.ArgumentTypeError(
            "give tavern ids separated by commas, e.g. prancing-pony,green-dragon"
        )
    return ids


def build_parser() -> argparse.ArgumentParser:
    defaults = LoopParams()
    parser = argparse.ArgumentParser(
        prog="python -m helpers.feedback_loop",
        description=(
            "Run a generative feedback loop over the tavern collection. Each iteration retrieves\n"
            "context from Milvus, generates a new description per tavern, scores it and writes\n"
            "it back. Every run keeps params.json, ledger.jsonl and metrics.csv in\n"
            "<run_dir>/loops/<run_id>/ and can be continued after a crash with --resume."
        ),
        epilog=(
            "Examples:\n"
            "  python -m helpers.feedback_loop --iterations 5 --policy accumulate --n-taverns 8\n"
            "  python -m helpers.feedback_loop --policy replace --human-fraction 0 --run-id collapse\n"
            "  python -m helpers.feedback_loop --resume collapse\n"
            "Environment: GFL_MILVUS_BACKEND, GFL_RUN_DIR, GFL_GENERATOR, ANTHROPIC_API_KEY "
            "(see helpers/settings.py)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    loop = parser.add_argument_group("the loop")
    loop.add_argument(
        "--iterations",
        metavar="N",
        type=_iterations,
        default=defaults.iterations,
        help="how many rounds of generation (default %(default)s)",
    )
    loop.add_argument(
        "--policy",
        choices=POLICIES,
        default=defaults.policy,
        help="accumulate: the human texts and every version stay searchable; replace: after iteration 0 only the newest version of each tavern (the human texts leave the view); replace-keep-human: the newest versions plus the human texts; gated: like accumulate, but a new version is written back only if its gate score (no human reference read) is not below the tavern's current one; no-feedback: the control, retrieval sees the human texts only (default %(default)s)",
    )
    loop.add_argument(
        "--k",
        type=_k,
        default=defaults.k,
        help=f"descriptions retrieved as context per generation, at most {MAX_K} (default %(default)s)",
    )
    who = loop.add_mutually_exclusive_group()
    who.add_argument(
        "--n-taverns",
        metavar="N",
        type=_positive_int,
        default=None,
        help="the first N taverns of data/taverns.csv (default: all)",
    )
    who.add_argument(
        "--taverns",
        metavar="IDS",
        type=_tavern_list,
        default=None,
        help="comma-separated tavern ids, e.g. prancing-pony,green-dragon",
    )
    loop.add_argument(
        "--sources",
        choices=SOURCES,
        default=defaults.sources,
        help="what retrieval may return: all, human references only, generated texts only, or this run's generated texts (default %(default)s)",
    )
    loop.add_argument(
        "--query-mode",
        choices=QUERY_MODES,
        default=defaults.query_mode,
        help="what a tavern's retrieval searches with: self, its own newest version (its facts before it has one), or facts, always its name, location and visitor (default %(default)s)",
    )
    loop.add_argument(
        "--retriever",
        choices=RETRIEVERS,
        default=defaults.retriever,
        help="how contexts are searched: dense vectors, bm25 (Milvus full-text search) or hybrid (both, RRF); bm25 and hybrid need milvus-lite or Milvus 2.5+ (default %(default)s)",
    )
    loop.add_argument(
        "--exclude-own",
        action="store_true",
        help="retrieval never returns the tavern's own generated versions",
    )
    loop.add_argument(
        "--human-fraction",
        metavar="F",
        type=_fraction,
        default=defaults.human_fraction,
        help="share of the taverns whose human reference stays in the store, 0 to 1 (default %(default)s)",
    )
    loop.add_argument(
        "--context-chars",
        metavar="N",
        type=_context_chars,
        default=defaults.context_chars,
        help="each retrieved text is cut to this many characters in the prompt (default %(default)s)",
    )
    gen = parser.add_argument_group("generation and scoring")
    gen.add_argument(
        "--generator",
        choices=GENERATORS,
        default=None,
        help="auto: Claude when ANTHROPIC_API_KEY is set, else the offline model; claude; local (default: GFL_GENERATOR, else auto)",
    )
    gen.add_argument(
        "--temperature",
        metavar="T",
        type=_temperature,
        default=defaults.temperature,
        help="sampling temperature, 0 to 2 (default %(default)s; ignored by Claude on the current API)",
    )
    gen.add_argument(
        "--seed",
        metavar="S",
        type=_non_negative_int,
        default=None,
        help="run seed: every generation's seed derives from it (default: GFL_SEED, else 42)",
    )
    gen.add_argument(
        "--max-tokens",
        metavar="N",
        type=_max_tokens,
        default=None,
        help="cap on each generation (default: 150 for the local model, 600 for Claude)",
    )
    gen.add_argument(
        "--judge",
        choices=JUDGE_MODES,
        default=defaults.judge,
        help="LLM judge merged into the score: off, auto (Claude when a key is set), claude (default %(default)s)",
    )
    gen.add_argument(
        "--no-ratings", action="store_true", help="ignore human ratings in data/feedback/*.csv"
    )
    run = parser.add_argument_group("run and storage")
    run.add_argument(
        "--run-id",
        metavar="RUN_ID",
        default="",
        help="name of the run (folder and collection); default <policy>-s<seed>-<time>",
    )
    run.add_argument(
        "--resume",
        metavar="RUN_ID",
        default=None,
        help="continue this run from its ledger (other loop options are taken from its params.json)",
    )
    run.add_argument(
        "--fresh", action="store_true", help="delete an existing run with the same --run-id first"
    )
    run.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="Milvus backend (default: GFL_MILVUS_BACKEND, else lite)",
    )
    run.add_argument(
        "--run-dir",
        metavar="DIR",
        default=None,
        help="where runs and Milvus data live (default: GFL_RUN_DIR, else runs/)",
    )
    run.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (one line per iteration is still printed)",
    )
    return parser


# Options that decide what a run produces: fixed by its params.json, so not allowed on --resume.
_RESUME_FIXED = frozenset(
    {
        "iterations", "policy", "k", "n_taverns", "taverns", "sources", "human_fraction",
        "context_chars", "generator", "temperature", "seed", "max_tokens", "judge", "no_ratings",
        "query_mode", "exclude_own", "retriever", "run_id", "fresh",
    }
)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """The command line. Exit codes: 0 done, 1 the run failed (message on stderr), 2 bad options."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    if args.resume:
        fixed = [
            a.option_strings[0]
            for a in parser._actions
            if a.dest in _RESUME_FIXED and getattr(args, a.dest) != a.default
        ]
        if fixed:
            parser.error(
                f"--resume takes the loop's options from the run's params.json; drop "
                f"{', '.join(fixed)} (only --backend, --run-dir and --no-progress go with it)"
            )
    settings = settings_or_exit(
        milvus_backend=args.backend, run_dir=args.run_dir, generator=args.generator
    )
    common = {"progress": not args.no_progress}
    try:
        if args.resume:
            run = resume(args.resume, settings, backend=args.backend, **common)
        else:
            params = LoopParams(
                iterations=args.iterations,
                policy=args.policy,
                k=args.k,
                n_taverns=args.n_taverns,
                taverns=args.taverns or (),
                sources=args.sources,
                human_fraction=args.human_fraction,
                generator=settings.generator,
                temperature=args.temperature,
                seed=args.seed if args.seed is not None else settings.seed,
                max_tokens=args.max_tokens,
                context_chars=args.context_chars,
                judge=args.judge,
                use_ratings=not args.no_ratings,
                query_mode=args.query_mode,
                exclude_own=args.exclude_own,
                retriever=args.retriever,
                run_id=args.run_id,
            )
            run = run_loop(params, settings, fresh=args.fresh, **common)
    except KeyboardInterrupt:
        print(
            "\ninterrupted: continue with --resume <run id> (nothing ledgered is lost)",
            file=sys.stderr,
        )
        return 130
    except Exception as exc:
        known = (
            LoopError,
            LedgerError,
            MilvusServerError,
            GenerationError,
            DataError,
            RatingsError,
        )
        if isinstance(exc, known):
            print(f"error: {exc}", file=sys.stderr)
            return 1
        raise
    print(run.summary())
    print(f"run folder: {show_path(Path(run.folder))}")
    return 0
