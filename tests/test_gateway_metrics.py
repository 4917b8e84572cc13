"""Beyond the spec: tokens and cost, upstream error types, fallbacks, rate-limit headroom,
streams, requests in flight, build info, cardinality guards -- unit, Flask, fork, gunicorn."""

from __future__ import annotations

import http.client
import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import struct
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeClock
from flask import Flask, Response
from prometheus_client.parser import text_string_to_metric_families
from servers import http as http_call
from servers import start_gateway, stop

from flask_gatewayz_metrics import GatewayzMetrics, MetricsCollector, PrometheusExporter, label_request
from flask_gatewayz_metrics._version import VERSION
from flask_gatewayz_metrics.storage import compact

TOKEN_LE = [
    "1.0",
    "4.0",
    "16.0",
    "64.0",
    "256.0",
    "1024.0",
    "4096.0",
    "16384.0",
    "65536.0",
    "262144.0",
    "1.048576e+06",
    "4.194304e+06",
    "1.6777216e+07",
    "6.7108864e+07",
    "+Inf",
]
NEW_FAMILIES = (
    "llm_tokens_total",
    "llm_request_tokens",
    "llm_cost_usd_total",
    "provider_errors_by_type_total",
    "llm_provider_fallbacks_total",
    "llm_rate_limit_remaining",
    "llm_streams_total",
    "llm_time_to_first_chunk_seconds",
    "llm_stream_duration_seconds",
    "http_requests_in_flight",
    "gatewayz_build_info",
    "gatewayz_start_time_seconds",
    "gatewayz_metrics_label_overflow_total",
)
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


# --------------------------------------------------------------------------- helpers


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def scrape(collector: MetricsCollector) -> Samples:
    return parse(PrometheusExporter(collector).export())


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


def named(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


# --------------------------------------------------------------------------- tokens and cost


def test_tokens_counters_histogram_and_cost(collector: MetricsCollector) -> None:
    """record_tokens feeds llm_tokens_total, the 1,4,...,4^13 llm_request_tokens histogram and the cost."""
    collector.record_tokens("openai", "gpt-4", 10, 20, cached_input_tokens=5, cost_usd=0.25)
    collector.record_tokens("openai", "gpt-4", 1, 70_000, cost_usd=0.75)
    s = scrape(collector)
    labels = {"provider": "openai", "model": "gpt-4"}
    assert s[key("llm_tokens_total", direction="input", **labels)] == 11
    assert s[key("llm_tokens_total", direction="output", **labels)] == 70_020
    assert s[key("llm_tokens_total", direction="cached_input", **labels)] == 5
    assert s[key("llm_cost_usd_total", **labels)] == pytest.approx(1.0)

    buckets = {
        dict(lab)["le"]: v
        for lab, v in named(s, "llm_request_tokens_bucket").items()
        if dict(lab)["direction"] == "input"
    }
    assert list(buckets) == TOKEN_LE
    # one call with 1 token (le=1), one with 10 (le=16)
    assert [buckets[le] for le in ("1.0", "4.0", "16.0", "64.0", "+Inf")] == [1, 1, 2, 2, 2]
    out = {
        dict(lab)["le"]: v
        for lab, v in named(s, "llm_request_tokens_bucket").items()
        if dict(lab)["direction"] == "output"
    }
    assert [out[le] for le in ("16.0", "64.0", "65536.0", "262144.0", "+Inf")] == [0, 1, 1, 2, 2]
    assert s[key("llm_request_tokens_count", direction="input", **labels)] == 2
    assert s[key("llm_request_tokens_sum", direction="input", **labels)] == 11
    assert s[key("llm_request_tokens_count", direction="cached_input", **labels)] == 1
    assert s[key("llm_request_tokens_bucket", direction="output", le="+Inf", **labels)] == 2


def test_tokens_beyond_last_bucket_land_in_inf(collector: MetricsCollector) -> None:
    """A call with more than 4^13 tokens is counted only in the +Inf bucket."""
    collector.record_tokens("openai", "gpt-4", 4**13 + 1, 4**13)
    s = scrape(collector)
    base = {"provider": "openai", "model": "gpt-4"}
    assert s[key("llm_request_tokens_bucket", direction="input", le="6.7108864e+07", **base)] == 0
    assert s[key("llm_request_tokens_bucket", direction="input", le="+Inf", **base)] == 1
    assert s[key("llm_request_tokens_bucket", direction="output", le="6.7108864e+07", **base)] == 1


def test_cached_input_only_when_positive(collector: MetricsCollector) -> None:
    """cached_input_tokens=0 creates no cached_input series; no cost gives no cost series, a cost of 0 does."""
    collector.record_tokens("anthropic", "claude-3", 3, 4)
    s = scrape(collector)
    directions = {dict(lab)["direction"] for lab in named(s, "llm_tokens_total")}
    assert directions == {"input", "output"}
    assert named(s, "llm_cost_usd_total") == {}
    collector.record_tokens("anthropic", "claude-3", 3, 4, cached_input_tokens=0, cost_usd=0.0)
    s = scrape(collector)
    assert {dict(lab)["direction"] for lab in named(s, "llm_tokens_total")} == {"input", "output"}
    assert named(s, "llm_cost_usd_total") == {(("model", "claude-3"), ("provider", "anthropic")): 0.0}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"input_tokens": -1},
        {"output_tokens": math.nan},
        {"input_tokens": "10"},
        {"output_tokens": None},
        {"input_tokens": True},
        {"output_tokens": math.inf},
        {"cached_input_tokens": -5},
        {"cached_input_tokens": "3"},
        {"cost_usd": -0.01},
        {"cost_usd": math.nan},
        {"cost_usd": "0.5"},
        {"cost_usd": math.inf},
    ],
    ids=repr,
)
def test_tokens_bad_values_dropped(collector: MetricsCollector, kwargs: dict[str, Any]) -> None:
    """Negative, NaN, infinite or non-numeric token counts / costs record nothing and count invalid_value."""
    args: dict[str, Any] = {"provider": "openai", "model": "gpt-4", "input_tokens": 1, "output_tokens": 2, **kwargs}
    collector.record_tokens(**args)
    s = scrape(collector)
    assert named(s, "llm_tokens_total") == {}
    assert named(s, "llm_cost_usd_total") == {}
    assert s[key("gatewayz_metrics_dropped_total", reason="invalid_value")] == 1


