"""A small but real AI gateway, instrumented only through ``flask_gatewayz_metrics``'s public API.

Routes:

- ``POST /api/chat`` with JSON ``{"model": ..., "message": ..., "stream": false}``. The
  model defaults to ``"gpt-4"``; the provider follows from the model's prefix (``gpt-*``
  openai, ``claude-*`` anthropic, ``gemini-*`` google); any other model is a 400. The
  upstream call is simulated (latency ~30-120 ms times ``GATEWAY_SIMULATED_LATENCY_SCALE``,
  and ``GATEWAY_UPSTREAM_ERROR_RATE`` of calls fail with a 502). Two optional fields shape
  traffic deterministically: ``simulate_latency_seconds`` (0..30, replaces the random
  latency) and ``simulate_status`` (200..599; a status >= 400 is answered as the
  upstream's failure, anything lower means success). ``"stream": true`` answers as
  server-sent events; ``stream_chunk_delay_seconds`` (0..5) waits between chunks and
  ``simulate_stream_error`` breaks the stream after its first chunk. A real (random)
  upstream failure falls back once to the next provider (``FALLBACK``). Each successful
  completion records its tokens and cost and is billed through a simulated Stripe call
  (``GATEWAY_BILLING_ERROR_RATE`` of those fail, without failing the chat); every
  upstream attempt reports the provider's remaining request budget. Every chat request
  is also counted per team (``X-Team`` header) in ``gateway_team_chats_total``, a
  custom metric defined through the extension's API.
- ``GET /api/models`` and ``GET /api/models/<model_id>``: the model catalogue, read from a
  SQLite database (``GATEWAY_DB_PATH``, else a temporary file) through a TTL cache.
- ``GET /healthz``: liveness for load balancers, not metrics.

Settings come from ``create_app(config)``, else from environment variables of the same
name (so a gunicorn run can be shaped without code), else from the defaults below.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import random
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from flask import Flask, Response, current_app, jsonify, request

from flask_gatewayz_metrics import Counter, GatewayzMetrics, get_metrics_collector, label_request

DEFAULT_MODEL = "gpt-4"
PROVIDER_PREFIXES: tuple[tuple[str, str], ...] = (("gpt-", "openai"), ("claude-", "anthropic"), ("gemini-", "google"))
MAX_SIMULATED_LATENCY = 30.0
MAX_MESSAGE_LENGTH = 100_000
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
"""Simulated list prices (USD per 1000 input / output tokens) for the cost counter."""
REQUESTS_PER_MINUTE = 600
"""Simulated per-provider request budget; its remainder is reported as a gauge."""

DEFAULTS: dict[str, Any] = {
    "GATEWAY_SIMULATED_LATENCY_SCALE": 1.0,
    "GATEWAY_UPSTREAM_ERROR_RATE": 0.02,
    "GATEWAY_BILLING_ERROR_RATE": 0.01,
    "GATEWAY_MODELS_CACHE_TTL": 30.0,
    "GATEWAY_SEED": 0,
    "GATEWAY_DB_PATH": None,
}
"""Gateway settings; ``create_app(config)`` overrides the environment, which overrides these."""

SEED_MODELS: tuple[tuple[str, str, int], ...] = (
    ("gpt-4", "openai", 8192),
    ("gpt-4o", "openai", 128000),
    ("gpt-3.5-turbo", "openai", 16385),
    ("claude-3-opus", "anthropic", 200000),
    ("claude-3-sonnet", "anthropic", 200000),
    ("claude-3-haiku", "anthropic", 200000),
    ("gemini-1.5-pro", "google", 2000000),
    ("gemini-1.5-flash", "google", 1000000),
)

STATE_KEY = "example_gateway"


class BadRequest(ValueError):
    """A request body the gateway refuses with a 400 and this message."""


class TTLCache:
    """A tiny thread-safe cache whose entries expire ``ttl`` seconds after being stored.

    Stored values may be ``None`` (a model that does not exist), so a miss is reported
    separately from the value.
    """

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._entries: dict[str, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> tuple[bool, Any]:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return False, None
            if entry[0] <= self._clock():
                del self._entries[key]
                return False, None
            return True, entry[1]

    def put(self, key: str, value: Any) -> None:
        with self._lock:
            self._entries[key] = (self._clock() + self.ttl, value)


class ModelCatalogue:
    """The model table in SQLite, one short-lived connection per query.

    A connection per query keeps it safe across threads and across gunicorn's fork
    (``--preload`` creates the database in the master).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS models ("
                " id TEXT PRIMARY KEY, provider TEXT NOT NULL, context_window INTEGER NOT NULL)"
            )
            db.executemany("INSERT OR IGNORE INTO models VALUES (?, ?, ?)", SEED_MODELS)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=5.0)

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one query, timed and recorded as a database query."""
        db = self._connect()
        try:
            start = time.perf_counter()
            rows = db.execute(sql, params).fetchall()
            get_metrics_collector().record_db_query(time.perf_counter() - start)
        finally:
            db.close()
        return rows

    def all(self) -> list[dict[str, Any]]:
        rows = self._query("SELECT id, provider, context_window FROM models ORDER BY provider, id")
        return [_model_row(row) for row in rows]

    def get(self, model_id: str) -> dict[str, Any] | None:
        rows = self._query("SELECT id, provider, context_window FROM models WHERE id = ?", (model_id,))
        return _model_row(rows[0]) if rows else None


def _model_row(row: tuple[Any, ...]) -> dict[str, Any]:
    return {"id": row[0], "provider": row[1], "context_window": row[2], "object": "model"}


class Gateway:
    """Per-app state: settings, the seeded random source, the catalogue and its cache."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.latency_scale = _number(settings, "GATEWAY_SIMULATED_LATENCY_SCALE", 0.0, 1000.0)
        self.upstream_error_rate = _number(settings, "GATEWAY_UPSTREAM_ERROR_RATE", 0.0, 1.0)
        self.billing_error_rate = _number(settings, "GATEWAY_BILLING_ERROR_RATE", 0.0, 1.0)
        self.cache = TTLCache(_number(settings, "GATEWAY_MODELS_CACHE_TTL", 0.0, 86400.0))
        self.random = random.Random(int(settings["GATEWAY_SEED"]))
        self._random_lock = threading.Lock()
        self._budgets: dict[str, tuple[int, int]] = {}
        path = settings["GATEWAY_DB_PATH"] or _temporary_database()
        self.catalogue = ModelCatalogue(str(path))
        self.team_chats: Counter | None = None
        """The gateway's own metric (see ``create_app``)."""

    def spend_request(self, provider: str, exhausted: bool = False) -> int:
        """Use one request of ``provider``'s per-minute budget; return what remains."""
        minute = int(time.time() // 60)
        with self._random_lock:
            used_minute, remaining = self._budgets.get(provider, (minute, REQUESTS_PER_MINUTE))
            if used_minute != minute:
                remaining = REQUESTS_PER_MINUTE
            remaining = 0 if exhausted else max(0, remaining - 1)
            self._budgets[provider] = (minute, remaining)
            return remaining

    def chance(self, rate: float) -> bool:
        with self._random_lock:
            return self.random.random() < rate

    def upstream_latency(self) -> float:
        with self._random_lock:
            return self.random.uniform(0.03, 0.12) * self.latency_scale

    def cached(self, key: str, load: Callable[[], Any]) -> Any:
        """``load()`` through the TTL cache, recording the hit or miss."""
        found, value = self.cache.get(key)
        collector = get_metrics_collector()
        if found:
            collector.record_cache_hit()
            return value
        collector.record_cache_miss()
        value = load()
        self.cache.put(key, value)
        return value


def _number(settings: Mapping[str, Any], key: str, low: float, high: float) -> float:
    value = settings[key]
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key} must be a number, got {value!r}") from None
    if not low <= number <= high:
        raise ValueError(f"{key} must be between {low} and {high}, got {number}")
    return number


