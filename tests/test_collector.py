"""MetricsCollector: the recording API, every metric family, drops, windows, reset, decorator."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from flask_gatewayz_metrics import (
    InvalidMetric,
    MetricsCollector,
    PrometheusExporter,
    get_metrics_collector,
    sketch,
    track_request,
    tracking,
)
from flask_gatewayz_metrics import default_collector as default_collector_module
from flask_gatewayz_metrics.storage import layout
from flask_gatewayz_metrics.testing import sample_key, scrape_samples

SLOT = 60.0  # default window: 300 s in 5 slots


def samples(c: MetricsCollector) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the 0.0.4 exposition, keyed by (sample name, labels)."""
    text = PrometheusExporter(c).export()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(c: MetricsCollector, name: str, **labels: str) -> float | None:
    return samples(c).get((name, frozenset(labels.items())))


def names(c: MetricsCollector) -> set[str]:
    return {name for name, _ in samples(c)}


# ------------------------------------------------------------------ requests
def test_record_request_http_families(collector: MetricsCollector) -> None:
    """record_request feeds http_requests/errors/status totals and the latency gauges."""
    collector.record_request("/api/chat", "POST", 0.25, 200)
    collector.record_request("/api/chat", "POST", 0.75, 500)
    collector.record_request("/api/chat", "GET", 0.5, 200)
    collector.record_request("/api/models", "GET", 0.125, 404)

    d = collector.to_dict()
    chat = d["endpoints"]["/api/chat"]
    assert chat["requests"] == 3
    assert chat["errors"] == 1
    assert chat["methods"] == {"GET": {"requests": 1, "errors": 0}, "POST": {"requests": 2, "errors": 1}}
    assert chat["status"] == {"200": 2, "500": 1}
    assert chat["latency_seconds"]["avg"] == pytest.approx(0.5)
    assert chat["window"] == {"requests": 3, "errors": 1, "error_rate": pytest.approx(1 / 3)}
    assert d["endpoints"]["/api/models"]["status"] == {"404": 1}
    assert d["endpoints"]["/api/models"]["errors"] == 0

    assert sample(collector, "http_requests_total", endpoint="/api/chat", method="POST") == 2
    assert sample(collector, "http_requests_total", endpoint="/api/chat", method="GET") == 1
    assert sample(collector, "http_request_errors_total", endpoint="/api/chat", method="POST") == 1
    assert sample(collector, "http_request_errors_total", endpoint="/api/models", method="GET") == 0
    assert sample(collector, "http_response_status_total", endpoint="/api/chat", status="500") == 1
    assert sample(collector, "http_response_status_total", endpoint="/api/models", status="404") == 1
    assert sample(collector, "http_request_latency_avg_seconds", endpoint="/api/chat") == pytest.approx(0.5)
    bound = sketch.MAX_RELATIVE_ERROR * (1 + 1e-9)
    for name, expected in (("p50", 0.5), ("p95", 0.75), ("p99", 0.75)):
        got = sample(collector, f"http_request_latency_{name}_seconds", endpoint="/api/chat")
        assert got is not None and abs(got - expected) / expected <= bound, name
    assert sample(collector, "http_request_duration_seconds_count", endpoint="/api/chat", method="POST") == 2
    assert sample(collector, "http_request_duration_seconds_sum", endpoint="/api/chat", method="POST") == 1.0
    assert sample(
        collector, "http_request_duration_seconds_bucket", endpoint="/api/chat", method="POST", le="0.5"
    ) == 1


