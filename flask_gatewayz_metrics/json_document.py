"""The JSON document of ``/metrics/json`` (``MetricsCollector.to_dict``), built from a snapshot.

Every object of the document has its shape here (``Document`` and the ``TypedDict``
classes it is made of), so a reader of the code (or of the API) sees the document without
running it. Counters are since start (or the last reset), as ints; the ``latency_seconds``
and ``window`` objects and the rates cover the sliding window and are ``null`` when it saw
nothing. Labelled values of the ``llm`` object are nested by label, in label order
(``tokens[provider][model][direction]``).

.. versionadded:: 0.1.0
   Moved out of ``Snapshot`` (``Snapshot.to_dict`` returns ``document(snapshot)``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypedDict, cast

from .custom_families import CustomSeries
from .storage import WindowStats, kinds

if TYPE_CHECKING:
    from .snapshot import Labels, Snapshot, Totals

INF = float("inf")


class Latency(TypedDict):
    """Window latency of an endpoint, provider or model: average, exact min / max, sketch percentiles."""

    avg: float | None
    min: float | None
    max: float | None
    p50: float | None
    p95: float | None
    p99: float | None


class Counts(TypedDict):
    """Requests and errors of one endpoint and method, since start."""

    requests: int
    errors: int


class EndpointWindow(TypedDict):
    """Requests, errors and error rate (0-1) of one endpoint over the window."""

    requests: int
    errors: int
    error_rate: float | None


class Endpoint(TypedDict):
    """One endpoint: since-start counts (all, per method, per status code) and its window."""

    requests: int
    errors: int
    methods: dict[str, Counts]
    status: dict[str, int]
    latency_seconds: Latency
    window: EndpointWindow


class Upstream(TypedDict):
    """One provider or model: since-start counts, the window's error rate and latency."""

    requests: int
    errors: int
    error_rate: float | None
    latency_seconds: Latency


class Cache(TypedDict):
    """Cache lookups since start, and the window's hit rate (0-1)."""

    hits: int
    misses: int
    hit_rate: float | None


class Database(TypedDict):
    """Database queries since start, and the window's latency."""

    queries: int
    latency_avg_seconds: float | None
    latency_min_seconds: float | None
    latency_max_seconds: float | None


class ExternalApi(TypedDict):
    """Calls to one external service, and the failed ones, since start."""

    calls: int
    errors: int


class Llm(TypedDict):
    """What AI gateways record beyond the spec, nested by label (see the module docstring)."""

    tokens: dict[str, dict[str, dict[str, float]]]
    """provider -> model -> direction (input, output, cached_input) -> tokens."""
    cost_usd: dict[str, dict[str, float]]
    """provider -> model -> US dollars."""
    errors_by_type: dict[str, dict[str, float]]
    """provider -> error type -> failed calls."""
    fallbacks: dict[str, dict[str, float]]
    """from provider -> to provider -> requests moved."""
    rate_limit_remaining: dict[str, dict[str, float]]
    """provider -> limit (requests, tokens) -> latest remaining."""
    streams: dict[str, dict[str, dict[str, float]]]
    """provider -> model -> outcome counts, and ``first_chunk_avg_seconds``."""
    label_overflow: dict[str, float]
    """label -> values recorded as "other"."""


class CustomSeriesEntry(TypedDict, total=False):
    """One series of a custom metric: its labels, and ``value`` (counter, gauge) or
    ``count``, ``sum`` and cumulative ``buckets`` keyed by upper bound (histogram)."""

    labels: dict[str, str]
    value: float
    count: float
    sum: float
    buckets: dict[str, float]


class _CustomMetric(TypedDict):
    type: str
    documentation: str
    series: list[CustomSeriesEntry]


class CustomMetric(_CustomMetric, total=False):
    """One custom metric of the application (``custom``): type, help, gauge mode, series."""

    mode: str