# --------------------------------------------------------------------------- upstream errors


@pytest.mark.parametrize(
    ("status", "error_type", "expected"),
    [
        (429, None, "rate_limited"),
        (408, None, "timeout"),
        (504, None, "timeout"),
        (404, None, "4xx"),
        (400, None, "4xx"),
        (500, None, "5xx"),
        (503, None, "5xx"),
        (200, None, "other"),
        (200, "connection", "connection"),
        (503, "timeout", "timeout"),
        (500, "made-up", "other"),
    ],
)
def test_failed_call_error_type(
    collector: MetricsCollector, status: int, error_type: str | None, expected: str
) -> None:
    """A failed provider call (error=True) is counted under its closed-list error type."""
    collector.record_provider_call("openai", "gpt-4", 0.1, status_code=status, error=True, error_type=error_type)
    s = scrape(collector)
    assert named(s, "provider_errors_by_type_total") == {(("error_type", expected), ("provider", "openai")): 1.0}
    assert s[key("provider_errors_total", provider="openai")] == 1


def test_429_not_failed_with_default_error_status(collector: MetricsCollector) -> None:
    """With error_status=500 a 429 without error=True is not a failed call: no error type counted."""
    collector.record_provider_call("openai", "gpt-4", 0.1, status_code=429)
    collector.record_provider_call("openai", "gpt-4", 0.1, status_code=504)
    s = scrape(collector)
    assert s[key("provider_requests_total", provider="openai")] == 2
    assert s[key("provider_errors_total", provider="openai")] == 1
    assert named(s, "provider_errors_by_type_total") == {(("error_type", "timeout"), ("provider", "openai")): 1.0}


def test_429_failed_when_error_status_400(metrics_dir: str, clock: FakeClock) -> None:
    """With error_status=400 a 429 is a failed call and counted as rate_limited."""
    c = MetricsCollector(metrics_dir, clock=clock, error_status=400)
    try:
        c.record_provider_call("openai", "gpt-4", 0.1, status_code=429)
        s = scrape(c)
        assert s[key("provider_errors_by_type_total", provider="openai", error_type="rate_limited")] == 1
    finally:
        c.close()


def test_record_provider_error_directly(collector: MetricsCollector) -> None:
    """record_provider_error counts by type without counting a provider request."""
    collector.record_provider_error("google", error_type="timeout")
    collector.record_provider_error("google", error_type="connection")
    collector.record_provider_error("google", 503)
    collector.record_provider_error("google", 429)
    collector.record_provider_error("google")
    collector.record_provider_error("google", error_type="nonsense")
    s = scrape(collector)
    got = {dict(lab)["error_type"]: v for lab, v in named(s, "provider_errors_by_type_total").items()}
    assert got == {"timeout": 1, "connection": 1, "5xx": 1, "rate_limited": 1, "other": 2}
    assert named(s, "provider_requests_total") == {}


def test_fallbacks(collector: MetricsCollector) -> None:
    """record_fallback counts llm_provider_fallbacks_total{from_provider,to_provider}."""
    collector.record_fallback("openai", "anthropic")
    collector.record_fallback("openai", "anthropic")
    collector.record_fallback("anthropic", "google")
    s = scrape(collector)
    assert named(s, "llm_provider_fallbacks_total") == {
        (("from_provider", "openai"), ("to_provider", "anthropic")): 2.0,
        (("from_provider", "anthropic"), ("to_provider", "google")): 1.0,
    }
    assert collector.to_dict()["llm"]["fallbacks"] == {"openai": {"anthropic": 2.0}, "anthropic": {"google": 1.0}}  # type: ignore[index]