def test_record_request_with_provider_and_model(collector: MetricsCollector) -> None:
    """record_request with provider/model also feeds the provider_* and model_* families."""
    collector.record_request("/api/chat", "POST", 0.2, 200, provider="openai", model="gpt-4")
    collector.record_request("/api/chat", "POST", 0.6, 502, provider="openai", model="gpt-4")
    collector.record_request("/api/chat", "POST", 0.4, 200, provider="anthropic", model="claude-3")

    d = collector.to_dict()
    openai = d["providers"]["openai"]
    assert (openai["requests"], openai["errors"], openai["error_rate"]) == (2, 1, 0.5)
    assert openai["latency_seconds"]["avg"] == pytest.approx(0.4)
    assert openai["latency_seconds"]["min"] == 0.2
    assert openai["latency_seconds"]["max"] == 0.6
    assert d["models"]["claude-3"] == {
        "requests": 1, "errors": 0, "error_rate": 0.0,
        "latency_seconds": {"avg": pytest.approx(0.4), "min": 0.4, "max": 0.4, "p50": 0.4, "p95": 0.4, "p99": 0.4},
    }

    assert sample(collector, "provider_requests_total", provider="openai") == 2
    assert sample(collector, "provider_errors_total", provider="openai") == 1
    assert sample(collector, "provider_error_rate", provider="openai") == 0.5
    assert sample(collector, "provider_latency_avg_seconds", provider="openai") == pytest.approx(0.4)
    assert sample(collector, "provider_latency_min_seconds", provider="openai") == 0.2
    assert sample(collector, "provider_latency_max_seconds", provider="openai") == 0.6
    p95 = sample(collector, "provider_latency_p95_seconds", provider="openai")
    assert p95 is not None and abs(p95 - 0.6) / 0.6 <= sketch.MAX_RELATIVE_ERROR
    assert sample(collector, "provider_request_duration_seconds_count", provider="openai") == 2
    assert sample(collector, "model_requests_total", model="gpt-4") == 2
    assert sample(collector, "model_errors_total", model="gpt-4") == 1
    assert sample(collector, "model_error_rate", model="gpt-4") == 0.5
    assert sample(collector, "model_latency_avg_seconds", model="gpt-4") == pytest.approx(0.4)
    assert sample(collector, "http_requests_total", endpoint="/api/chat", method="POST") == 3


def test_record_provider_call_is_not_an_http_request(collector: MetricsCollector) -> None:
    """record_provider_call counts provider/model calls without adding HTTP requests."""
    collector.record_provider_call("openai", "gpt-4", 1.5)
    collector.record_provider_call("openai", "gpt-4", 0.5, status_code=429, error=True)
    collector.record_provider_call("google", None, 0.5, status_code=503)

    d = collector.to_dict()
    assert d["endpoints"] == {}
    assert d["providers"]["openai"]["requests"] == 2
    assert d["providers"]["openai"]["errors"] == 1
    assert d["providers"]["google"]["errors"] == 1  # 503 >= error_status
    assert d["models"] == {"gpt-4": {
        "requests": 2, "errors": 1, "error_rate": 0.5,
        "latency_seconds": {
            "avg": 1.0, "min": 0.5, "max": 1.5, "p50": 0.5,
            "p95": pytest.approx(1.5, rel=sketch.MAX_RELATIVE_ERROR),
            "p99": pytest.approx(1.5, rel=sketch.MAX_RELATIVE_ERROR),
        },
    }}
    assert "http_requests_total" not in names(collector)


def test_method_is_normalised(collector: MetricsCollector) -> None:
    """Methods are upper-cased; unknown methods share the label OTHER."""
    collector.record_request("/a", "post", 0.1, 200)
    collector.record_request("/a", "BREW", 0.1, 200)
    assert sample(collector, "http_requests_total", endpoint="/a", method="POST") == 1
    assert sample(collector, "http_requests_total", endpoint="/a", method="OTHER") == 1


def test_long_label_is_truncated(collector: MetricsCollector) -> None:
    """Label values longer than 200 characters are cut to 200."""
    collector.record_request("/" + "x" * 500, "GET", 0.1, 200)
    assert list(collector.to_dict()["endpoints"]) == ["/" + "x" * 199]


def test_error_status_threshold_is_configurable(metrics_dir: str, clock) -> None:  # type: ignore[no-untyped-def]
    """error_status=400 counts 4xx as errors; the default 500 does not."""
    strict_errors = MetricsCollector(metrics_dir, error_status=400, clock=clock)
    try:
        strict_errors.record_request("/a", "GET", 0.1, 404, provider="p", model="m")
        strict_errors.record_request("/a", "GET", 0.1, 399, provider="p", model="m")
        d = strict_errors.to_dict()
        assert d["endpoints"]["/a"]["errors"] == 1
        assert d["providers"]["p"]["errors"] == 1
        assert d["models"]["m"]["error_rate"] == 0.5
        assert sample(strict_errors, "http_request_errors_total", endpoint="/a", method="GET") == 1
    finally:
        strict_errors.close()


