"""The generative feedback loop: retrieve, generate, evaluate, write back, and again.

This module is the facade notebooks, the README and ``python -m helpers.feedback_loop`` use; the
code lives in the :mod:`helpers.loop` package (its docstring explains the design). Every name
below is re-exported unchanged.
"""

from __future__ import annotations

import sys

from helpers.loop.api import resume, run_folder_lock, run_loop
from helpers.loop.cli import build_parser, main
from helpers.loop.engine import FeedbackLoop, GenerationRequest
from helpers.loop.params import (
    CONTEXT_CHARS_RANGE,
    DEFAULT_CONTEXT_CHARS,
    DEFAULT_K,
    HUMAN_ITERATION,
    ITERATIONS_RANGE,
    JUDGE_MODES,
    LOOP_TEXT_LIMITS,
    MAX_K,
    POLICIES,
    QUERY_MODES,
    SOURCES,
    LoopError,
    LoopParams,
    LoopParamsError,
    RunManifest,
    ViewRule,
    collection_name,
    default_run_id,
    generation_seed,
    human_subset,
    row_id,
    view_rule,
)
from helpers.loop.prompt import (
    CHARS_PER_TOKEN,
    CONTEXT_INTRO,
    build_prompt,
    check_prompt_fits,
    clip,
    intro_query,
)
from helpers.loop.results import LoopRun, compare_metrics, list_runs, load_run
from helpers.loop.store import (
    SEARCH_EF,
    Milvus,
    load_with_retry,
    loop_schema,
    open_loop_collection,
    view_filter,
)
from helpers.run_analysis import METRIC_MEANS, iteration_metrics, summary_line

_CHARS_PER_TOKEN = CHARS_PER_TOKEN  # the name bench/generation.py reads

__all__ = [
    "CHARS_PER_TOKEN",
    "CONTEXT_CHARS_RANGE",
    "CONTEXT_INTRO",
    "DEFAULT_CONTEXT_CHARS",
    "DEFAULT_K",
    "HUMAN_ITERATION",
    "ITERATIONS_RANGE",
    "JUDGE_MODES",
    "LOOP_TEXT_LIMITS",
    "MAX_K",
    "METRIC_MEANS",
    "POLICIES",
    "QUERY_MODES",
    "SEARCH_EF",
    "SOURCES",
    "FeedbackLoop",
    "GenerationRequest",
    "LoopError",
    "LoopParams",
    "LoopParamsError",
    "LoopRun",
    "Milvus",
    "RunManifest",
    "ViewRule",
    "build_parser",
    "build_prompt",
    "check_prompt_fits",
    "clip",
    "collection_name",
    "compare_metrics",
    "default_run_id",
    "generation_seed",
    "human_subset",
    "intro_query",
    "iteration_metrics",
    "list_runs",
    "load_run",
    "load_with_retry",
    "loop_schema",
    "main",
    "open_loop_collection",
    "resume",
    "row_id",
    "run_folder_lock",
    "run_loop",
    "summary_line",
    "view_filter",
    "view_rule",
]  # fmt: skip

if __name__ == "__main__":
    sys.exit(main())
