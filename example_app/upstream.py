"""The gateway's upstream side: real HTTP calls to the providers, recorded as they happen.

Every provider speaks OpenAI's chat-completions API at its own base URL (the simulator
in ``example_app/simulator.py`` when run by ``scripts/run_example.sh``). One pooled
``httpx.Client`` per process (made after gunicorn's fork, never inherited) with a
connect and a read time-out. Each attempt is recorded through the package's public API
only: ``record_provider_call`` with its latency and status (or error type ``timeout`` /
``connection`` when no status came back), the rate-limit headroom from the provider's
``x-ratelimit-remaining-*`` headers, ``record_fallback`` when the request moves on,
``record_tokens`` (with the cost from ``PRICES_PER_1K_TOKENS``) from the provider's
``usage``, and the billing call as ``external_api_calls_total{service="stripe"}``.

For a streamed call the attempt ends at the provider's first chunk: its latency is the
time to the first token, and a provider that fails before sending one can still be
replaced by the fallback. The rest of the stream is relayed by ``relay``.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from flask_gatewayz_metrics import MetricsCollector, get_metrics_collector, label_request

FALLBACK: dict[str, tuple[str, str]] = {
    "openai": ("anthropic", "claude-3-haiku"),
    "anthropic": ("google", "gemini-1.5-pro"),
    "google": ("openai", "gpt-4o"),
}
"""Where a failed upstream call is retried once: provider -> (provider, model)."""
PRICES_PER_1K_TOKENS: dict[str, tuple[float, float]] = {
    "gpt-4": (0.03, 0.06),
    "gpt-4o": (0.005, 0.015),
    "claude-3-haiku": (0.00025, 0.00125),
    "claude-3-opus": (0.015, 0.075),
    "gemini-1.5-pro": (0.0035, 0.0105),
}
"""List prices (USD per 1000 input / output tokens) for the cost counter."""
DEFAULT_PRICE = (0.001, 0.002)
MAX_TOKENS_REPORTED = 10_000_000
"""A provider's usage above this is not believed (untrusted input): not recorded."""
RETRYABLE = frozenset({"timeout", "connection", "rate_limited", "5xx"})


@dataclass(frozen=True)
class Forced:
    """An outcome the client asked the (simulated) provider for; forwarded as ``x-simulate-*`` headers.

    A forced failure is the client's own doing: it is answered as is, never retried
    on the fallback provider.
    """

    status: int | None = None
    latency: float | None = None
    chunk_delay: float | None = None
    stream_error: bool = False

    def headers(self) -> dict[str, str]:
        headers = {}
        if self.status is not None:
            headers["x-simulate-status"] = str(self.status)
        if self.latency is not None:
            headers["x-simulate-latency"] = repr(self.latency)
        if self.chunk_delay is not None:
            headers["x-simulate-chunk-delay"] = repr(self.chunk_delay)
        if self.stream_error:
            headers["x-simulate-stream-error"] = "true"
        return headers


@dataclass
class Attempt:
    """The outcome of one call to one provider (after any fallback, the last one)."""

    provider: str
    model: str
    status: int | None = None
    """The provider's HTTP status; None when none came back (time-out, connection)."""
    error_type: str | None = None
    """None for a success, else timeout, connection, rate_limited, 4xx, 5xx or other."""
    message: str = ""
    payload: dict[str, Any] = field(default_factory=dict)
    """The provider's JSON answer (non-streamed calls)."""
    headers: dict[str, str] = field(default_factory=dict)
    stream: StreamRelay | None = None
    collector: MetricsCollector = field(default_factory=get_metrics_collector)
    """The app's collector, taken in the view: a stream's relay runs after the app context is gone."""

    @property
    def ok(self) -> bool:
        return self.error_type is None


