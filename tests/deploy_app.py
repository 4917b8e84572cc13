"""A zero-configuration app for the deployment tests: ``GatewayzMetrics(app)`` and nothing else.

Served by gunicorn, uWSGI and waitress as ``deploy_app:app`` (with ``tests/`` on the
path), and by the Flask dev server as ``python tests/deploy_app.py PORT [processes]``.
With ``DEPLOY_APP_RECORD_AT_IMPORT=1`` it records one external call while being
imported, as apps that warm a cache at start-up do: under uWSGI's default mode that
happens in the master, before the workers are forked from C.
"""

from __future__ import annotations

import os
import sys

from flask import Flask

from flask_gatewayz_metrics import GatewayzMetrics, label_request

app = Flask(__name__)
metrics = GatewayzMetrics(app)

if os.environ.get("DEPLOY_APP_RECORD_AT_IMPORT") == "1":
    metrics.of(app).collector.record_external_api_call("import")


@app.get("/ok")
def ok() -> str:
    label_request(provider="openai", model="gpt-4")
    return "ok"


@app.get("/fail")
def fail() -> tuple[str, int]:
    return "failed", 500


@app.get("/pid")
def pid() -> str:
    return str(os.getpid())


if __name__ == "__main__":
    port, processes = int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 1
    app.run("127.0.0.1", port, threaded=processes == 1, processes=processes, use_reloader=False)
