"""The process-wide default collector: ``get_metrics_collector()``, the collector each
new app gets (``collector_for_app``), and the at-fork hook that gives every live
collector of a forked child its own state.

``MetricsCollector`` is imported when a collector is first built here, not at import
time: ``collector`` imports this module (and re-exports its public names).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from .request_state import current_request
from .settings import collector_options_from_env
from .storage import location, process

if TYPE_CHECKING:
    from .collector import MetricsCollector

_default: MetricsCollector | None = None
_default_lock = threading.Lock()
_live_collectors: weakref.WeakSet[MetricsCollector] = weakref.WeakSet()
_base_taken = False
"""Whether an app of this process already records into the base directory."""
_automatic_apps = 0
"""Apps of this process given a collector without a directory of their own, so far."""


def get_metrics_collector() -> MetricsCollector:
    """The collector of the request being timed, else the process-wide collector.

    The process-wide collector is the first app's (the first ``init_app`` in this
    process, whichever collector it got); before any app exists it is created on first
    use from the environment: ``GATEWAYZ_METRICS_DIR``, ``GATEWAYZ_METRICS_WINDOW_SECONDS``,
    ``GATEWAYZ_METRICS_WINDOW_SLOTS``, ``GATEWAYZ_METRICS_ERROR_STATUS`` (and the first app
    without storage options then adopts it).
    """
    found = current_collector()
    if found is not None:
        return found
    global _default
    with _default_lock:
        if _default is None:
            _default = _from_environment()
    return _default


def _from_environment(namespace: str | None = None) -> MetricsCollector:
    from .collector import MetricsCollector  # noqa: PLC0415 (collector imports this module)

    # The directory: GATEWAYZ_METRICS_DIR or automatic (location.resolve); the window and
    # error threshold from their variables, parsed and checked like config values.
    return MetricsCollector(None, namespace=namespace, **collector_options_from_env())


def collector_for_app(
    app_name: str,
    given: MetricsCollector | None,
    make: Callable[[str | None], MetricsCollector] | None,
    name: str | None = None,
) -> MetricsCollector:
    """The collector of a new app: one set of numbers per app unless it is shared on purpose.

    ``given`` (a collector passed by the user) is used as is. Otherwise ``make(namespace)``
    builds one (``make`` None: no storage options, the environment's settings). An app
    with a ``name`` (``GATEWAYZ_METRICS_APP_NAME``) records into the subdirectory
    ``apps/named-<name>``. Otherwise the first such app records into the base directory
    (``GATEWAYZ_METRICS_DIR`` or the server's automatic one), adopting the process-wide
    collector when it has no options; each later app gets the subdirectory
    ``apps/<app name>-<n>``, ``n`` counting these apps in the order they are
    initialised, which is the same in every worker of a server only when every worker
    creates its apps in the same order, e.g. at import. An app initialised by automatic
    order after this process served requests (apps created on their first request,
    Flask's "application dispatching") may get another app's directory in another
    worker: in a process that looks like one of several (``_late``), it and the
    process's first app are then reported by ``/metrics/health``
    (``Location.order_dependent``). The first app's collector is what
    ``get_metrics_collector()`` returns outside a request.
    """
    global _default, _base_taken, _automatic_apps
    with _default_lock:
        collector = given
        late_first: MetricsCollector | None = None
        if collector is None:
            if name is not None:
                namespace: str | None = f"named-{name}"
            else:
                _automatic_apps += 1
                namespace = f"{app_name}-{_automatic_apps}" if _base_taken else None
                _base_taken = True
                if namespace is not None and _late(_default):
                    late_first = _default
            if namespace is None and make is None and _default is not None:
                collector = _default
            elif make is None:
                collector = _from_environment(namespace)
            else:
                collector = make(namespace)
            if late_first is not None:
                for late in (collector, late_first):
                    late.location = replace(late.location, order_dependent=True)
                    location.announce(late.location, False)
        if _default is None:
            _default = collector
        return collector


def current_collector() -> MetricsCollector | None:
    """What ``get_metrics_collector()`` returns now, without making one: the request's
    collector, else the process-wide one, else None."""
    state = current_request.get()
    return state.collector if state is not None else _default


def _late(first: MetricsCollector | None) -> bool:
    """Whether an app initialised now, by order, may get another directory in another
    worker: this process has served requests through an app (a timed request wrote the
    in-flight gauge) and looks like one of several serving processes. (A recording at
    import, or a test suite's apps made one after another in one process, are not.)"""
    served = any(c._in_flight_offset >= 0 for c in list(_live_collectors))
    return first is not None and served and process.multiprocess_hint() is not None


def _after_fork_in_child() -> None:
    global _default_lock
    _default_lock = threading.Lock()
    for collector in list(_live_collectors):
        collector._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
