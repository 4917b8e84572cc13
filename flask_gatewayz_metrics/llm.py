"""Recording what an AI gateway's operators need beyond the spec.

Tokens and cost, upstream error types, fallbacks between providers, the latest
rate-limit headroom, and streamed responses (time to first chunk, duration, outcome).
A mixin of ``MetricsCollector``: every method validates its input, never raises into
the caller (strict mode aside), and writes through the collector's storage.
"""

from __future__ import annotations

import logging
import math
from bisect import bisect_left
from typing import Any

from .labels import MAX_LABEL_LENGTH, as_number, as_status, plain_str
from .prices import PriceTable, load_prices
from .record_primitives import RecordPrimitives
from .request_state import current_request
from .storage import kinds, layout
from .tracing import trace_id_of

ERROR_TYPES = frozenset({"timeout", "rate_limited", "4xx", "5xx", "connection", "other"})
RATE_LIMITS = frozenset({"requests", "tokens"})
STREAM_OUTCOMES = frozenset({"completed", "client_disconnect", "error"})
TOKEN_DIRECTIONS = ("input", "output", "cached_input")
MAX_UNPRICED_LOGGED = 100
"""Distinct unpriced model names logged (each once, its first 200 characters) per price table."""
log = logging.getLogger("flask_gatewayz_metrics")


def error_type_of(status_code: int, error_type: str | None = None) -> str:
    """The closed-list error type of a failed upstream call (``status_code``: a plain int)."""
    if error_type is not None:
        given = plain_str(error_type)  # a str subclass's own __hash__ / __eq__ never run
        return given if given in ERROR_TYPES else "other"
    if status_code == 429:
        return "rate_limited"
    if status_code in (408, 504):
        return "timeout"
    if 400 <= status_code < 500:
        return "4xx"
    if 500 <= status_code < 600:
        return "5xx"
    return "other"