class Upstreams:
    """Base URLs of the providers and of the billing API, and the process's HTTP client."""

    def __init__(self, urls: Mapping[str, str], timeout: float, connect_timeout: float = 2.0) -> None:
        self.urls = {name: url.rstrip("/") for name, url in urls.items()}
        self.timeout = httpx.Timeout(timeout, connect=connect_timeout, pool=connect_timeout)
        self._client: httpx.Client | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def client(self) -> httpx.Client:
        """This process's pooled client; a forked worker makes its own (sockets are not shared)."""
        pid = os.getpid()
        if self._client is None or self._pid != pid:
            with self._lock:
                if self._client is None or self._pid != pid:
                    self._client = httpx.Client(
                        # Loading the CA bundle costs ~50 ms per worker: only when an upstream uses TLS.
                        verify=any(url.startswith("https://") for url in self.urls.values()),
                        timeout=self.timeout,
                        limits=httpx.Limits(max_connections=64, max_keepalive_connections=16, keepalive_expiry=10),
                        trust_env=False,  # loopback upstreams: no proxy from the environment
                        headers={"User-Agent": "gatewayz-example/1"},
                    )
                    self._pid = pid
                    # The pool's sockets are closed with the app that owns them (tests build many apps).
                    weakref.finalize(self, self._client.close)
        return self._client

    def call(self, provider: str, model: str, body: dict[str, Any], forced: Forced, stream: bool) -> Attempt:
        """One recorded attempt at ``provider``; a stream is opened and read up to its first chunk."""
        attempt = Attempt(provider, model)
        url = self.urls.get(provider)
        request_body = {**body, "model": model, "stream": stream}
        if stream:
            request_body["stream_options"] = {"include_usage": True}  # tokens are counted from it
        collector = attempt.collector
        started = time.perf_counter()
        response: httpx.Response | None = None
        try:
            if url is None:
                raise httpx.ConnectError(f"no URL configured for {provider}")
            request = self.client().build_request(
                "POST", url + "/v1/chat/completions", json=request_body, headers=forced.headers()
            )
            response = self.client().send(request, stream=True)
            attempt.status = response.status_code
            attempt.headers = dict(response.headers)
            if response.status_code >= 400 or not stream:
                response.read()
                attempt.payload = _json_object(response.content)
                response.close()
                if response.status_code >= 400:
                    attempt.error_type = "rate_limited" if response.status_code == 429 else (
                        "5xx" if response.status_code >= 500 else "4xx"
                    )
                    attempt.message = _error_message(attempt.payload) or f"{provider} answered {response.status_code}"
            else:
                attempt.stream = StreamRelay(response)
                attempt.stream.read_first()
        except httpx.TimeoutException:
            attempt.error_type, attempt.message = "timeout", f"{provider} did not answer in time"
        except (httpx.HTTPError, OSError) as exc:  # refused, reset, broken before the first chunk
            attempt.error_type, attempt.message = "connection", f"{provider} is unreachable ({type(exc).__name__})"
        if attempt.error_type is not None and response is not None:
            response.close()
            attempt.stream = None
        latency = time.perf_counter() - started
        if attempt.status is not None and attempt.error_type in (None, "rate_limited", "4xx", "5xx"):
            collector.record_provider_call(provider, model, latency, status_code=attempt.status)
        else:  # no usable status: a time-out, or the connection failed
            status = 504 if attempt.error_type == "timeout" else 502
            collector.record_provider_call(provider, model, latency, status, error=True, error_type=attempt.error_type)
        for limit in ("requests", "tokens"):
            remaining = _number(attempt.headers.get(f"x-ratelimit-remaining-{limit}"))
            if remaining is not None:
                collector.set_rate_limit_remaining(provider, limit, remaining)
        return attempt

    def call_with_fallback(
        self, provider: str, model: str, body: dict[str, Any], forced: Forced, stream: bool
    ) -> Attempt:
        """Call ``provider``; on a failure it did not force, once more on its ``FALLBACK`` provider."""
        label_request(provider=provider, model=model)
        attempt = self.call(provider, model, body, forced, stream)
        if not attempt.ok and forced.status is None and attempt.error_type in RETRYABLE:
            backup_provider, backup_model = FALLBACK[provider]
            attempt.collector.record_fallback(provider, backup_provider)
            label_request(provider=backup_provider, model=backup_model)
            attempt = self.call(backup_provider, backup_model, body, forced, stream)
        return attempt

    def bill(self, attempt: Attempt, usage: Mapping[str, int]) -> bool:
        """Report the call's tokens to the billing API; count the call (and whether it failed)."""
        failed = True
        url = self.urls.get("stripe")
        if url is not None:
            event = {"event_name": "llm_tokens", "payload[value]": str(usage.get("total_tokens", 0)),
                     "payload[model]": attempt.model, "payload[provider]": attempt.provider}  # fmt: skip
            try:
                response = self.client().post(url + "/v1/billing/meter_events", data=event, timeout=2.0)
                failed = response.status_code >= 400
            except (httpx.HTTPError, OSError):
                failed = True
        attempt.collector.record_external_api_call("stripe", error=failed)
        return not failed


def record_usage(attempt: Attempt, usage: object) -> dict[str, int] | None:
    """Record the tokens and cost of the provider's ``usage``; the checked counts, or None if unusable."""
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    counts = []
    for value in (prompt, completion):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOKENS_REPORTED:
            return None
        counts.append(value)
    input_price, output_price = PRICES_PER_1K_TOKENS.get(attempt.model, DEFAULT_PRICE)
    cost = (counts[0] * input_price + counts[1] * output_price) / 1000
    attempt.collector.record_tokens(attempt.provider, attempt.model, counts[0], counts[1], cost_usd=cost)
    return {"prompt_tokens": counts[0], "completion_tokens": counts[1], "total_tokens": counts[0] + counts[1]}


class StreamRelay:
    """An open server-sent-events answer of a provider: its events, one at a time.

    ``read_first`` waits for the first event (so a failure before it is still the
    attempt's failure); ``events`` then yields every parsed event, the first included,
    up to ``[DONE]``. ``usage`` holds the provider's usage once its usage chunk passed.
    """

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.iter_lines()
        self._first: dict[str, Any] | None = None
        self.usage: object = None
        self.done = False

    def read_first(self) -> None:
        self._first = self._next_event()
        if self._first is None:
            raise httpx.RemoteProtocolError("the stream ended before its first chunk")

    def _next_event(self) -> dict[str, Any] | None:
        for line in self._lines:
            if not line.startswith("data:"):
                continue  # blank separators, comments, event names
            data = line[5:].strip()
            if data == "[DONE]":
                self.done = True
                return None
            event = _json_object(data.encode())
            if event:
                if "usage" in event and event["usage"] is not None:
                    self.usage = event["usage"]
                return event
        return None

    def events(self) -> Iterator[dict[str, Any]]:
        if self._first is not None:
            first, self._first = self._first, None
            yield first
        while (event := self._next_event()) is not None:
            yield event
        if not self.done:
            raise httpx.RemoteProtocolError("the provider's stream ended without [DONE]")

    def close(self) -> None:
        self.response.close()


def _json_object(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _error_message(payload: Mapping[str, Any]) -> str | None:
    error = payload.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])[:500]
    return None


def _number(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) and 0 <= value < 1e15 else None
