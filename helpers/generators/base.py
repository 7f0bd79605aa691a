"""What every generator shares: the result type, the request type, the interface, the errors,
the token ledger, sentence trimming and the article's prompt.

Nothing here imports the ``anthropic`` SDK or llama.cpp, so a module that only needs the types
stays cheap to import.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from helpers.settings import Secret

log = logging.getLogger(__name__)

GENERATOR_KINDS = ("claude", "local")

CLAUDE_DESCRIPTION_MAX_TOKENS = 600  # ~2,400-2,700 characters: fits the article's VARCHAR(3000)
LOCAL_DESCRIPTION_MAX_TOKENS = 230  # SmolLM2 ignores word limits; ~160-175 words

ARTICLE_PROMPT = (
    "Write a vivid description for a tavern named {name}, located in {location}, "
    "known for a visit by {famous_visitor}."
)

# USD per million tokens (input, output), list prices when this was written; check
# https://www.anthropic.com/pricing before quoting a cost.
PRICES_PER_MTOK: dict[str, tuple[float, float]] = {
    "claude-sonnet-4-5": (3.0, 15.0),
    "claude-haiku-4-5": (1.0, 5.0),
    "claude-opus-4-1": (15.0, 75.0),
    "claude-3-opus-20240229": (15.0, 75.0),
}


# ---------------------------------------------------------------------------------------------
# What a generator is asked and what it returns


@dataclass(frozen=True)
class GenerationRequest:
    """One request: exactly the arguments :meth:`Generator.generate` takes, as a value, so a
    caller can hand a generator a whole iteration's requests at once (:meth:`generate_many`)."""

    prompt: str
    max_tokens: int
    temperature: float
    seed: int
    system: str | None = None


@dataclass(frozen=True)
class Generation:
    """One generated text and what it took to make it."""

    text: str
    model: str
    generator: str  # 'claude' | 'local'
    input_tokens: int
    output_tokens: int  # tokens generated (and billed), including any trimmed tail
    latency_s: float
    stop_reason: str | None = None  # 'end_turn', 'max_tokens', ... (local finish reasons mapped)
    temperature: float | None = None  # as applied; None = the model's own sampling (Claude)
    seed: int | None = None  # as applied; None = not supported (Claude)

    @property
    def truncated(self) -> bool:
        """The model hit max_tokens (the text was then cut back to its last full sentence)."""
        return self.stop_reason == "max_tokens"


@runtime_checkable
class Generator(Protocol):
    """What every notebook and the feedback loop use."""

    name: str  # 'claude' | 'local'
    model: str
    usage: TokenLedger
    description_max_tokens: int
    default_seed: int

    def generate(
        self,
        prompt: str,
        *,
        system: str | None = None,
        max_tokens: int,
        temperature: float,
        seed: int,
    ) -> Generation: ...

    def generate_many(self, requests: Sequence[GenerationRequest]) -> list[Generation]: ...


def generate_sequentially(
    generator: Generator, requests: Sequence[GenerationRequest]
) -> list[Generation]:
    """``requests`` one after another through ``generator.generate``, in order.

    The reference behaviour of :meth:`Generator.generate_many`: a wrapper (a cache, say) that
    has no faster way can use it as its own ``generate_many``. On the first failure it raises
    :class:`GenerateManyError` holding the generations already made, so none is lost.
    """
    done: list[Generation | None] = [None] * len(requests)
    for i, request in enumerate(requests):
        try:
            done[i] = generator.generate(
                request.prompt,
                system=request.system,
                max_tokens=request.max_tokens,
                temperature=request.temperature,
                seed=request.seed,
            )
        except GenerationError as exc:
            raise GenerateManyError(done, {i: exc}) from None
    return [g for g in done if g is not None]


