"""The OpenTelemetry semantic conventions' histograms: exact buckets, Flask, forks, gunicorn, promtool, OTLP;
an active OpenTelemetry span's trace id as the exemplar."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, Response
from opentelemetry.proto.metrics.v1 import metrics_pb2
from otlp_receiver import Receiver, metrics_of
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString
from servers import http, send_concurrently
from servers import scrape as http_scrape
from test_fork import fork_children, wait_all

from flask_gatewayz_metrics import GatewayzMetrics, MetricsCollector, PrometheusExporter, label_request
from flask_gatewayz_metrics.otlp import OtlpConfig, OtlpExporter, families_of
from flask_gatewayz_metrics.semconv import operation_name
from flask_gatewayz_metrics.storage import kinds
from flask_gatewayz_metrics.testing import Samples, parse_samples, sample_key, scrape_samples, series

HTTP = "http_server_request_duration_seconds"
CLIENT = "gen_ai_client_operation_duration_seconds"
SERVER = "gen_ai_server_request_duration_seconds"
FIRST_TOKEN = "gen_ai_server_time_to_first_token_seconds"
PER_TOKEN = "gen_ai_server_time_per_output_token_seconds"
TOKENS = "gen_ai_client_token_usage"


parse = parse_samples
scrape = scrape_samples
key = sample_key


def buckets(samples: Samples, family: str, **labels: str) -> dict[str, float]:
    """The cumulative bucket counts of one series of ``family``, by ``le``."""
    found = series(samples, family + "_bucket", **labels)
    return {dict(lab)["le"]: v for lab, v in found.items()}


def le(bounds: tuple[float, ...], counts: dict[float, int]) -> dict[str, float]:
    """Expected cumulative buckets: ``counts`` maps a bound (or inf) to observations in its bucket."""
    out, running = {}, 0.0
    for bound in (*bounds, float("inf")):
        running += counts.get(bound, 0)
        out[floatToGoString(bound)] = running
    return out


GEN_AI = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "openai", "gen_ai_request_model": "gpt-4o"}


# ----------------------------------------------------------------------------- recording, exact buckets
def test_http_server_request_duration_buckets_and_attributes(collector: MetricsCollector) -> None:
    """Requests land in the conventions' HTTP buckets (le inclusive), per route, method, status and error.type."""
    for latency in (0.004, 0.075, 0.0751, 12.0):
        collector.record_request("/api/chat", "POST", latency, 200)
    collector.record_request("/api/chat", "POST", 0.3, 503)
    collector.record_request("/api/chat", "BREW", 0.3, 404)
    s = scrape(collector)
    ok = {"http_route": "/api/chat", "http_request_method": "POST", "http_response_status_code": "200"}
    assert buckets(s, HTTP, **ok, error_type="") == le(
        kinds.HTTP_SERVER_BOUNDS, {0.005: 1, 0.075: 1, 0.1: 1, float("inf"): 1}
    )
    assert s[key(HTTP + "_count", **ok, error_type="")] == 4
    assert s[key(HTTP + "_sum", **ok, error_type="")] == pytest.approx(12.1541)
    failed = {**ok, "http_response_status_code": "503", "error_type": "503"}
    assert s[key(HTTP + "_count", **failed)] == 1
    other = {**ok, "http_request_method": "_OTHER", "http_response_status_code": "404", "error_type": ""}
    assert s[key(HTTP + "_count", **other)] == 1  # 4xx is the client's error, not the server's
    assert len(series(s, HTTP + "_count")) == 3


