"""The gateway's OpenAI-compatible API, for the official ``openai`` SDK and any OpenAI client.

- ``POST /v1/chat/completions``: ``model`` (one of ``GET /v1/models``; else 404
  ``model_not_found``), ``messages``, ``stream``, ``stream_options.include_usage``,
  ``max_tokens`` / ``max_completion_tokens``, ``temperature``, ``top_p``, ``n`` (1 only),
  ``user``; other fields are ignored. Streamed answers are OpenAI's ``chat.completion.chunk``
  events ending with ``data: [DONE]``; with ``include_usage`` the last chunk before it
  carries the usage (and no choices). The ``x-simulate-*`` request headers of the
  provider simulator are passed on (validated), so a client can ask for an outcome.
- ``GET /v1/models`` and ``GET /v1/models/<model_id>``: the catalogue as OpenAI model objects.

Errors have OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``: 400
``invalid_request_error`` (with the offending ``param``), 404 for an unknown model or
route, 405, 413, 429 ``rate_limit_error`` (with the provider's ``retry-after`` and
rate-limit headers), the provider's own status for its other failures (type
``upstream_error``), 502 for an unreachable provider and 504 for a time-out. A stream
that breaks after it started ends with an ``error`` event, and the response is aborted.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import httpx
from flask import Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from .upstream import Attempt, Forced, Upstreams, record_usage

if TYPE_CHECKING:
    from .app import Gateway

STATE_KEY = "example_gateway"
ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
MAX_MESSAGES = 1000
MAX_CONTENT_CHARS = 100_000
FORWARDED_RATE_HEADERS = (
    "retry-after", "x-ratelimit-limit-requests", "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-requests",
)  # fmt: skip


class InvalidRequest(ValueError):
    """A request the API refuses with a 400: the message and the offending parameter."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def openai_error(
    status: int, message: str, kind: str, param: str | None = None, code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[Response, int]:  # fmt: skip
    """An error in OpenAI's shape."""
    response = jsonify(error={"message": message, "type": kind, "param": param, "code": code})
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response, status


def _gateway() -> Gateway:
    return current_app.extensions[STATE_KEY]  # type: ignore[no-any-return]


def _model_object(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "object": "model", "created": row["created"], "owned_by": row["owned_by"]}


def list_models() -> Response:
    gateway = _gateway()
    rows = gateway.cached("models:all", gateway.catalogue.all)
    return jsonify(object="list", data=[_model_object(row) for row in rows])


def get_model(model_id: str) -> Response | tuple[Response, int]:
    gateway = _gateway()
    row = gateway.cached(f"model:{model_id}", lambda: gateway.catalogue.get(model_id))
    if row is None:
        return openai_error(404, f"The model '{model_id[:200]}' does not exist", "invalid_request_error",
                            "model", "model_not_found")  # fmt: skip
    return jsonify(_model_object(row))