class SequentialGenerateMany:
    """Mixin: ``generate_many`` as :func:`generate_sequentially` (the default)."""

    def generate_many(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """``requests`` answered in order, one after another; see :func:`generate_sequentially`."""
        return generate_sequentially(self, list(requests))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Errors


class GenerationError(RuntimeError):
    """Generation failed; the message says what happened and what to do about it."""

    def __init__(
        self, message: str, *, status_code: int | None = None, request_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.request_id = request_id


class GenerateManyError(GenerationError):
    """Some requests of a :meth:`~Generator.generate_many` call failed.

    ``generations[i]`` is the generation for request ``i``, or None where it failed or was not
    attempted; ``errors`` maps the failed requests' positions to their errors. The successful
    generations are here so a caller can keep (ledger) them: nothing already paid for is lost.
    """

    def __init__(
        self, generations: list[Generation | None], errors: dict[int, GenerationError]
    ) -> None:
        first = errors[min(errors)]
        made = sum(g is not None for g in generations)
        super().__init__(
            f"{len(errors)} of {len(generations)} request(s) failed, {made} succeeded (kept in "
            f".generations). First failure, request {min(errors)}: {first}",
            status_code=first.status_code,
            request_id=first.request_id,
        )
        self.generations = generations
        self.errors = errors


class MissingAPIKeyError(GenerationError):
    """Claude was asked for but no ANTHROPIC_API_KEY is set."""


class AuthenticationFailedError(GenerationError):
    """The API refused the key (401) or its permissions (403)."""


class RateLimitedError(GenerationError):
    """429, still after the SDK's retries."""


class ServerError(GenerationError):
    """5xx from the API, still after the SDK's retries."""


class OverloadedError(ServerError):
    """529 overloaded, still after the SDK's retries."""


class ConnectionFailedError(GenerationError):
    """The API could not be reached (network, DNS, proxy, wrong base URL)."""


class RequestTimeoutError(ConnectionFailedError):
    """No answer within the timeout."""


class RequestRejectedError(GenerationError):
    """Another 4xx: the request itself is wrong (unknown model, too long, bad parameter)."""


class MalformedResponseError(GenerationError):
    """An answer arrived but could not be read (invalid JSON, no text content)."""


class LocalModelError(GenerationError):
    """The local model could not be found, loaded or run."""


_KEY_PATTERN = re.compile(r"sk-ant-[A-Za-z0-9_\-]{4,}")


def scrub(text: str, *secrets: str) -> str:
    """``text`` with every given secret, and anything shaped like an Anthropic key, as '***'."""
    for secret in secrets:
        raw = secret.reveal() if isinstance(secret, Secret) else str(secret)
        if raw:
            text = text.replace(raw, "***")
    return _KEY_PATTERN.sub("***", text)


# ---------------------------------------------------------------------------------------------
# Token account


def estimate_cost(
    input_tokens: int, output_tokens: int, price_in_per_mtok: float, price_out_per_mtok: float
) -> float:
    """Cost in the prices' currency (usually USD) of so many tokens at per-million-token prices."""
    return input_tokens / 1e6 * price_in_per_mtok + output_tokens / 1e6 * price_out_per_mtok


@dataclass
class TokenLedger:
    """Running totals for one generator: calls, failures, tokens, time. Thread-safe."""

    calls: int = 0
    failures: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    latency_s: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record(self, generation: Generation) -> None:
        with self._lock:
            self.calls += 1
            self.input_tokens += generation.input_tokens
            self.output_tokens += generation.output_tokens
            self.latency_s += generation.latency_s

    def record_failure(self) -> None:
        with self._lock:
            self.failures += 1

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def cost(self, price_in_per_mtok: float, price_out_per_mtok: float) -> float:
        return estimate_cost(
            self.input_tokens, self.output_tokens, price_in_per_mtok, price_out_per_mtok
        )

    def as_dict(self) -> dict[str, float | int]:
        return {
            "calls": self.calls,
            "failures": self.failures,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "latency_s": round(self.latency_s, 3),
        }

    def summary(self, model: str | None = None) -> str:
        """One line for a notebook; with a model in :data:`PRICES_PER_MTOK`, an estimated cost."""
        line = (
            f"{self.calls} call(s), {self.input_tokens:,} input + {self.output_tokens:,} output tokens, "
            f"{self.latency_s:.1f} s generating"
        )
        if self.failures:
            line += f", {self.failures} failed"
        if model and model in PRICES_PER_MTOK:
            line += f", about ${self.cost(*PRICES_PER_MTOK[model]):.4f} at list prices"
        return line


# ---------------------------------------------------------------------------------------------
# Sentence trimming

_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s|$)")
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "mt", "jr", "sr", "vs", "e.g", "i.e"}


def trim_to_last_sentence(text: str) -> str:
    """Cut ``text`` back to its last complete sentence (ending in . ! ? or …, maybe quoted).

    Text without any sentence end is returned stripped but otherwise whole: a fragment is more
    useful than nothing. Common abbreviations ("Mr.", "St.") do not count as sentence ends.
    """
    stripped = text.strip()
    last_end = None
    for match in _SENTENCE_END.finditer(stripped):
        before = stripped[: match.start()].rsplit(None, 1)
        word = before[-1].lower() if before else ""
        if match.group().startswith(".") and word in _ABBREVIATIONS:
            continue
        last_end = match.end()
    return stripped if last_end is None else stripped[:last_end]


# ---------------------------------------------------------------------------------------------
# The article's prompt


def article_prompt(name: str, location: str, famous_visitor: str) -> str:
    """The article's prompt, word for word."""
    return ARTICLE_PROMPT.format(name=name, location=location, famous_visitor=famous_visitor)


def generate_description(
    generator: Generator,
    name: str,
    location: str,
    famous_visitor: str,
    *,
    max_tokens: int | None = None,
    temperature: float = 0.0,
    seed: int | None = None,
    system: str | None = None,
) -> Generation:
    """The article's ``generate_description``, for any generator. ``max_tokens`` and ``seed``
    default to the generator's own (:attr:`description_max_tokens`, :attr:`default_seed`)."""
    return generator.generate(
        article_prompt(name, location, famous_visitor),
        system=system,
        max_tokens=max_tokens if max_tokens is not None else generator.description_max_tokens,
        temperature=temperature,
        seed=seed if seed is not None else generator.default_seed,
    )