def test_gen_ai_server_and_client_durations(collector: MetricsCollector) -> None:
    """A labelled request feeds gen_ai.server.request.duration; provider calls gen_ai.client.operation.duration."""
    collector.record_request("/v1/chat/completions", "POST", 0.3, 200, provider="openai", model="gpt-4o")
    collector.record_request("/v1/embeddings", "POST", 0.01, 200, provider="openai", model="gpt-4o")
    collector.record_request("/v1/chat/completions", "POST", 90.0, 502, provider="openai", model="gpt-4o")
    collector.record_provider_call("openai", "gpt-4o", 1.0, 200)
    collector.record_provider_call("openai", "gpt-4o", 30.0, 504, error=True, error_type="timeout")
    collector.record_provider_call("openai", "gpt-4o", 0.2, 503)
    collector.record_provider_call("openai", "gpt-4o", 0.2, 200, error=True)
    collector.record_provider_call("openai", "gpt-4o", 0.2, 429, error_type="rate_limited")
    s = scrape(collector)
    server = {**GEN_AI, "gen_ai_response_model": "gpt-4o"}
    bounds = kinds.GEN_AI_DURATION_BOUNDS
    assert buckets(s, SERVER, **server, error_type="") == le(bounds, {0.32: 1})
    assert buckets(s, SERVER, **server, error_type="502") == le(bounds, {float("inf"): 1})
    embeddings = {**server, "gen_ai_operation_name": "embeddings", "error_type": ""}
    assert buckets(s, SERVER, **embeddings) == le(bounds, {0.01: 1})
    clients = {dict(lab)["error_type"]: v for lab, v in series(s, CLIENT + "_count", **server).items()}
    # 429 is below the error threshold (500): a success, whatever type the caller gave.
    assert clients == {"": 2.0, "timeout": 1.0, "503": 1.0, "_OTHER": 1.0}
    assert buckets(s, CLIENT, **server, error_type="timeout") == le(bounds, {40.96: 1})
    assert buckets(s, CLIENT, **server, error_type="") == le(bounds, {0.32: 1, 1.28: 1})
    assert not series(s, FIRST_TOKEN + "_count") and not series(s, PER_TOKEN + "_count")


def test_token_usage_from_record_tokens(collector: MetricsCollector) -> None:
    """record_tokens feeds gen_ai.client.token.usage per token type (input, output; no cached_input)."""
    collector.record_tokens("openai", "gpt-4o", 10, 300, cached_input_tokens=4)
    collector.record_tokens("openai", "gpt-4o", 1, 70_000)
    s = scrape(collector)
    labels = {**GEN_AI, "gen_ai_response_model": "gpt-4o"}
    assert buckets(s, TOKENS, **labels, gen_ai_token_type="input") == le(kinds.TOKEN_BOUNDS, {1.0: 1, 16.0: 1})
    assert buckets(s, TOKENS, **labels, gen_ai_token_type="output") == le(
        kinds.TOKEN_BOUNDS, {1024.0: 1, 262144.0: 1}
    )
    assert s[key(TOKENS + "_sum", **labels, gen_ai_token_type="output")] == 70_300
    assert {dict(lab)["gen_ai_token_type"] for lab in series(s, TOKENS + "_count")} == {"input", "output"}


def test_http_buckets_are_sums_of_the_request_records() -> None:
    """http.server.request.duration's buckets, derived from the "request" records' stored
    buckets, equal a search of the conventions' bounds; the request histogram's equal a
    search of the latency bounds (default and configured), for the same observations."""
    from bisect import bisect_left
    from random import Random

    rng = Random(7)
    values = [0.0, 1e-9, 1e6, *kinds.HISTOGRAM_BOUNDS, *kinds.HTTP_SERVER_BOUNDS]
    values += [math.nextafter(v, math.inf) for v in list(values)] + [rng.lognormvariate(-1, 2) for _ in range(3_000)]
    values = [v for v in values if v <= 3600.0]
    for bounds in (None, (0.1, 0.3, 0.75, 2.0)):
        with tempfile.TemporaryDirectory() as directory:
            collector = MetricsCollector(directory, buckets=bounds)
            for latency in values:
                collector.record_request("/r", "GET", latency, 200)
            snap = collector.snapshot()
            own = collector.histogram_bounds
            request = snap.total("request", ("/r", "GET", "200", "0"))
            http = snap.total(kinds.HTTP_SERVER_BUCKETS, ("/r", "GET", "200", "0"))
            expected_request = [0.0] * (len(own) + 1)
            expected_http = [0.0] * (len(kinds.HTTP_SERVER_BOUNDS) + 1)
            for latency in values:
                expected_request[bisect_left(own, latency)] += 1
                expected_http[bisect_left(kinds.HTTP_SERVER_BOUNDS, latency)] += 1
            assert request[kinds.REQ_BUCKETS :] == expected_request
            assert request[kinds.REQ_COUNT] == len(values)
            assert http == expected_http
            collector.close()