# --------------------------------------------------------------------------- rate-limit headroom


def test_rate_limit_latest_wins_across_workers_even_zero(metrics_dir: str) -> None:
    """The value with the newest collector-clock timestamp wins over all files, 0 included, and survives compaction."""
    early, late = FakeClock(1_000.0), FakeClock(2_000.0)
    a = MetricsCollector(metrics_dir, clock=early)
    b = MetricsCollector(metrics_dir, clock=late)
    try:
        b.set_rate_limit_remaining("openai", "requests", 0)  # written first, but with the later timestamp
        a.set_rate_limit_remaining("openai", "requests", 500)
        a.set_rate_limit_remaining("openai", "tokens", 9000)
        s = scrape(a)
        assert s[key("llm_rate_limit_remaining", provider="openai", limit="requests")] == 0
        assert s[key("llm_rate_limit_remaining", provider="openai", limit="tokens")] == 9000
        assert a.to_dict()["llm"]["rate_limit_remaining"] == {"openai": {"requests": 0.0, "tokens": 9000.0}}  # type: ignore[index]

        early.advance(1_500)  # a's clock now 2500 > 2000
        a.set_rate_limit_remaining("openai", "requests", 42)
        assert scrape(b)[key("llm_rate_limit_remaining", provider="openai", limit="requests")] == 42
        late.advance(1_000)  # b's clock 3000
        b.set_rate_limit_remaining("openai", "requests", 0)
        assert scrape(a)[key("llm_rate_limit_remaining", provider="openai", limit="requests")] == 0
    finally:
        a.close()
        b.close()
    result = compact(metrics_dir)
    assert result.absorbed == 2
    reader = MetricsCollector(metrics_dir)
    try:
        s = scrape(reader)
        assert s[key("llm_rate_limit_remaining", provider="openai", limit="requests")] == 0
        assert s[key("llm_rate_limit_remaining", provider="openai", limit="tokens")] == 9000
    finally:
        reader.close()


def test_rate_limit_archive_vs_live_latest_wins(metrics_dir: str) -> None:
    """After compaction, a live worker's newer value beats the archived one, and an older one does not."""
    clock = FakeClock(1_000.0)
    old = MetricsCollector(metrics_dir, clock=clock)
    old.set_rate_limit_remaining("anthropic", "tokens", 7)
    old.close()
    compact(metrics_dir)
    stale = MetricsCollector(metrics_dir, clock=FakeClock(500.0))
    try:
        stale.set_rate_limit_remaining("anthropic", "tokens", 99)
        assert scrape(stale)[key("llm_rate_limit_remaining", provider="anthropic", limit="tokens")] == 7
    finally:
        stale.close()
    fresh = MetricsCollector(metrics_dir, clock=FakeClock(5_000.0))
    try:
        fresh.set_rate_limit_remaining("anthropic", "tokens", 0)
        assert scrape(fresh)[key("llm_rate_limit_remaining", provider="anthropic", limit="tokens")] == 0
    finally:
        fresh.close()


@pytest.mark.parametrize(
    ("limit", "remaining"), [("bogus", 1), ("requests", -1), ("tokens", math.nan), ("requests", "5"), ("tokens", None)]
)
def test_rate_limit_bad_values_dropped(collector: MetricsCollector, limit: str, remaining: Any) -> None:
    """An unknown limit or a negative / NaN / non-numeric remaining is dropped and counted."""
    collector.set_rate_limit_remaining("openai", limit, remaining)
    s = scrape(collector)
    assert named(s, "llm_rate_limit_remaining") == {}
    assert s[key("gatewayz_metrics_dropped_total", reason="invalid_value")] == 1


# --------------------------------------------------------------------------- streams (collector API)


