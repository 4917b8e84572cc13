"""PrometheusExporter: a merged snapshot as Prometheus metric families.

The exporter is a ``prometheus_client`` custom collector, so the text formats (0.0.4,
1.0.0, OpenMetrics) and content negotiation are ``prometheus_client``'s own; we never
use its multiprocess mode for our metrics, since our storage already merges workers.
Served in this order, a family whose name is taken by an earlier one left out: ours,
the application's custom metrics (``custom``), the application's ``prometheus_client``
metrics (filtered by ``default_registry`` when the server is multi-process).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Mapping
from functools import cache
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar

from . import exposition_protobuf
from .custom_families import CustomFamily
from .default_registry import DefaultRegistry
from .exposition_gateway import cumulative, gateway_families
from .exposition_semconv import ONLY_CONVENTIONS_KINDS, semconv_families
from .exposition_tenants import tenant_families
from .exposition_text import TEXT, SeriesHistogram, TextRenderer, fast_format
from .settings import SEMCONV_CHOICES
from .snapshot import Snapshot, Totals
from .static_labels import StaticLabels
from .storage import Merged, WindowStats, layout

if TYPE_CHECKING:
    from .collector import MetricsCollector

DROP_REASONS = (
    "invalid_latency", "invalid_status", "invalid_label", "invalid_value", "storage_unavailable", "internal_error",
)
STORAGE_ERROR_REASONS = (
    "empty", "truncated", "foreign", "wrong_version", "corrupt_header", "corrupt_record", "unreadable",
    "window_geometry",
)
ENDPOINT_QUANTILES = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))
WINDOW_LATENCY_GAUGES = ("avg", "min", "max", "p50", "p95", "p99")
"""Window latency gauges per endpoint, provider and model (``<prefix>_latency_<name>_seconds``)."""


class PrometheusExporter(Collector):
    """Turns a collector's merged snapshot into Prometheus exposition formats.

    ``app_metrics`` (e.g. ``prometheus_client.REGISTRY``, or a ``MultiProcessCollector``
    under gunicorn) adds the application's own ``prometheus_client`` metrics to the same
    output; a family whose name is one of ours is left out, so nothing appears twice.
    """

    def __init__(
        self,
        collector: MetricsCollector,
        app_metrics: Collector | None = None,
        static_labels: Mapping[str, str] | None = None,
        semconv: str = "both",
    ) -> None:
        self.collector = collector
        self.app_metrics = app_metrics
        if semconv not in SEMCONV_CHOICES:
            raise ValueError(f"semconv must be one of {', '.join(SEMCONV_CHOICES)}, not {semconv!r}")
        self.semconv = semconv
        """Where the OpenTelemetry conventions' families are served (``SEMCONV_CHOICES``)."""
        self.renderer = TextRenderer()
        self.registry = CollectorRegistry(auto_describe=False)
        # Static labels wrap the whole of collect(): every family served gets them.
        self.registry.register(StaticLabels(self, static_labels) if static_labels else self)

    def collect(self) -> Iterator[Metric]:
        """What ``/metrics`` serves (every format)."""
        return self._collect(self.semconv in ("both", "metrics"))

    def otlp_families(self) -> Iterator[Metric]:
        """What OTLP export sends: the same, the conventions' families as ``semconv`` says."""
        return self._collect(self.semconv in ("both", "otlp"))

    def _collect(self, conventions: bool) -> Iterator[Metric]:
        snap = self.collector.snapshot() if conventions else self.collector.snapshot(ONLY_CONVENTIONS_KINDS)
        ours = families(snap, conventions)
        yield from ours
        taken = {family.name for family in ours} | our_sample_names()
        for custom in snap.custom:
            names = custom.definition.sample_names()
            if taken.isdisjoint(names):  # a clash can only come from a foreign file
                taken.update(names)
                yield custom_family(custom)
        if self.app_metrics is None:
            return
        source = self.app_metrics
        app_families = source.collect_for(snap) if isinstance(source, DefaultRegistry) else source.collect()
        for family in app_families:
            if family.name not in taken:
                taken.add(family.name)
                yield family

    def export(self) -> str:
        """All metrics in the Prometheus text format 0.0.4."""
        return self.renderer.render(list(self.registry.collect()), TEXT).decode("utf-8")

    def render(self, accept_header: str | None = None) -> tuple[bytes, str]:
        """Body and content type for a scrape with this ``Accept`` header.

        Text 0.0.4 unless the scraper asks for OpenMetrics (or text 1.0.0), or prefers
        the protobuf format (Prometheus with native histograms enabled) and the
        ``protobuf`` package is installed.
        """
        if accept_header and exposition_protobuf.wants_protobuf(accept_header) and exposition_protobuf.available():
            native = self.collector.native_lookup()  # read only for protobuf: text never pays
            return exposition_protobuf.encode(self.registry.collect(), native), exposition_protobuf.CONTENT_TYPE
        encoder, content_type = choose_encoder(accept_header or "")
        fmt = fast_format(encoder)
        if fmt is None:  # another escaping or version: prometheus_client's own encoder
            return encoder(self.registry), content_type
        return self.renderer.render(list(self.registry.collect()), fmt), content_type


CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4


def families(snap: Snapshot, conventions: bool = True) -> list[Metric]:
    """Every metric family of the spec (and ours), built from one snapshot; the
    conventions' families (``exposition_semconv``) unless ``conventions`` is false."""
    out: list[Metric] = []
    out += _http_families(snap)
    out += _provider_families(snap)
    out += _model_families(snap)
    out += _cache_db_external_families(snap)
    uptime = GaugeMetricFamily("gatewayz_uptime_seconds", "Seconds since the server (metrics directory) started.")
    uptime.add_metric([], snap.uptime_seconds)
    dropped = CounterMetricFamily(
        "gatewayz_metrics_dropped_total",
        "Metric inputs dropped as invalid or unrecordable, by reason.",
        labels=["reason"],
    )
    # Every known reason from the start: rate() and increase() only see a counter's
    # first event if the series existed (at 0) before it.
    for reason, count in sorted({**dict.fromkeys(DROP_REASONS, 0.0), **snap.dropped()}.items()):
        dropped.add_metric([reason], count)
    storage_errors = CounterMetricFamily(
        "gatewayz_metrics_storage_errors_total",
        "Unreadable metrics files moved to quarantine/, by reason.",
        labels=["reason"],
    )
    errors = dict.fromkeys(STORAGE_ERROR_REASONS, 0.0)
    errors.update({str(labels[0]): payload[0] for labels, payload in snap.series("storage_errors")})
    for error_reason, count in sorted(errors.items()):
        storage_errors.add_metric([error_reason], count)
    files = GaugeMetricFamily(
        "gatewayz_metrics_worker_files", "Worker files merged into this scrape, by writer state.", labels=["state"]
    )
    files.add_metric(["live"], snap.live_files)
    files.add_metric(["dead"], snap.worker_files - snap.live_files)
    return [
        *out, *gateway_families(snap), *tenant_families(snap), uptime, dropped, storage_errors, files,
        *(semconv_families(snap) if conventions else ()),
    ]  # fmt: skip


def custom_family(custom: CustomFamily) -> Metric:
    """One custom metric of the application as a Prometheus family."""
    definition = custom.definition
    labels = list(definition.labelnames)
    family: CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily
    if definition.type == "histogram":
        family = SeriesHistogram(definition.name, definition.documentation, labels=labels)
        for series in custom.series:
            family.add_metric(list(series.labels), cumulative(series.bounds, series.buckets), series.value)
        return family
    if definition.type == "counter":
        family = CounterMetricFamily(definition.name, definition.documentation, labels=labels)
    else:
        family = GaugeMetricFamily(definition.name, definition.documentation, labels=labels)
    for series in custom.series:
        family.add_metric(list(series.labels), series.value)
    return family


@cache
def our_sample_names() -> frozenset[str]:
    """Every family and sample name we serve (custom metrics may not take them)."""
    empty = Snapshot(Merged(), 0.0, 0.0, 0.0, 500, 0, 0)
    names: set[str] = set()
    for family in [*families(empty), *tenant_families(empty, empty_too=True)]:
        names.add(family.name)
        suffixes = {
            "counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
        }.get(family.type, ())
        names.update(family.name + suffix for suffix in suffixes)
    return frozenset(names)


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