class GatewayRecording(RecordPrimitives):
    """AI-gateway recording methods of ``MetricsCollector`` (writing through ``RecordPrimitives``)."""

    histogram_bounds: tuple[float, ...]
    _histogram_kinds: dict[str, tuple[str, tuple[str, ...]]]

    def _add_latency_histogram(self, kind: str, labels: tuple[tuple[str, object], ...], seconds: float) -> None:
        """Add one observation to ``kind``'s latency histogram (count, sum, buckets of the
        collector's bounds; stored as ``kinds.histogram_kind`` says)."""
        increments = _histogram_increments(seconds, kinds.stored_bounds(kind, self.histogram_bounds))
        stored, prefix = self._histogram_kinds[kind]
        if not prefix:
            self._add(kind, labels, increments)
            return
        self._write_record(stored, lambda: (*prefix, *(self._admit(name, raw) for name, raw in labels)), increments)

    _prices: PriceTable | None = None
    _unpriced: set[str] | None = None

    def set_prices(self, prices: Any) -> None:
        """Use ``prices`` (a dict, a JSON file path or a ``PriceTable``; None: no table) to
        cost ``record_tokens`` calls made without ``cost_usd``. See ``prices``."""
        self._prices = None if prices is None else load_prices(prices)
        self._unpriced = set()

    def record_tokens(
        self,
        provider: str,
        model: str,
        input_tokens: int,
        output_tokens: int,
        cached_input_tokens: int = 0,
        cost_usd: float | None = None,
    ) -> None:
        """Count the tokens (and, if known, the cost in US dollars) of one LLM call.

        Feeds ``llm_tokens_total{provider,model,direction}``, the per-call histogram
        ``llm_request_tokens`` and ``llm_cost_usd_total{provider,model}``. Without
        ``cost_usd``, the cost comes from the price table (``set_prices``), if it has the model.
        """
        counts = [as_number(input_tokens), as_number(output_tokens), as_number(cached_input_tokens)]
        cost = None if cost_usd is None else as_number(cost_usd)
        if not all(0 <= n < math.inf for n in counts) or (cost is not None and not 0 <= cost < math.inf):
            return self._drop("invalid_value")
        if cost is None and self._prices is not None:
            cost = self._priced(model, counts)
        state = current_request.get()
        if state is not None and state.collector is self:  # gen_ai.server.time_per_output_token
            state.output_tokens += counts[1]
        for direction, count in zip(TOKEN_DIRECTIONS, counts, strict=True):
            if direction == "cached_input" and count == 0:
                continue
            bucket = kinds.TOKENS_BUCKETS + bisect_left(kinds.TOKEN_BOUNDS, count)
            labels = (("provider", provider), ("model", model), ("direction", direction))
            self._add("tokens", labels, ((kinds.TOKENS_SUM, count), (bucket, 1.0)))
        if cost is not None:
            self._add("cost", (("provider", provider), ("model", model)), ((kinds.VALUE, cost),))
        state = current_request.get()
        if state is not None and state.tenant is not None and state.collector is self:
            self.record_tenant_usage(state.tenant, counts, cost)
        return None

    def _priced(self, model: str, counts: list[float]) -> float | None:
        """The table's cost of one call; an unknown model is logged once (bounded), not costed."""
        prices = self._prices
        name = plain_str(model)  # the table's lookup never runs a str subclass's __hash__ / __eq__
        if prices is None or name is None:
            return None
        cost = prices.cost(name, counts[0], counts[1], counts[2])
        unpriced = self._unpriced
        if cost is None and unpriced is not None and len(unpriced) < MAX_UNPRICED_LOGGED:
            # Remembered as a label is kept: at most MAX_LABEL_LENGTH characters, so the
            # set holds at most 100 short strings whatever size of names callers pass.
            name = name[:MAX_LABEL_LENGTH]
            if name not in unpriced:
                unpriced.add(name)
                log.warning("no price for model %r in the price table (%s): its cost is not recorded", name, prices)
        return cost

    def record_provider_error(self, provider: str, status_code: int = 0, error_type: str | None = None) -> None:
        """Count a failed upstream call by type: timeout, rate_limited, 4xx, 5xx, connection, other.

        ``record_provider_call`` calls this for failed calls; call it directly for
        failures that never produced a status (time-outs, refused connections).
        """
        status = as_status(status_code)  # an int subclass's own comparisons never run
        kind = error_type_of(status if status.__class__ is int else 0, error_type)
        self._add("provider_error_type", (("provider", provider), ("error_type", kind)), ((kinds.VALUE, 1.0),))

    def record_fallback(self, from_provider: str, to_provider: str) -> None:
        """Count a request that moved from one provider to another."""
        self._add("fallback", (("provider", from_provider), ("provider", to_provider)), ((kinds.VALUE, 1.0),))

    def set_rate_limit_remaining(self, provider: str, limit: str, remaining: float) -> None:
        """Report the latest remaining rate limit (``limit``: requests or tokens); 0 is a value."""
        value = as_number(remaining)
        name = plain_str(limit)
        if name not in RATE_LIMITS or not 0 <= value < math.inf:
            return self._drop("invalid_value")
        self._add("rate_limit", (("provider", provider), ("limit", name)), (), latest=(value,))
        return None

    def record_exemplar(self, endpoint: str, method: str, latency_seconds: float, trace_id: str) -> None:
        """Keep ``trace_id`` as the latest exemplar of the latency bucket this request fell in.

        Served on ``http_request_duration_seconds`` buckets when OpenMetrics is negotiated.
        The 128-bit id is stored as four exact 32-bit parts.
        """
        latency = as_number(latency_seconds)
        trace = plain_str(trace_id)  # formatted below: never a subclass's own __format__
        if (
            trace is None or not 0 <= latency <= layout.MAX_SECONDS
            or trace_id_of(f"00-{trace}-0000000000000000-01") is None
        ):  # fmt: skip
            return self._drop("invalid_value")
        bucket = bisect_left(self.histogram_bounds, latency)
        parts = tuple(float(int(trace[i : i + 8], 16)) for i in range(0, 32, 8))
        labels = (("endpoint", endpoint), ("method", method), ("bucket", str(bucket)))
        self._add("exemplar", labels, (), latest=(*parts, latency))
        return None

    def record_stream(
        self,
        provider: str,
        model: str,
        outcome: str,
        duration_seconds: float,
        first_chunk_seconds: float | None = None,
    ) -> None:
        """Record one streamed response: its outcome, full duration and time to first chunk."""
        duration = as_number(duration_seconds)
        first = None if first_chunk_seconds is None else as_number(first_chunk_seconds)
        outcome = plain_str(outcome)  # type: ignore[assignment]  # None: not in the list
        if outcome not in STREAM_OUTCOMES or not 0 <= duration <= layout.MAX_SECONDS or (
            first is not None and not 0 <= first <= layout.MAX_SECONDS
        ):
            return self._drop("invalid_value")
        labels = (("provider", provider), ("model", model))
        self._add("stream", (*labels, ("outcome", outcome)), ((kinds.VALUE, 1.0),))
        self._add_latency_histogram("stream_duration", labels, duration)
        self._record_native("stream_duration_native", labels, duration)
        if first is not None:
            self._add_latency_histogram("first_chunk", labels, first)
            self._record_native("first_chunk_native", labels, first)
        return None


def _histogram_increments(seconds: float, bounds: tuple[float, ...]) -> tuple[tuple[int, float], ...]:
    """Increments of a count / sum / latency-buckets payload for one observation."""
    return (
        (kinds.REQ_COUNT, 1.0),
        (kinds.REQ_SUM, seconds),
        (kinds.REQ_BUCKETS + bisect_left(bounds, seconds), 1.0),
    )