def test_operation_name_from_route() -> None:
    """Well-known API routes give their gen_ai.operation.name; anything else is chat."""
    assert operation_name("/v1/chat/completions") == "chat"
    assert operation_name("/v1/completions") == "text_completion"
    assert operation_name("/v1/embeddings/") == "embeddings"
    assert operation_name("/v1beta/models/<model>:generateContent") == "generate_content"
    assert operation_name("/api/chat") == "chat"
    assert operation_name(None) == "chat"


def test_label_guard_bounds_conventions_series(metrics_dir: str) -> None:
    """The label limits apply: random models become 'other' in the conventions' families too."""
    c = MetricsCollector(metrics_dir, label_limits={"model": 2})
    try:
        for i in range(50):
            c.record_request("/chat", "POST", 0.1, 200, provider="openai", model=f"m{i}")
            c.record_provider_call("openai", f"m{i}", 0.1)
        s = scrape(c)
        for family in (SERVER, CLIENT):
            models = {dict(lab)["gen_ai_request_model"]: v for lab, v in series(s, family + "_count").items()}
            assert models == {"m0": 1, "m1": 1, "other": 48}
        assert s[key("gatewayz_metrics_label_overflow_total", label="model")] == 48  # counted once per value
    finally:
        c.close()


# ----------------------------------------------------------------------------- Flask
@pytest.fixture
def app(metrics_dir: str) -> Iterator[Flask]:
    app = Flask(__name__)
    app.config["GATEWAYZ_METRICS_DIR"] = metrics_dir
    metrics = GatewayzMetrics(app)
    collector = metrics.of(app).collector

    @app.post("/v1/chat/completions")
    def chat() -> Any:
        def body() -> Iterator[str]:
            yield "data: first\n\n"
            yield "data: second\n\n"
            collector.record_tokens("openai", "gpt-4o", 12, 5)
            yield "data: [DONE]\n\n"

        label_request(provider="openai", model="gpt-4o")
        return Response(body(), mimetype="text/event-stream")

    @app.post("/v1/upstream")
    def upstream() -> Any:
        collector.record_provider_call("anthropic", "claude", 0.05)
        label_request(provider="anthropic", model="claude")
        return {"ok": True}

    @app.post("/v1/broken")
    def broken() -> Any:
        def body() -> Iterator[str]:
            yield "data: first\n\n"
            raise RuntimeError("upstream broke")

        label_request(provider="openai", model="gpt-4o")
        return Response(body(), mimetype="text/event-stream")

    yield app
    collector.close()


def test_streamed_response_time_to_first_token_and_per_output_token(app: Flask) -> None:
    """A completed stream feeds time to first token (= the first chunk) and per output token (after the first)."""
    client = app.test_client()
    for _ in range(3):
        assert b"[DONE]" in client.post("/v1/chat/completions").get_data()
    s = parse(client.get("/metrics").get_data(as_text=True))
    labels = {**GEN_AI, "gen_ai_response_model": "gpt-4o"}
    assert s[key(FIRST_TOKEN + "_count", **labels)] == 3
    assert s[key(PER_TOKEN + "_count", **labels)] == 3
    assert s[key(SERVER + "_count", **labels, error_type="")] == 3
    first = s[key("llm_time_to_first_chunk_seconds_sum", provider="openai", model="gpt-4o")]
    total = s[key("llm_stream_duration_seconds_sum", provider="openai", model="gpt-4o")]
    assert s[key(FIRST_TOKEN + "_sum", **labels)] == pytest.approx(first)
    assert s[key(PER_TOKEN + "_sum", **labels)] == pytest.approx((total - first) / 4)  # 5 output tokens
    assert s[key(SERVER + "_sum", **labels, error_type="")] == pytest.approx(total)


