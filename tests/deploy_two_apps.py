"""Two zero-configuration Flask apps in one process, mounted at ``/a`` and ``/b``.

Served by gunicorn as ``deploy_two_apps:app`` in the deployment tests: each app must
show only its own requests, whichever worker answers.
"""

from __future__ import annotations

from flask import Flask
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from flask_gatewayz_metrics import GatewayzMetrics


def make(name: str) -> Flask:
    app = Flask(name)
    GatewayzMetrics(app)
    app.add_url_rule("/ok", "ok", lambda: "ok")
    app.add_url_rule("/pid", "pid", lambda: "pid")
    return app


first, second = make("first"), make("second")
app = DispatcherMiddleware(first, {"/a": first, "/b": second})
