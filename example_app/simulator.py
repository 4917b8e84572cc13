"""Simulated AI providers over real HTTP: one loopback port per provider, OpenAI's API.

    python -m example_app.simulator --ports openai=8101,anthropic=8102,google=8103,stripe=8104

Each provider port answers ``POST /v1/chat/completions`` (plain JSON, or server-sent
events with ``"stream": true``, the usage in a last chunk when
``stream_options.include_usage`` is set) and ``GET /v1/models``, the way OpenAI does:
headers ``x-ratelimit-remaining-requests`` / ``-tokens`` on every answer, 429s with
``retry-after`` when the per-minute budget is spent (or at ``--rate-limit-rate``), 5xx at
``--error-rate``. The time to the first token and the pace of the following ones come
from a per-provider profile (or ``--ttft`` / ``--tokens-per-second``), spread by
``--jitter`` and multiplied by ``--latency-scale``; a non-streamed answer takes as long
as its stream would have. The ``stripe`` port is a fake billing API
(``POST /v1/billing/meter_events``, failing at ``--billing-error-rate``).

Per request, headers force an outcome (the gateway forwards them from its clients):
``x-simulate-status`` (200..599), ``x-simulate-latency`` (seconds to the first token,
0..60), ``x-simulate-chunk-delay`` (seconds between streamed tokens, 0..5) and
``x-simulate-stream-error: true`` (the stream breaks after its first chunk). Tests make
the simulator deterministic with ``--jitter 0 --error-rate 0 --rate-limit-rate 0``.

Defaults come from the environment where the gateway's variables of the same meaning
exist (``GATEWAY_SIMULATED_LATENCY_SCALE``, ``GATEWAY_UPSTREAM_ERROR_RATE``,
``GATEWAY_BILLING_ERROR_RATE``, ``GATEWAY_SEED``), so ``scripts/run_example.sh`` shapes
both processes with one environment. Loopback addresses only; it exits with (or after)
the process that started it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HOST = "127.0.0.1"
MAX_BODY = 2 * 1024 * 1024
MAX_FORCED_LATENCY = 60.0
FILLER = ("the", "gateway", "answers", "with", "a", "few", "plain", "words", "so", "tokens", "can", "be", "counted")


@dataclass(frozen=True)
class Profile:
    """How fast a provider answers: seconds to the first token, then tokens per second."""

    ttft: float
    tokens_per_second: float


PROFILES: dict[str, Profile] = {
    "openai": Profile(0.30, 90.0),
    "anthropic": Profile(0.45, 70.0),
    "google": Profile(0.25, 120.0),
}
DEFAULT_PROFILE = Profile(0.30, 80.0)


@dataclass(frozen=True)
class Options:
    """What every port of this process does (see the module docstring)."""

    ttft: float | None = None
    tokens_per_second: float | None = None
    jitter: float = 0.25
    latency_scale: float = 1.0
    error_rate: float = 0.02
    rate_limit_rate: float = 0.01
    billing_error_rate: float = 0.01
    requests_per_minute: int = 3000
    tokens_per_minute: int = 1_000_000
    max_filler: int = 24


class Provider:
    """One simulated provider: its profile, its rate-limit budget and a seeded random source."""

    def __init__(self, name: str, options: Options, seed: int) -> None:
        self.name = name
        self.options = options
        base = PROFILES.get(name, DEFAULT_PROFILE)
        self.profile = Profile(
            base.ttft if options.ttft is None else options.ttft,
            base.tokens_per_second if options.tokens_per_second is None else options.tokens_per_second,
        )
        self._random = random.Random(f"{seed}:{name}")
        self._lock = threading.Lock()
        self._minute = -1
        self._requests = options.requests_per_minute
        self._tokens = options.tokens_per_minute

    def chance(self, rate: float) -> bool:
        with self._lock:
            return self._random.random() < rate

    def spread(self, seconds: float) -> float:
        """``seconds`` with jitter and the latency scale applied."""
        jitter = self.options.jitter
        with self._lock:
            factor = self._random.uniform(1 - jitter, 1 + jitter) if jitter else 1.0
        return max(0.0, seconds * factor * self.options.latency_scale)

    def pick(self, choices: Sequence[int]) -> int:
        with self._lock:
            return self._random.choice(choices)

    def filler(self) -> int:
        with self._lock:
            return self._random.randint(0, self.options.max_filler)

    def spend(self, tokens: int) -> tuple[bool, int, int]:
        """Use one request and ``tokens`` of this minute's budget: (allowed, requests left, tokens left)."""
        minute = int(time.time() // 60)
        with self._lock:
            if minute != self._minute:
                self._minute = minute
                self._requests = self.options.requests_per_minute
                self._tokens = self.options.tokens_per_minute
            if self._requests <= 0 or self._tokens < tokens:
                return False, self._requests, self._tokens
            self._requests -= 1
            self._tokens -= tokens
            return True, self._requests, self._tokens

    def rate_headers(self, requests_left: int, tokens_left: int) -> dict[str, str]:
        return {
            "x-ratelimit-limit-requests": str(self.options.requests_per_minute),
            "x-ratelimit-limit-tokens": str(self.options.tokens_per_minute),
            "x-ratelimit-remaining-requests": str(max(0, requests_left)),
            "x-ratelimit-remaining-tokens": str(max(0, tokens_left)),
            "x-ratelimit-reset-requests": f"{60 - int(time.time()) % 60}s",
        }


@dataclass(frozen=True)
class Forced:
    """Outcome a request asked for with ``x-simulate-*`` headers."""

    status: int | None = None
    latency: float | None = None
    chunk_delay: float | None = None
    stream_error: bool = False


def forced_from(headers: Mapping[str, str]) -> Forced:
    """Parse the ``x-simulate-*`` headers; raise ``ValueError`` naming a bad one."""
    status = latency = chunk_delay = None
    if (raw := headers.get("x-simulate-status")) is not None:
        if not raw.strip().isdigit() or not 200 <= int(raw) <= 599:
            raise ValueError("x-simulate-status must be an integer between 200 and 599")
        status = int(raw)
    if (raw := headers.get("x-simulate-latency")) is not None:
        latency = _bounded(raw, "x-simulate-latency", MAX_FORCED_LATENCY)
    if (raw := headers.get("x-simulate-chunk-delay")) is not None:
        chunk_delay = _bounded(raw, "x-simulate-chunk-delay", 5.0)
    stream_error = (headers.get("x-simulate-stream-error") or "").strip().lower() in ("1", "true", "yes")
    return Forced(status, latency, chunk_delay, stream_error)


def _bounded(raw: str, name: str, high: float) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number") from None
    if not math.isfinite(value) or not 0 <= value <= high:
        raise ValueError(f"{name} must be between 0 and {high:g}")
    return value


def count_tokens(text: str) -> int:
    """The simulator's tokenizer: one token per whitespace-separated word."""
    return len(text.split())


def prompt_of(messages: object) -> tuple[str, int]:
    """The last user text (echoed in the answer) and the prompt's token count (3 per message, as OpenAI bills)."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list")
    last_user, tokens = "", 0
    for message in messages:
        if not isinstance(message, dict):
            raise ValueError("every message must be an object")
        content = message.get("content")
        if isinstance(content, list):
            content = " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
        text = content if isinstance(content, str) else ""
        tokens += 3 + count_tokens(text)
        if message.get("role") == "user":
            last_user = text
    return last_user, tokens


class Handler(BaseHTTPRequestHandler):
    """One request on a provider's port (HTTP/1.1, keep-alive)."""

    protocol_version = "HTTP/1.1"
    server: SimulatorServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: thousands of requests per test

    # ------------------------------------------------------------------ routing
    def do_GET(self) -> None:
        if self.path in ("/health", "/healthz"):
            self._json(200, {"status": "ok", "provider": self.server.provider.name})
        elif self.path == "/v1/models":
            self._json(200, {"object": "list", "data": []})
        else:
            self._error(404, f"no route {self.path}", "invalid_request_error")

    def do_POST(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self.close_connection = True
            self._error(413 if length > MAX_BODY else 400, "bad Content-Length", "invalid_request_error")
            return
        raw = self.rfile.read(length)
        if self.path == "/v1/billing/meter_events":
            self._billing()
        elif self.path == "/v1/chat/completions":
            self._chat(raw)
        else:
            self._error(404, f"no route {self.path}", "invalid_request_error")

    # ------------------------------------------------------------------ endpoints
    def _billing(self) -> None:
        provider = self.server.provider
        time.sleep(provider.spread(0.01))
        if provider.chance(provider.options.billing_error_rate):
            self._json(500, {"error": {"type": "api_error", "message": "simulated billing failure"}})
        else:
            self._json(200, {"object": "billing.meter_event", "identifier": uuid.uuid4().hex})

    def _chat(self, raw: bytes) -> None:
        provider = self.server.provider
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            forced = forced_from({k.lower(): v for k, v in self.headers.items()})
            model = body.get("model")
            if not isinstance(model, str) or not model:
                raise ValueError("'model' is required")
            last_user, prompt_tokens = prompt_of(body.get("messages"))
            max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
            if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
                raise ValueError("'max_tokens' must be a positive integer")
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            self._error(400, str(exc), "invalid_request_error")
            return
        words = f"[{model}] You said: {last_user[:200]}".split()
        words += [FILLER[i % len(FILLER)] for i in range(provider.filler())]
        finish = "stop"
        if max_tokens is not None and len(words) > max_tokens:
            words, finish = words[:max_tokens], "length"

        allowed, requests_left, tokens_left = provider.spend(prompt_tokens + len(words))
        headers = provider.rate_headers(requests_left, tokens_left)
        first_token = forced.latency if forced.latency is not None else provider.spread(provider.profile.ttft)
        status = forced.status
        if status is None:
            if not allowed or provider.chance(provider.options.rate_limit_rate):
                status = 429
            elif provider.chance(provider.options.error_rate):
                status = provider.pick((500, 502, 503))
        if status == 429:
            headers.update({"x-ratelimit-remaining-requests": "0", "retry-after": "1"})
        if status is not None and status >= 400:
            time.sleep(first_token if forced.latency is not None else first_token / 3)
            kind = "rate_limit_error" if status == 429 else "server_error" if status >= 500 else "invalid_request_error"
            self._error(status, f"simulated {provider.name} failure ({status})", kind, headers)
            return

        if forced.chunk_delay is not None:
            per_token = forced.chunk_delay
        else:
            per_token = provider.spread(1.0 / provider.profile.tokens_per_second)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(words),
                 "total_tokens": prompt_tokens + len(words)}  # fmt: skip
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        if body.get("stream") is True:
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            self._stream(completion_id, model, words, finish, usage if include_usage else None,
                         first_token, per_token, forced.stream_error, headers)  # fmt: skip
            return
        time.sleep(first_token + per_token * max(0, len(words) - 1))
        self._json(200, {
            "id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(words)},
                         "finish_reason": finish}],
            "usage": usage,
        }, headers)  # fmt: skip

    def _stream(
        self, completion_id: str, model: str, words: list[str], finish: str, usage: dict[str, int] | None,
        first_token: float, per_token: float, break_after_first: bool, headers: dict[str, str],
    ) -> None:  # fmt: skip
        """Server-sent events in chunked encoding: one token per chunk, then usage, then ``[DONE]``."""
        self.send_response(200)
        for name, value in {**headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                            "Transfer-Encoding": "chunked"}.items():  # fmt: skip
            self.send_header(name, value)
        self.end_headers()
        self.wfile.flush()
        created = int(time.time())

        def chunk(choices: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> bytes:
            event = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": choices, **(extra or {})}  # fmt: skip
            return f"data: {json.dumps(event)}\n\n".encode()

        try:
            time.sleep(first_token)
            for i, word in enumerate(words):
                if i:
                    time.sleep(per_token)
                delta: dict[str, Any] = {"content": word if i == len(words) - 1 else word + " "}
                if i == 0:
                    delta["role"] = "assistant"
                self._chunk(chunk([{"index": 0, "delta": delta, "finish_reason": None}]))
                if break_after_first:
                    self.close_connection = True
                    return  # no terminating chunk: the client sees a broken body
            self._chunk(chunk([{"index": 0, "delta": {}, "finish_reason": finish}]))
            if usage is not None:
                self._chunk(chunk([], {"usage": usage}))
            self._chunk(b"data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the gateway went away (its client hung up)

    # ------------------------------------------------------------------ writing
    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _json(self, status: int, payload: object, headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-request-id", f"req_{uuid.uuid4().hex[:16]}")
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _error(self, status: int, message: str, kind: str, headers: Mapping[str, str] | None = None) -> None:
        code = "rate_limit_exceeded" if status == 429 else None
        self._json(status, {"error": {"message": message, "type": kind, "param": None, "code": code}}, headers)


class SimulatorServer(ThreadingHTTPServer):
    """A threaded HTTP server for one simulated provider."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, port: int, provider: Provider) -> None:
        self.provider = provider
        super().__init__((HOST, port), Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A gateway that drops its connection (its client left mid-stream) is normal: no traceback."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def parse_ports(spec: str) -> dict[str, int]:
    """``openai=8101,anthropic=8102`` -> {"openai": 8101, "anthropic": 8102}."""
    ports: dict[str, int] = {}
    for item in spec.split(","):
        name, sep, port = item.strip().partition("=")
        if not sep or not name.isidentifier() or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bad port assignment {item!r}: expected NAME=PORT")
        ports[name] = int(port)
    return ports


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="python -m example_app.simulator", description=__doc__.split("\n")[0])
    parser.add_argument("--ports", default=env("SIMULATOR_PORTS", "openai=8101,anthropic=8102,google=8103,stripe=8104"),
                        help="NAME=PORT,... (one port per provider; 'stripe' is the billing API)")
    parser.add_argument("--ttft", type=float, default=None, help="seconds to the first token (all providers)")
    parser.add_argument("--tokens-per-second", type=float, default=None, help="pace of the following tokens")
    parser.add_argument("--jitter", type=float, default=0.25, help="relative spread of every delay (0 = fixed)")
    parser.add_argument("--latency-scale", type=float, default=_env_float("GATEWAY_SIMULATED_LATENCY_SCALE", 1.0))
    parser.add_argument("--error-rate", type=float, default=_env_float("GATEWAY_UPSTREAM_ERROR_RATE", 0.02))
    parser.add_argument("--rate-limit-rate", type=float, default=0.01, help="share of random 429s")
    parser.add_argument("--billing-error-rate", type=float, default=_env_float("GATEWAY_BILLING_ERROR_RATE", 0.01))
    parser.add_argument("--requests-per-minute", type=int, default=3000)
    parser.add_argument("--tokens-per-minute", type=int, default=1_000_000)
    parser.add_argument("--max-filler", type=int, default=24, help="extra words drawn per answer (0..N)")
    parser.add_argument("--seed", type=int, default=int(_env_float("GATEWAY_SEED", 0)))
    args = parser.parse_args(argv)
    try:
        args.ports = parse_ports(args.ports)
    except ValueError as exc:
        parser.error(str(exc))
    for name in ("ttft", "tokens_per_second"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value >= 0 and (name == "ttft" or value > 0)):
            parser.error(f"--{name.replace('_', '-')} must be a positive number")
    for name in ("jitter", "error_rate", "rate_limit_rate", "billing_error_rate"):
        if not 0 <= getattr(args, name) <= 1:
            parser.error(f"--{name.replace('_', '-')} must be between 0 and 1")
    if not 0 <= args.latency_scale <= 1000 or args.requests_per_minute < 1 or args.tokens_per_minute < 1:
        parser.error("--latency-scale must be in [0, 1000]; budgets must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    options = Options(
        ttft=args.ttft, tokens_per_second=args.tokens_per_second, jitter=args.jitter,
        latency_scale=args.latency_scale, error_rate=args.error_rate, rate_limit_rate=args.rate_limit_rate,
        billing_error_rate=args.billing_error_rate, requests_per_minute=args.requests_per_minute,
        tokens_per_minute=args.tokens_per_minute, max_filler=max(0, args.max_filler),
    )  # fmt: skip
    servers = [SimulatorServer(port, Provider(name, options, args.seed)) for name, port in args.ports.items()]
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    listening = ", ".join(f"{name}=http://{HOST}:{port}" for name, port in args.ports.items())
    print(f"simulator listening: {listening}", flush=True)
    parent = os.getppid()
    # A timed wait: the signal handler runs between waits. An orphaned simulator (whoever
    # started it was killed without stopping it) exits too, rather than hold its ports.
    while not stopping.wait(0.5) and os.getppid() == parent:
        pass
    for server in servers:
        server.shutdown()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
