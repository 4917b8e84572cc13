"""The record kinds of the metrics files: what each holds and its fields by name.

A record's key starts with its kind (``layout`` gives the bytes of records, slots and
bucket blocks). ``KINDS`` says, per kind, its label names and its payload: fixed
(``size`` float64 values) or windowed (slots, with or without a sketch), and how
workers' payloads combine (``Kind.merge``). Code above ``storage/`` reads and writes a
payload only through the field names here (``REQ_SUM``, ``CACHE_MISSES``,
``HISTOGRAM_BUCKETS``...), never a bare index (``tests/test_layout_fields.py``).

The bucket bounds live here too: they fix the payload size of the histogram kinds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from . import layout

HISTOGRAM_BOUNDS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)
"""Upper bounds of the since-start latency histograms (the last bucket is +Inf).

From 5 ms (a cache hit) to 600 s, the usual time-out of an LLM call."""

TOKEN_BOUNDS: tuple[float, ...] = tuple(float(4**i) for i in range(14))
"""Upper bounds of the tokens-per-request histogram: 1, 4, 16, ... 67108864 (OpenTelemetry
GenAI's gen_ai.client.token.usage buckets)."""
TOKENS_SIZE = 1 + len(TOKEN_BOUNDS) + 1
"""Payload of a "tokens" record: token sum, then one count per bucket (+Inf last)."""

# Bucket bounds the OpenTelemetry semantic conventions recommend (ExplicitBucketBoundaries)
# for the histograms of ``semconv``; each payload is the value sum, then one count per
# bucket (+Inf last), the count being their sum (http_server_buckets: the counts only).
# gen_ai.client.token.usage uses TOKEN_BOUNDS, which are the conventions' own.
HTTP_SERVER_BOUNDS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)
"""http.server.request.duration (stable)."""
GEN_AI_DURATION_BOUNDS: tuple[float, ...] = tuple(0.01 * 2**i for i in range(14))
"""gen_ai.client.operation.duration and gen_ai.server.request.duration: 0.01, 0.02, ... 81.92."""
GEN_AI_FIRST_TOKEN_BOUNDS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)
"""gen_ai.server.time_to_first_token."""
GEN_AI_PER_TOKEN_BOUNDS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
)
"""gen_ai.server.time_per_output_token."""

# Payload of the request-like records: count, latency sum, histogram buckets.
REQ_COUNT, REQ_SUM, REQ_BUCKETS = range(3)
REQUEST_SIZE = REQ_BUCKETS + len(HISTOGRAM_BOUNDS) + 1
"""Payload size of a request-like series with the default bounds, as readers see it
(after ``merge.select_bounds``; "request" and "provider" records store more buckets:
``stored_bounds``)."""

SERVER_KINDS: tuple[str, ...] = ("request", "provider")
"""Request-like kinds whose records keep their buckets over the union of the latency
bounds and ``HTTP_SERVER_BOUNDS`` (``stored_bounds``): the request path finds one bucket
for both, and http.server.request.duration's buckets are sums of the "request"
record's (no record of its own: one key, header and page fewer per label set).
``merge.select_bounds`` hands readers the payload over the latency bounds, and the
conventions' buckets as the series of ``HTTP_SERVER_BUCKETS``."""
HTTP_SERVER_BUCKETS = "http_server_buckets"
"""The merged series of http.server.request.duration's bucket counts (labels of a
"request" record; counts only, from index 0), derived from the "request" records."""


def stored_bounds(kind: str, bounds: Sequence[float]) -> tuple[float, ...]:
    """The bucket bounds a ``kind`` record (one of ``BOUNDED_KINDS``) of a collector with
    latency ``bounds`` stores its counts over: with ``HTTP_SERVER_BOUNDS`` for
    ``SERVER_KINDS``, else ``bounds`` themselves."""
    if kind in SERVER_KINDS:
        return tuple(sorted({*map(float, bounds), *HTTP_SERVER_BOUNDS}))
    return tuple(bounds)


def _stored_size(kind: str) -> int:
    return REQ_BUCKETS + len(stored_bounds(kind, HISTOGRAM_BOUNDS)) + 1


@dataclass(frozen=True)
class Kind:
    """What a record kind holds: label names, and a fixed or windowed payload."""

    labels: tuple[str, ...]
    size: int = 0
    """Fixed payload size in float64 values (0 for windowed kinds)."""
    windowed: bool = False
    with_sketch: bool = False
    merge: str = "sum"
    """How workers combine: "sum"; "latest" (the payload whose last value, a
    timestamp, is newest wins); "live" (summed over live workers only, never archived);
    "max" / "min" (payload ``(value, set)``: the largest / smallest value among the
    payloads whose ``set`` flag is non-zero); "native" (a pointer to a bucket-block
    chain whose entries add, see ``NATIVE_KINDS``)."""

    def payload_size(self, slots: int) -> int:
        """float64 values of this kind's payload in a file with ``slots`` window slots."""
        if not self.windowed:
            return self.size
        return slots * layout.slot_stride(self.with_sketch)


