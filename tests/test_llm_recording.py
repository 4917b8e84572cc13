"""The GatewayRecording API (llm.py) on one collector: tokens and cost, upstream error types,
fallbacks, rate-limit headroom, stream outcomes, build info and the JSON document."""

from __future__ import annotations

import math
import platform
import time
from typing import Any

import pytest
from conftest import FakeClock

from flask_gatewayz_metrics import MetricsCollector
from flask_gatewayz_metrics._version import VERSION
from flask_gatewayz_metrics.storage import compact
from flask_gatewayz_metrics.testing import sample_key as key
from flask_gatewayz_metrics.testing import scrape_samples as scrape
from flask_gatewayz_metrics.testing import series as named

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