def test_broken_stream_and_plain_response_have_no_time_to_first_token(app: Flask) -> None:
    """Only successful streams count for time to first token; a view's own provider calls count once each."""
    client = app.test_client()
    with pytest.raises(RuntimeError):
        client.post("/v1/broken").get_data()
    assert client.post("/v1/upstream").status_code == 200
    s = parse(client.get("/metrics").get_data(as_text=True))
    assert not series(s, FIRST_TOKEN + "_count")
    claude = {"gen_ai_provider_name": "anthropic", "gen_ai_request_model": "claude", "error_type": ""}
    assert s[key(CLIENT + "_count", **GEN_AI | claude, gen_ai_response_model="claude")] == 1
    # The view recorded its provider call itself: the request is still the gateway's response, once.
    assert s[key(SERVER + "_count", **GEN_AI | claude, gen_ai_response_model="claude")] == 1
    broken = {**GEN_AI, "gen_ai_response_model": "gpt-4o", "error_type": "_OTHER"}
    assert s[key(SERVER + "_count", **broken)] == 1  # the 200 was sent, then the body raised
    assert s[key(HTTP + "_count", http_route="/v1/broken", http_request_method="POST",
                 http_response_status_code="200", error_type="_OTHER")] == 1  # fmt: skip


# ----------------------------------------------------------------------------- processes
def test_forked_processes_add_up_exactly(metrics_dir: str) -> None:
    """Four forked processes' requests, calls and tokens add up exactly in every conventions' family."""
    collector = MetricsCollector(metrics_dir)
    collector.record_request("/warm", "GET", 0.001, 200)  # the parent has a file too

    def child(index: int) -> None:
        for i in range(250):
            collector.record_request("/v1/chat/completions", "POST", 0.05 * (i % 3), 200, provider="openai",
                                     model="gpt-4o")  # fmt: skip
            collector.record_provider_call("openai", "gpt-4o", 0.5, 503 if i % 5 == 0 else 200)
            collector.record_tokens("openai", "gpt-4o", index + 1, 100)
        collector.close()

    codes = wait_all(fork_children(4, child))
    assert set(codes.values()) == {0}
    s = scrape(collector)
    collector.close()
    labels = {**GEN_AI, "gen_ai_response_model": "gpt-4o"}
    chat = {"http_route": "/v1/chat/completions", "http_request_method": "POST", "http_response_status_code": "200"}
    # 0.0 (84 per child), 0.05 and 0.1 (83 each): le 0.005 / 0.05 / 0.1 (0.05 * 2 is 0.1 exactly)
    assert buckets(s, HTTP, **chat, error_type="") == le(
        kinds.HTTP_SERVER_BOUNDS, {0.005: 4 * 84, 0.05: 4 * 83, 0.1: 4 * 83}
    )
    assert s[key(SERVER + "_count", **labels, error_type="")] == 1000
    assert s[key(CLIENT + "_count", **labels, error_type="")] == 800
    assert s[key(CLIENT + "_count", **labels, error_type="503")] == 200
    assert s[key(TOKENS + "_count", **labels, gen_ai_token_type="output")] == 1000
    assert s[key(TOKENS + "_sum", **labels, gen_ai_token_type="input")] == 250 * (1 + 2 + 3 + 4)


PROVIDER_OF = {"gpt-4": "openai", "claude-3-haiku": "anthropic", "gemini-1.5-pro": "google"}


@pytest.mark.slow
def test_gunicorn_workers_count_exactly_and_promtool_accepts(start_gunicorn: Any) -> None:
    """240 chats over 3 gunicorn workers: every scrape counts the conventions' series exactly; promtool agrees."""
    server = start_gunicorn(workers=3)
    plan = []
    for i in range(240):
        status = 500 if i % 20 < 3 else 429 if i % 20 < 5 else 200
        plan.append({"model": list(PROVIDER_OF)[i % 3], "message": f"request {i}", "simulate_status": status})
    statuses = send_concurrently(server.url, [("POST", "/api/chat", body) for body in plan], 8, 60.0)
    assert statuses == Counter({200: 180, 500: 36, 429: 24})
    expected: Samples = {}
    for status, count in statuses.items():
        error = "500" if status >= 500 else ""
        http_labels = {"http_route": "/api/chat", "http_request_method": "POST",
                       "http_response_status_code": str(status), "error_type": error}  # fmt: skip
        expected[key(HTTP + "_count", **http_labels)] = float(count)
    for model, provider in PROVIDER_OF.items():
        gen_ai = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": provider,
                  "gen_ai_request_model": model, "gen_ai_response_model": model}  # fmt: skip
        mine = [body for body in plan if body["model"] == model]
        for error in ("", "500"):
            count = sum(1 for body in mine if (body["simulate_status"] >= 500) == (error == "500"))
            expected[key(SERVER + "_count", **gen_ai, error_type=error)] = float(count)
            expected[key(CLIENT + "_count", **gen_ai, error_type=error)] = float(count)
    for _ in range(6):  # likely served by different workers
        samples = http_scrape(server.url)
        assert {k: samples.get(k) for k in expected} == expected
    status, body = http("GET", server.url + "/metrics")
    assert status == 200
    check_with_promtool(body.decode())


