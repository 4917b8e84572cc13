"""A small but real AI gateway, instrumented only through ``flask_gatewayz_metrics``'s public API.

Providers are real HTTP upstreams that speak OpenAI's chat-completions API, one base URL
each (``GATEWAY_OPENAI_URL``, ``GATEWAY_ANTHROPIC_URL``, ``GATEWAY_GOOGLE_URL``; the
billing API at ``GATEWAY_STRIPE_URL``). ``scripts/run_example.sh`` runs the provider
simulator (``example_app/simulator.py``) there; ``example_app/upstream.py`` calls them
and records every attempt, fallback, rate-limit header, token count and billing call.

Routes:

- ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /v1/models/<model_id>``: the
  OpenAI-compatible API (``example_app/openai_api.py``), for the official ``openai`` SDK.
- ``POST /api/chat`` with JSON ``{"model": ..., "message": ..., "stream": false}`` (the
  seed's API). The model defaults to ``"gpt-4"``; the provider follows from the model's
  prefix (``gpt-*`` openai, ``claude-*`` anthropic, ``gemini-*`` google); any other model
  is a 400. Optional fields ask the simulated provider for an outcome (forwarded as its
  ``x-simulate-*`` headers): ``simulate_latency_seconds`` (0..30, time to the answer or
  first token), ``simulate_status`` (200..599; a status >= 400 is the provider's
  failure, answered as is), ``stream_chunk_delay_seconds`` (0..5 between streamed
  chunks) and ``simulate_stream_error`` (the provider's stream breaks after its first
  chunk). ``"stream": true`` answers as server-sent events. A provider failure that was
  not asked for (5xx, 429, time-out, refused connection) falls back once to the next
  provider (``FALLBACK``). Each successful completion records its tokens and cost from
  the provider's ``usage`` and is billed through the billing API.
  Every chat request is also counted per team (``X-Team`` header) in
  ``gateway_team_chats_total``, a custom metric defined through the extension's API.
- ``GET /api/models`` and ``GET /api/models/<model_id>``: the model catalogue, read from a
  SQLite database (``GATEWAY_DB_PATH``, else a temporary file) through a TTL cache.
- ``GET /healthz``: liveness for load balancers, not metrics.

Settings come from ``create_app(config)``, else from environment variables of the same
name (so a gunicorn run can be shaped without code), else from the defaults below.
"""

from __future__ import annotations

import atexit
import math
import os
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing
from typing import Any

from flask import Flask, Response, current_app, jsonify, request

from flask_gatewayz_metrics import Counter, GatewayzMetrics, get_metrics_collector

from . import openai_api
from .upstream import FALLBACK, PRICES_PER_1K_TOKENS, Attempt, Forced, Upstreams, record_usage

DEFAULT_MODEL = "gpt-4"
PROVIDER_PREFIXES: tuple[tuple[str, str], ...] = (("gpt-", "openai"), ("claude-", "anthropic"), ("gemini-", "google"))
MAX_SIMULATED_LATENCY = 30.0
MAX_MESSAGE_LENGTH = 100_000
__all__ = ["FALLBACK", "PRICES_PER_1K_TOKENS", "create_app"]  # the fallback and price tables live in upstream.py
MODELS_CREATED = 1_700_000_000
"""The ``created`` time the OpenAI model objects report."""

DEFAULTS: dict[str, Any] = {
    "GATEWAY_OPENAI_URL": "http://127.0.0.1:8101",
    "GATEWAY_ANTHROPIC_URL": "http://127.0.0.1:8102",
    "GATEWAY_GOOGLE_URL": "http://127.0.0.1:8103",
    "GATEWAY_STRIPE_URL": "http://127.0.0.1:8104",
    "GATEWAY_UPSTREAM_TIMEOUT": 25.0,  # under gunicorn's 30 s worker time-out
    "GATEWAY_MODELS_CACHE_TTL": 30.0,
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
    separately from the value. Clients choose the keys (model ids), so at most
    ``max_entries`` are kept: the oldest goes first.
    """

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic, max_entries: int = 4096) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
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
            self._entries.pop(key, None)  # re-inserted last: dict order is the age order
            while len(self._entries) >= self.max_entries:
                del self._entries[next(iter(self._entries))]
            self._entries[key] = (self._clock() + self.ttl, value)


class ModelCatalogue:
    """The model table in SQLite, one short-lived connection per query.

    A connection per query keeps it safe across threads and across gunicorn's fork
    (``--preload`` creates the database in the master).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        # sqlite3's own context manager commits but does not close: closing() does.
        with closing(self._connect()) as db, db:
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
    """A catalogue row as an OpenAI model object (``owned_by`` its provider) with our extra fields."""
    return {
        "id": row[0], "object": "model", "created": MODELS_CREATED, "owned_by": row[1],
        "provider": row[1], "context_window": row[2],
    }  # fmt: skip


class Gateway:
    """Per-app state: settings, the upstream providers, the catalogue and its cache."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        timeout = _number(settings, "GATEWAY_UPSTREAM_TIMEOUT", 0.01, 600.0)
        urls = {}
        for provider in ("openai", "anthropic", "google", "stripe"):
            key = f"GATEWAY_{provider.upper()}_URL"
            url = settings[key]
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise ValueError(f"{key} must be an http(s) URL, got {url!r}")
            urls[provider] = url
        self.upstreams = Upstreams(urls, timeout)
        self.cache = TTLCache(_number(settings, "GATEWAY_MODELS_CACHE_TTL", 0.0, 86400.0))
        path = settings["GATEWAY_DB_PATH"] or _temporary_database()
        self.catalogue = ModelCatalogue(str(path))
        self.team_chats: Counter | None = None
        """The gateway's own metric (see ``create_app``)."""

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
        "forced": Forced(status, latency, float(chunk_delay) if chunk_delay else None, stream_error),
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
    body = {"messages": [{"role": "user", "content": chat_request["message"]}]}
    forced, stream = chat_request["forced"], chat_request["stream"]
    attempt = gateway.upstreams.call_with_fallback(provider, model, body, forced, stream)
    if not attempt.ok:
        status = attempt.status or (504 if attempt.error_type == "timeout" else 502)
        return error_response(status, attempt.message, "upstream_error", provider=attempt.provider)
    if attempt.stream is not None:
        return Response(
            _sse_chunks(gateway, attempt),
            mimetype="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )
    usage = record_usage(attempt, attempt.payload.get("usage"))
    if usage is not None:
        gateway.upstreams.bill(attempt, usage)
    return jsonify(
        id=openai_api.text_of(attempt.payload.get("id")) or f"chatcmpl-{uuid.uuid4().hex[:24]}",
        object="chat.completion",
        model=attempt.model,
        provider=attempt.provider,
        choices=[
            {"index": 0, "message": {"role": "assistant", "content": openai_api.content_of(attempt.payload)},
             "finish_reason": "stop"},
        ],
        usage=usage,
    )


def _sse_chunks(gateway: Gateway, attempt: Attempt) -> Iterator[str]:
    """The provider's server-sent events relayed as they arrive, then ``[DONE]``.

    Runs after the view returned (the extension watches it: first chunk, outcome). The
    tokens are recorded, and billed, once the provider's usage arrived at the end.
    """
    yield from openai_api.relay(gateway.upstreams, attempt, include_usage=False)


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
    openai_api.register(app)
    return app


app = create_app()
