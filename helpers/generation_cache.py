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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from helpers.generators import (
    GenerateManyError,
    Generation,
    GenerationRequest,
    Generator,
    LocalGenerator,
)

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
    def text_settings(self) -> dict[str, Any] | None:
        return getattr(self.inner, "text_settings", None)

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
        # the settings that decide a text besides the request (the local model's threads)
        settings = getattr(self.inner, "text_settings", None)
        raw = json.dumps(
            [self.inner.name, self.inner.model, prompt, system, int(max_tokens),
             float(temperature), int(seed), *([settings] if settings else [])],
            sort_keys=True,
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
        self._store(key, generation)
        return generation

    def is_cached(self, request: GenerationRequest) -> bool:
        """Whether ``request`` would be answered from the file."""
        return self._request_key(request) in self._cache

    def _request_key(self, request: GenerationRequest) -> str:
        return self.key(
            request.prompt, system=request.system, max_tokens=request.max_tokens,
            temperature=request.temperature, seed=request.seed,
        )  # fmt: skip

    def generate_many(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """Answer the requests seen before from the file and send only the others, together and
        in order, to the wrapped generator's ``generate_many`` (so its batching or concurrency
        still applies). Every answer is stored as soon as the batch returns; if part of it fails,
        the answers that did arrive are stored too and the error is raised with positions in
        ``requests``."""
        keys = [self._request_key(r) for r in requests]
        out: list[Generation | None] = [None] * len(requests)
        missing: list[int] = []
        for i, key in enumerate(keys):
            if key in self._cache:
                self.hits += 1
                out[i] = Generation(**self._cache[key])
            else:
                missing.append(i)
        if missing:
            try:
                fresh: Sequence[Generation | None] = self.inner.generate_many(
                    [requests[i] for i in missing]
                )
                error = None
            except GenerateManyError as exc:
                fresh, error = exc.generations, exc
            for i, generation in zip(missing, fresh, strict=False):
                if generation is not None:
                    self._store(keys[i], generation)
                    out[i] = generation
            if error is not None:
                raise GenerateManyError(
                    out, {missing[j]: e for j, e in error.errors.items()}
                ) from None
        return [g for g in out if g is not None]

    def _store(self, key: str, generation: Generation) -> None:
        self.misses += 1
        record = dataclasses.asdict(generation)
        self._cache[key] = record
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"key": key, "generation": record}) + "\n")
            fh.flush()


def context_window(generator: Generator) -> int | None:
    """The model's context window in tokens when it is small enough to matter (the local
    model's ``n_ctx``), else None (Claude)."""
    if isinstance(generator, CachedGenerator):
        return context_window(generator.inner)
    if isinstance(generator, LocalGenerator):
        return generator.n_ctx
    return None