def test_record_stream_outcomes_and_histograms(collector: MetricsCollector) -> None:
    """record_stream counts outcomes and observes duration and time to first chunk."""
    collector.record_stream("openai", "gpt-4", "completed", 2.0, first_chunk_seconds=0.3)
    collector.record_stream("openai", "gpt-4", "client_disconnect", 1.0, first_chunk_seconds=0.2)
    collector.record_stream("openai", "gpt-4", "error", 0.02)
    s = scrape(collector)
    base = {"provider": "openai", "model": "gpt-4"}
    assert named(s, "llm_streams_total") == {
        tuple(sorted({**base, "outcome": o}.items())): 1.0 for o in ("completed", "client_disconnect", "error")
    }
    assert s[key("llm_stream_duration_seconds_count", **base)] == 3
    assert s[key("llm_stream_duration_seconds_sum", **base)] == pytest.approx(3.02)
    assert s[key("llm_stream_duration_seconds_bucket", le="0.025", **base)] == 1
    assert s[key("llm_stream_duration_seconds_bucket", le="1.0", **base)] == 2
    assert s[key("llm_stream_duration_seconds_bucket", le="+Inf", **base)] == 3
    assert s[key("llm_time_to_first_chunk_seconds_count", **base)] == 2
    assert s[key("llm_time_to_first_chunk_seconds_sum", **base)] == pytest.approx(0.5)
    assert s[key("llm_time_to_first_chunk_seconds_bucket", le="0.25", **base)] == 1
    streams = collector.to_dict()["llm"]["streams"]  # type: ignore[index]
    assert streams["openai"]["gpt-4"]["completed"] == 1
    assert streams["openai"]["gpt-4"]["first_chunk_avg_seconds"] == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("outcome", "duration", "first"),
    [
        ("aborted", 1.0, None),
        ("completed", -1.0, None),
        ("completed", math.nan, None),
        ("completed", 1.0, -0.1),
        ("completed", "1", None),
        ("error", 1.0, math.inf),
    ],
)
def test_record_stream_bad_values_dropped(collector: MetricsCollector, outcome: str, duration: Any, first: Any) -> None:
    """An unknown outcome or a bad duration / first-chunk time records nothing and counts invalid_value."""
    collector.record_stream("openai", "gpt-4", outcome, duration, first_chunk_seconds=first)
    s = scrape(collector)
    assert named(s, "llm_streams_total") == {}
    assert named(s, "llm_stream_duration_seconds_count") == {}
    assert s[key("gatewayz_metrics_dropped_total", reason="invalid_value")] == 1


# --------------------------------------------------------------------------- identity, JSON


def test_build_info_start_time_and_uptime(metrics_dir: str) -> None:
    """gatewayz_build_info is 1 with version labels; start time equals the snapshot's; uptime consistent."""
    c = MetricsCollector(metrics_dir)
    try:
        before = time.time()
        s = scrape(c)
        after = time.time()
        snap = c.snapshot()
        assert s[key("gatewayz_build_info", version=VERSION, python_version=platform.python_version())] == 1
        assert len(named(s, "gatewayz_build_info")) == 1
        start = s[key("gatewayz_start_time_seconds")]
        assert start == snap.start_time
        assert 0 < start <= after
        uptime = s[key("gatewayz_uptime_seconds")]
        assert before - start - 0.01 <= uptime <= after - start + 0.01
    finally:
        c.close()


def test_json_has_in_flight_and_llm(collector: MetricsCollector) -> None:
    """to_dict() exposes in_flight and an llm section with every new grouping."""
    collector.add_in_flight(2)
    collector.record_tokens("openai", "gpt-4", 5, 6, cached_input_tokens=2, cost_usd=0.1)
    collector.record_provider_error("openai", 502)
    collector.record_stream("openai", "gpt-4", "completed", 1.0, 0.1)
    doc = collector.to_dict()
    assert doc["in_flight"] == 2
    llm = doc["llm"]
    assert set(llm) == {  # type: ignore[arg-type]
        "tokens",
        "cost_usd",
        "errors_by_type",
        "fallbacks",
        "rate_limit_remaining",
        "streams",
        "label_overflow",
    }
    assert llm["tokens"] == {"openai": {"gpt-4": {"input": 5.0, "output": 6.0, "cached_input": 2.0}}}  # type: ignore[index]
    assert llm["cost_usd"] == {"openai": {"gpt-4": pytest.approx(0.1)}}  # type: ignore[index]
    assert llm["errors_by_type"] == {"openai": {"5xx": 1.0}}  # type: ignore[index]
    assert llm["streams"]["openai"]["gpt-4"]["completed"] == 1.0  # type: ignore[index]
    collector.add_in_flight(-2)
    assert collector.to_dict()["in_flight"] == 0


# --------------------------------------------------------------------------- in flight, real processes


