"""A small HTTP server that speaks enough of Anthropic's Messages API to test the real SDK.

The real ``anthropic`` client is pointed at it with ``base_url``; nothing is mocked inside the
SDK, so retries, timeouts, headers and response parsing are the SDK's own. The server:

* answers ``POST /v1/messages`` with a proper message JSON (id, type, role, model, content,
  stop_reason, usage) by default;
* can be given a *script* of successive responses (:meth:`FakeAnthropic.script`): rate limited
  (429 with ``retry-after``), overloaded (529), server error (500), slow (longer than the client's
  timeout), malformed (invalid JSON, or JSON without ``content``), or any raw status/body;
* records every request it received (:attr:`FakeAnthropic.requests`: method, path, headers,
  body, arrival time) so a test can check what the SDK really sent, and every answer it gave
  (:attr:`FakeAnthropic.answers`: prompt, status, when);
* can answer like a real, loaded API for concurrency tests: a simulated latency on every
  message (:meth:`FakeAnthropic.set_latency`), answers that echo the prompt with token counts
  derived from it (:func:`echo`), a fixed answer for one prompt (:meth:`FakeAnthropic.answer_prompt`),
  and the peak number of message requests it was serving at once
  (:attr:`FakeAnthropic.peak_in_flight`).

It binds to 127.0.0.1 on a free port and runs in a daemon thread; use it as a context manager.
Retryable error responses carry ``retry-after-ms: 10`` so the SDK's retries take milliseconds.
"""

from __future__ import annotations

import dataclasses
import json
import random
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAST_RETRY_MS = "10"
FAKE_KEY = "sk-ant-test-SECRET-1234567890"  # what tests give the SDK as ANTHROPIC_API_KEY
TEST_MODEL = "claude-test-model"


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    received_at: float = 0.0  # time.monotonic() when the body was read

    @property
    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))


@dataclass(frozen=True)
class Answer:
    """What the server answered to one message request."""

    prompt: str | None  # the last user message's text
    status: int
    sent_at: float  # time.monotonic() just before the answer was written
    headers: dict[str, str]


@dataclass(frozen=True)
class Reply:
    """One scripted answer. ``body`` is sent as is when it is bytes, JSON-encoded otherwise;
    ``body=None`` with status 200 means "a normal message answering the request"."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    text: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    stop_reason: str = "end_turn"
    echo: bool = False  # answer "Answer: <prompt>", tokens = words of prompt / answer


# ---------------------------------------------------------------------------------------------
# Reply builders (what a test puts in a script)


def ok(
    text: str = "A warm, low-beamed common room smells of pipe-weed and ale.",
    *,
    input_tokens: int = 31,
    output_tokens: int = 17,
    stop_reason: str = "end_turn",
) -> Reply:
    return Reply(
        text=text, input_tokens=input_tokens, output_tokens=output_tokens, stop_reason=stop_reason
    )


def echo() -> Reply:
    """A normal answer that repeats the prompt: ``text`` is ``"Answer: " + prompt``, input tokens
    the prompt's words, output tokens the answer's words (so a test can compute exact totals)."""
    return Reply(echo=True)


def echo_tokens(prompt: str) -> tuple[int, int]:
    """(input, output) tokens that :func:`echo` reports for ``prompt``."""
    return len(prompt.split()), len(f"Answer: {prompt}".split())


def error(
    status: int, error_type: str, message: str, headers: dict[str, str] | None = None
) -> Reply:
    body = {"type": "error", "error": {"type": error_type, "message": message}}
    return Reply(
        status=status, body=body, headers={"request-id": "req_fake_err", **(headers or {})}
    )


def rate_limited(retry_after_s: float = 1, *, fast: bool = True) -> Reply:
    """429 with ``retry-after`` (seconds, what the real API sends). ``fast`` adds
    ``retry-after-ms: 10``, which takes precedence in the SDK and keeps tests fast; without it
    the client must really wait ``retry_after_s``."""
    headers = {"retry-after": f"{retry_after_s:g}"}
    if fast:
        headers["retry-after-ms"] = FAST_RETRY_MS
    return error(
        429,
        "rate_limit_error",
        "Number of request tokens has exceeded your per-minute rate limit.",
        headers,
    )


def overloaded() -> Reply:
    return error(529, "overloaded_error", "Overloaded", {"retry-after-ms": FAST_RETRY_MS})


def server_error(status: int = 500) -> Reply:
    return error(status, "api_error", "Internal server error", {"retry-after-ms": FAST_RETRY_MS})


def unauthorized() -> Reply:
    return error(401, "authentication_error", "invalid x-api-key")


def not_found_model(model: str) -> Reply:
    return error(404, "not_found_error", f"model: {model}")


def slow(delay_s: float, then: Reply | None = None) -> Reply:
    base = then or ok()
    return dataclasses.replace(base, delay_s=delay_s)


def invalid_json() -> Reply:
    return Reply(
        status=200, body=b'{"id": "msg_broken", "type": "message", "content": [', headers={}
    )


def missing_content() -> Reply:
    return Reply(
        status=200,
        body={
            "id": "msg_fake_nocontent",
            "type": "message",
            "role": "assistant",
            "model": "claude-fake",
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 5, "output_tokens": 0},
        },
    )


def no_text_block() -> Reply:
    return Reply(
        status=200,
        body={
            "id": "msg_fake_tool",
            "type": "message",
            "role": "assistant",
            "model": "claude-fake",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "x", "input": {}}],
            "stop_reason": "tool_use",
            "stop_sequence": None,
            "usage": {"input_tokens": 5, "output_tokens": 3},
        },
    )


def not_json_object() -> Reply:
    return Reply(status=200, body=["not", "a", "message"])


# ---------------------------------------------------------------------------------------------


class FakeAnthropic:
    """The fake Messages API server. ``with FakeAnthropic() as api: api.base_url``."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.answers: list[Answer] = []
        self.in_flight = 0
        self.peak_in_flight = 0
        self._script: deque[Reply] = deque()
        self._default = ok()
        self._by_prompt: dict[str, Reply] = {}
        self._latency: tuple[float, float] = (0.0, 0.0)
        self._rng = random.Random(0)
        self._lock = threading.Lock()
        self._release = threading.Event()  # set on stop: slow replies stop waiting
        self._counter = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- control ------------------------------------------------------------------------------

    def script(self, *replies: Reply) -> FakeAnthropic:
        """Answer the next requests with these replies, in order; then fall back to the default."""
        with self._lock:
            self._script.extend(replies)
        return self

    def set_default(self, reply: Reply) -> FakeAnthropic:
        with self._lock:
            self._default = reply
        return self

    def answer_prompt(self, prompt: str, reply: Reply) -> FakeAnthropic:
        """Always answer a request whose last user message is ``prompt`` with ``reply``."""
        with self._lock:
            self._by_prompt[prompt] = reply
        return self

    def set_latency(self, low_s: float, high_s: float, seed: int = 0) -> FakeAnthropic:
        """Delay every successful message answer by a uniform draw from [low_s, high_s]
        (seeded), like a real API's generation time. Error answers stay immediate."""
        with self._lock:
            self._latency = (low_s, high_s)
            self._rng = random.Random(seed)
        return self

    def reset(self) -> None:
        with self._lock:
            self._script.clear()
            self._default = ok()
            self._by_prompt.clear()
            self._latency = (0.0, 0.0)
            self.requests.clear()
            self.answers.clear()
            self.in_flight = 0
            self.peak_in_flight = 0

    @property
    def message_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.split("?")[0].endswith("/v1/messages")]

    @property
    def base_url(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> FakeAnthropic:
        handler = _make_handler(self)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fake-anthropic", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeAnthropic:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals ----------------------------------------------------------------------------

    def _next_reply(self, prompt: str | None) -> tuple[Reply, int, float]:
        """The reply, its number and its simulated latency (counted as in flight from here)."""
        with self._lock:
            self._counter += 1
            if prompt is not None and prompt in self._by_prompt:
                reply = self._by_prompt[prompt]
            else:
                reply = self._script.popleft() if self._script else self._default
            latency = self._rng.uniform(*self._latency) if reply.status == 200 else 0.0
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            return reply, self._counter, latency

    def _done(self, answer: Answer) -> None:
        with self._lock:
            self.in_flight -= 1
            self.answers.append(answer)

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)