def _add(family: GaugeMetricFamily, labels: list[str], value: float | None) -> None:
    """Add a windowed gauge sample; an empty window has no value, so no sample."""
    if value is not None:
        family.add_metric(labels, value)


def _histogram(
    family: HistogramMetricFamily,
    labels: list[str],
    totals: Totals,
    exemplars: dict[int, Exemplar] | None = None,
    bounds: tuple[float, ...] = layout.HISTOGRAM_BOUNDS,
) -> None:
    buckets: list[Any] = cumulative(bounds, totals.buckets)
    for index, exemplar in (exemplars or {}).items():
        # Its value must lie in the bucket (one recorded under other bounds may not).
        if 0 <= index < len(buckets) and bisect_left(bounds, exemplar.value) == index:
            buckets[index] = (*buckets[index], exemplar)
    family.add_metric(labels, buckets, totals.latency_sum)


def _exemplars(snap: Snapshot) -> dict[tuple[str, str], dict[int, Exemplar]]:
    """Latest trace id per (endpoint, method) and latency bucket (shown by OpenMetrics only)."""
    out: dict[tuple[str, str], dict[int, Exemplar]] = {}
    for (endpoint, method, bucket), payload in snap.series("exemplar"):
        trace_id = "".join(f"{int(part):08x}" for part in payload[:4])
        exemplar = Exemplar({"trace_id": trace_id}, payload[4], payload[5])
        out.setdefault((endpoint, method), {})[int(bucket)] = exemplar
    return out


def _http_families(snap: Snapshot) -> list[Metric]:
    window = "over the sliding window"
    avg = _gauge("http_request_latency_avg_seconds", f"Average request latency per endpoint {window}.", ["endpoint"])
    quantiles = [
        (
            q,
            _gauge(
                f"http_request_latency_{name}_seconds", f"{name} request latency per endpoint {window}.", ["endpoint"]
            ),
        )
        for name, q in ENDPOINT_QUANTILES
    ]
    # Beyond the spec: the window's exact min / max per endpoint.
    low = _gauge("http_request_latency_min_seconds", f"Smallest request latency per endpoint {window}.", ["endpoint"])
    high = _gauge("http_request_latency_max_seconds", f"Largest request latency per endpoint {window}.", ["endpoint"])
    for endpoint in snap.endpoints():
        stats = snap.window("endpoint_window", (endpoint,))
        _add(avg, [endpoint], stats.average)
        for q, family in quantiles:
            _add(family, [endpoint], stats.quantile(q))
        _add(low, [endpoint], stats.minimum)
        _add(high, [endpoint], stats.maximum)
    requests = CounterMetricFamily("http_requests_total", "HTTP requests.", labels=["endpoint", "method"])
    errors = CounterMetricFamily(
        "http_request_errors_total",
        "HTTP requests that failed (server error status or exception).",
        labels=["endpoint", "method"],
    )
    duration = SeriesHistogram(
        "http_request_duration_seconds", "HTTP request latency since start.", labels=["endpoint", "method"]
    )
    exemplars = _exemplars(snap)
    for (endpoint, method), totals in sorted(snap.requests.by_endpoint_method.items()):
        requests.add_metric([endpoint, method], totals.count)
        errors.add_metric([endpoint, method], totals.errors)
        _histogram(duration, [endpoint, method], totals, exemplars.get((endpoint, method)), snap.histogram_bounds)
    status = CounterMetricFamily(
        "http_response_status_total", "HTTP responses by status code.", labels=["endpoint", "status"]
    )
    for (endpoint, code), count in sorted(snap.requests.by_endpoint_status.items()):
        status.add_metric([endpoint, code], count)
    return [avg, *(f for _, f in quantiles), low, high, requests, errors, status, duration]