OUTCOME_LABELS = ("status", "failed")
"""Each request-like record is kept per status code and per "failed" ("1" when the code
raised): error counts (status >= threshold or failed) and per-status totals are sums
of these records at read time, so recording never decides what an error is."""

KINDS: dict[str, Kind] = {
    "request": Kind(("endpoint", "method", *OUTCOME_LABELS), _stored_size("request")),
    "provider": Kind(("provider", *OUTCOME_LABELS), _stored_size("provider")),
    "model": Kind(("model", *OUTCOME_LABELS), 1),
    "endpoint_window": Kind(("endpoint",), windowed=True, with_sketch=True),
    "provider_window": Kind(("provider",), windowed=True, with_sketch=True),
    "model_window": Kind(("model",), windowed=True, with_sketch=True),
    "cache": Kind((), 2),  # hits, misses
    "cache_window": Kind((), windowed=True),  # count = lookups, errors = misses
    "db": Kind((), 2),  # queries, latency sum
    "db_window": Kind((), windowed=True),
    "external": Kind(("service",), 2),  # calls, errors
    "dropped": Kind(("reason",), 1),
    # Beyond the spec: what AI gateway operators ask for.
    "in_flight": Kind((), 1, merge="live"),
    "tokens": Kind(("provider", "model", "direction"), TOKENS_SIZE),  # token sum, per-request buckets
    "cost": Kind(("provider", "model"), 1),
    "provider_error_type": Kind(("provider", "error_type"), 1),
    "fallback": Kind(("from_provider", "to_provider"), 1),
    "rate_limit": Kind(("provider", "limit"), 2, merge="latest"),  # remaining, time set
    "label_overflow": Kind(("label",), 1),
    "stream": Kind(("provider", "model", "outcome"), 1),
    "first_chunk": Kind(("provider", "model"), REQUEST_SIZE),  # count, sum, latency buckets
    "stream_duration": Kind(("provider", "model"), REQUEST_SIZE),
    # Latest trace id seen per latency bucket: four 32-bit parts, value, time set.
    "exemplar": Kind(("endpoint", "method", "bucket"), 6, merge="latest"),
    # OpenTelemetry semantic conventions' histograms (``semconv``): sum, then buckets.
    # (http.server.request.duration has no kind: its buckets are in "request" records.)
    "gen_ai_client_duration": Kind(("operation", "provider", "model", "error_type"), len(GEN_AI_DURATION_BOUNDS) + 2),
    "gen_ai_server_duration": Kind(("operation", "provider", "model", "error_type"), len(GEN_AI_DURATION_BOUNDS) + 2),
    "gen_ai_first_token": Kind(("operation", "provider", "model"), len(GEN_AI_FIRST_TOKEN_BOUNDS) + 2),
    "gen_ai_per_output_token": Kind(("operation", "provider", "model"), len(GEN_AI_PER_TOKEN_BOUNDS) + 2),
    # Tenants (``tenants``): labels team, api_key (hashed or an alias), user; "" = not given.
    "tenant_request": Kind(("team", "api_key", "user", "status_class"), 2),  # requests, errors
    "tenant_tokens": Kind(("team", "api_key", "user", "direction"), 1),
    "tenant_cost": Kind(("team", "api_key", "user"), 1),
    "budget": Kind(("team",), 2, merge="latest"),  # remaining USD, time set
    # Archive only: worker files folded into it, and bad files the compactor quarantined.
    "absorbed": Kind(("file",), 0),
    "storage_errors": Kind(("reason",), 1),
    # The application's own metrics (``custom``). "labels" is the JSON array of the label
    # values; "custom_meta" describes a metric (kind: the storage kind of its series,
    # labelnames: a JSON array), its payload is the time it was defined (newest wins).
    "custom_meta": Kind(("name", "kind", "documentation", "labelnames"), 1, merge="latest"),
    "custom_counter": Kind(("name", "labels"), 1),
    "custom_gauge_sum": Kind(("name", "labels"), 1),
    "custom_gauge_livesum": Kind(("name", "labels"), 1, merge="live"),
    "custom_gauge_max": Kind(("name", "labels"), 2, merge="max"),  # value, set
    "custom_gauge_min": Kind(("name", "labels"), 2, merge="min"),  # value, set
    "custom_gauge_latest": Kind(("name", "labels"), 2, merge="latest"),  # value, time set
    # Native histograms (protobuf scrape): the first bucket block of a since-start chain.
    "request_native": Kind(("endpoint", "method"), 1, merge="native"),
    "provider_native": Kind(("provider",), 1, merge="native"),
    "first_chunk_native": Kind(("provider", "model"), 1, merge="native"),
    "stream_duration_native": Kind(("provider", "model"), 1, merge="native"),
}

