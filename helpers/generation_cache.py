"""A generator that answers a request it has seen before from a JSON Lines file: the one
generation cache of the kit (notebooks 04-05 read their descriptions back through it, the policy
sweep of notebook 08 shares identical requests between runs).

Why a file: generation is the slow and (with Claude) the paid step. Each answer is appended the
moment it arrives, so a re-run notebook, or a second notebook that needs the same texts, reads
them back instead of paying again, and a kernel that dies half-way loses nothing generated. A
request is the same when its generator, model, prompt, system prompt, ``max_tokens``,
``temperature`` and ``seed`` are; a line cut short by a crash is ignored (that request is simply
generated again).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Any

from helpers.generators import Generation, Generator, LocalGenerator

__all__ = ["CachedGenerator", "cache_path", "context_window"]


def cache_path(folder: Path, generator: Generator, prefix: str = "") -> Path:
    """``<folder>/<prefix><generator>-<model>.jsonl``, the model name made file-safe."""
    safe_model = re.sub(r"[^A-Za-z0-9_.-]+", "-", generator.model)
    return Path(folder) / f"{prefix}{generator.name}-{safe_model}.jsonl"


class CachedGenerator:
    """A :class:`~helpers.generators.Generator` that answers a request it has seen before from
    ``path`` and passes new ones to the generator it wraps (``inner``).

    ``usage`` is the wrapped generator's: it counts only tokens really spent. ``hits`` and
    ``misses`` count this object's answers.
    """

    def __init__(self, inner: Generator, path: Path) -> None:
        self.inner = inner
        self.path = Path(path)
        self.hits = 0
        self.misses = 0
        self._cache: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                    self._cache[record["key"]] = record["generation"]
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a crash: that request is generated again

    # the Generator interface, delegated
    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def model(self) -> str:
        return self.inner.model

    @property
    def usage(self) -> Any:
        return self.inner.usage

    @property
    def description_max_tokens(self) -> int:
        return self.inner.description_max_tokens

    @property
    def default_seed(self) -> int:
        return self.inner.default_seed

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r}, {len(self._cache)} stored)"

    def key(
        self, prompt: str, *, system: str | None, max_tokens: int, temperature: float, seed: int
    ) -> str:
        raw = json.dumps(
            [self.inner.name, self.inner.model, prompt, system, int(max_tokens),
             float(temperature), int(seed)]
        )  # fmt: skip
        return hashlib.sha256(raw.encode()).hexdigest()

    def generate(
        self,
        prompt: str,
        *,
        system: str | None = None,
        max_tokens: int,
        temperature: float,
        seed: int,
    ) -> Generation:
        key = self.key(
            prompt, system=system, max_tokens=max_tokens, temperature=temperature, seed=seed
        )
        if key in self._cache:
            self.hits += 1
            return Generation(**self._cache[key])
        generation = self.inner.generate(
            prompt, system=system, max_tokens=max_tokens, temperature=temperature, seed=seed
        )
        self.misses += 1
        record = dataclasses.asdict(generation)
        self._cache[key] = record
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"key": key, "generation": record}) + "\n")
            fh.flush()
        return generation


def context_window(generator: Generator) -> int | None:
    """The model's context window in tokens when it is small enough to matter (the local
    model's ``n_ctx``), else None (Claude)."""
    if isinstance(generator, CachedGenerator):
        return context_window(generator.inner)
    if isinstance(generator, LocalGenerator):
        return generator.n_ctx
    return None