def test_in_flight_of_killed_worker_excluded(metrics_dir: str) -> None:
    """A forked worker's 3 in-flight requests count while it lives, not after SIGKILL nor after compaction."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            signal.alarm(60)
            os.close(read_fd)
            child = MetricsCollector(metrics_dir)
            child.record_request("/api/chat", "POST", 0.1, 200)
            child.add_in_flight(3)
            os.write(write_fd, b"ready")
            time.sleep(60)
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    parent = MetricsCollector(metrics_dir)
    try:
        try:
            with os.fdopen(read_fd, "rb") as ready:
                assert ready.read(5) == b"ready"
            s = scrape(parent)
            assert s[key("http_requests_in_flight")] == 3
            assert parent.to_dict()["in_flight"] == 3
            assert s[key("gatewayz_metrics_worker_files", state="live")] == 1
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        parent.auto_compact = False
        s = scrape(parent)
        assert s[key("http_requests_in_flight")] == 0
        assert s[key("gatewayz_metrics_worker_files", state="dead")] == 1
        assert s[key("http_requests_total", endpoint="/api/chat", method="POST")] == 1  # its counters stay
        assert compact(metrics_dir).absorbed == 1
        s = scrape(parent)
        assert s[key("http_requests_in_flight")] == 0
        assert parent.to_dict()["in_flight"] == 0
        assert s[key("http_requests_total", endpoint="/api/chat", method="POST")] == 1
    finally:
        parent.close()


# --------------------------------------------------------------------------- Flask streams


def stream_app(metrics_dir: str) -> Flask:
    app = Flask(__name__)
    app.config["GATEWAYZ_METRICS_DIR"] = metrics_dir
    GatewayzMetrics(app)

    def slow_chunks(fail: bool = False) -> Iterator[str]:
        time.sleep(0.05)
        yield "data: 0\n\n"
        if fail:
            raise RuntimeError("upstream broke mid-stream")
        for i in range(1, 4):
            time.sleep(0.01)
            yield f"data: {i}\n\n"

    @app.get("/chat/stream")
    def labelled() -> Response:
        label_request(provider="openai", model="gpt-4")
        return Response(slow_chunks(), mimetype="text/event-stream")

    @app.get("/chat/broken")
    def broken() -> Response:
        label_request(provider="openai", model="gpt-4")
        return Response(slow_chunks(fail=True), mimetype="text/event-stream")

    @app.get("/plain/stream")
    def unlabelled() -> Response:
        return Response(slow_chunks(), mimetype="text/event-stream")

    return app


def app_collector(app: Flask) -> MetricsCollector:
    return app.extensions["gatewayz_metrics"].collector  # type: ignore[no-any-return]


def http_scrape(app: Flask) -> Samples:
    response = app.test_client().get("/metrics")
    assert response.status_code == 200
    return parse(response.get_data(as_text=True))


def test_flask_stream_completed(metrics_dir: str) -> None:
    """A fully read labelled stream: outcome completed, first chunk >= 0.05 s, duration >= first chunk."""
    app = stream_app(metrics_dir)
    response = app.test_client().get("/chat/stream")
    assert response.get_data(as_text=True).count("data:") == 4
    response.close()
    s = http_scrape(app)
    base = {"provider": "openai", "model": "gpt-4"}
    assert named(s, "llm_streams_total") == {tuple(sorted({**base, "outcome": "completed"}.items())): 1.0}
    first = s[key("llm_time_to_first_chunk_seconds_sum", **base)]
    duration = s[key("llm_stream_duration_seconds_sum", **base)]
    assert s[key("llm_time_to_first_chunk_seconds_count", **base)] == 1
    assert s[key("llm_stream_duration_seconds_count", **base)] == 1
    assert 0.05 <= first < 5
    assert duration >= first + 0.03  # three more chunks, 10 ms apart
    assert s[key("http_requests_total", endpoint="/chat/stream", method="GET")] == 1
    assert s[key("http_request_errors_total", endpoint="/chat/stream", method="GET")] == 0
    assert s[key("http_requests_in_flight")] == 0


def test_flask_stream_error_mid_stream(metrics_dir: str) -> None:
    """A generator raising mid-stream: outcome error, and the 200 request counted as an HTTP error."""
    app = stream_app(metrics_dir)
    response = app.test_client().get("/chat/broken")
    assert response.status_code == 200
    with pytest.raises(RuntimeError, match="mid-stream"):
        response.get_data()
    response.close()
    s = http_scrape(app)
    base = {"provider": "openai", "model": "gpt-4"}
    assert named(s, "llm_streams_total") == {tuple(sorted({**base, "outcome": "error"}.items())): 1.0}
    assert s[key("http_requests_total", endpoint="/chat/broken", method="GET")] == 1
    assert s[key("http_request_errors_total", endpoint="/chat/broken", method="GET")] == 1
    assert s[key("http_response_status_total", endpoint="/chat/broken", status="200")] == 1
    assert s[key("llm_time_to_first_chunk_seconds_sum", **base)] >= 0.05
    assert s[key("http_requests_in_flight")] == 0


def test_flask_stream_client_disconnect_and_in_flight(metrics_dir: str) -> None:
    """Closed after one chunk: 1 in flight while open (scrape excluded), then 0 and outcome client_disconnect."""
    app = stream_app(metrics_dir)
    collector = app_collector(app)
    response = app.test_client().get("/chat/stream")
    try:
        assert next(response.response) == b"data: 0\n\n"  # type: ignore[call-overload]
        assert collector.to_dict()["in_flight"] == 1
        s = http_scrape(app)
        assert s[key("http_requests_in_flight")] == 1
        assert named(s, "llm_streams_total") == {}
        assert app.test_client().get("/metrics/json").get_json()["in_flight"] == 1
    finally:
        response.close()
    s = http_scrape(app)
    base = {"provider": "openai", "model": "gpt-4"}
    assert named(s, "llm_streams_total") == {tuple(sorted({**base, "outcome": "client_disconnect"}.items())): 1.0}
    assert s[key("http_requests_in_flight")] == 0
    assert collector.to_dict()["in_flight"] == 0
    assert s[key("llm_time_to_first_chunk_seconds_sum", **base)] >= 0.05
    assert s[key("llm_stream_duration_seconds_sum", **base)] >= s[key("llm_time_to_first_chunk_seconds_sum", **base)]
    assert s[key("http_request_errors_total", endpoint="/chat/stream", method="GET")] == 0


def test_flask_unlabelled_stream_records_request_at_close_only(metrics_dir: str) -> None:
    """An unlabelled stream records no stream metrics; its HTTP request is recorded when closed."""
    app = stream_app(metrics_dir)
    response = app.test_client().get("/plain/stream")
    try:
        s = http_scrape(app)
        assert key("http_requests_total", endpoint="/plain/stream", method="GET") not in s
        assert s[key("http_requests_in_flight")] == 1
        assert response.get_data(as_text=True).count("data:") == 4
    finally:
        response.close()
    s = http_scrape(app)
    assert s[key("http_requests_total", endpoint="/plain/stream", method="GET")] == 1
    assert s[key("http_request_duration_seconds_sum", endpoint="/plain/stream", method="GET")] >= 0.08
    assert s[key("http_requests_in_flight")] == 0
    for name in ("llm_streams_total", "llm_stream_duration_seconds_count", "llm_time_to_first_chunk_seconds_count"):
        assert named(s, name) == {}


# --------------------------------------------------------------------------- cardinality guards


def expected_overflow(calls: list[tuple[str, str]], limit: int, allowed: set[str]) -> tuple[int, int, list[str]]:
    """Model of the guard: (provider overflows, model overflows, admitted models).

    The first ``limit`` distinct models (or the allowlisted providers) are admitted;
    every other value becomes "other" and is counted once, when first refused.
    """
    admitted: list[str] = []
    refused_providers: set[str] = set()
    refused_models: set[str] = set()
    for provider, model in calls:
        if provider not in allowed:
            refused_providers.add(provider)
        if model in admitted:
            continue
        if len(admitted) < limit:
            admitted.append(model)
        else:
            refused_models.add(model)
    return len(refused_providers), len(refused_models), admitted


def test_label_limits_and_allowlist(metrics_dir: str) -> None:
    """10,000 random models: <= 5 + other series; foreign providers become other; overflows counted exactly."""
    rng = random.Random(7)
    names = [f"model-{rng.getrandbits(40):x}" for _ in range(3_000)]
    calls = [(rng.choice(["openai", "anthropic", "mistral"]), rng.choice(names)) for _ in range(10_000)]
    c = MetricsCollector(metrics_dir, label_limits={"model": 5}, allowed_labels={"provider": ["openai"]})
    try:
        for provider, model in calls:
            c.record_request("/api/chat", "POST", 0.01, 200, provider=provider, model=model)
        s = scrape(c)
        provider_overflow, model_overflow, admitted = expected_overflow(calls, 5, {"openai"})
        models = {dict(lab)["model"] for lab in named(s, "model_requests_total")}
        assert models == {*admitted, "other"}
        assert len(models) == 6
        providers = {dict(lab)["provider"]: v for lab, v in named(s, "provider_requests_total").items()}
        assert providers == {
            "openai": sum(p == "openai" for p, _ in calls),
            "other": sum(p != "openai" for p, _ in calls),
        }
        assert s[key("model_requests_total", model="other")] == sum(m not in admitted for _, m in calls)
        assert s[key("gatewayz_metrics_label_overflow_total", label="model")] == model_overflow
        assert s[key("gatewayz_metrics_label_overflow_total", label="provider")] == provider_overflow
        assert model_overflow > 2_000  # the random names really overflowed
        assert provider_overflow == 2  # anthropic and mistral, each counted once
        assert c.to_dict()["llm"]["label_overflow"] == {  # type: ignore[index]
            "model": float(model_overflow),
            "provider": float(provider_overflow),
        }
        assert s[key("http_requests_total", endpoint="/api/chat", method="POST")] == 10_000
    finally:
        c.close()


def test_label_limits_bound_llm_families(metrics_dir: str) -> None:
    """Tokens, streams and errors of random models and providers stay within the guard's series too."""
    c = MetricsCollector(metrics_dir, label_limits={"model": 3}, allowed_labels={"provider": ["openai"]})
    try:
        for i in range(500):
            c.record_tokens(f"p{i % 7}", f"m{i}", 1, 1, cost_usd=0.001)
            c.record_stream("openai", f"m{i}", "completed", 0.5)
            c.record_provider_error(f"p{i}", 500)
            c.record_fallback(f"p{i}", "openai")
        s = scrape(c)
        assert {dict(lab)["model"] for lab in named(s, "llm_tokens_total")} == {"m0", "m1", "m2", "other"}
        assert {dict(lab)["provider"] for lab in named(s, "llm_tokens_total")} == {"other"}
        assert {dict(lab)["model"] for lab in named(s, "llm_streams_total")} == {"m0", "m1", "m2", "other"}
        assert named(s, "provider_errors_by_type_total") == {(("error_type", "5xx"), ("provider", "other")): 500.0}
        assert named(s, "llm_provider_fallbacks_total") == {
            (("from_provider", "other"), ("to_provider", "openai")): 500.0
        }
        assert s[key("llm_tokens_total", provider="other", model="other", direction="input")] == 497
        assert s[key("gatewayz_metrics_label_overflow_total", label="model")] == 497  # once per refused value
    finally:
        c.close()


