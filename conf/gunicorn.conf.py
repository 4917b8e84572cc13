"""gunicorn settings for the example gateway: ``gunicorn -c conf/gunicorn.conf.py example_app.app:app``.

``prepare_metrics_dir()`` runs at the top level on purpose: gunicorn executes this file
in the master before it imports the app (with or without ``--preload``), so the metrics
directory is clean and ``GATEWAYZ_METRICS_DIR`` is exported before any worker exists.
Command-line options (``--bind``, ``--workers``, ...) override the values below.
"""

from __future__ import annotations

from flask_gatewayz_metrics import gunicorn as gatewayz_gunicorn

gatewayz_gunicorn.prepare_metrics_dir()

bind = "127.0.0.1:8000"
workers = 4
child_exit = gatewayz_gunicorn.child_exit