def parse_completion_request(body: object) -> dict[str, Any]:
    """Check a chat-completions body; the fields the provider gets, ``stream`` and ``include_usage``."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model or len(model) > 200:
        raise InvalidRequest("'model' is required and must be a model id", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or len(messages) > MAX_MESSAGES:
        raise InvalidRequest(f"'messages' must be a list of 1 to {MAX_MESSAGES} messages", "messages")
    total = 0
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise InvalidRequest(f"messages[{i}] must be an object with a role in {sorted(ROLES)}", f"messages[{i}]")
        total += _content_length(message.get("content"), message["role"], f"messages[{i}].content")
    if total > MAX_CONTENT_CHARS:
        raise InvalidRequest(f"the messages are longer than {MAX_CONTENT_CHARS} characters", "messages")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean", "stream")
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict) or not stream):
        raise InvalidRequest("'stream_options' is only allowed with 'stream': true, as an object", "stream_options")
    include_usage = bool(options and options.get("include_usage") is True)
    forwarded: dict[str, Any] = {"messages": messages}
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1_000_000:
                raise InvalidRequest(f"'{name}' must be an integer between 1 and 1000000", name)
            forwarded[name] = value
    limits: tuple[tuple[str, float], ...] = (("temperature", 2.0), ("top_p", 1.0))
    for name, high in limits:
        number = body.get(name)
        if number is not None:
            if isinstance(number, bool) or not isinstance(number, (int, float)) or not 0 <= number <= high:
                raise InvalidRequest(f"'{name}' must be a number between 0 and {high:g}", name)
            forwarded[name] = number
    if body.get("n") not in (None, 1):
        raise InvalidRequest("only 'n': 1 is supported", "n")
    return {"model": model, "body": forwarded, "stream": stream, "include_usage": include_usage}


def _content_length(content: object, role: str, param: str) -> int:
    if isinstance(content, str):
        return len(content)
    if content is None and role == "assistant":
        return 0
    if isinstance(content, list) and len(content) <= MAX_MESSAGES:
        length = 0
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InvalidRequest("only text content parts are supported", param)
            length += len(part["text"])
        return length
    raise InvalidRequest("'content' must be a string or a list of text parts", param)


def forced_from_headers(headers: Mapping[str, str]) -> Forced:
    """The client's ``x-simulate-*`` headers (lower-case names), checked (the simulator checks them again)."""
    values: dict[str, Any] = {}
    for name, key, high in (("x-simulate-latency", "latency", 30.0), ("x-simulate-chunk-delay", "chunk_delay", 5.0)):
        raw = headers.get(name)
        if raw is not None:
            try:
                value = float(raw)
            except ValueError:
                value = math.nan
            if not 0 <= value <= high:
                raise InvalidRequest(f"header {name} must be a number between 0 and {high:g}", name)
            values[key] = value
    raw = headers.get("x-simulate-status")
    if raw is not None:
        if not raw.strip().isdigit() or not 200 <= int(raw) <= 599:
            raise InvalidRequest("header x-simulate-status must be an integer between 200 and 599", "x-simulate-status")
        values["status"] = int(raw)
    values["stream_error"] = (headers.get("x-simulate-stream-error") or "").strip().lower() in ("1", "true")
    return Forced(**values)


def chat_completions() -> Response | tuple[Response, int]:
    gateway = _gateway()
    body = request.get_json(silent=True) if request.is_json else None
    if body is None:
        return openai_error(400, "The body must be JSON (Content-Type: application/json)", "invalid_request_error")
    try:
        parsed = parse_completion_request(body)
        forced = forced_from_headers({name.lower(): value for name, value in request.headers.items()})
    except InvalidRequest as exc:
        return openai_error(400, str(exc), "invalid_request_error", exc.param)
    row = gateway.cached(f"model:{parsed['model']}", lambda: gateway.catalogue.get(parsed["model"]))
    if row is None:
        return openai_error(404, f"The model '{parsed['model']}' does not exist", "invalid_request_error",
                            "model", "model_not_found")  # fmt: skip
    attempt = gateway.upstreams.call_with_fallback(row["provider"], row["id"], parsed["body"], forced, parsed["stream"])
    if not attempt.ok:
        return upstream_failure(attempt)
    if attempt.stream is not None:
        return Response(
            relay(gateway.upstreams, attempt, parsed["include_usage"]),
            mimetype="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Gateway-Provider": attempt.provider},
        )
    usage = record_usage(attempt, attempt.payload.get("usage"))
    if usage is not None:
        gateway.upstreams.bill(attempt, usage)
    response = jsonify(
        id=text_of(attempt.payload.get("id")) or f"chatcmpl-{uuid.uuid4().hex[:24]}",
        object="chat.completion",
        created=int(time.time()),
        model=attempt.model,
        choices=[
            {"index": 0, "message": {"role": "assistant", "content": content_of(attempt.payload)},
             "finish_reason": finish_reason_of(attempt.payload)},
        ],
        usage=usage,
    )
    response.headers["X-Gateway-Provider"] = attempt.provider
    return response


