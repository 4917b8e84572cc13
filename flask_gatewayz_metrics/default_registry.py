"""``prometheus_client``'s default registry on ``/metrics``, only where its numbers are true.

Every process has its own default registry. A single-process server serves it as is.
When several processes serve the app, a scrape is answered by any one of them, and
its counters would go down from one scrape to the next (Prometheus reads each drop as
a counter reset). So, multi-process:

- per-process collectors (``process_*``, ``python_gc_*``) are not served;
  ``python_info`` is (it is the same in every worker of one interpreter);
- the application's own families are not served either: ``/metrics/health`` is
  ``degraded`` and names them, and a log line (at most every ``LOG_INTERVAL_SECONDS``)
  says how to fix it: define them with the custom metrics API
  (``collector.counter()`` / ``gauge()`` / ``histogram()``, merged across workers), or
  set ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's own multiprocess mode, exact,
  served instead of the default registry; see ``extension.app_metrics_source``).

The multi-process signal must not flap (a family served, then withheld, then served
again is worse than either), so it only ever turns on, per collector:

- gunicorn's arbiter or uWSGI's ``uwsgi`` module is loaded: their workers are forked
  and recycled, so even one worker is replaced by a new process counting from 0;
- this process was forked after this module was imported (an unknown pre-forking
  server, Flask's dev server with ``processes=N``);
- the metrics directory holds a live worker file of another process.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .snapshot import Snapshot
    from .storage import WorkerView

log = logging.getLogger("flask_gatewayz_metrics")

PER_PROCESS_PREFIXES = ("process_", "python_gc_")
"""Families of prometheus_client's process and gc collectors: one process's numbers."""
CONSTANT_FAMILIES = frozenset({"python_info"})
"""Families that are the same in every worker (served in every mode)."""
LOG_INTERVAL_SECONDS = 600.0
HOW_TO_FIX = (
    "define them with flask_gatewayz_metrics's custom metrics "
    "(collector.counter()/gauge()/histogram(), merged across workers), "
    "or set PROMETHEUS_MULTIPROC_DIR for prometheus_client's multiprocess mode"
)

_forked = False
_last_log = -float("inf")


def _note_fork() -> None:
    global _forked
    _forked = True


os.register_at_fork(after_in_child=_note_fork)


def multi_process_reason(views: Sequence[WorkerView], previous: str | None) -> str | None:
    """Why this server is multi-process (None: no sign of it yet); sticky via ``previous``."""
    if previous is not None:
        return previous
    if "gunicorn.arbiter" in sys.modules:
        return "gunicorn workers"
    if "uwsgi" in sys.modules:
        return "uWSGI workers"
    if _forked:
        return "forked worker process"
    me = os.getpid()
    for view in views:
        if view.live and not view.is_archive and view.writer_pid not in (None, me):
            return "live worker files of other processes in the metrics directory"
    return None


def is_per_process(name: str) -> bool:
    """Whether family ``name`` describes one process only (``PER_PROCESS_PREFIXES``)."""
    return name.startswith(PER_PROCESS_PREFIXES)


class DefaultRegistry(Collector):
    """The default registry as served on ``/metrics`` (see the module docstring)."""

    def __init__(self, registry: Collector = REGISTRY) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        """Everything (no snapshot: nothing says the server is multi-process)."""
        yield from self.registry.collect()

    def collect_for(self, snap: Snapshot) -> Iterator[Metric]:
        """The families that are true for ``snap``'s server; logs what is withheld."""
        if snap.multi_process is None:
            yield from self.registry.collect()
            return
        withheld = []
        for family in self.registry.collect():
            if family.name in CONSTANT_FAMILIES:
                yield family
            elif not is_per_process(family.name):
                withheld.append(family.name)
        if withheld:
            _log_withheld(withheld, snap.multi_process)

    def withheld(self, snap: Snapshot) -> list[str]:
        """The application's families not served because the server is multi-process."""
        if snap.multi_process is None:
            return []
        return sorted(
            family.name for family in self.registry.collect()
            if family.name not in CONSTANT_FAMILIES and not is_per_process(family.name)
        )


def withheld_reason(snap: Snapshot) -> str | None:
    """The ``/metrics/health`` reason for default-registry families not served, if any."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return None
    names = DefaultRegistry().withheld(snap)
    if not names:
        return None
    return (
        f"prometheus_client default-registry metrics not served ({snap.multi_process}: each process "
        f"counts alone): {', '.join(names[:10])}{' ...' if len(names) > 10 else ''}; {HOW_TO_FIX}"
    )


def _log_withheld(names: list[str], why: str) -> None:
    global _last_log
    now = time.monotonic()
    if now - _last_log < LOG_INTERVAL_SECONDS:
        return
    _last_log = now
    log.warning(
        "not serving prometheus_client default-registry metrics %s on /metrics: this server has "
        "several processes (%s) and each one counts alone, so the numbers would go down between "
        "scrapes. To serve them, %s.",
        ", ".join(sorted(names)), why, HOW_TO_FIX,
    )
