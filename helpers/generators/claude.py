"""Claude through the official ``anthropic`` SDK, one request or many at once.

:meth:`ClaudeGenerator.generate` is one ``client.messages.create`` call with the SDK's own
retries and timeouts. :meth:`ClaudeGenerator.generate_many` sends an iteration's requests
concurrently (at most ``concurrency`` in flight, ``GFL_CLAUDE_CONCURRENCY``, default 8) on one
SDK client. When the API says 429 (rate limited) or 529 (overloaded), a shared pause, applied
as an SDK middleware to every attempt, holds back *all* the threads, not only the one that was
told: ``retry-after`` is honoured, 529 without it backs off exponentially. Each request's retry is
still the SDK's own, so a request is sent again only after an error answer: no generation is
lost or made twice, and the ledger records each one once.

Temperature: the SDK pinned here (anthropic 2.x) speaks API version 2026-10-21, which removed
``temperature``/``top_p``/``top_k``: the SDK no longer takes the argument and the API answers 400
if it is smuggled in. So Claude runs at the model's own sampling and
:attr:`~helpers.generators.base.Generation.temperature` is ``None`` for it.
``send_temperature=True`` still passes it (through ``extra_body``) for a gateway or an older API
version that accepts it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import Any

from helpers.generators.base import (
    CLAUDE_DESCRIPTION_MAX_TOKENS,
    AuthenticationFailedError,
    ConnectionFailedError,
    GenerateManyError,
    Generation,
    GenerationError,
    GenerationRequest,
    MalformedResponseError,
    MissingAPIKeyError,
    OverloadedError,
    RateLimitedError,
    RequestRejectedError,
    RequestTimeoutError,
    ServerError,
    TokenLedger,
    generate_sequentially,
    scrub,
    trim_to_last_sentence,
)
from helpers.settings import DEFAULT_CLAUDE_MODEL, Secret, Settings

log = logging.getLogger(__name__)

ANTHROPIC_DEFAULT_BASE_URL = "https://api.anthropic.com"
CLAUDE_MAX_RETRIES = 3
CLAUDE_TIMEOUT_S = 60.0
CLAUDE_CONCURRENCY = 8
MAX_PAUSE_S = 60.0  # a retry-after longer than this is capped (the SDK caps its own wait too)
OVERLOAD_BACKOFF_S = 0.5  # first pause after a 529 without retry-after; doubles, up to 8 s


def _every_request_fails(exc: GenerationError) -> bool:
    """A refused key or an unknown model (404): every other request would meet it too, so the
    rest of a batch is not sent. A 400 for one prompt (too long, say) concerns that prompt only."""
    return isinstance(exc, AuthenticationFailedError | MissingAPIKeyError) or (
        isinstance(exc, RequestRejectedError) and exc.status_code == 404
    )


# ---------------------------------------------------------------------------------------------
# The shared pause


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds the API asked us to wait (``retry-after-ms``, else ``retry-after`` in seconds),
    or None. Dates in ``retry-after`` are not sent by the Messages API and are ignored."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        raw = headers.get(name) if headers is not None else None
        try:
            value = float(raw) / scale
        except (TypeError, ValueError):
            continue
        if value >= 0:
            return min(value, MAX_PAUSE_S)
    return None


class Throttle:
    """One pause shared by every thread that sends through one client.

    Used as SDK middleware (it runs once per HTTP attempt, inside the SDK's retry loop): before
    an attempt it waits until the pause is over; after a 429 or 529 it extends the pause to
    ``retry-after`` from now (or, for a 529 without it, an exponential back-off). So after the API
    says "slow down", no thread sends anything until the time it named.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._not_before = 0.0
        self._overloads = 0  # 529s in a row, for the back-off
        # (when the 429/529 was seen, until when everyone waits), for logs, tests and benchmarks
        self.events: list[tuple[float, float]] = []

    @property
    def pauses(self) -> int:
        """How many 429/529 answers this throttle has seen."""
        return len(self.events)

    def wait(self) -> None:
        while True:
            with self._lock:
                delay = self._not_before - self._clock()
            if delay <= 0:
                return
            time.sleep(delay)

    def observe(self, status: int, headers: Any) -> None:
        if status not in (429, 529):
            if status < 400:
                with self._lock:
                    self._overloads = 0
            return
        after = retry_after_seconds(headers)
        with self._lock:
            if after is None:
                after = min(OVERLOAD_BACKOFF_S * 2**self._overloads, 8.0)
            if status == 529:
                self._overloads += 1
            now = self._clock()
            self._not_before = max(self._not_before, now + after)
            self.events.append((now, self._not_before))
        log.info("claude answered %d: every request waits %.2f s", status, after)

    def __call__(self, request: Any, call_next: Callable[[Any], Any]) -> Any:
        self.wait()
        response = call_next(request)
        self.observe(int(response.status_code), response.headers)
        return response


# ---------------------------------------------------------------------------------------------
# The SDK's errors as ours: (which exceptions, our class, what to say), first match wins.
# Messages are format strings over: detail, ref, retries, model, base_url, timeout, why,
# api_message, exc_type, exc.

_Match = Callable[[Any, Exception, "int | None"], bool]


def _of(*names: str) -> _Match:
    def match(sdk: Any, exc: Exception, status: int | None) -> bool:
        types = tuple(getattr(sdk, n) for n in names if hasattr(sdk, n))
        return bool(types) and isinstance(exc, types)

    return match


def _status(test: Callable[[int], bool], *names: str) -> _Match:
    by_type = _of(*names)
    return lambda sdk, exc, status: (
        by_type(sdk, exc, status) or (status is not None and test(status))
    )


_TRANSLATIONS: tuple[tuple[_Match, type[GenerationError], str], ...] = (
    (
        _of("AuthenticationError", "PermissionDeniedError"),
        AuthenticationFailedError,
        "Claude refused the API key ({detail}){ref}. Check ANTHROPIC_API_KEY: it must be a valid, "
        "active key with access to {model!r} at {base_url}. Or unset it to use the offline model.",
    ),
    (
        _of("RateLimitError"),
        RateLimitedError,
        "Claude rate limited the request ({detail}) and it still failed {retries}{ref}. Wait a "
        "minute and run again, lower the concurrency (GFL_CLAUDE_CONCURRENCY) or the number of "
        "calls per run, or allow more retries (max_retries).",
    ),
    (
        _status(lambda s: s == 529, "OverloadedError"),
        OverloadedError,
        "Claude's API is overloaded ({detail}), still {retries}{ref}. This is on Anthropic's "
        "side: wait a few minutes and retry, or use the offline model (GFL_GENERATOR=local).",
    ),
    (
        _status(lambda s: s >= 500, "InternalServerError"),
        ServerError,
        "Claude's API answered with a server error ({detail}), still {retries}{ref}. Usually "
        "temporary: retry later (status.anthropic.com), or use the offline model.",
    ),
    (
        _of("APITimeoutError"),
        RequestTimeoutError,
        "No answer from Claude within {timeout:g} s, {retries}. Check your network connection "
        "and the base URL ({base_url}), or allow a longer timeout.",
    ),
    (
        _of("APIConnectionError"),
        ConnectionFailedError,
        "Could not connect to Claude's API at {base_url}{why}, {retries}. Check your network "
        "connection, proxy, and ANTHROPIC_BASE_URL (unset it for the real API).",
    ),
    (
        _of("NotFoundError"),
        RequestRejectedError,
        "Claude's API said not found ({detail}){ref}. Most often the model name is unknown or "
        "retired: check GFL_CLAUDE_MODEL (now {model!r}), and ANTHROPIC_BASE_URL.",
    ),
    (
        _of("APIStatusError"),
        RequestRejectedError,
        "Claude's API rejected the request ({detail}){ref}. Fix the request (prompt length, "
        "max_tokens, model parameters) before retrying.",
    ),
    (
        _of("APIResponseValidationError"),
        MalformedResponseError,
        "Claude's answer did not have the expected shape ({api_message}). Check that {base_url} "
        "is the Anthropic API or a compatible proxy, then retry.",
    ),
    (
        lambda sdk, exc, status: True,
        GenerationError,
        "Claude call failed ({exc_type}: {exc}). Retry, or use the offline model.",
    ),
)


# ---------------------------------------------------------------------------------------------


class ClaudeGenerator:
    """Claude through ``anthropic.Anthropic().messages.create``.

    Retries (429, 5xx, 529, connection errors; honouring ``retry-after``) and timeouts are the
    SDK's own, set by ``max_retries`` and ``timeout``; the :class:`Throttle` middleware makes
    every thread of :meth:`generate_many` respect a pause the API asked for. The key is held as a
    :class:`~helpers.settings.Secret` and revealed only to build the SDK client.
    """

    name = "claude"

    def __init__(
        self,
        *,
        api_key: Secret | str,
        model: str = DEFAULT_CLAUDE_MODEL,
        base_url: str = "",
        max_retries: int = CLAUDE_MAX_RETRIES,
        timeout: float = CLAUDE_TIMEOUT_S,
        concurrency: int = CLAUDE_CONCURRENCY,
        send_temperature: bool = False,
        description_max_tokens: int = CLAUDE_DESCRIPTION_MAX_TOKENS,
        default_seed: int = 42,
    ) -> None:
        self._api_key = api_key if isinstance(api_key, Secret) else Secret(str(api_key or ""))
        if not self._api_key:
            raise MissingAPIKeyError(
                "Claude needs an API key and ANTHROPIC_API_KEY is not set. Set it "
                "(export ANTHROPIC_API_KEY=...) or use the offline model (GFL_GENERATOR=local)."
            )
        if int(concurrency) < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency!r}")
        import anthropic  # here, so importing this module stays cheap for local-only runs

        self.model = model
        # An explicit URL, so the SDK does not look for ANTHROPIC_BASE_URL itself: settings.py
        # already read it, and it is the one place that reads the environment.
        self.base_url = (base_url or ANTHROPIC_DEFAULT_BASE_URL).rstrip("/")
        self.max_retries = max_retries
        self.timeout = timeout
        self.concurrency = int(concurrency)
        self.send_temperature = send_temperature
        self.description_max_tokens = description_max_tokens
        self.default_seed = default_seed
        self.usage = TokenLedger()
        self.throttle = Throttle()
        self._anthropic = anthropic
        self._client = anthropic.Anthropic(
            api_key=self._api_key.reveal(),
            base_url=self.base_url,
            max_retries=max_retries,
            timeout=timeout,
            middleware=[self.throttle],
        )

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> ClaudeGenerator:
        # an explicit option wins over the setting (a resumed run keeps its own model)
        options.setdefault("default_seed", settings.seed)
        options.setdefault("concurrency", settings.claude_concurrency)
        options.setdefault("model", settings.claude_model)
        options.setdefault("base_url", settings.anthropic_base_url)
        return cls(api_key=settings.anthropic_api_key, **options)

    def __repr__(self) -> str:
        return (
            f"ClaudeGenerator(model={self.model!r}, base_url={self.base_url!r}, "
            f"max_retries={self.max_retries}, timeout={self.timeout}, "
            f"concurrency={self.concurrency}, api_key='***')"
        )

    def generate(
        self,
        prompt: str,
        *,
        system: str | None = None,
        max_tokens: int,
        temperature: float,
        seed: int,
    ) -> Generation:
        """One Messages API call. ``seed`` is ignored (the API has none); ``temperature`` is
        sent only with ``send_temperature=True`` (see the module docstring)."""
        kwargs: dict[str, Any] = {
            "model": self.model,
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": prompt}],
        }
        if system:
            kwargs["system"] = system
        if self.send_temperature:
            kwargs["extra_body"] = {"temperature": temperature}

        error: GenerationError | None = None
        message: Any = None
        start = time.perf_counter()
        try:
            message = self._client.messages.create(**kwargs)
        except self._anthropic.AnthropicError as exc:
            error = self._translate(exc)
        except ValueError as exc:  # the SDK lets json.JSONDecodeError through for a broken body
            error = MalformedResponseError(
                scrub(
                    f"Claude's answer was not valid JSON ({type(exc).__name__}: {exc}). "
                    f"Check that the base URL {self.base_url} is the Anthropic API or a "
                    "compatible proxy, then retry.",
                    self._api_key,
                )
            )
        latency = time.perf_counter() - start
        if error is None:
            try:
                return self._to_generation(message, latency, temperature)
            except GenerationError as exc:
                error = exc
        # Raised outside the except blocks, so the SDK's exception (whose request carries the
        # key in its headers) is neither the cause nor the context of ours.
        self.usage.record_failure()
        log.info("claude call failed: %s", error)
        raise error

    def generate_many(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """``requests`` answered in their order, at most :attr:`concurrency` in flight.

        Each request is one :meth:`generate` (the SDK's retries, the shared pause). If some fail
        for good, the others still finish and :class:`GenerateManyError` carries every
        generation made; after an error that every request would meet (bad key, rejected
        request) the requests not yet sent are not sent.
        """
        requests = list(requests)
        if self.concurrency == 1 or len(requests) <= 1:
            return generate_sequentially(self, requests)
        done: list[Generation | None] = [None] * len(requests)
        errors: dict[int, GenerationError] = {}
        workers = min(self.concurrency, len(requests))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="claude") as pool:
            futures: dict[Future[Generation], int] = {
                pool.submit(
                    self.generate,
                    r.prompt,
                    system=r.system,
                    max_tokens=r.max_tokens,
                    temperature=r.temperature,
                    seed=r.seed,
                ): i
                for i, r in enumerate(requests)
            }
            for future in as_completed(futures):
                i = futures[future]
                if future.cancelled():
                    continue
                try:
                    done[i] = future.result()
                except GenerationError as exc:
                    errors[i] = exc
                    if _every_request_fails(exc):
                        for other in futures:
                            other.cancel()
        if errors:
            raise GenerateManyError(done, errors)
        return [g for g in done if g is not None]

    # -- internals ----------------------------------------------------------------------------

    def _to_generation(self, message: Any, latency: float, temperature: float) -> Generation:
        content = getattr(message, "content", None)
        if not isinstance(content, list):
            shape = (
                "no 'content'"
                if hasattr(message, "content")
                else f"a {type(message).__name__}, not a message"
            )
            raise MalformedResponseError(
                f"Claude's answer had {shape}, so there is no text to use. Check that the base URL "
                f"{self.base_url} is the Anthropic API or a compatible proxy, then retry."
            )
        texts = [
            block.text
            for block in content
            if getattr(block, "type", None) == "text"
            and isinstance(getattr(block, "text", None), str)
        ]
        if not texts:
            kinds = (
                ", ".join(str(getattr(b, "type", type(b).__name__)) for b in content) or "nothing"
            )
            raise MalformedResponseError(
                f"Claude's answer had no text block (it held: {kinds}; stop_reason "
                f"{getattr(message, 'stop_reason', None)!r}). Retry; if it persists, check the "
                "prompt and model (GFL_CLAUDE_MODEL)."
            )
        stop_reason = getattr(message, "stop_reason", None)
        text = "".join(texts)
        if stop_reason == "max_tokens":
            text = trim_to_last_sentence(text)
        usage = getattr(message, "usage", None)
        generation = Generation(
            text=text,
            model=str(getattr(message, "model", None) or self.model),
            generator=self.name,
            input_tokens=int(getattr(usage, "input_tokens", 0) or 0),
            output_tokens=int(getattr(usage, "output_tokens", 0) or 0),
            latency_s=latency,
            stop_reason=stop_reason,
            temperature=temperature if self.send_temperature else None,
            seed=None,  # the Messages API has no seed
        )
        self.usage.record(generation)
        log.debug(
            "claude %s: %d in / %d out tokens, %.2f s, stop %s",
            generation.model,
            generation.input_tokens,
            generation.output_tokens,
            latency,
            stop_reason,
        )
        return generation

    def _translate(self, exc: Exception) -> GenerationError:
        """The SDK's exception as one of ours (the first matching row of the table), with a
        message that says what to do and never the key."""
        status = getattr(exc, "status_code", None)
        request_id = getattr(exc, "request_id", None)
        api_message = getattr(exc, "api_message", None) or getattr(exc, "message", None) or str(exc)
        api_type = getattr(exc, "type", None)
        cause = exc.__cause__ or exc.__context__
        fields = {
            "detail": f"HTTP {status}" + (f" {api_type}" if api_type else "") + f": {api_message}",
            "ref": f" (request id {request_id})" if request_id else "",
            "retries": f"after {self.max_retries} retr{'y' if self.max_retries == 1 else 'ies'}",
            "model": self.model,
            "base_url": self.base_url,
            "timeout": self.timeout,
            "why": f" ({type(cause).__name__}: {cause})" if cause else "",
            "api_message": api_message,
            "exc_type": type(exc).__name__,
            "exc": exc,
        }
        cls, template = next(
            (cls, template)
            for match, cls, template in _TRANSLATIONS
            if match(self._anthropic, exc, status)
        )  # the last row matches everything
        text = template.format(**fields)
        return cls(scrub(text, self._api_key), status_code=status, request_id=request_id)
