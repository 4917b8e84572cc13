"""Property tests: merged window percentiles within the error bound over 1 us .. 6 h, exact
min / max, across workers and compaction; labels round-trip."""

from __future__ import annotations

import math
import tempfile

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from flask_gatewayz_metrics import MetricsCollector, PrometheusExporter

TOLERANCE = 0.011
QUANTILES = {"p50": 0.50, "p95": 0.95, "p99": 0.99}
NOW = 1_700_000_000.0
SLOT_START = 1_699_999_980.0
"""A multiple of 60 and of 120: observations at SLOT_START + [0, 240) s lie in four 60 s
slots, all inside a 300 s window read at SLOT_START + 299."""
MICROSECOND, SIX_HOURS = 1e-6, 6 * 3600.0

in_range = st.floats(min_value=math.log(MICROSECOND), max_value=math.log(SIX_HOURS)).map(
    lambda x: min(max(math.exp(x), MICROSECOND), SIX_HOURS)
)
"""Log-uniform over 1 us .. 6 h: every decade of the range is exercised alike."""
latencies = st.one_of(
    in_range,
    in_range,
    in_range,
    st.floats(min_value=0.0, max_value=MICROSECOND),  # underflow (and the range's edge)
    st.floats(min_value=SIX_HOURS, max_value=1e6),  # past 6 h, up to and beyond the overflow
)


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[math.ceil(q * len(ordered)) - 1]


def check_latency(latency: dict[str, float | None], values: list[float]) -> None:
    """Window latency entry vs the exact values: min / max exact; a percentile whose exact
    value is within 1 us .. 6 h is within 1.1 % of it; one outside that range is within
    1.1 % too, or (past the sketch's range) exactly the min / max."""
    assert latency["min"] == min(values)
    assert latency["max"] == max(values)
    for name, q in QUANTILES.items():
        exact = nearest_rank(values, q)
        got = latency[name]
        assert got is not None
        close = exact > 0 and abs(got - exact) / exact <= TOLERANCE
        if MICROSECOND <= exact <= SIX_HOURS:
            assert close, (name, got, exact)
        else:
            assert close or got == (min(values) if exact < MICROSECOND else max(values)), (name, got, exact)


class SharedClock:
    """One wall clock for every collector of an example (hypothesis forbids the fixture)."""

    def __init__(self) -> None:
        self.now = SLOT_START

    def __call__(self) -> float:
        return self.now


observations = st.lists(
    st.tuples(
        latencies,
        st.floats(min_value=0.0, max_value=239.0),  # seconds after SLOT_START
        st.sampled_from(["/a", "/b"]),
        st.sampled_from(["openai", "anthropic"]),
        st.sampled_from(["gpt-4", "claude-3"]),
    ),
    min_size=1,
    max_size=200,
)


@settings(max_examples=80, deadline=None)
@given(
    recorded=observations,
    workers=st.integers(min_value=1, max_value=4),
    exited=st.lists(st.booleans(), min_size=4, max_size=4),
    compacted=st.booleans(),
    reader_window=st.sampled_from([(300.0, 5), (600.0, 5), (0.0, 1)]),
)
def test_window_percentiles_and_extremes_over_the_whole_range(  # type: ignore[no-untyped-def]
    recorded, workers, exited, compacted, reader_window
) -> None:
    """Endpoint, provider, model (and db) windows merged from several workers, some exited,
    optionally compacted into an archive of the reader's geometry: exact min / max and
    p50/p95/p99 within 1.1 % of the exact nearest rank for any value from 1 us to 6 h."""
    clock = SharedClock()
    with tempfile.TemporaryDirectory() as directory:
        writers = [MetricsCollector(directory, clock=clock, strict=True) for _ in range(workers)]
        window_seconds, slots = reader_window
        reader = MetricsCollector(
            directory, clock=clock, strict=True, auto_compact=False, window_seconds=window_seconds,
            window_slots=slots,
        )
        try:
            reader.record_cache_hit()  # a live file: its geometry is the newest configuration
            # Round robin: with several workers, every one holds part of each series.
            for i, (value, offset, endpoint, provider, model) in enumerate(sorted(recorded, key=lambda o: o[1])):
                clock.now = SLOT_START + offset
                writer = writers[i % workers]
                writer.record_request(endpoint, "POST", value, 200, provider=provider, model=model)
                writer.record_db_query(value)
            for writer, gone in zip(writers, exited, strict=False):
                if gone:
                    writer.close()  # the worker exits: its file is read as dead
            if compacted:
                reader.compact()
            clock.now = SLOT_START + 299.0
            d = reader.to_dict()
            values = [o[0] for o in recorded]
            for section, position in (("endpoints", 2), ("providers", 3), ("models", 4)):
                assert set(d[section]) == {o[position] for o in recorded}
                for label, entry in d[section].items():
                    mine = [o[0] for o in recorded if o[position] == label]
                    assert entry["requests"] == len(mine)
                    check_latency(entry["latency_seconds"], mine)
            assert d["database"]["latency_min_seconds"] == min(values)
            assert d["database"]["latency_max_seconds"] == max(values)
            assert d["storage"]["errors"] == {}
        finally:
            for collector in (*writers, reader):
                collector.close()


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