def test_default_error_status_ignores_4xx(collector: MetricsCollector) -> None:
    """With the default threshold a 404 is not an error, a 500 is."""
    collector.record_request("/a", "GET", 0.1, 404)
    collector.record_request("/a", "GET", 0.1, 499)
    collector.record_request("/a", "GET", 0.1, 500)
    assert collector.to_dict()["endpoints"]["/a"]["errors"] == 1


def test_exception_counts_as_error_whatever_the_status(collector: MetricsCollector) -> None:
    """observe_request(failed=True) counts an error even with a 200 status."""
    collector.observe_request("/a", "GET", 0.1, 200, failed=True)
    collector.observe_request("/a", "GET", 0.1, 200)
    d = collector.to_dict()["endpoints"]["/a"]
    assert (d["requests"], d["errors"], d["status"]) == (2, 1, {"200": 2})
    assert d["window"]["error_rate"] == 0.5


# ------------------------------------------------------- cache, db, external
def test_cache_hits_misses_and_rate(collector: MetricsCollector) -> None:
    """Cache hits and misses are counted; hit rate = hits / lookups."""
    for _ in range(3):
        collector.record_cache_hit()
    collector.record_cache_miss()
    assert collector.to_dict()["cache"] == {"hits": 3, "misses": 1, "hit_rate": 0.75}
    assert sample(collector, "cache_hits_total") == 3
    assert sample(collector, "cache_misses_total") == 1
    assert sample(collector, "cache_hit_rate") == 0.75


def test_no_cache_lookups_means_no_hit_rate(collector: MetricsCollector) -> None:
    """Without lookups the hit rate is unknown (None / sample omitted), counters are 0."""
    assert collector.to_dict()["cache"] == {"hits": 0, "misses": 0, "hit_rate": None}
    assert sample(collector, "cache_hits_total") == 0
    assert "cache_hit_rate" not in names(collector)


def test_db_queries(collector: MetricsCollector) -> None:
    """Database queries are counted and their latency averaged."""
    collector.record_db_query(0.01)
    collector.record_db_query(0.03)
    assert collector.to_dict()["database"] == {
        "queries": 2, "latency_avg_seconds": pytest.approx(0.02),
        "latency_min_seconds": 0.01, "latency_max_seconds": 0.03,
    }
    assert sample(collector, "db_queries_total") == 2
    assert sample(collector, "db_query_latency_avg_seconds") == pytest.approx(0.02)


def test_external_api_calls(collector: MetricsCollector) -> None:
    """External API calls and their errors are counted per service."""
    collector.record_external_api_call("stripe")
    collector.record_external_api_call("stripe", error=True)
    collector.record_external_api_call("sendgrid")
    assert collector.to_dict()["external_apis"] == {
        "sendgrid": {"calls": 1, "errors": 0}, "stripe": {"calls": 2, "errors": 1},
    }
    assert sample(collector, "external_api_calls_total", service="stripe") == 2
    assert sample(collector, "external_api_errors_total", service="stripe") == 1
    assert sample(collector, "external_api_errors_total", service="sendgrid") == 0


def test_uptime_follows_the_clock(collector: MetricsCollector, clock) -> None:  # type: ignore[no-untyped-def]
    """gatewayz_uptime_seconds is clock time since the directory's start time."""
    clock.now = collector.snapshot().start_time + 42.0
    assert collector.to_dict()["uptime_seconds"] == 42.0
    assert sample(collector, "gatewayz_uptime_seconds") == 42.0


