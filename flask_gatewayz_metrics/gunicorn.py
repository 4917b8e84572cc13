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

from .storage import compact, layout
from .storage.directory import ensure_directory

log = logging.getLogger("flask_gatewayz_metrics")
PREPARED_BY = "GATEWAYZ_METRICS_PREPARED_BY"
"""Environment marker: which master process (and directory) already emptied the directory."""


def prepare_metrics_dir(path: str | None = None) -> str:
    """Create (or empty) the metrics directory and export it as ``GATEWAYZ_METRICS_DIR``.

    ``path`` defaults to ``$GATEWAYZ_METRICS_DIR``, else a new private temporary
    directory. Only files this package writes are removed; anything else is left alone.
    Emptied once per master process: a configuration reload (``kill -HUP``) runs the
    config file again in the same master, and must not wipe the live workers' counts.
    """
    path = ensure_directory(
        path or os.environ.get("GATEWAYZ_METRICS_DIR") or tempfile.mkdtemp(prefix="gatewayz-metrics-")
    )
    marker = f"{os.getpid()}:{path}"
    if os.environ.get(PREPARED_BY) != marker:
        for name in os.listdir(path):
            if name.endswith(layout.WORKER_SUFFIX) or name in (layout.CONTROL_NAME, layout.ARCHIVE_NAME):
                os.unlink(os.path.join(path, name))
        os.environ[PREPARED_BY] = marker
    os.environ["GATEWAYZ_METRICS_DIR"] = path
    return path


def child_exit(server: Any, worker: Any) -> None:
    """gunicorn ``child_exit`` hook: fold the exited worker's file into the archive now.

    Correctness never depends on this hook: a dead worker's file is recognised by its
    released ``flock``, keeps counting in every scrape, and is compacted by the next
    scrape anyway. The hook just does it at once, in the master, off the request path.
    """
    directory = os.environ.get("GATEWAYZ_METRICS_DIR")
    if not directory:
        return
    try:
        # Bounded and non-blocking (no file in the directory, not even a FIFO, can hold
        # the master): a run that is out of time leaves the rest to the next scrape.
        compact(directory, budget_seconds=0.5, max_files=64)
    except Exception as exc:  # never take the arbiter down over metrics
        log.warning("metrics compaction after worker %s exit failed: %s", getattr(worker, "pid", "?"), exc)