def _provider_families(snap: Snapshot) -> list[Metric]:
    window = "over the sliding window"
    requests = CounterMetricFamily("provider_requests_total", "Requests to the AI provider.", labels=["provider"])
    errors = CounterMetricFamily("provider_errors_total", "Failed requests to the AI provider.", labels=["provider"])
    rate = _gauge("provider_error_rate", f"Share of the provider's requests that failed {window} (0-1).", ["provider"])
    gauges = _latency_gauges("provider", "provider", {})
    duration = SeriesHistogram(
        "provider_request_duration_seconds", "AI provider request latency since start.", labels=["provider"]
    )
    for provider, totals in sorted(snap.requests.by_provider.items()):
        requests.add_metric([provider], totals.count)
        errors.add_metric([provider], totals.errors)
        _histogram(duration, [provider], totals, bounds=snap.histogram_bounds)
        stats = snap.window("provider_window", (provider,))
        _add(rate, [provider], stats.error_rate)
        _add_latency(gauges, [provider], stats)
    return [requests, errors, rate, *gauges.values(), duration]


def _model_families(snap: Snapshot) -> list[Metric]:
    requests = CounterMetricFamily("model_requests_total", "Requests for the AI model.", labels=["model"])
    errors = CounterMetricFamily("model_errors_total", "Failed requests for the AI model.", labels=["model"])
    rate = _gauge(
        "model_error_rate", "Share of the model's requests that failed over the sliding window (0-1).", ["model"]
    )
    gauges = _latency_gauges("model", "model", {"avg": "Average", "min": "Smallest", "max": "Largest"})
    for model, totals in sorted(snap.requests.by_model.items()):
        requests.add_metric([model], totals.count)
        errors.add_metric([model], totals.errors)
        stats = snap.window("model_window", (model,))
        _add(rate, [model], stats.error_rate)
        _add_latency(gauges, [model], stats)
    return [requests, errors, rate, *gauges.values()]


def _latency_gauges(prefix: str, label: str, words: dict[str, str]) -> dict[str, GaugeMetricFamily]:
    """``<prefix>_latency_{avg,min,max,p50,p95,p99}_seconds`` gauges labelled ``label``
    (HELP starts with ``words[name]``, else the name).

    The spec names avg/min/max/p95 for providers and avg for models; the others are
    ours (exact min / max and sketch percentiles on every window)."""
    return {
        name: _gauge(
            f"{prefix}_latency_{name}_seconds", f"{words.get(name, name)} {prefix} latency over the sliding window.",
            [label],
        )
        for name in WINDOW_LATENCY_GAUGES
    }


def _add_latency(gauges: dict[str, GaugeMetricFamily], labels: list[str], stats: WindowStats) -> None:
    _add(gauges["avg"], labels, stats.average)
    _add(gauges["min"], labels, stats.minimum)
    _add(gauges["max"], labels, stats.maximum)
    for name, q in ENDPOINT_QUANTILES:
        _add(gauges[name], labels, stats.quantile(q))


def _cache_db_external_families(snap: Snapshot) -> list[Metric]:
    hits_total, misses_total = snap.total("cache")
    hits = CounterMetricFamily("cache_hits_total", "Cache lookups that found their entry.")
    hits.add_metric([], hits_total)
    misses = CounterMetricFamily("cache_misses_total", "Cache lookups that did not find their entry.")
    misses.add_metric([], misses_total)
    hit_rate = GaugeMetricFamily("cache_hit_rate", "Share of cache lookups that hit over the sliding window (0-1).")
    _add(hit_rate, [], snap.cache_hit_rate())
    queries = CounterMetricFamily("db_queries_total", "Database queries.")
    queries.add_metric([], snap.total("db")[0])
    db_avg = GaugeMetricFamily(
        "db_query_latency_avg_seconds", "Average database query latency over the sliding window."
    )
    db_window = snap.window("db_window")
    _add(db_avg, [], db_window.average)
    db_min = GaugeMetricFamily("db_query_latency_min_seconds", "Smallest database query latency, sliding window.")
    _add(db_min, [], db_window.minimum)
    db_max = GaugeMetricFamily("db_query_latency_max_seconds", "Largest database query latency, sliding window.")
    _add(db_max, [], db_window.maximum)
    calls = CounterMetricFamily("external_api_calls_total", "Calls to external APIs.", labels=["service"])
    failures = CounterMetricFamily("external_api_errors_total", "Failed calls to external APIs.", labels=["service"])
    for (service,), payload in snap.series("external"):
        calls.add_metric([str(service)], payload[0])
        failures.add_metric([str(service)], payload[1])
    return [hits, misses, hit_rate, queries, db_avg, db_min, db_max, calls, failures]