def _temporary_database() -> str:
    """A fresh database file, removed at exit by the process that created it."""
    fd, path = tempfile.mkstemp(prefix="gateway-models-", suffix=".sqlite3")
    os.close(fd)
    owner = os.getpid()

    def remove() -> None:
        if os.getpid() == owner:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    atexit.register(remove)
    return path


def provider_for(model: str) -> str | None:
    for prefix, provider in PROVIDER_PREFIXES:
        if model.startswith(prefix) and len(model) > len(prefix):
            return provider
    return None


def parse_chat(body: object) -> dict[str, Any]:
    """Validate a chat request body; raise ``BadRequest`` with a message for the client."""
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    model = body.get("model", DEFAULT_MODEL)
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' must be a non-empty string")
    message = body.get("message")
    if not isinstance(message, str) or not message:
        raise BadRequest("'message' is required and must be a non-empty string")
    if len(message) > MAX_MESSAGE_LENGTH:
        raise BadRequest(f"'message' is longer than {MAX_MESSAGE_LENGTH} characters")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false")
    latency = body.get("simulate_latency_seconds")
    if latency is not None:
        if isinstance(latency, bool) or not isinstance(latency, (int, float)) or not math.isfinite(latency):
            raise BadRequest("'simulate_latency_seconds' must be a number")
        if not 0 <= latency <= MAX_SIMULATED_LATENCY:
            raise BadRequest(f"'simulate_latency_seconds' must be between 0 and {MAX_SIMULATED_LATENCY:g}")
        latency = float(latency)
    status = body.get("simulate_status")
    if status is not None and (isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599):
        raise BadRequest("'simulate_status' must be an integer between 200 and 599")
    chunk_delay = body.get("stream_chunk_delay_seconds", 0.0)
    if isinstance(chunk_delay, bool) or not isinstance(chunk_delay, (int, float)) or not 0 <= chunk_delay <= 5:
        raise BadRequest("'stream_chunk_delay_seconds' must be a number between 0 and 5")
    stream_error = body.get("simulate_stream_error", False)
    if not isinstance(stream_error, bool):
        raise BadRequest("'simulate_stream_error' must be true or false")
    provider = provider_for(model)
    if provider is None:
        known = ", ".join(f"{prefix}*" for prefix, _ in PROVIDER_PREFIXES)
        raise BadRequest(f"unknown model {model!r}: expected one of {known}")
    return {
        "model": model,
        "provider": provider,
        "message": message,
        "stream": stream,
        "latency": latency,
        "status": status,
        "chunk_delay": float(chunk_delay),
        "stream_error": stream_error,
    }


