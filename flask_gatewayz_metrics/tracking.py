"""The ``track_request`` decorator of the spec, for sync and ``async def`` functions."""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .collector import get_metrics_collector
from .default_collector import current_collector
from .request_state import label_request

F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger("flask_gatewayz_metrics")

RETRY_SECONDS = 60.0
"""Outside Flask, how long a process-wide collector that could not be made (a refused
directory, a bad setting) is not tried again; each failure is logged once."""
_retry_at = 0.0


def track_request(
    endpoint: str, method: str = "GET", provider: str | None = None, model: str | None = None
) -> Callable[[F], F]:
    """Record each call of the decorated function as one request.

    The status is taken from the return value when it has one (a response's
    ``status_code``, or the second item of a ``(body, status)`` tuple), else 200; an
    exception counts as a 500 error and is re-raised. The return value passes through
    unchanged. Inside a request already timed by ``GatewayzMetrics`` the request is not
    counted twice: the decorator only attaches ``provider`` and ``model`` to it.
    """

    def decorate(func: F) -> F:
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                if label_request(provider, model):
                    return await func(*args, **kwargs)
                start = time.perf_counter()
                try:
                    result = await func(*args, **kwargs)
                except BaseException:
                    _record(endpoint, method, start, 500, provider, model, failed=True)
                    raise
                _record(endpoint, method, start, _status_of(result), provider, model)
                return result

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if label_request(provider, model):
                return func(*args, **kwargs)
            start = time.perf_counter()
            try:
                result = func(*args, **kwargs)
            except BaseException:
                _record(endpoint, method, start, 500, provider, model, failed=True)
                raise
            _record(endpoint, method, start, _status_of(result), provider, model)
            return result

        return wrapper  # type: ignore[return-value]

    return decorate


def _record(
    endpoint: str, method: str, start: float, status: int,
    provider: str | None, model: str | None, failed: bool = False,
) -> None:
    latency = time.perf_counter() - start
    global _retry_at
    collector = current_collector()  # (an app made since a failure provides one)
    if collector is None:
        if _retry_at and time.monotonic() < _retry_at:
            return  # no collector could be made lately (logged): the call stays unrecorded
        try:
            collector = get_metrics_collector()
        except Exception as exc:
            # Outside Flask the collector is made at the first recorded call, after the
            # function has run: metrics never break the caller (its result or its own
            # exception pass through), so the problem is logged, not raised.
            _retry_at = time.monotonic() + RETRY_SECONDS
            log.error("track_request: no metrics collector, calls are not recorded (next try in %.0f s): %s",
                      RETRY_SECONDS, exc)
            return
        _retry_at = 0.0
    collector.observe_request(endpoint, method, latency, status, provider, model, failed)


def _status_of(result: object) -> int:
    status = getattr(result, "status_code", None)
    if isinstance(status, int):
        return status
    if isinstance(result, tuple) and len(result) >= 2 and isinstance(result[1], int):
        return result[1]
    return 200
