"""The trace id of the OpenTelemetry span active right now, if the application traces.

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
