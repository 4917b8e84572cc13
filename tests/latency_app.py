"""A test app whose one endpoint takes as long as it is asked to: ``GET /work?ms=<0..2000>``.

Served by gunicorn as ``latency_app:app`` (with ``tests/`` on the path) for the native
histogram accuracy test: the latencies the extension measures are the asked sleeps plus
the request's own handling time.
"""

from __future__ import annotations

import time

from flask import Flask, request

from flask_gatewayz_metrics import GatewayzMetrics

app = Flask(__name__)
GatewayzMetrics(app)


@app.get("/work")
def work() -> str:
    milliseconds = min(max(request.args.get("ms", 0, type=int), 0), 2000)
    time.sleep(milliseconds / 1000)
    return "done"


@app.get("/healthz")
def healthz() -> str:
    """What ``tests/servers.py`` probes for readiness."""
    return "ok"
