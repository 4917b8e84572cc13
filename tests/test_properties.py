"""Property tests: merged sketch quantiles stay within the error bound; labels round-trip."""

from __future__ import annotations

import math
import tempfile

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from flask_gatewayz_metrics import MetricsCollector, PrometheusExporter

WORKERS = 4
TOLERANCE = 0.011
QUANTILES = {"p50": 0.50, "p95": 0.95, "p99": 0.99}
NOW = 1_700_000_000.0

latencies = st.floats(min_value=1e-5, max_value=1000.0, allow_nan=False, allow_infinity=False)


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[math.ceil(q * len(ordered)) - 1]


@settings(max_examples=60, deadline=None)
@given(
    observations=st.lists(latencies, min_size=1, max_size=300),
    assignment=st.randoms(use_true_random=False),
)
def test_merged_quantiles_within_error_bound(observations: list[float], assignment) -> None:  # type: ignore[no-untyped-def]
    """p50/p95/p99 merged from 4 workers' sketches are within 1.1% of the exact nearest-rank value."""
    with tempfile.TemporaryDirectory() as directory:
        workers = [MetricsCollector(directory, clock=lambda: NOW, strict=True) for _ in range(WORKERS)]
        try:
            for value in observations:
                assignment.choice(workers).record_request("/q", "GET", value, 200)
            reader = workers[assignment.randrange(WORKERS)]
            entry = reader.to_dict()["endpoints"]["/q"]
            assert entry["requests"] == len(observations)
            for name, q in QUANTILES.items():
                exact = nearest_rank(observations, q)
                got = entry["latency_seconds"][name]
                assert got is not None
                assert abs(got - exact) / exact <= TOLERANCE, (name, got, exact)
        finally:
            for worker in workers:
                worker.close()


# Label values: anything but the empty string, up to the 200-character limit. Hypothesis'
# text strategy never produces lone surrogates (which would be replaced by "?").
tricky = st.sampled_from(['"', "\\", "\n", '\\"', "\\n", "é", "日本", "\U0001f600", "{", "}", "=", ",", " ", "\t"])
label_values = st.one_of(
    st.text(min_size=1, max_size=200),
    st.lists(tricky, min_size=1, max_size=20).map("".join),
)


def _endpoints_read_back(text: str, parse) -> set[str]:  # type: ignore[no-untyped-def]
    return {
        s.labels["endpoint"]
        for family in parse(text)
        if family.name == "http_requests"
        for s in family.samples
    }


@settings(max_examples=100, deadline=None)
@given(endpoint=label_values, service=label_values)
def test_label_values_round_trip(endpoint: str, service: str) -> None:
    """Quotes, backslashes, newlines and non-ASCII in labels read back unchanged via both parsers."""
    with tempfile.TemporaryDirectory() as directory:
        collector = MetricsCollector(directory, clock=lambda: NOW, strict=True)
        try:
            collector.record_request(endpoint, "GET", 0.1, 200, provider=endpoint)
            collector.record_external_api_call(service)
            exporter = PrometheusExporter(collector)
            text = exporter.export()
            assert _endpoints_read_back(text, parse_text) == {endpoint}
            services = {
                s.labels["service"] for f in parse_text(text) if f.name == "external_api_calls" for s in f.samples
            }
            assert services == {service}
            providers = {
                s.labels["provider"] for f in parse_text(text) if f.name == "provider_requests" for s in f.samples
            }
            assert providers == {endpoint}
            body, _ = exporter.render("application/openmetrics-text")
            assert _endpoints_read_back(body.decode("utf-8"), parse_openmetrics) == {endpoint}
            assert list(collector.to_dict()["endpoints"]) == [endpoint]
        finally:
            collector.close()


@settings(max_examples=30, deadline=None)
@given(prefix=st.text(min_size=200, max_size=200), extra=st.text(min_size=1, max_size=50))
def test_long_labels_are_truncated_to_200(prefix: str, extra: str) -> None:
    """Label values over 200 characters read back as their first 200 characters."""
    with tempfile.TemporaryDirectory() as directory:
        collector = MetricsCollector(directory, clock=lambda: NOW, strict=True)
        try:
            collector.record_request(prefix + extra, "GET", 0.1, 200)
            assert _endpoints_read_back(PrometheusExporter(collector).export(), parse_text) == {prefix}
        finally:
            collector.close()


def test_lone_surrogate_is_replaced() -> None:
    """A label with a lone surrogate (not valid UTF-8) is recorded with '?' in its place."""
    with tempfile.TemporaryDirectory() as directory:
        collector = MetricsCollector(directory, clock=lambda: NOW, strict=True)
        try:
            collector.record_request("/a\udcffb", "GET", 0.1, 200)
            assert _endpoints_read_back(PrometheusExporter(collector).export(), parse_text) == {"/a?b"}
        finally:
            collector.close()
