"""Helpers for a gunicorn config file (see ``conf/gunicorn.conf.py``).

Call ``prepare_metrics_dir()`` at the top level of the config file: gunicorn loads the
config in the master before it imports the app (also with ``--preload``), so every
worker inherits ``GATEWAYZ_METRICS_DIR`` and finds a clean directory.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

from .storage import layout

log = logging.getLogger("flask_gatewayz_metrics")


def prepare_metrics_dir(path: str | None = None) -> str:
    """Create (or empty) the metrics directory and export it as ``GATEWAYZ_METRICS_DIR``.

    ``path`` defaults to ``$GATEWAYZ_METRICS_DIR``, else a new private temporary
    directory. Only files this package writes are removed; anything else is left alone.
    """
    path = path or os.environ.get("GATEWAYZ_METRICS_DIR") or tempfile.mkdtemp(prefix="gatewayz-metrics-")
    os.makedirs(path, mode=0o700, exist_ok=True)
    for name in os.listdir(path):
        if name.endswith(layout.WORKER_SUFFIX) or name == layout.CONTROL_NAME:
            os.unlink(os.path.join(path, name))
    os.environ["GATEWAYZ_METRICS_DIR"] = path
    return path


def child_exit(server: Any, worker: Any) -> None:
    """gunicorn ``child_exit`` hook: note that a worker is gone.

    Correctness never depends on this hook: a dead worker's file is recognised by its
    released ``flock`` and keeps counting in every scrape. The hook only logs the exit
    at debug level today; it is where compaction of dead workers' files is triggered
    early once that exists.
    """
    log.debug("gunicorn worker %s exited", getattr(worker, "pid", "?"))