# Payload fields of the fixed-size kinds, by name: code above storage/ reads a record through
# these, never a bare index (request-like kinds: REQ_* above; native kinds: NATIVE_FIRST below).
VALUE, SET = 0, -1
"""VALUE: the first value, the whole payload of one-value kinds and the value of "latest" /
"max" / "min" kinds; SET: their last value, the time set or the set flag (``Kind.merge``)."""
CACHE_HITS, CACHE_MISSES = range(2)
DB_QUERIES, DB_LATENCY_SUM = range(2)
EXTERNAL_CALLS, EXTERNAL_ERRORS = range(2)
TENANT_REQUESTS, TENANT_ERRORS = range(2)
RATE_LIMIT_REMAINING, RATE_LIMIT_SET = range(2)
BUDGET_REMAINING, BUDGET_SET = range(2)
GAUGE_VALUE, GAUGE_SET = range(2)  # custom gauges kept by "max" / "min" / "latest"
TOKENS_SUM, TOKENS_BUCKETS = range(2)  # then the buckets of TOKEN_BOUNDS, +Inf last
EXEMPLAR_TRACE_PARTS, EXEMPLAR_VALUE, EXEMPLAR_SET = 4, 4, 5  # trace id as four 32-bit parts, value, time
HISTOGRAM_SUM, HISTOGRAM_BUCKETS = range(2)
"""gen_ai_* and custom histograms: value sum, then one count per bucket (+Inf last);
``HTTP_SERVER_BUCKETS`` series hold the counts only, from index 0."""
NATIVE_FIRST = 0
"""Payload index of a native record's first block pointer."""
NATIVE_KINDS: dict[str, str] = {
    "request_native": "http_request_duration_seconds",
    "provider_native": "provider_request_duration_seconds",
    "first_chunk_native": "llm_time_to_first_chunk_seconds",
    "stream_duration_native": "llm_stream_duration_seconds",
}
"""Native record kind -> the histogram family that carries its buckets."""

MAX_HISTOGRAM_BUCKETS = 64
"""Most finite bounds ``GATEWAYZ_METRICS_BUCKETS`` may give."""
BOUNDED_KINDS: tuple[str, ...] = ("request", "provider", "first_chunk", "stream_duration")
"""Kinds whose payload is count, sum and the latency buckets of ``HISTOGRAM_BOUNDS`` (or
of the configured bounds: ``histogram_kind``), stored over ``stored_bounds``."""
# "<kind>_le<n>": the same payload over n stored finite bounds, labels prefixed by
# "bounds" (the configured bound set's fingerprint).
KINDS.update({
    f"{name}_le{n}": Kind(("bounds", *KINDS[name].labels), REQ_BUCKETS + n + 1)
    for name in BOUNDED_KINDS
    for n in range(1, MAX_HISTOGRAM_BUCKETS + (len(HTTP_SERVER_BOUNDS) if name in SERVER_KINDS else 0) + 1)
})
REQUEST_KINDS = frozenset(kind for kind in KINDS if kind == "request" or kind.startswith("request_le"))
"""The kinds holding HTTP requests, whatever their bucket bounds."""
UNCOUNTED_KINDS = frozenset(
    kind for kind in KINDS for base in SERVER_KINDS if kind == base or kind.startswith(f"{base}_le")
)
"""``SERVER_KINDS`` whatever their bucket bounds: the request path leaves their stored
count (``REQ_COUNT``) unwritten, and readers take it as the buckets' total (from
``REQ_BUCKETS`` to the payload's end; ``merge._counted``, the archive builder)."""


def bounds_fingerprint(bounds: Sequence[float]) -> str:
    """A short, stable name of a bound set (the ``bounds`` label of ``<kind>_le<n>``)."""
    text = ",".join(repr(float(b)) for b in bounds)
    return hashlib.blake2b(text.encode("ascii"), digest_size=8).hexdigest()


def histogram_kind(kind: str, bounds: Sequence[float]) -> tuple[str, tuple[str, ...]]:
    """The kind a collector with latency ``bounds`` records ``kind`` (one of
    ``BOUNDED_KINDS``) as, and the label values that go before the kind's own."""
    if tuple(bounds) == HISTOGRAM_BOUNDS:
        return kind, ()
    return f"{kind}_le{len(stored_bounds(kind, bounds))}", (bounds_fingerprint(bounds),)


MAX_CUSTOM_BUCKETS = 64
"""Most finite bucket bounds of a custom histogram."""
CUSTOM_HISTOGRAM_PREFIX = "custom_histogram_"
# One kind per bucket count, so the reader knows a record's payload size from its key:
# "custom_histogram_<n>" holds the sum, then n + 1 bucket counts (+Inf last); "bounds"
# is the comma-separated finite upper bounds.
KINDS.update({
    f"{CUSTOM_HISTOGRAM_PREFIX}{n}": Kind(("name", "bounds", "labels"), n + 2)
    for n in range(1, MAX_CUSTOM_BUCKETS + 1)
})


def empty_payload(kind: Kind, slots: int) -> list[float]:
    """Initial payload of a new record: zeros, windowed slots marked unused."""
    if not kind.windowed:
        return [0.0] * kind.size
    slot = list(layout.EMPTY_SLOT) + [0.0] * (layout.slot_stride(kind.with_sketch) - layout.SLOT_HEADER)
    return slot * slots
