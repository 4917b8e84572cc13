"""Our HTTP requests as metric families: since-start counters, status codes and the latency
histogram (with exemplars), and the window's latency gauges per endpoint."""

from __future__ import annotations

from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.samples import Exemplar

from .exposition_common import ENDPOINT_QUANTILES, WINDOW, add_windowed, gauge, latency_histogram
from .exposition_text import SeriesHistogram
from .snapshot import Snapshot
from .storage import kinds


def http_families(snap: Snapshot) -> list[Metric]:
    """The window's latency gauges per endpoint, then requests, errors, status codes and the
    latency histogram per endpoint and method (since start)."""
    avg = gauge("http_request_latency_avg_seconds", f"Average request latency per endpoint {WINDOW}.", ["endpoint"])
    labels = ["endpoint"]
    quantiles = [
        (q, gauge(f"http_request_latency_{name}_seconds", f"{name} request latency per endpoint {WINDOW}.", labels))
        for name, q in ENDPOINT_QUANTILES
    ]
    # Beyond the spec: the window's exact min / max per endpoint.
    low = gauge("http_request_latency_min_seconds", f"Smallest request latency per endpoint {WINDOW}.", ["endpoint"])
    high = gauge("http_request_latency_max_seconds", f"Largest request latency per endpoint {WINDOW}.", ["endpoint"])
    for endpoint in snap.endpoints():
        stats = snap.window("endpoint_window", (endpoint,))
        add_windowed(avg, [endpoint], stats.average)
        for q, family in quantiles:
            add_windowed(family, [endpoint], stats.quantile(q))
        add_windowed(low, [endpoint], stats.minimum)
        add_windowed(high, [endpoint], stats.maximum)
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
        latency_histogram(
            duration, [endpoint, method], totals, exemplars.get((endpoint, method)), snap.histogram_bounds
        )
    status = CounterMetricFamily(
        "http_response_status_total", "HTTP responses by status code.", labels=["endpoint", "status"]
    )
    for (endpoint, code), count in sorted(snap.requests.by_endpoint_status.items()):
        status.add_metric([endpoint, code], count)
    return [avg, *(f for _, f in quantiles), low, high, requests, errors, status, duration]


def _exemplars(snap: Snapshot) -> dict[tuple[str, str], dict[int, Exemplar]]:
    """Latest trace id per (endpoint, method) and latency bucket (shown by OpenMetrics only)."""
    out: dict[tuple[str, str], dict[int, Exemplar]] = {}
    for (endpoint, method, bucket), payload in snap.series("exemplar"):
        trace_id = "".join(f"{int(part):08x}" for part in payload[: kinds.EXEMPLAR_TRACE_PARTS])
        exemplar = Exemplar({"trace_id": trace_id}, payload[kinds.EXEMPLAR_VALUE], payload[kinds.EXEMPLAR_SET])
        out.setdefault((endpoint, method), {})[int(bucket)] = exemplar
    return out