def _prompt_of(request_json: Any) -> str | None:
    """The text of the last user message, or None."""
    try:
        content = request_json["messages"][-1]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) else None


def _message_body(reply: Reply, request_json: Any, number: int) -> dict[str, Any]:
    model = (
        request_json.get("model", "claude-fake")
        if isinstance(request_json, dict)
        else "claude-fake"
    )
    text, tokens_in, tokens_out = reply.text or "", reply.input_tokens, reply.output_tokens
    if reply.echo:
        prompt = _prompt_of(request_json) or ""
        text = f"Answer: {prompt}"
        tokens_in, tokens_out = echo_tokens(prompt)
    return {
        "id": f"msg_fake_{number:04d}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": reply.stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": tokens_in or 0, "output_tokens": tokens_out or 0},
    }


def _make_handler(api: FakeAnthropic) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
            return

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            api._record(
                RecordedRequest(
                    method="POST",
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                    received_at=time.monotonic(),
                )
            )
            if not self.path.split("?")[0].endswith("/v1/messages"):
                self._send(
                    404,
                    json.dumps(
                        {
                            "type": "error",
                            "error": {"type": "not_found_error", "message": "no such route"},
                        }
                    ).encode(),
                    {},
                )
                return
            try:
                request_json = json.loads(body or b"{}")
            except ValueError:
                request_json = {}
            prompt = _prompt_of(request_json)
            reply, number, latency = api._next_reply(prompt)
            if reply.delay_s or latency:
                api._release.wait(reply.delay_s + latency)
            if reply.status == 200 and reply.body is None:
                payload = json.dumps(_message_body(reply, request_json, number)).encode()
            elif isinstance(reply.body, bytes):
                payload = reply.body
            else:
                payload = json.dumps(reply.body).encode()
            headers = {"request-id": f"req_fake_{number:04d}", **reply.headers}
            api._done(Answer(prompt, reply.status, time.monotonic(), headers))
            self._send(reply.status, payload, headers)

        def _send(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
            try:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout test): nothing to answer

    return Handler


def closed_port_url() -> str:
    """A base URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