def example_app(metrics_dir: str, tmp_path: Path, upstreams: dict[str, str]) -> Flask:
    from example_app.app import create_app

    return create_app(
        {
            "GATEWAYZ_METRICS_DIR": metrics_dir,
            "GATEWAY_DB_PATH": str(tmp_path / "models.sqlite3"),
            **upstreams,
        }
    )


def series_counts(s: Samples) -> tuple[int, int, int]:
    models = {dict(labels).get("model") for (_, labels) in s if "model" in dict(labels)}
    return len(named(s, "http_requests_total")), len(models), len(s)


def test_example_app_random_paths_and_models_add_a_handful_of_series(
    metrics_dir: str, tmp_path: Path, example_upstreams: dict[str, str]
) -> None:
    """10,000 random unknown paths and 1,000 chats with random unknown models add at most a handful of series."""
    app = example_app(metrics_dir, tmp_path, example_upstreams)
    client = app.test_client()
    assert client.post("/api/chat", json={"message": "warm up"}).status_code == 200
    assert client.get("/api/models").status_code == 200
    before = http_scrape(app)
    rng = random.Random(3)
    for _ in range(10_000):
        assert client.get(f"/{rng.getrandbits(64):x}/{uuid.UUID(int=rng.getrandbits(128))}").status_code == 404
    for _ in range(1_000):
        response = client.post("/api/chat", json={"model": f"llama-{rng.getrandbits(48):x}", "message": "hi"})
        assert response.status_code == 400
    after = http_scrape(app)
    requests_before, models_before, _ = series_counts(before)
    requests_after, models_after, total_after = series_counts(after)
    assert requests_after - requests_before <= 3  # unmatched GET (and nothing per path)
    assert models_after == models_before
    assert after[key("http_requests_total", endpoint="unmatched", method="GET")] == 10_000
    assert after[key("http_requests_total", endpoint="/api/chat", method="POST")] == 1_001
    # One new endpoint label (unmatched) with its buckets and gauges, and one
    # http_server_request_duration_seconds series (14 buckets, +Inf, count, sum) per new
    # (route, method, status): unmatched GET 404 and /api/chat POST 400.
    assert total_after - len(before) <= 40 + 2 * 17
    gen_ai_models = {dict(labels).get("gen_ai_request_model") for (name, labels) in after if name.startswith("gen_ai")}
    assert gen_ai_models <= {dict(labels).get("gen_ai_request_model") for (_, labels) in before} | {None, "other"}


