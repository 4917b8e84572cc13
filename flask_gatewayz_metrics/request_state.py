"""What the request being timed right now carries: its collector, provider and model.

Kept in a ``ContextVar`` so that code deep inside a view, a streamed body or the
``track_request`` decorator can attach labels to the current request without any
Flask import, and so that nothing records the same request twice. This is the part of
request timing the recording layer sees; the timing itself (WSGI wrapper, Flask hook,
the per-request object) is ``request_timing``.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .collector import MetricsCollector
    from .tenants import Tenant


class RequestState:
    """Per-request bookkeeping of the Flask extension (one object per request).

    A plain class with ``__slots__`` (not a dataclass) so that request timing can
    extend it into the one object a request allocates (``request_timing.Exchange``).
    """

    __slots__ = (
        "collector",
        "endpoint",
        "finished",
        "method",
        "model",
        "output_tokens",
        "provider",
        "provider_recorded",
        "start",
        "tenant",
        "trace_id",
    )  # fmt: skip

    # The fields, set for each request by ``request_timing.timed_wsgi_app`` (no __init__:
    # a Python call less on every request), except ``method``: see there.
    collector: MetricsCollector
    start: float
    """perf_counter() when the server handed the request over."""
    endpoint: str
    """Route template of the request (or the unmatched label), known once it is routed."""
    method: str
    """The request method (``OTHER`` if not a known one), set once it is routed, before
    ``endpoint``: a state whose ``endpoint`` is set has its ``method``."""
    provider: str | None
    model: str | None
    provider_recorded: bool
    """Set when the view recorded provider calls itself; the request then skips them."""
    finished: bool
    """Set once the request is recorded (which also takes it out of the in-flight
    gauge): nothing records it again."""
    trace_id: str | None
    """The active OpenTelemetry span's trace id, else an incoming W3C ``traceparent``'s:
    becomes the latency bucket's exemplar."""
    output_tokens: float
    """Output tokens the request's ``record_tokens`` calls reported (for
    gen_ai.server.time_per_output_token)."""
    tenant: Tenant | None
    """Team, API key label (hashed) and user, from ``label_request`` (see ``tenants``)."""

    metrics: Any = None
    """The Flask extension's per-app state: a slot of ``request_timing.Exchange``, set for
    each request; this class default (None) lets the timing layer test ``state.metrics``
    on any state without a type check first."""


current_request: ContextVar[RequestState | None] = ContextVar(
    "gatewayz_metrics_request", default=None
)
_get_current = current_request.get  # (bound once: an attribute lookup less per call)


def label_request(
    provider: str | None = None,
    model: str | None = None,
    *,
    team: str | None = None,
    api_key: str | None = None,
    user: str | None = None,
    api_key_alias: str | None = None,
) -> bool:
    """Attach ``provider`` and/or ``model`` (and a tenant) to the request being timed.

    Works anywhere in the request's lifetime: in the view, in hooks and error handlers,
    and in a streamed body while the server iterates it. When the request ends, its
    latency and status are then also recorded under ``provider_*`` and ``model_*``
    (and, for a streamed body, ``llm_stream_*``). ``team``, ``api_key`` and ``user``
    make the request, its errors, tokens and cost count in ``gatewayz_tenant_*``; the
    API key is hashed at once (or replaced by ``api_key_alias``) and never kept raw
    (see ``tenants``). Returns False (and does nothing) outside a request timed by
    ``GatewayzMetrics``, and once that request has been recorded.
    """
    state = _get_current()
    if state is None or state.finished:  # none, or recorded already: the labels would be lost
        return False
    if provider is not None:
        state.provider = provider
    if model is not None:
        state.model = model
    if team is not None or api_key is not None or user is not None or api_key_alias is not None:
        metrics = getattr(state, "metrics", None)
        settings = getattr(metrics, "settings", None)
        old = state.tenant or (None, None, None)
        new = state.collector.tenant(team, api_key, user, api_key_alias, getattr(settings, "tenant_hash_key", None))
        if new is not None:
            state.tenant = (
                new[0] if team is not None else old[0],
                new[1] if api_key is not None or api_key_alias is not None else old[1],
                new[2] if user is not None else old[2],
            )
    return True