def check_with_promtool(body: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("promtool missing and CI=true")
        pytest.skip("promtool not installed")
    result = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, text=True, timeout=30, check=False
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def populate(collector: MetricsCollector) -> None:
    """Traffic that fills every conventions' family."""
    collector.record_request("/v1/chat/completions", "POST", 0.3, 200, provider="openai", model="gpt-4o")
    collector.record_request("/v1/chat/completions", "POST", 0.3, 500, provider="openai", model="gpt-4o")
    collector.record_provider_call("openai", "gpt-4o", 1.0, 200)
    collector.record_provider_call("openai", "gpt-4o", 1.0, 200, error=True, error_type="timeout")
    collector.record_tokens("openai", "gpt-4o", 10, 20)
    collector._record_model_response("/v1/chat/completions", "openai", "gpt-4o", 200, False, 2.0, False, 0.5, 31.0)


def test_promtool_accepts_conventions_families(collector: MetricsCollector) -> None:
    """promtool check metrics passes with every conventions' family populated."""
    populate(collector)
    body = PrometheusExporter(collector).export()
    present = {f.name for f in text_string_to_metric_families(body) if f.samples}
    assert {HTTP, CLIENT, SERVER, FIRST_TOKEN, PER_TOKEN, TOKENS} <= present
    check_with_promtool(body)


# ----------------------------------------------------------------------------- OTLP
def test_otlp_sends_conventions_under_their_names_and_attributes(collector: MetricsCollector) -> None:
    """OTLP export carries the conventions' metrics with their dotted names, units, bounds and typed attributes."""
    populate(collector)
    receiver = Receiver()
    config = OtlpConfig(endpoint=f"http://127.0.0.1:{receiver.port}/v1/metrics", timeout=2.0, interval=60.0)
    exporter = OtlpExporter(config, families_of(PrometheusExporter(collector)), collector.directory)
    try:
        assert exporter._try_lead() and exporter.export_once()
    finally:
        exporter.close()
        receiver.stop()
    received = receiver.latest()
    assert received is not None
    metrics = metrics_of(received)
    cumulative = metrics_pb2.AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
    expected_units = {
        "gen_ai.client.token.usage": "{token}", "gen_ai.client.operation.duration": "s",
        "gen_ai.server.request.duration": "s", "gen_ai.server.time_to_first_token": "s",
        "gen_ai.server.time_per_output_token": "s", "http.server.request.duration": "s",
    }  # fmt: skip
    assert {name: metrics[name].unit for name in expected_units} == expected_units
    assert not {HTTP, CLIENT, TOKENS} & set(metrics)  # not twice under Prometheus names

    def attributes(point: Any) -> dict[str, Any]:
        return {a.key: a.value.int_value if a.value.HasField("int_value") else a.value.string_value
                for a in point.attributes}  # fmt: skip

    http = metrics["http.server.request.duration"].histogram
    assert http.aggregation_temporality == cumulative
    by_status = {attributes(p)["http.response.status_code"]: p for p in http.data_points}
    assert attributes(by_status[200]) == {
        "http.route": "/v1/chat/completions", "http.request.method": "POST", "http.response.status_code": 200,
    }  # no error.type on a success
    assert attributes(by_status[500])["error.type"] == "500"
    assert list(by_status[200].explicit_bounds) == list(kinds.HTTP_SERVER_BOUNDS)
    assert by_status[200].count == 1 and list(by_status[200].bucket_counts)[7] == 1  # 0.3 in (0.25, 0.5]
    tokens = {attributes(p)["gen_ai.token.type"]: p for p in metrics["gen_ai.client.token.usage"].histogram.data_points}
    assert attributes(tokens["output"]) == {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
        "gen_ai.response.model": "gpt-4o", "gen_ai.token.type": "output",
    }  # fmt: skip
    assert (tokens["input"].sum, tokens["output"].sum, tokens["output"].count) == (10, 20, 1)
    assert list(tokens["input"].explicit_bounds) == list(kinds.TOKEN_BOUNDS)
    client = metrics["gen_ai.client.operation.duration"].histogram.data_points
    assert sorted(attributes(p).get("error.type", "") for p in client) == ["", "timeout"]
    assert list(client[0].explicit_bounds) == list(kinds.GEN_AI_DURATION_BOUNDS)
    (per_token,) = metrics["gen_ai.server.time_per_output_token"].histogram.data_points
    assert per_token.sum == pytest.approx(0.05) and per_token.count == 1  # (2.0 - 0.5) / 30
    (first,) = metrics["gen_ai.server.time_to_first_token"].histogram.data_points
    assert list(first.explicit_bounds) == list(kinds.GEN_AI_FIRST_TOKEN_BOUNDS) and first.sum == 0.5


# ----------------------------------------------------------------------------- tracing
def exemplar_trace_ids(text: str, family: str) -> set[str]:
    out = set()
    for f in parse_openmetrics(text):
        if f.name == family:
            out |= {s.exemplar.labels["trace_id"] for s in f.samples if s.exemplar is not None}
    return out


def test_active_opentelemetry_span_is_the_exemplar(tmp_path: Path) -> None:
    """With a real SDK TracerProvider, the span around a request gives the exemplar, over its traceparent."""
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("test")
    app = Flask(__name__)
    app.config["GATEWAYZ_METRICS_DIR"] = str(tmp_path / "metrics")
    GatewayzMetrics(app)
    app.add_url_rule("/chat", "chat", lambda: "ok")
    client = app.test_client()
    header = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    with tracer.start_as_current_span("gateway request") as span:
        assert client.get("/chat", headers=header).status_code == 200
    trace_id = f"{span.get_span_context().trace_id:032x}"
    assert trace_id != "0af7651916cd43dd8448eb211c80319c"
    scrape_headers = {"Accept": "application/openmetrics-text; version=1.0.0"}
    text = client.get("/metrics", headers=scrape_headers).get_data(as_text=True)
    assert exemplar_trace_ids(text, "http_request_duration_seconds") == {trace_id}
    # No span active: the traceparent header is the fallback (it is the newest exemplar of its bucket).
    assert client.get("/chat", headers=header).status_code == 200
    text = client.get("/metrics", headers=scrape_headers).get_data(as_text=True)
    assert "0af7651916cd43dd8448eb211c80319c" in exemplar_trace_ids(text, "http_request_duration_seconds")


def test_invalid_span_and_broken_tracer_fall_back(metrics_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """No SDK (a non-recording span) or a tracer that raises leaves the traceparent's trace id; the request is fine."""
    from opentelemetry import trace

    from flask_gatewayz_metrics import tracing

    app = Flask(__name__)
    app.config["GATEWAYZ_METRICS_DIR"] = metrics_dir
    GatewayzMetrics(app)
    app.add_url_rule("/chat", "chat", lambda: "ok")
    client = app.test_client()
    header = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    assert tracing.current_trace_id() is None  # the API without an SDK: INVALID_SPAN
    assert client.get("/chat", headers=header).status_code == 200

    def broken() -> Any:
        raise RuntimeError("tracer broke")

    monkeypatch.setattr(trace, "get_current_span", broken)
    assert client.get("/chat", headers=header).status_code == 200
    text = client.get("/metrics", headers={"Accept": "application/openmetrics-text"}).get_data(as_text=True)
    assert exemplar_trace_ids(text, "http_request_duration_seconds") == {"0af7651916cd43dd8448eb211c80319c"}
