"""A Flask app with one route per response shape, for tests/test_responses.py.

Used in-process (test client, werkzeug's server in a thread) and under gunicorn
(``gunicorn --pythonpath tests 'responses_app:create_app()'``), so that each shape is checked the same way
under each server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flask import Flask, Response, send_file, stream_with_context

from flask_gatewayz_metrics import GatewayzMetrics, label_request

STATIC = Path(__file__).resolve().parent / "responses_static"
FILE_BODY = (STATIC / "data.bin").read_bytes()
"""The static file the app serves (committed: 10,000 bytes of digits)."""


class Boom(RuntimeError):
    """Raised by the failing routes and hooks."""


def create_app(hook_position: str = "after", **config: Any) -> Flask:
    """The app (``gunicorn 'responses_app:create_app()'``); ``hook_position`` ("before" or
    "after") places a raising ``after_request`` hook (for /hooked only) before or after
    ``GatewayzMetrics(app)``."""
    app = Flask(__name__, static_folder=str(STATIC), static_url_path="/static")
    app.config.update(config)

    def failing_hook(response: Response) -> Response:
        from flask import request

        if request.path == "/hooked":
            raise Boom("after_request failed")
        return response

    if hook_position == "before":
        app.after_request(failing_hook)
    GatewayzMetrics(app)
    if hook_position == "after":
        app.after_request(failing_hook)

    @app.get("/plain")
    def plain() -> str:
        return "plain"

    @app.get("/hooked")
    def hooked() -> str:
        return "the hook fails after me"

    @app.get("/file")
    def file() -> Response:
        return send_file(STATIC / "data.bin", mimetype="application/octet-stream")

    @app.get("/stream")
    def stream() -> Response:
        def chunks() -> Iterator[str]:
            yield "a"
            yield "b"

        return Response(chunks(), mimetype="text/plain")

    @app.get("/stream-fails")
    def stream_fails() -> Response:
        def chunks() -> Iterator[str]:
            yield "first"
            raise Boom("body failed mid-stream")

        return Response(chunks(), mimetype="text/plain")

    @app.get("/labelled-in-body")
    def labelled_in_body() -> Response:
        @stream_with_context
        def chunks() -> Iterator[str]:
            yield "a"
            labelled = label_request(provider="openai", model="gpt-4")
            yield "labelled" if labelled else "not labelled"

        return Response(chunks(), mimetype="text/plain")

    @app.get("/healthz")
    def healthz() -> str:
        return "ok"

    return app