# ---------------------------------------------------------------------- drops
BAD_INPUTS = [
    ("nan latency", lambda c: c.record_request("/a", "GET", math.nan, 200), "invalid_latency"),
    ("negative latency", lambda c: c.record_request("/a", "GET", -1, 200), "invalid_latency"),
    ("infinite latency", lambda c: c.record_request("/a", "GET", math.inf, 200), "invalid_latency"),
    ("string latency", lambda c: c.record_request("/a", "GET", "1.5", 200), "invalid_latency"),
    ("None status", lambda c: c.record_request("/a", "GET", 0.1, None), "invalid_status"),
    ("status 99", lambda c: c.record_request("/a", "GET", 0.1, 99), "invalid_status"),
    ("status 600", lambda c: c.record_request("/a", "GET", 0.1, 600), "invalid_status"),
    ("int endpoint", lambda c: c.record_request(123, "GET", 0.1, 200), "invalid_label"),
    ("list endpoint", lambda c: c.record_request(["/a"], "GET", 0.1, 200), "invalid_label"),
    ("empty endpoint", lambda c: c.record_request("", "GET", 0.1, 200), "invalid_label"),
    ("None method", lambda c: c.record_request("/a", None, 0.1, 200), "invalid_label"),
    ("int provider", lambda c: c.record_provider_call(7, "gpt-4", 0.1), "invalid_label"),
    ("nan db latency", lambda c: c.record_db_query(math.nan), "invalid_latency"),
    ("negative db latency", lambda c: c.record_db_query(-1), "invalid_latency"),
    ("int service", lambda c: c.record_external_api_call(5), "invalid_label"),
    ("None service", lambda c: c.record_external_api_call(None), "invalid_label"),
]


@pytest.mark.parametrize(("call", "reason"), [(call, reason) for _, call, reason in BAD_INPUTS],
                         ids=[name for name, _, _ in BAD_INPUTS])
def test_bad_input_is_dropped_and_counted(collector: MetricsCollector, call, reason: str) -> None:  # type: ignore[no-untyped-def]
    """Bad input never raises, records nothing and is counted under its reason."""
    call(collector)
    call(collector)
    d = collector.to_dict()
    assert d["storage"]["dropped"] == {reason: 2}
    assert d["endpoints"] == {} and d["providers"] == {} and d["external_apis"] == {}
    assert d["database"]["queries"] == 0
    assert sample(collector, "gatewayz_metrics_dropped_total", reason=reason) == 2


def test_drops_by_reason_add_up(collector: MetricsCollector) -> None:
    """Drops of different reasons are counted separately; good input is still recorded."""
    for _, call, _ in BAD_INPUTS:
        call(collector)
    collector.record_request("/ok", "GET", 0.1, 200)
    dropped = collector.to_dict()["storage"]["dropped"]
    assert dropped == {"invalid_latency": 6, "invalid_status": 3, "invalid_label": 7}
    assert collector.to_dict()["endpoints"]["/ok"]["requests"] == 1


@pytest.mark.parametrize("call", [call for _, call, _ in BAD_INPUTS], ids=[name for name, _, _ in BAD_INPUTS])
def test_strict_mode_raises(metrics_dir: str, clock, call) -> None:  # type: ignore[no-untyped-def]
    """strict=True raises InvalidMetric for input that would be dropped."""
    c = MetricsCollector(metrics_dir, strict=True, clock=clock)
    try:
        with pytest.raises(InvalidMetric):
            call(c)
        c.record_request("/ok", "GET", 0.1, 200)  # still usable afterwards
        assert c.to_dict()["endpoints"]["/ok"]["requests"] == 1
    finally:
        c.close()


def test_invalid_constructor_arguments() -> None:
    """Nonsensical window or threshold settings are rejected at construction."""
    with pytest.raises(ValueError):
        MetricsCollector("/nonexistent-unused", window_seconds=-1)
    with pytest.raises(ValueError):
        MetricsCollector("/nonexistent-unused", window_slots=0)
    with pytest.raises(ValueError):
        MetricsCollector("/nonexistent-unused", error_status=99)
    with pytest.raises(TypeError, match=r"MetricsCollector\(window_seconds=\.\.\.\) must be a number"):
        MetricsCollector("/nonexistent-unused", window_seconds="60")  # type: ignore[arg-type]


