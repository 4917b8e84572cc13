"""gunicorn settings for the example gateway: ``gunicorn -c conf/gunicorn.conf.py example_app.app:app``.

The metrics hooks come from the package's own config module (the same as
``-c python:flask_gatewayz_metrics.gunicorn_conf``): importing it prepares the metrics
directory in the master before the app is imported (with or without ``--preload``) and
provides ``child_exit`` and ``on_exit``. Command-line options (``--bind``,
``--workers``, ...) override the values below.
"""

from __future__ import annotations

from flask_gatewayz_metrics.gunicorn_conf import *  # noqa: F403 (child_exit, on_exit)

bind = "127.0.0.1:8000"
workers = 4
