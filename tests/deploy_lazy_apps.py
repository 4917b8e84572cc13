"""Apps created on their first request (Flask's "application dispatching" by path),
each with ``GatewayzMetrics(app, app_name=<prefix>)``: served by gunicorn as
``deploy_lazy_apps:app`` in the deployment tests. Each worker creates ``a`` and ``b`` in
the order its first requests come, so the automatic per-app directories (by creation
order) would differ between workers; the names make them the same everywhere.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask
from werkzeug.exceptions import NotFound

from flask_gatewayz_metrics import GatewayzMetrics

NAMED = os.environ.get("DEPLOY_LAZY_NAMED", "1") == "1"
"""``DEPLOY_LAZY_NAMED=0``: no names, the apps' directories follow creation order."""


def create_app(prefix: str) -> Flask:
    app = Flask(__name__)
    GatewayzMetrics(app, **({"app_name": prefix} if NAMED else {}))
    # The body names the worker, so a test can tell which workers made which apps.
    app.add_url_rule("/ok", "ok", lambda: f"{prefix} {os.getpid()}")
    return app


_apps: dict[str, Flask] = {}
_lock = threading.Lock()


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """``/a/...`` and ``/b/...`` go to their app (made at its first request); ``/pid`` answers here."""
    path = environ.get("PATH_INFO", "")
    prefix, _, rest = path.lstrip("/").partition("/")
    if prefix == "pid":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(os.getpid()).encode()]
    if prefix not in ("a", "b"):
        return NotFound()(environ, start_response)  # type: ignore[no-any-return]
    with _lock:
        target = _apps.get(prefix)
        if target is None:
            target = _apps[prefix] = create_app(prefix)
    environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + "/" + prefix
    environ["PATH_INFO"] = "/" + rest
    return target(environ, start_response)  # type: ignore[no-any-return]