# --------------------------------------------------------------------- window
def test_window_values_age_out_counters_do_not(collector: MetricsCollector, clock) -> None:  # type: ignore[no-untyped-def]
    """Windowed gauges forget data older than window_seconds; counters keep it."""
    clock.now = SLOT * 28_333_334  # start of a slot
    collector.record_request("/a", "GET", 0.2, 500, provider="p", model="m")
    collector.record_cache_hit()
    collector.record_db_query(0.1)

    clock.advance(300.0 - 0.001)  # still inside the 5th slot of the window
    d = collector.to_dict()
    assert d["endpoints"]["/a"]["latency_seconds"]["avg"] == 0.2
    assert d["providers"]["p"]["error_rate"] == 1.0
    assert d["cache"]["hit_rate"] == 1.0
    assert d["database"]["latency_avg_seconds"] == 0.1

    clock.advance(0.001)  # the slot of the record left the window
    d = collector.to_dict()
    assert d["endpoints"]["/a"]["latency_seconds"] == dict.fromkeys(("avg", "min", "max", "p50", "p95", "p99"))
    assert d["endpoints"]["/a"]["window"] == {"requests": 0, "errors": 0, "error_rate": None}
    assert d["providers"]["p"]["error_rate"] is None
    assert d["providers"]["p"]["latency_seconds"] == dict.fromkeys(("avg", "min", "max", "p50", "p95", "p99"))
    assert d["models"]["m"]["error_rate"] is None
    assert d["cache"]["hit_rate"] is None
    assert d["database"]["latency_avg_seconds"] is None
    # Counters are since start.
    assert d["endpoints"]["/a"]["requests"] == 1
    assert d["endpoints"]["/a"]["errors"] == 1
    assert d["providers"]["p"]["requests"] == 1
    assert d["cache"]["hits"] == 1
    assert d["database"]["queries"] == 1
    present = names(collector)
    for gauge in (
        "http_request_latency_avg_seconds", "http_request_latency_p99_seconds", "provider_error_rate",
        "provider_latency_min_seconds", "model_latency_avg_seconds", "cache_hit_rate",
        "db_query_latency_avg_seconds",
    ):
        assert gauge not in present, gauge
    assert sample(collector, "http_requests_total", endpoint="/a", method="GET") == 1


def test_window_mixes_old_and_new_slots(collector: MetricsCollector, clock) -> None:  # type: ignore[no-untyped-def]
    """Only the observations of slots inside the window count; a reused slot position is cleared."""
    clock.now = SLOT * 28_333_334
    collector.record_request("/a", "GET", 1.0, 200)
    clock.advance(2 * SLOT)
    collector.record_request("/a", "GET", 3.0, 200)
    assert collector.to_dict()["endpoints"]["/a"]["latency_seconds"]["avg"] == 2.0
    clock.advance(3 * SLOT)  # the first slot position is reused now
    collector.record_request("/a", "GET", 5.0, 200)
    d = collector.to_dict()["endpoints"]["/a"]
    assert d["latency_seconds"]["avg"] == 4.0
    assert d["window"]["requests"] == 2
    assert d["requests"] == 3


def test_window_zero_keeps_everything(metrics_dir: str, clock) -> None:  # type: ignore[no-untyped-def]
    """window_seconds=0 makes the gauges cover everything since start."""
    c = MetricsCollector(metrics_dir, window_seconds=0, clock=clock)
    try:
        c.record_request("/a", "GET", 1.0, 200)
        clock.advance(10 * 86400)
        c.record_request("/a", "GET", 3.0, 500)
        clock.advance(30 * 86400)
        d = c.to_dict()
        assert d["window_seconds"] == 0
        assert d["endpoints"]["/a"]["latency_seconds"]["avg"] == 2.0
        assert d["endpoints"]["/a"]["window"] == {"requests": 2, "errors": 1, "error_rate": 0.5}
    finally:
        c.close()


def test_collector_quantile_uses_sketch_buckets(metrics_dir: str, clock) -> None:  # type: ignore[no-untyped-def]
    """The hot path files a latency in sketch.bucket_index's bucket in every window, on and
    next to every bucket boundary of the range, and in the underflow / overflow buckets."""
    keys = range(sketch.MIN_KEY - 1, sketch.MAX_KEY + 2, 37)
    # layout.MAX_SECONDS: the largest latency accepted, in the overflow bucket
    values = [0.0, 2.0**-30, sketch.LOWEST, sketch.HIGHEST, layout.MAX_SECONDS]
    for key in [*keys, sketch.MIN_KEY, sketch.MAX_KEY]:
        bound = 2.0 ** (key / sketch.SCALE)
        values += [math.nextafter(bound, 0.0), bound, math.nextafter(bound, math.inf)]
    collector = MetricsCollector(metrics_dir, clock=clock, strict=True, label_limits={"provider": 500, "model": 500})
    for i, value in enumerate(values):
        collector.record_request(f"/k{i}", "GET", value, 200, provider=f"p{i}", model=f"m{i}")
    snap = collector.snapshot()
    collector.close()
    for i, value in enumerate(values):
        expected = sketch.bucket_index(value)
        for kind, label in (("endpoint_window", "/k"), ("provider_window", "p"), ("model_window", "m")):
            stats = snap.window(kind, (f"{label}{i}",))
            assert (stats.lo, stats.hi, stats.count) == (expected, expected, 1.0), (kind, value)
            assert stats.minimum == stats.maximum == value