def test_example_app_accepted_random_models_collapse_into_other(
    metrics_dir: str, tmp_path: Path, example_upstreams: dict[str, str]
) -> None:
    """1,000 chats with random gpt-* models (accepted by the example) add one model series: other."""
    app = example_app(metrics_dir, tmp_path, example_upstreams)
    client = app.test_client()
    rng = random.Random(5)
    for _ in range(1_000):
        response = client.post("/api/chat", json={"model": f"gpt-{rng.getrandbits(48):x}", "message": "hi"})
        assert response.status_code == 200
    s = http_scrape(app)
    models = {dict(lab)["model"] for lab in named(s, "model_requests_total")}
    assert models == {"other"}  # the example allowlists its catalogue's models
    assert {dict(lab)["model"] for lab in named(s, "llm_tokens_total")} == {"other"}
    assert s[key("model_requests_total", model="other")] == 1_000


# --------------------------------------------------------------------------- promtool


def test_promtool_accepts_new_families(collector: MetricsCollector) -> None:
    """promtool check metrics passes (no lint problem) with every new family populated."""
    promtool = shutil.which("promtool") or ("/usr/bin/promtool" if os.path.exists("/usr/bin/promtool") else None)
    if promtool is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("promtool missing and CI=true")
        pytest.skip("promtool not installed")
    limited = MetricsCollector(collector.directory, label_limits={"model": 1})
    try:
        collector.record_tokens("openai", "gpt-4", 10, 20, cached_input_tokens=3, cost_usd=0.01)
        collector.record_provider_call("openai", "gpt-4", 0.2, status_code=503)
        collector.record_provider_error("anthropic", error_type="timeout")
        collector.record_fallback("openai", "anthropic")
        collector.set_rate_limit_remaining("openai", "requests", 0)
        collector.set_rate_limit_remaining("openai", "tokens", 1000)
        collector.record_stream("openai", "gpt-4", "completed", 1.5, 0.2)
        collector.record_stream("openai", "gpt-4", "client_disconnect", 0.5)
        collector.add_in_flight(1)
        limited.record_request("/x", "GET", 0.1, 200, model="a")
        limited.record_request("/x", "GET", 0.1, 200, model="b")
        body = PrometheusExporter(collector).export()
    finally:
        limited.close()
    present = {family.name for family in text_string_to_metric_families(body) if family.samples}
    missing = {name.removesuffix("_total") for name in NEW_FAMILIES} - present
    assert not missing
    result = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, text=True, timeout=30, check=False
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


