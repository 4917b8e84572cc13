"""Trace ids: of the OpenTelemetry span active right now, if the application traces, and
of a W3C ``traceparent`` header (``trace_id_of``).

OpenTelemetry is optional: this module never imports it. When the application has
loaded ``opentelemetry.trace`` (it traces), the current span's context is read through
it; otherwise the cost is one dictionary lookup. An invalid span (no SDK configured,
or none active) gives None, and so does anything going wrong: tracing never breaks a
request.
"""

from __future__ import annotations

import sys
from typing import Any

MODULE = "opentelemetry.trace"
_trace: Any = None
"""``opentelemetry.trace`` once the application has imported it."""


def current_trace_id() -> str | None:
    """The active span's 32-hex-digit trace id, or None (no OpenTelemetry, no valid span)."""
    global _trace
    trace = _trace
    if trace is None:
        trace = _trace = sys.modules.get(MODULE)
        if trace is None:
            return None
    try:
        context = trace.get_current_span().get_span_context()
        trace_id = context.trace_id
        if not context.is_valid or trace_id.__class__ is not int or not 0 < trace_id < 1 << 128:
            return None
        return f"{trace_id:032x}"
    except Exception:  # a broken or foreign tracer: no exemplar from it
        return None


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id of a W3C ``traceparent`` header (``00-<32 hex>-<16 hex>-<2 hex>``)."""
    if not traceparent or len(traceparent) < 55:
        return None
    parts = traceparent.strip().split("-")
    trace_id = parts[1].lower() if len(parts) >= 4 else ""
    # Exactly 32 hex digits: ``int(x, 16)`` would also take "_", "+", " " and "0x", which a
    # client can send and which then break the exemplar's 8-digit parts.
    if len(trace_id) != 32 or trace_id == "0" * 32 or not _HEX_DIGITS.issuperset(trace_id):
        return None
    return trace_id


_HEX_DIGITS = frozenset("0123456789abcdef")