# ---------------------------------------------------------------------- reset
def test_reset_zeroes_every_collector_on_the_directory(metrics_dir: str, clock) -> None:  # type: ignore[no-untyped-def]
    """reset() from one collector zeroes what all show; later records count from zero."""
    a = MetricsCollector(metrics_dir, clock=clock)
    b = MetricsCollector(metrics_dir, clock=clock)
    try:
        for c in (a, b):
            c.record_request("/a", "GET", 0.1, 500, provider="p", model="m")
            c.record_cache_hit()
            c.record_db_query(0.1)
            c.record_external_api_call("stripe")
            c.record_request("/a", "GET", math.nan, 200)
        assert b.to_dict()["endpoints"]["/a"]["requests"] == 2

        a.reset()
        for view in (a, b):
            d = view.to_dict()
            assert d["endpoints"] == {} and d["providers"] == {} and d["models"] == {}
            assert d["cache"] == {"hits": 0, "misses": 0, "hit_rate": None}
            assert d["database"]["queries"] == 0
            assert d["external_apis"] == {}
            assert d["storage"]["dropped"] == {}
            assert "http_requests_total" not in names(view)

        b.record_request("/a", "GET", 0.1, 200)
        a.record_request("/a", "GET", 0.1, 200)
        b.record_cache_miss()
        for view in (a, b):
            d = view.to_dict()
            assert d["endpoints"]["/a"]["requests"] == 2
            assert d["endpoints"]["/a"]["errors"] == 0
            assert d["cache"] == {"hits": 0, "misses": 1, "hit_rate": 0.0}
    finally:
        a.close()
        b.close()


# ------------------------------------------------------------------ decorator
@pytest.fixture
def default_collector(collector: MetricsCollector, monkeypatch: pytest.MonkeyPatch) -> MetricsCollector:
    """Make ``collector`` the process-wide collector that track_request records into."""
    monkeypatch.setattr(default_collector_module, "_default", collector)
    return collector


def test_track_request_sync(default_collector: MetricsCollector) -> None:
    """A decorated function's result passes through and is recorded with its status."""

    @track_request("/api/chat", "POST", provider="openai", model="gpt-4")
    def ok(x: int) -> dict[str, int]:
        return {"x": x}

    @track_request("/api/missing")
    def missing() -> tuple[str, int]:
        return "nope", 404

    assert ok(3) == {"x": 3}
    assert ok.__name__ == "ok"
    assert missing() == ("nope", 404)
    d = default_collector.to_dict()
    assert d["endpoints"]["/api/chat"]["methods"] == {"POST": {"requests": 1, "errors": 0}}
    assert d["endpoints"]["/api/chat"]["status"] == {"200": 1}
    assert d["providers"]["openai"]["requests"] == 1
    assert d["models"]["gpt-4"]["requests"] == 1
    assert d["endpoints"]["/api/missing"]["status"] == {"404": 1}
    assert d["endpoints"]["/api/missing"]["methods"] == {"GET": {"requests": 1, "errors": 0}}