# --------------------------------------------------------------------------- real gunicorn

def gunicorn_scrape(port: int) -> Samples:
    status, body = http_call("GET", f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    return parse(body.decode("utf-8"))


def open_chat_stream(port: int, body: dict[str, Any]) -> socket.socket:
    """Send a streaming chat on a raw socket; return it once the headers and first SSE chunk arrived."""
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(
            b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
            + payload
        )
        received = b""
        deadline = time.monotonic() + 10
        while b"data: {" not in received and time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        assert received.startswith(b"HTTP/1.1 200"), received[:300]
        assert b"data: {" in received, received[:300]
    except BaseException:
        sock.close()
        raise
    return sock


def read_chat_stream(port: int, body: dict[str, Any]) -> bytes:
    """A whole streaming chat with http.client; a body broken by the server returns what arrived."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request("POST", "/api/chat", body=json.dumps(body), headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 200
        try:
            return response.read()
        except (http.client.IncompleteRead, ConnectionError) as exc:
            return getattr(exc, "partial", b"")
    finally:
        conn.close()


def wait_for(port: int, predicate: Any, timeout: float = 15.0) -> Samples:
    """Scrape until ``predicate(samples)`` holds (bounded); return the last scrape."""
    deadline = time.monotonic() + timeout
    s = gunicorn_scrape(port)
    while not predicate(s) and time.monotonic() < deadline:
        time.sleep(0.1)
        s = gunicorn_scrape(port)
    return s


@pytest.mark.slow
def test_gunicorn_streams_and_in_flight(tmp_path: Path) -> None:
    """Under gunicorn (2 workers): in flight while streaming, client_disconnect on abrupt close, completed, error."""
    server = start_gateway(tmp_path, "streams", workers=2, GATEWAY_SIMULATED_LATENCY_SCALE="0.01")
    port = server.port
    try:
        base = {"provider": "openai", "model": "gpt-4"}
        outcome = {o: key("llm_streams_total", outcome=o, **base) for o in ("completed", "client_disconnect", "error")}
        in_flight = key("http_requests_in_flight")
        message = " ".join(f"word{i}" for i in range(60))  # ~21 chunks: ~6 s if never interrupted

        sock = open_chat_stream(port, {"message": message, "stream": True, "stream_chunk_delay_seconds": 0.3})
        try:
            s = gunicorn_scrape(port)
            assert s[in_flight] >= 1
            assert s.get(outcome["client_disconnect"], 0) == 0
        finally:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, not FIN
            sock.close()
        closed_at = time.monotonic()
        s = wait_for(port, lambda s: s.get(outcome["client_disconnect"]) == 1 and s[in_flight] == 0)
        assert s.get(outcome["client_disconnect"]) == 1, server.log.read_text()[-3000:]
        assert s[in_flight] == 0
        assert time.monotonic() - closed_at < 5  # noticed long before the stream would have ended
        assert s.get(outcome["completed"], 0) == 0

        body = read_chat_stream(port, {"message": "complete me please", "stream": True})
        assert body.rstrip().endswith(b"data: [DONE]")
        s = wait_for(port, lambda s: s.get(outcome["completed"]) == 1, timeout=10)
        assert s.get(outcome["completed"]) == 1

        body = read_chat_stream(port, {"message": message, "stream": True, "simulate_stream_error": True})
        assert b"[DONE]" not in body
        s = wait_for(port, lambda s: s.get(outcome["error"]) == 1 and s[in_flight] == 0, timeout=10)

        for _ in range(4):  # every worker reports the same totals
            assert s[outcome["error"]] == 1
            assert s[outcome["completed"]] == 1
            assert s[outcome["client_disconnect"]] == 1
            assert s[in_flight] == 0
            assert s[key("http_requests_total", endpoint="/api/chat", method="POST")] == 3
            assert s[key("http_request_errors_total", endpoint="/api/chat", method="POST")] == 1
            assert s[key("llm_time_to_first_chunk_seconds_count", **base)] == 3
            assert s[key("llm_stream_duration_seconds_count", **base)] == 3
            s = gunicorn_scrape(port)
    finally:
        stop(server.process)
