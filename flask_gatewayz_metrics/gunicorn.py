"""gunicorn hooks: ``gunicorn -c python:flask_gatewayz_metrics.gunicorn_conf app:app``.

Never required (an app under plain ``gunicorn app:app`` finds its server's directory on
its own, see ``storage.location``); the hooks are the fast path: the master prepares the
directory before any worker exists, folds an exited worker's file at once
(``child_exit``) and removes the directory when the server stops (``on_exit``). Your own
config file can use them too: call ``prepare_metrics_dir()`` at its top level (gunicorn
loads the config in the master before the app, also with ``--preload``) and set
``child_exit = child_exit`` and ``on_exit = on_exit`` (see ``conf/gunicorn.conf.py``).
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

from .storage import compact, location, process
from .storage.directory import ensure_directory, is_server_state_file

log = logging.getLogger("flask_gatewayz_metrics")
PREPARED_BY = "GATEWAYZ_METRICS_PREPARED_BY"
"""Environment marker: which master process (and directory) already emptied the directory."""


def prepare_metrics_dir(path: str | None = None) -> str:
    """Create (or empty) the metrics directory and export it as ``GATEWAYZ_METRICS_DIR``.

    ``path`` defaults to ``$GATEWAYZ_METRICS_DIR``, else this server's automatic
    directory (``storage.location``), which workers would find anyway. Only files this
    package writes are removed (also in the ``apps/`` subdirectories of further apps);
    anything else is left alone. Emptied once per master process: a configuration
    reload (``kill -HUP``) runs the config again in the same master, and a master
    started by ``kill -USR2`` shares the directory with the old one while its workers
    drain; neither may wipe live workers' counts.
    """
    explicit = path or os.environ.get("GATEWAYZ_METRICS_DIR")
    if explicit and location.is_automatic(explicit):
        explicit = None  # exported by a previous master (kept by gunicorn over HUP + USR2)
    path = ensure_directory(explicit) if explicit else location.server_location().path
    marker = f"{os.getpid()}:{path}"
    if os.environ.get(PREPARED_BY) != marker and explicit and not _upgrading():
        _empty(path)
        apps = os.path.join(path, location.APPS_DIR)
        if os.path.isdir(apps) and not os.path.islink(apps):
            for name in os.listdir(apps):
                sub = os.path.join(apps, name)
                if os.path.isdir(sub) and not os.path.islink(sub):
                    _empty(sub)
    os.environ[PREPARED_BY] = marker
    os.environ["GATEWAYZ_METRICS_DIR"] = path
    return path


def _empty(path: str) -> None:
    for name in os.listdir(path):
        if is_server_state_file(name):
            os.unlink(os.path.join(path, name))


def _upgrading() -> bool:
    """Whether this is a master started by ``kill -USR2`` while the old one still runs
    (gunicorn names the old master, our parent, in ``GUNICORN_PID``)."""
    old = os.environ.get("GUNICORN_PID", "")
    return old.isdigit() and int(old) == os.getppid() and process.process_info(int(old)) is not None


def on_exit(server: Any) -> None:
    """gunicorn ``on_exit`` hook: remove the server's automatic directory as the master
    stops, unless an upgraded master (``kill -USR2``) still uses it."""
    directory = os.environ.get("GATEWAYZ_METRICS_DIR", "")
    try:
        if location.release(directory):
            log.info("removed metrics directory %s", directory)
    except OSError as exc:
        log.warning("could not remove metrics directory %s: %s", directory, exc)


def child_exit(server: Any, worker: Any) -> None:
    """gunicorn ``child_exit`` hook: fold the exited worker's file into the archive now,
    off the master's loop.

    Correctness never depends on this hook: a dead worker's file is recognised by its
    released ``flock``, keeps counting in every scrape, and is compacted by the next
    scrape anyway. The hook just does it at once: the master only forks (about a
    millisecond for a master that has not loaded the app), and the child compacts and
    exits, so a compaction that takes tens of milliseconds at high cardinality never
    delays the arbiter.
    """
    directory = os.environ.get("GATEWAYZ_METRICS_DIR")
    if not directory:
        return
    try:
        compact_in_background(directory)
    except Exception as exc:  # never take the arbiter down over metrics
        log.warning("metrics compaction after worker %s exit failed: %s", getattr(worker, "pid", "?"), exc)


COMPACTION_BUDGET_SECONDS = 0.5
COMPACTION_ALARM_SECONDS = 30
"""The background compactor is killed (SIGALRM) if it is still running after this long:
it holds ``compaction.lock``, which no other compaction could take meanwhile."""


def compact_in_background(directory: str) -> int:
    """Run ``compact(directory)`` in a child of this process and return its pid at once.

    The caller (gunicorn's master) reaps the child like any other: gunicorn's SIGCHLD
    handler waits for every child and ignores those that are not workers. The child
    never returns into the caller's code: it restores default signal handling
    (gunicorn's handlers write to the master's wake-up pipe), compacts within a bounded
    time and leaves with ``os._exit``.
    """
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
                       signal.SIGUSR2, signal.SIGCHLD, signal.SIGWINCH, signal.SIGTTIN, signal.SIGTTOU):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(COMPACTION_ALARM_SECONDS)
        # Bounded and non-blocking (no file in the directory, not even a FIFO, can
        # hold it): what is out of time waits for the next run.
        compact(directory, budget_seconds=COMPACTION_BUDGET_SECONDS, max_files=64)
        code = 0
    finally:
        os._exit(code)