class Problem(TypedDict):
    """A file of the metrics directory that was skipped, and why."""

    file: str
    reason: str


class Storage(TypedDict):
    """The metrics files: how many were merged, drops, problems and errors."""

    worker_files: int
    live_worker_files: int
    dropped: dict[str, int]
    problems: list[Problem]
    error: str | None
    compaction_error: str | None
    errors: dict[str, int]


class _Document(TypedDict):
    uptime_seconds: float
    window_seconds: float
    endpoints: dict[str, Endpoint]
    providers: dict[str, Upstream]
    models: dict[str, Upstream]
    cache: Cache
    database: Database
    external_apis: dict[str, ExternalApi]
    in_flight: int
    llm: Llm
    custom: dict[str, CustomMetric]
    metrics_directory: dict[str, object] | None
    storage: Storage


class Document(_Document, total=False):
    """The whole document. ``otlp`` is there when OTLP export is configured (``otlp``); the
    view adds ``static_labels`` (when configured) and ``history`` (``?history=1``)."""

    otlp: dict[str, Any]
    static_labels: dict[str, str]
    history: dict[str, Any]


def document(snap: Snapshot) -> Document:
    """The JSON document of one snapshot (key order as served)."""
    endpoints: dict[str, Endpoint] = {}
    requests = snap.requests
    for (endpoint, method), totals in sorted(requests.by_endpoint_method.items()):
        entry = endpoints.get(endpoint)
        if entry is None:
            entry = endpoints[endpoint] = _endpoint_entry(snap.window("endpoint_window", (endpoint,)))
        entry["requests"] += int(totals.count)
        entry["errors"] += int(totals.errors)
        entry["methods"][method] = {"requests": int(totals.count), "errors": int(totals.errors)}
    for (endpoint, status), count in sorted(requests.by_endpoint_status.items()):
        endpoints[endpoint]["status"][status] = int(count)
    providers = _upstreams(snap, "provider_window", requests.by_provider)
    models = _upstreams(snap, "model_window", requests.by_model)
    cache = snap.total("cache")
    cache_entry: Cache = {
        "hits": int(cache[kinds.CACHE_HITS]),
        "misses": int(cache[kinds.CACHE_MISSES]),
        "hit_rate": snap.cache_hit_rate(),
    }
    db_window = snap.window("db_window")
    database: Database = {
        "queries": int(snap.total("db")[kinds.DB_QUERIES]),
        "latency_avg_seconds": db_window.average,
        "latency_min_seconds": db_window.minimum,
        "latency_max_seconds": db_window.maximum,
    }
    external: dict[str, ExternalApi] = {
        str(service): {"calls": int(payload[kinds.EXTERNAL_CALLS]), "errors": int(payload[kinds.EXTERNAL_ERRORS])}
        for (service,), payload in snap.series("external")
    }
    storage: Storage = {
        "worker_files": snap.worker_files,
        "live_worker_files": snap.live_files,
        "dropped": {reason: int(n) for reason, n in sorted(snap.dropped().items())},
        "problems": [{"file": problem.path, "reason": problem.reason} for problem in snap.problems],
        "error": snap.storage_error,
        "compaction_error": snap.compaction_error,
        "errors": {str(labels[0]): int(payload[kinds.VALUE]) for labels, payload in snap.series("storage_errors")},
    }
    # A dict literal rather than a Document one: the optional "otlp" key sits between
    # required ones in the served key order.
    out = {
        "uptime_seconds": snap.uptime_seconds,
        "window_seconds": snap.window_seconds,
        "endpoints": endpoints,
        "providers": providers,
        "models": models,
        "cache": cache_entry,
        "database": database,
        "external_apis": external,
        "in_flight": int(snap.in_flight),
        "llm": _llm(snap),
        "custom": _custom(snap),
        **({"otlp": snap.otlp} if snap.otlp is not None else {}),
        "metrics_directory": snap.location,
        "storage": storage,
    }
    return cast(Document, out)


