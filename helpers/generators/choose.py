"""Which generator a run uses, and one line saying why."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from helpers.generators.base import GenerationError, Generator, MissingAPIKeyError
from helpers.generators.claude import ClaudeGenerator
from helpers.generators.local import LocalGenerator
from helpers.settings import Settings


def make_generator(
    settings: Settings,
    *,
    announce: Callable[[str], object] | None = print,
    claude_options: dict[str, Any] | None = None,
    local_options: dict[str, Any] | None = None,
) -> Generator:
    """The generator that ``settings.generator`` asks for, announced in one line.

    ``announce`` is where that line goes: ``print`` by default, because notebooks show it (and
    tests/test_notebooks.py checks it); a logger's ``info`` for library callers, None for nothing.

    ``auto``: Claude when ANTHROPIC_API_KEY is set, otherwise the offline model. ``claude``
    without a key is an error, never a silent fallback. ``local``: the offline model.
    """
    choice = settings.generator
    if choice == "auto":
        if settings.has_anthropic_key:
            kind, why = (
                "claude",
                "ANTHROPIC_API_KEY is set; GFL_GENERATOR=local for the offline model",
            )
        else:
            kind, why = "local", "no ANTHROPIC_API_KEY set; set it to use Claude"
    elif choice == "claude":
        if not settings.has_anthropic_key:
            raise MissingAPIKeyError(
                "GFL_GENERATOR=claude but ANTHROPIC_API_KEY is not set. Set ANTHROPIC_API_KEY, or "
                "use GFL_GENERATOR=auto or local for the offline model."
            )
        kind, why = "claude", "GFL_GENERATOR=claude"
    elif choice == "local":
        kind, why = "local", "GFL_GENERATOR=local"
    else:
        raise GenerationError(f"Unknown generator {choice!r}; use one of: auto, claude, local.")

    generator: Generator
    if kind == "claude":
        generator = ClaudeGenerator.from_settings(settings, **(claude_options or {}))
    else:
        options = {
            "default_seed": settings.seed, "n_threads": settings.local_threads,
            "workers": settings.local_workers, **(local_options or {}),
        }  # fmt: skip
        generator = LocalGenerator(**options)
    if announce is not None:
        announce(f"generator: {generator.name} {generator.model} ({why})")
    return generator