def error_response(status: int, message: str, kind: str, **extra: Any) -> tuple[Response, int]:
    return jsonify(error={"message": message, "type": kind, **extra}), status


def chat() -> Response | tuple[Response, int]:
    gateway: Gateway = current_app.extensions[STATE_KEY]
    if gateway.team_chats is not None:
        gateway.team_chats.labels(team=request.headers.get("X-Team") or "none").inc()
    if not request.is_json:
        return error_response(400, "Content-Type must be application/json", "invalid_request_error")
    try:
        chat_request = parse_chat(request.get_json(silent=True))
    except BadRequest as exc:
        return error_response(400, str(exc), "invalid_request_error")
    provider, model = chat_request["provider"], chat_request["model"]
    label_request(provider=provider, model=model)

    status = call_upstream(gateway, provider, model, chat_request)
    if status >= 500 and chat_request["status"] is None:
        # A real upstream failure (not a simulated one): fall back to the next provider once.
        backup_provider, backup_model = FALLBACK[provider]
        get_metrics_collector().record_fallback(provider, backup_provider)
        provider, model = backup_provider, backup_model
        label_request(provider=provider, model=model)
        status = call_upstream(gateway, provider, model, chat_request)
    if status >= 400:
        return error_response(status, f"{provider} answered {status}", "upstream_error", provider=provider)

    reply = f"[{model}] You said: {chat_request['message'][:200]}"
    usage = {"prompt_tokens": len(chat_request["message"].split()), "completion_tokens": len(reply.split())}
    input_price, output_price = PRICES_PER_1K_TOKENS.get(model, (0.001, 0.002))
    get_metrics_collector().record_tokens(
        provider, model, usage["prompt_tokens"], usage["completion_tokens"],
        cost_usd=(usage["prompt_tokens"] * input_price + usage["completion_tokens"] * output_price) / 1000,
    )
    billing_failed = gateway.chance(gateway.billing_error_rate)
    get_metrics_collector().record_external_api_call("stripe", error=billing_failed)
    completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    if chat_request["stream"]:
        return Response(
            _sse_chunks(completion_id, model, reply, chat_request["chunk_delay"], chat_request["stream_error"]),
            mimetype="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )
    return jsonify(
        id=completion_id,
        object="chat.completion",
        model=model,
        provider=provider,
        choices=[{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
        usage=usage,
    )


def call_upstream(gateway: Gateway, provider: str, model: str, chat_request: dict[str, Any]) -> int:
    """One simulated upstream attempt: wait as long as the provider would, then decide.

    Records the attempt (latency, status, error type) and the provider's remaining
    request budget, which a 429 empties.
    """
    latency = chat_request["latency"]
    if latency is None:
        latency = gateway.upstream_latency()
    started = time.perf_counter()
    time.sleep(latency)
    status = chat_request["status"]
    if status is None:
        status = 502 if gateway.chance(gateway.upstream_error_rate) else 200
    elif status < 400:
        status = 200
    collector = get_metrics_collector()
    collector.record_provider_call(provider, model, time.perf_counter() - started, status_code=status)
    collector.set_rate_limit_remaining(provider, "requests", gateway.spend_request(provider, exhausted=status == 429))
    return status


def _sse_chunks(
    completion_id: str, model: str, reply: str, delay: float = 0.0, fail: bool = False
) -> Iterator[str]:
    """Server-sent events: one delta per word group, then ``[DONE]``.

    ``delay`` waits between chunks; ``fail`` raises after the first one (an upstream
    that breaks mid-stream). Needs nothing from the request, so it runs safely after
    the view returned.
    """
    words = reply.split(" ")
    for i in range(0, len(words), 3):
        if i:
            if fail:
                raise RuntimeError("upstream stream broke")
            time.sleep(delay)
        delta = " ".join(words[i : i + 3]) + (" " if i + 3 < len(words) else "")
        event = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "model": model,
            "choices": [{"index": 0, "delta": {"content": delta}}],
        }
        yield f"data: {json.dumps(event)}\n\n"
    yield "data: [DONE]\n\n"


def list_models() -> Response:
    gateway: Gateway = current_app.extensions[STATE_KEY]
    models = gateway.cached("models:all", gateway.catalogue.all)
    return jsonify(object="list", data=models)


def get_model(model_id: str) -> Response | tuple[Response, int]:
    gateway: Gateway = current_app.extensions[STATE_KEY]
    model = gateway.cached(f"model:{model_id}", lambda: gateway.catalogue.get(model_id))
    if model is None:
        return error_response(404, f"model {model_id!r} not found", "not_found")
    return jsonify(model)


def healthz() -> Response:
    return jsonify(status="ok")


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the gateway; ``config`` overrides environment variables and defaults."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = 1024 * 1024  # an oversize body is a 413, never a worker's memory
    for key, default in DEFAULTS.items():
        app.config[key] = os.environ.get(key, default)
    if config:
        app.config.update(config)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions[STATE_KEY] = Gateway(app.config)
    # Clients name the model: only catalogue models become label values, anything else
    # is recorded as "other", so made-up model names cannot grow the series.
    metrics = GatewayzMetrics(app, allowed_models=[model for model, _, _ in SEED_MODELS])
    # A metric of the gateway's own, merged across workers like the extension's: chat
    # requests per team (the X-Team header; past 20 teams a worker records "other").
    app.extensions[STATE_KEY].team_chats = metrics.of(app).collector.counter(
        "gateway_team_chats", "Chat requests by team (X-Team header).", ["team"], max_label_values=20
    )
    app.add_url_rule("/api/chat", view_func=chat, methods=["POST"])
    app.add_url_rule("/api/models", view_func=list_models, methods=["GET"])
    app.add_url_rule("/api/models/<model_id>", view_func=get_model, methods=["GET"])
    app.add_url_rule("/healthz", view_func=healthz, methods=["GET"])
    return app


app = create_app()