def _llm(snap: Snapshot) -> Llm:
    """Tokens, cost, upstream health and streams, keyed provider -> model -> ..."""
    streams: dict[str, Any] = _nested(snap.series("stream"))
    for (provider, model), payload in snap.series("first_chunk"):
        entry = streams.setdefault(provider, {}).setdefault(model, {})
        entry["first_chunk_avg_seconds"] = payload[kinds.REQ_SUM] / payload[kinds.REQ_COUNT]
    return {
        "tokens": _nested(snap.series("tokens")),
        "cost_usd": _nested(snap.series("cost")),
        "errors_by_type": _nested(snap.series("provider_error_type")),
        "fallbacks": _nested(snap.series("fallback")),
        "rate_limit_remaining": _nested(snap.series("rate_limit")),
        "streams": streams,
        "label_overflow": _nested(snap.series("label_overflow")),
    }


def _custom(snap: Snapshot) -> dict[str, CustomMetric]:
    """Custom metrics: ``{name: {"type", "documentation", ["mode",] "series": [...]}}``."""
    out: dict[str, CustomMetric] = {}
    for family in snap.custom:
        definition = family.definition
        rows: list[CustomSeriesEntry] = []
        for series in family.series:
            row: CustomSeriesEntry = {"labels": dict(zip(definition.labelnames, series.labels, strict=True))}
            if definition.type == "histogram":
                row["count"] = series.count
                row["sum"] = series.value
                row["buckets"] = _buckets(series)
            else:
                row["value"] = series.value
            rows.append(row)
        entry: CustomMetric = {"type": definition.type, "documentation": definition.documentation}  # type: ignore[typeddict-item]
        if definition.mode:
            entry["mode"] = definition.mode
        entry["series"] = rows
        out[definition.name] = entry
    return out


def _buckets(series: CustomSeries) -> dict[str, float]:
    """Cumulative histogram counts keyed by upper bound (``"+Inf"`` last)."""
    out: dict[str, float] = {}
    running = 0.0
    for bound, count in zip((*series.bounds, INF), series.buckets, strict=True):
        running += count
        out["+Inf" if bound == INF else repr(bound)] = running
    return out


def _nested(rows: Iterator[tuple[Labels, list[float]]]) -> dict[str, Any]:
    """``{label1: {label2: ... value}}`` from labelled one-value payloads."""
    out: dict[str, Any] = {}
    for labels, payload in rows:
        node = out
        for label in labels[:-1]:
            node = node.setdefault(label, {})
        node[labels[-1]] = payload[kinds.VALUE]
    return out


def _endpoint_entry(stats: WindowStats) -> Endpoint:
    return {
        "requests": 0,
        "errors": 0,
        "methods": {},
        "status": {},
        "latency_seconds": _latency(stats),
        "window": {"requests": int(stats.count), "errors": int(stats.errors), "error_rate": stats.error_rate},
    }


def _upstreams(snap: Snapshot, window: str, totals_by_name: Mapping[str, Totals]) -> dict[str, Upstream]:
    """Providers or models (``window``: their windowed kind), by name: since-start counts
    and the window's error rate and latency."""
    upstreams: dict[str, Upstream] = {}
    for name, totals in sorted(totals_by_name.items()):
        stats = snap.window(window, (name,))
        upstreams[name] = {
            "requests": int(totals.count),
            "errors": int(totals.errors),
            "error_rate": stats.error_rate,
            "latency_seconds": _latency(stats),
        }
    return upstreams


def _latency(stats: WindowStats) -> Latency:
    """Window latency of one endpoint, provider or model: average, exact min / max and
    sketch percentiles (all None when the window saw nothing)."""
    return {
        "avg": stats.average,
        "min": stats.minimum,
        "max": stats.maximum,
        "p50": stats.quantile(0.50),
        "p95": stats.quantile(0.95),
        "p99": stats.quantile(0.99),
    }
