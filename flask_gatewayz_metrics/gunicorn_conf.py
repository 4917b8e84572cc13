"""Ready-made gunicorn config: ``gunicorn -c python:flask_gatewayz_metrics.gunicorn_conf app:app``.

Optional (metrics are exact without it, within a server's life); it prepares the metrics
directory in the master before any worker exists (emptying an explicit
``GATEWAYZ_METRICS_DIR``, so that a restarted server starts from zero), folds each
exited worker's file at once and removes the directory when the server stops. It sets
no server options: ``--bind``, ``--workers`` and the rest come from the command line
(or ``GUNICORN_CMD_ARGS``). To add your own settings, write a config file that starts
with ``from flask_gatewayz_metrics.gunicorn_conf import *`` (see ``conf/gunicorn.conf.py``).
"""

from __future__ import annotations

from flask_gatewayz_metrics.gunicorn import child_exit, on_exit, prepare_metrics_dir

__all__ = ["child_exit", "on_exit"]

prepare_metrics_dir()