def test_track_request_never_breaks_the_call_without_a_collector(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Outside Flask the process-wide collector is made at the first recorded call,
    after the function ran. A directory it refuses (world-writable here) is logged once
    and the call goes unrecorded: the function's result and its own exception pass
    through. Before, the wrapper raised MetricsDirectoryError after the side effect, and
    replaced the function's own exception."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("GATEWAYZ_METRICS_DIR", str(shared))
    monkeypatch.setattr(default_collector_module, "_default", None)
    monkeypatch.setattr(tracking, "_retry_at", 0.0)
    charged: list[str] = []

    @track_request("/tasks/charge", "POST")
    def charge(customer: str) -> dict[str, bool]:
        charged.append(customer)
        return {"ok": True}

    @track_request("/tasks/fail")
    def fail() -> None:
        raise KeyError("the task's own error")

    assert charge("alice") == {"ok": True} and charge("bob") == {"ok": True}
    with pytest.raises(KeyError, match="the task's own error"):
        fail()
    assert charged == ["alice", "bob"]
    refusals = [r for r in caplog.records if "track_request: no metrics collector" in r.getMessage()]
    assert len(refusals) == 1 and "world-writable" in refusals[0].getMessage()
    assert default_collector_module._default is None
    # Once the retry time has passed and the directory is fixed, calls are recorded again.
    shared.chmod(0o700)
    monkeypatch.setattr(tracking, "_retry_at", time.monotonic() - 1)
    assert charge("carol") == {"ok": True}
    made = default_collector_module._default
    assert made is not None
    try:
        assert scrape_samples(made)[sample_key("http_requests_total", endpoint="/tasks/charge", method="POST")] == 1.0
    finally:
        made.close()


def test_track_request_records_at_once_when_an_app_made_a_collector_since(
    collector: MetricsCollector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed attempt to make the process-wide collector (a bad environment setting
    that the app's own config then overrides) must not blind track_request for the
    retry minute once an app has made one (found by a review: 5 calls lost)."""
    monkeypatch.setattr(default_collector_module, "_default", None)
    monkeypatch.setattr(tracking, "_retry_at", 0.0)
    monkeypatch.setenv("GATEWAYZ_METRICS_ERROR_STATUS", "five hundred")

    @track_request("/tasks/charge", "POST")
    def charge() -> str:
        return "ok"

    assert charge() == "ok"  # logged, unrecorded, retry in a minute
    assert tracking._retry_at > time.monotonic()
    monkeypatch.setattr(default_collector_module, "_default", collector)  # an app made it since
    for _ in range(5):
        assert charge() == "ok"
    assert scrape_samples(collector)[sample_key("http_requests_total", endpoint="/tasks/charge", method="POST")] == 5.0


def test_track_request_sync_exception(default_collector: MetricsCollector) -> None:
    """An exception from a decorated function is re-raised and counted as a 500 error."""

    @track_request("/api/boom", "POST")
    def boom() -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        boom()
    d = default_collector.to_dict()["endpoints"]["/api/boom"]
    assert (d["requests"], d["errors"], d["status"]) == (1, 1, {"500": 1})


def test_track_request_async(default_collector: MetricsCollector) -> None:
    """Async functions are awaited; result, (body, status) and exceptions are handled."""

    @track_request("/api/chat", "POST", provider="anthropic", model="claude-3")
    async def chat(x: int) -> str:
        await asyncio.sleep(0)
        return f"hi {x}"

    @track_request("/api/missing")
    async def missing() -> tuple[str, int]:
        return "nope", 404

    @track_request("/api/boom")
    async def boom() -> None:
        raise RuntimeError("down")

    assert asyncio.run(chat(1)) == "hi 1"
    assert asyncio.run(missing()) == ("nope", 404)
    with pytest.raises(RuntimeError, match="down"):
        asyncio.run(boom())
    d = default_collector.to_dict()
    assert d["endpoints"]["/api/chat"]["status"] == {"200": 1}
    assert d["providers"]["anthropic"]["requests"] == 1
    assert d["endpoints"]["/api/missing"]["status"] == {"404": 1}
    assert d["endpoints"]["/api/missing"]["errors"] == 0
    boom_entry = d["endpoints"]["/api/boom"]
    assert (boom_entry["requests"], boom_entry["errors"], boom_entry["status"]) == (1, 1, {"500": 1})


def test_get_metrics_collector_is_a_singleton(metrics_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """get_metrics_collector() creates one process-wide collector from the environment."""
    monkeypatch.setattr(default_collector_module, "_default", None)
    monkeypatch.setenv("GATEWAYZ_METRICS_DIR", metrics_dir)
    monkeypatch.setenv("GATEWAYZ_METRICS_ERROR_STATUS", "400")
    first = get_metrics_collector()
    try:
        assert get_metrics_collector() is first
        assert first.directory == metrics_dir
        assert first.error_status == 400
    finally:
        first.close()