def upstream_failure(attempt: Attempt) -> tuple[Response, int]:
    """The provider's failure (after any fallback) as an OpenAI error."""
    headers = {name: attempt.headers[name] for name in FORWARDED_RATE_HEADERS if name in attempt.headers}
    if attempt.error_type == "rate_limited":
        return openai_error(429, attempt.message, "rate_limit_error", code="rate_limit_exceeded", headers=headers)
    if attempt.error_type == "timeout":
        return openai_error(504, attempt.message, "upstream_error", code="upstream_timeout")
    if attempt.status is None:
        return openai_error(502, attempt.message, "upstream_error", code="upstream_unreachable")
    kind = "invalid_request_error" if attempt.status < 500 else "upstream_error"
    return openai_error(attempt.status, attempt.message, kind, code=f"upstream_status_{attempt.status}")


def relay(upstreams: Upstreams, attempt: Attempt, include_usage: bool) -> Iterator[str]:
    """The provider's stream as server-sent events, as they arrive, then ``[DONE]``.

    Runs after the view returned, while the server writes the body. The tokens are
    recorded (and billed) when the provider's usage arrived, before ``[DONE]`` is sent,
    so a client that saw the end also sees them counted. A client that leaves stops
    the relay (the server closes it: ``GeneratorExit``) and the provider's stream is
    closed with it; a provider stream that breaks ends in an ``error`` event and the
    exception propagates, so the response is aborted and recorded as failed.
    """
    stream = attempt.stream
    assert stream is not None
    try:
        try:
            for event in stream.events():
                if not include_usage:
                    if event.get("usage") is not None and not event.get("choices"):
                        continue  # the usage chunk: the client did not ask for it
                    event.pop("usage", None)
                yield f"data: {json.dumps(event)}\n\n"
        except (httpx.HTTPError, OSError) as exc:
            error = {"message": f"{attempt.provider} stream broke: {type(exc).__name__}", "type": "upstream_error",
                     "param": None, "code": "upstream_stream_error"}  # fmt: skip
            yield f"data: {json.dumps({'error': error})}\n\n"
            raise
    finally:
        stream.close()
    usage = record_usage(attempt, stream.usage)
    if usage is not None:
        upstreams.bill(attempt, usage)
    yield "data: [DONE]\n\n"


def content_of(payload: Mapping[str, Any]) -> str:
    """The answer's text from a provider's (untrusted) payload; empty if it has none."""
    message = _first_choice(payload).get("message")
    content = message.get("content") if isinstance(message, dict) else None
    return content if isinstance(content, str) else ""


def finish_reason_of(payload: Mapping[str, Any]) -> str:
    reason = _first_choice(payload).get("finish_reason")
    return reason if reason in ("stop", "length", "content_filter") else "stop"


def _first_choice(payload: Mapping[str, Any]) -> dict[str, Any]:
    choices = payload.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0]
    return {}


def text_of(value: object) -> str | None:
    """A provider's (untrusted) string field, bounded; None if it is not a string."""
    return value[:100] if isinstance(value, str) else None


def _http_error(exc: HTTPException) -> Response | tuple[Response, int] | HTTPException:
    """Under ``/v1/``, Flask's own errors (404, 405, 413) in OpenAI's shape; elsewhere unchanged."""
    if not request.path.startswith("/v1/") or exc.code is None or exc.code < 400:
        return exc
    kind = "not_found_error" if exc.code == 404 else "invalid_request_error"
    response, status = openai_error(exc.code, exc.description or exc.name, kind)
    if exc.code == 405:
        allowed = exc.get_response().headers.get("Allow")
        if allowed:
            response.headers["Allow"] = allowed
    return response, status


def register(app: Flask) -> None:
    """Add the ``/v1`` routes to the gateway ``app``."""
    app.add_url_rule("/v1/chat/completions", view_func=chat_completions, methods=["POST"])
    app.add_url_rule("/v1/models", view_func=list_models, methods=["GET"], endpoint="v1_list_models")
    app.add_url_rule("/v1/models/<model_id>", view_func=get_model, methods=["GET"], endpoint="v1_get_model")
    app.register_error_handler(HTTPException, _http_error)
