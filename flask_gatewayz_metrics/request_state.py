"""What the request being timed right now carries: its collector, provider and model.

Kept in a ``ContextVar`` so that code deep inside a view (or the ``track_request``
decorator) can attach labels to the current request without any Flask import, and so
that nothing records the same request twice.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .collector import MetricsCollector


@dataclass(slots=True)
class RequestState:
    """Per-request bookkeeping of the Flask extension (one object per request)."""

    collector: MetricsCollector
    start: float
    endpoint: str = ""
    """Route template of the request (or the unmatched label), known once it is routed."""
    method: str = ""
    provider: str | None = None
    model: str | None = None
    provider_recorded: bool = False
    """Set when the view recorded provider calls itself; the hook then skips them."""
    finished: bool = False
    trace_id: str | None = None
    """From an incoming W3C ``traceparent``: becomes the latency bucket's exemplar."""
    in_flight: bool = True
    """Counted in ``http_requests_in_flight`` until recorded (or skipped)."""


current_request: ContextVar[RequestState | None] = ContextVar(
    "gatewayz_metrics_request", default=None
)


def label_request(provider: str | None = None, model: str | None = None) -> bool:
    """Attach ``provider`` and/or ``model`` to the request being timed.

    When the request ends, its latency and status are then also recorded under
    ``provider_*`` and ``model_*``. Returns False (and does nothing) outside a request
    timed by ``GatewayzMetrics``.
    """
    state = current_request.get()
    if state is None:
        return False
    if provider is not None:
        state.provider = provider
    if model is not None:
        state.model = model
    return True
