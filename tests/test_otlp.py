"""OTLP/HTTP push export: configuration, encoding, election of one exporter, health, and gunicorn end to end."""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from opentelemetry.proto.metrics.v1 import metrics_pb2
from otlp_receiver import Receiver, metrics_of, points, resource_of
from servers import REPO_ROOT, Server, free_port, gateway_env, http, launch_gunicorn, stop

from flask_gatewayz_metrics import GatewayzMetrics, MetricsCollector, PrometheusExporter
from flask_gatewayz_metrics import otlp as otlp_module
from flask_gatewayz_metrics.otlp import OtlpConfig, OtlpExporter, families_of, holder_pid, otlp_config, read_status
from flask_gatewayz_metrics.storage.control import ControlFile

CUMULATIVE = metrics_pb2.AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture(autouse=True)
def no_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused at once)."""
    return free_port()


# ----------------------------------------------------------------------------- configuration
def test_no_endpoint_no_export() -> None:
    """Without an endpoint (setting or env) export is off; OTEL_SDK_DISABLED turns it off too."""
    assert otlp_config(None, {}) is None
    assert otlp_config(None, {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"}) is None


def test_endpoint_precedence_and_signal_path() -> None:
    """The base endpoint gets /v1/metrics; the metrics-specific one is used as is; the setting wins over both."""
    base = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"}
    assert otlp_config(None, base).endpoint == "http://collector:4318/v1/metrics"  # type: ignore[union-attr]
    both = {**base, "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "https://m.example/otlp"}
    assert otlp_config(None, both).endpoint == "https://m.example/otlp"  # type: ignore[union-attr]
    assert otlp_config("http://mine/v1/metrics", both).endpoint == "http://mine/v1/metrics"  # type: ignore[union-attr]
    assert otlp_config(None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "ftp://x"}) is None


def test_the_scheme_is_case_insensitive() -> None:
    """``HTTP://`` and ``Https://`` are http(s) (RFC 3986: schemes are case-insensitive),
    exported to with the scheme written in lower case; the rest of the URL is kept."""
    config = otlp_config("HTTP://Collector:4318/V1/metrics", {})
    assert config is not None and config.endpoint == "http://Collector:4318/V1/metrics"
    config = otlp_config(None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "Https://m.example"})
    assert config is not None and config.endpoint == "https://m.example/v1/metrics"
    assert otlp_config(None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "HTTPX://m.example"}) is None


def test_an_upper_case_scheme_is_accepted_as_the_app_setting(metrics_dir: str) -> None:
    """The app's own GATEWAYZ_METRICS_OTLP_ENDPOINT with ``HTTP://`` is accepted at init
    (the setting's check is the same as the exporter's) and exported to as http."""
    app = Flask(__name__)
    app.config.update(GATEWAYZ_METRICS_DIR=metrics_dir, GATEWAYZ_METRICS_OTLP_ENDPOINT="HTTP://127.0.0.1:9/v1/metrics")
    GatewayzMetrics(app)
    exporter = otlp_module._exporters[metrics_dir]
    try:
        assert exporter.config.endpoint == "http://127.0.0.1:9/v1/metrics"
    finally:
        exporter.close()


def test_headers_timeout_interval_and_resource_from_env(caplog: pytest.LogCaptureFixture) -> None:
    """Headers (percent-decoded, metrics variant first), ms timeout/interval, service name and resource attributes."""
    config = otlp_config(None, {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
        "OTEL_EXPORTER_OTLP_HEADERS": "api-key=general",
        "OTEL_EXPORTER_OTLP_METRICS_HEADERS": "api-key=abc%3D%3D, x-team = llm ops ,broken",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
        "OTEL_SERVICE_NAME": "gw",
        "OTEL_RESOURCE_ATTRIBUTES": "service.name=ignored,deployment.environment=prod,team=a%2Cb",
    })  # fmt: skip
    assert config is not None
    assert config.headers == {"api-key": "abc==", "x-team": "llm ops"}
    assert (config.timeout, config.interval) == (2.5, 0.5)
    assert config.resource["service.name"] == "gw"
    assert config.resource["deployment.environment"] == "prod" and config.resource["team"] == "a,b"
    assert "skipped a malformed entry" in caplog.text and "abc" not in caplog.text


def test_malformed_numbers_fall_back_to_defaults(caplog: pytest.LogCaptureFixture) -> None:
    """A bad interval or timeout is logged and replaced by the spec's default, never raised."""
    config = otlp_config(None, {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_METRIC_EXPORT_INTERVAL": "soon",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "-5",
    })  # fmt: skip
    assert config is not None and (config.interval, config.timeout) == (60.0, 10.0)
    assert "OTEL_METRIC_EXPORT_INTERVAL='soon'" in caplog.text
    assert config.resource["service.name"].startswith("unknown_service:")


def test_setting_is_checked_at_init(metrics_dir: str) -> None:
    """GATEWAYZ_METRICS_OTLP_ENDPOINT must be an http(s) URL; the error names the key."""
    app = Flask(__name__)
    app.config.update(GATEWAYZ_METRICS_DIR=metrics_dir, GATEWAYZ_METRICS_OTLP_ENDPOINT="collector:4318")
    with pytest.raises(ValueError, match="GATEWAYZ_METRICS_OTLP_ENDPOINT must be an http"):
        GatewayzMetrics(app)


@pytest.mark.parametrize(
    ("endpoint", "problem"),
    [
        ("http://127.0.0.1:99999/v1/metrics", "port"),
        ("http://collector:43l8/v1/metrics", "port"),
        ("http://collector:0/v1/metrics", "port"),
        ("http://[::1/v1/metrics", "not a valid URL"),
        ("http:///v1/metrics", "no host"),
        ("http://gateway:s3cr3t@127.0.0.1/v1/metrics", "credentials"),
    ],
)
def test_a_malformed_endpoint_is_refused_at_init_and_disabled_from_the_env(
    metrics_dir: str, endpoint: str, problem: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A URL that passes as "http(s)" but has no usable port or host, or carries
    credentials, is refused at init_app (the setting; nothing installed) or disables the
    export with a warning (the environment). Before, it passed, then every /metrics,
    /metrics/json and /metrics/health raised (the shown endpoint read the port), and a
    password came back in health and the JSON document inside the connection error."""
    app = Flask(__name__)
    app.config.update(GATEWAYZ_METRICS_DIR=metrics_dir, GATEWAYZ_METRICS_OTLP_ENDPOINT=endpoint)
    with pytest.raises(ValueError, match=f"GATEWAYZ_METRICS_OTLP_ENDPOINT .* is refused: .*{problem}") as refused:
        GatewayzMetrics(app)
    assert "s3cr3t" not in str(refused.value)
    assert "gatewayz_metrics" not in app.extensions and not app.blueprints  # refused before anything was installed

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", endpoint)
    app = Flask(__name__)
    app.config.update(GATEWAYZ_METRICS_DIR=metrics_dir)
    GatewayzMetrics(app)
    app.get("/x")(lambda: "ok")
    client = app.test_client()
    assert client.get("/x").status_code == 200
    for path in ("/metrics", "/metrics/json", "/metrics/health"):
        assert client.get(path).status_code == 200, path
    assert "otlp" not in json.dumps(client.get("/metrics/health").get_json()).lower()
    assert any("OTLP export disabled" in r.getMessage() and problem in r.getMessage() for r in caplog.records)
    assert not any("s3cr3t" in r.getMessage() for r in caplog.records)


def test_shown_endpoint_keeps_an_ipv6_literal_parseable() -> None:
    """The endpoint shown in logs and health: no credentials or query, and an IPv6
    literal with its brackets (``http://::1:4318`` could not be read back)."""
    assert OtlpConfig("http://[::1]:4318/v1/metrics?token=x").shown_endpoint == "http://[::1]:4318/v1/metrics"
    assert OtlpConfig("https://u:p@collector/v1/metrics").shown_endpoint == "https://collector/v1/metrics"
    assert otlp_config("http://[::1]:4318/v1/metrics", {}) is not None


def test_a_redirect_is_a_failed_export_and_is_not_followed(collector: MetricsCollector) -> None:
    """A receiver answering 302 elsewhere: urllib used to re-send the export as a GET with
    no body to whatever host Location named, headers (API key) included, and count the
    GET's 200 as a successful export. Now the 3xx is the export's failure, reported with
    a hint, and the other host gets nothing."""
    seen: list[tuple[str, str | None]] = []

    class Elsewhere(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append((self.path, self.headers.get("api-key")))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = do_GET

        def log_message(self, *args: Any) -> None:
            pass

    elsewhere = ThreadingHTTPServer(("127.0.0.1", 0), Elsewhere)
    threading.Thread(target=elsewhere.serve_forever, daemon=True).start()

    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{elsewhere.server_address[1]}/collect")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    redirector = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=redirector.serve_forever, daemon=True).start()
    collector.record_request("/api/chat", "POST", 0.2, 200)
    exporter = make_exporter(collector, int(redirector.server_address[1]))
    try:
        assert exporter._try_lead()
        assert not exporter.export_once()
    finally:
        exporter.close()
        for server in (redirector, elsewhere):
            server.shutdown()
            server.server_close()
    status = read_status(collector.directory)
    assert status is not None and status["consecutive_failures"] == 1
    assert status["last_error"].startswith("HTTP 302") and "redirects are not followed" in status["last_error"]
    assert seen == []


# ----------------------------------------------------------------------------- encoding and export
def make_exporter(collector: MetricsCollector, port: int, interval: float = 0.2) -> OtlpExporter:
    config = OtlpConfig(
        endpoint=f"http://127.0.0.1:{port}/v1/metrics", headers={"api-key": "k"}, timeout=2.0,
        interval=interval, resource={"service.name": "unit"},
    )  # fmt: skip
    return OtlpExporter(config, families_of(PrometheusExporter(collector)), collector.directory)


def test_export_encodes_every_family_kind_cumulatively(collector: MetricsCollector, receiver: Receiver) -> None:
    """Counters as monotonic cumulative Sums, histograms with explicit bounds, gauges; start = server start."""
    collector.record_request("/api/chat", "POST", 0.2, 200)
    collector.record_request("/api/chat", "POST", 3.0, 500)
    collector.record_tokens("openai", "gpt-4o", 100, 7)
    exporter = make_exporter(collector, receiver.port)
    try:
        assert exporter._try_lead()
        assert exporter.export_once()
    finally:
        exporter.close()
    received = receiver.latest()
    assert received is not None and received.path == "/v1/metrics" and received.headers["api-key"] == "k"
    assert received.headers["content-type"] == "application/x-protobuf"
    assert resource_of(received)["service.name"] == "unit"
    metrics = metrics_of(received)
    requests = metrics["http_requests_total"]
    assert requests.sum.is_monotonic and requests.sum.aggregation_temporality == CUMULATIVE
    start_ns = int(ControlFile(collector.directory).start_time * 1e9)
    assert {p.start_time_unix_nano for p in requests.sum.data_points} == {start_ns}
    assert points(received) == {(("endpoint", "/api/chat"), ("method", "POST")): 2.0}
    assert points(received, "llm_tokens_total")[
        (("direction", "input"), ("model", "gpt-4o"), ("provider", "openai"))
    ] == 100.0
    histogram = metrics["http_request_duration_seconds"].histogram
    assert histogram.aggregation_temporality == CUMULATIVE
    (point,) = histogram.data_points
    assert point.count == 2 and point.sum == pytest.approx(3.2)
    assert len(point.bucket_counts) == len(point.explicit_bounds) + 1 and sum(point.bucket_counts) == 2
    assert list(point.explicit_bounds) == sorted(point.explicit_bounds)
    assert metrics["gatewayz_uptime_seconds"].HasField("gauge")
    assert read_status(collector.directory)["consecutive_failures"] == 0  # type: ignore[index]


def test_reset_starts_a_new_cumulative_period(collector: MetricsCollector, receiver: Receiver) -> None:
    """After /metrics/reset the start time moves past the reset, and stays there for the next export."""
    exporter = make_exporter(collector, receiver.port)
    try:
        assert exporter._try_lead() and exporter.export_once()
        first = metrics_of(receiver.latest())["gatewayz_uptime_seconds"]  # type: ignore[arg-type]
        collector.reset()
        before = time.time()
        assert exporter.export_once()
        second = metrics_of(receiver.latest())["gatewayz_metrics_dropped_total"]  # type: ignore[arg-type]
        assert exporter.export_once()
        third = metrics_of(receiver.latest())["gatewayz_metrics_dropped_total"]  # type: ignore[arg-type]
    finally:
        exporter.close()
    old_start = first.gauge.data_points[0].start_time_unix_nano
    new_start = second.sum.data_points[0].start_time_unix_nano
    assert new_start > old_start and new_start >= int(before * 1e9) - 1
    assert third.sum.data_points[0].start_time_unix_nano == new_start


def test_only_one_exporter_per_directory(collector: MetricsCollector, receiver: Receiver) -> None:
    """Two exporters on one directory: one holds the role (pid in the lock file), the other takes over on release."""
    first, second = make_exporter(collector, receiver.port), make_exporter(collector, receiver.port)
    try:
        assert first._try_lead()
        assert not second._try_lead()
        assert holder_pid(collector.directory) == os.getpid()
        first.close()
        assert second._try_lead()
    finally:
        first.close()
        second.close()


def test_dead_receiver_reported_by_health_and_json(metrics_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unreachable collector: the thread keeps retrying, health is degraded with the reason, JSON shows it."""
    port = closed_port()
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "200")
    app = Flask(__name__)
    app.config.update(
        GATEWAYZ_METRICS_DIR=metrics_dir, GATEWAYZ_METRICS_OTLP_ENDPOINT=f"http://127.0.0.1:{port}/v1/metrics"
    )
    GatewayzMetrics(app)
    exporter = otlp_module._exporters[metrics_dir]
    try:
        client = app.test_client()
        client.get("/metrics/health")  # the first request starts the export thread
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (read_status(metrics_dir) or {}).get("consecutive_failures", 0) < 2:
            time.sleep(0.05)
        health = client.get("/metrics/health").get_json()
        assert health["status"] == "degraded"
        assert any(
            r.startswith(f"OTLP export to http://127.0.0.1:{port}/v1/metrics failing") and "refused" in r
            for r in health["reasons"]
        ), health["reasons"]
        document = client.get("/metrics/json").get_json()["otlp"]
        assert document["this_process_exports"] is True and document["consecutive_failures"] >= 2
        assert document["last_success"] is None
    finally:
        exporter.close()


def test_missing_extra_logs_and_degrades(tmp_path: Path) -> None:
    """Endpoint set but opentelemetry-proto not importable: the app runs, a log line and health say so."""
    script = f"""
import sys, logging
sys.modules["opentelemetry"] = None  # as if the otlp extra were not installed
logging.basicConfig()
from flask import Flask
from flask_gatewayz_metrics import GatewayzMetrics
app = Flask(__name__)
app.config.update(GATEWAYZ_METRICS_DIR={str(tmp_path)!r}, GATEWAYZ_METRICS_OTLP_ENDPOINT="http://127.0.0.1:9/v1/metrics")
GatewayzMetrics(app)
client = app.test_client()
assert client.get("/nothing").status_code == 404
print(client.get("/metrics/health").get_json()["reasons"])
"""
    os.chmod(tmp_path, 0o700)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "the otlp extra is not installed (pip install 'flask_gatewayz_metrics[otlp]')" in result.stderr
    assert "otlp extra is not installed" in result.stdout


# ----------------------------------------------------------------------------- gunicorn end to end
APP_SOURCE = '''
"""A minimal gateway: /api/chat records the token counts it is sent; /pid names the worker."""
import os
import time

from flask import Flask, jsonify, request
from flask_gatewayz_metrics import GatewayzMetrics, get_metrics_collector, label_request

app = Flask(__name__)
GatewayzMetrics(app)


@app.post("/api/chat")
def chat():
    body = request.get_json(force=True)
    label_request(provider="openai", model="gpt-4o")
    get_metrics_collector().record_tokens("openai", "gpt-4o", int(body["input_tokens"]), int(body["output_tokens"]))
    return jsonify(ok=True)


@app.get("/healthz")
def healthz():
    return "ok"


@app.get("/pid")
def pid():
    time.sleep(0.2)  # keeps this worker busy, so concurrent calls reach the others
    return str(os.getpid())
'''
CHAT = (("endpoint", "/api/chat"), ("method", "POST"))
INPUT = (("direction", "input"), ("model", "gpt-4o"), ("provider", "openai"))
OUTPUT = (("direction", "output"), ("model", "gpt-4o"), ("provider", "openai"))
INTERVAL = 0.5
EXPORT_TIMEOUT = 3.0


def start_server(tmp_path: Path, receiver_port: int) -> Server:
    (tmp_path / "otlp_gateway.py").write_text(APP_SOURCE)
    metrics_dir = tmp_path / "metrics"
    log = tmp_path / "gunicorn.log"
    env = gateway_env(
        tmp_path, metrics_dir,
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{receiver_port}",
        OTEL_METRIC_EXPORT_INTERVAL=str(int(INTERVAL * 1000)),
        OTEL_EXPORTER_OTLP_TIMEOUT=str(int(EXPORT_TIMEOUT * 1000)),
        OTEL_EXPORTER_OTLP_HEADERS="api-key=test-key",
        OTEL_SERVICE_NAME="otlp-test-gateway",
        OTEL_RESOURCE_ATTRIBUTES="deployment.environment=test,team=llm%20ops",
    )  # fmt: skip
    return launch_gunicorn(["--workers", "3", "--pythonpath", str(tmp_path), "otlp_gateway:app"], env, metrics_dir, log)


def chat(server: Server, i: int) -> float:
    """One chat request with i input and 2*i output tokens; its latency in seconds."""
    began = time.perf_counter()
    status, _ = http("POST", server.url + "/api/chat", {"input_tokens": i, "output_tokens": 2 * i}, timeout=30)
    assert status == 200
    return time.perf_counter() - began


def worker_pids(master: int) -> set[int]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return {int(pid) for pid in children}


def start_every_worker(server: Server) -> set[int]:
    """Concurrent requests until each of the 3 workers has served one (and so runs its export thread)."""
    seen: set[int] = set()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and seen != worker_pids(server.process.pid):
        with ThreadPoolExecutor(6) as pool:
            seen |= {int(body) for _, body in pool.map(lambda _: http("GET", server.url + "/pid"), range(6))}
    assert seen == worker_pids(server.process.pid) and len(seen) == 3, seen
    return seen


def exported_exactly(requests: int, tokens_in: int) -> Any:
    def check(received: Any) -> bool:
        return (
            points(received).get(CHAT) == requests
            and points(received, "llm_tokens_total").get(INPUT) == tokens_in
            and points(received, "llm_tokens_total").get(OUTPUT) == 2 * tokens_in
        )

    return check


@pytest.mark.slow
def test_gunicorn_three_workers_export_once_survive_sigkill_and_dead_receiver(tmp_path: Path) -> None:
    """3 gunicorn workers: exact totals exported once, SIGKILL takeover, no slowdown when the receiver hangs."""
    receiver = Receiver()
    port = receiver.port
    server = start_server(tmp_path, port)
    try:
        # Phase 1: every worker runs an export thread; known traffic; the export equals it exactly.
        start_every_worker(server)
        latencies_up = [chat(server, i) for i in range(1, 41)]
        sent, tokens = 40, sum(range(1, 41))
        received = receiver.wait_for(exported_exactly(sent, tokens), timeout=20)
        resource = resource_of(received)
        assert resource["service.name"] == "otlp-test-gateway"
        assert resource["deployment.environment"] == "test" and resource["team"] == "llm ops"
        assert received.headers["api-key"] == "test-key" and received.path == "/v1/metrics"

        # One process exports: over a measured span, about one export per interval, not three.
        before, began = receiver.count(), time.monotonic()
        time.sleep(8 * INTERVAL)
        exports, span = receiver.count() - before, time.monotonic() - began
        assert 1 <= exports <= span / INTERVAL + 2, (exports, span)
        assert exported_exactly(sent, tokens)(receiver.latest())  # still exact, not multiplied

        # Phase 2: SIGKILL the exporting worker; another takes over and the counts stay exact.
        workers = worker_pids(server.process.pid)
        holder = holder_pid(str(server.metrics_dir))
        assert holder in workers, (holder, workers)
        os.kill(holder, signal.SIGKILL)
        killed_at = time.monotonic()
        while time.monotonic() < killed_at + 20 and holder_pid(str(server.metrics_dir)) in (holder, None):
            time.sleep(0.02)
        took_over = time.monotonic() - killed_at
        new_holder = holder_pid(str(server.metrics_dir))
        assert new_holder not in (holder, None) and new_holder in workers, (new_holder, workers)
        print(f"export role taken over {took_over * 1000:.0f} ms after SIGKILL (interval {INTERVAL * 1000:.0f} ms)")
        for i in range(41, 61):
            chat(server, i)
        sent, tokens = 60, sum(range(1, 61))
        receiver.wait_for(exported_exactly(sent, tokens), timeout=20)

        # Phase 3: the receiver hangs (accepts, never answers): requests are not slowed.
        receiver.stop()
        black_hole = socket.socket()
        black_hole.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        black_hole.bind(("127.0.0.1", port))
        black_hole.listen(64)
        try:
            time.sleep(2 * INTERVAL)  # the holder is now stuck in a request to it
            latencies_down = [chat(server, i) for i in range(61, 81)]
            sent, tokens = 80, sum(range(1, 81))
            deadline = time.monotonic() + 3 * EXPORT_TIMEOUT + 10
            reasons: list[str] = []
            while time.monotonic() < deadline and not any("OTLP export" in r for r in reasons):
                reasons = json.loads(http("GET", server.url + "/metrics/health")[1])["reasons"]
                time.sleep(0.1)
            assert any("OTLP export to http://127.0.0.1" in r and "failing" in r for r in reasons), reasons
        finally:
            black_hole.close()
        print(
            f"chat latency, receiver up: median {statistics.median(latencies_up) * 1000:.1f} ms, "
            f"max {max(latencies_up) * 1000:.1f} ms; receiver hanging: median "
            f"{statistics.median(latencies_down) * 1000:.1f} ms, max {max(latencies_down) * 1000:.1f} ms"
        )
        # A request that waited for the export would take the export timeout (3 s) or more.
        assert max(latencies_down) < EXPORT_TIMEOUT / 2, latencies_down

        # Phase 4: the receiver comes back on the same port; export resumes with exact totals.
        receiver = Receiver(port)
        receiver.wait_for(exported_exactly(sent, tokens), timeout=3 * EXPORT_TIMEOUT + 20)
        health = json.loads(http("GET", server.url + "/metrics/health")[1])
        deadline = time.monotonic() + 10
        while any("OTLP" in r for r in health["reasons"]) and time.monotonic() < deadline:
            time.sleep(0.1)
            health = json.loads(http("GET", server.url + "/metrics/health")[1])
        assert not any("OTLP" in r for r in health["reasons"]), health
    finally:
        stop(server.process)
        receiver.stop()


def test_retry_delay_doubles_up_to_the_interval() -> None:
    """Failed exports are retried after 1, 2, 4 ... s (jittered down by at most 20%), never later than the interval."""
    delays = [otlp_module.retry_delay(n, 60.0) for n in range(1, 10)]
    for n, delay in enumerate(delays, start=1):
        assert 0.8 * min(60.0, 2.0 ** (n - 1)) <= delay <= min(60.0, 2.0 ** (n - 1))
    assert otlp_module.retry_delay(1000, 60.0) <= 60.0
    assert otlp_module.retry_delay(1, 0.5) <= 0.0625  # a short interval backs off from an eighth of it


def test_summary_info_and_stateset_families_are_encoded() -> None:
    """Families of other types (an application's Summary, Info, Enum) go out too: as a Summary and as gauges."""
    from prometheus_client import CollectorRegistry, Enum, Info, Summary

    from flask_gatewayz_metrics.otlp_encode import encode_request

    registry = CollectorRegistry()
    summary = Summary("app_job_seconds", "Job time.", ["queue"], registry=registry)
    summary.labels("a").observe(2.0)
    summary.labels("a").observe(3.0)
    Info("app_build", "Build.", registry=registry).info({"version": "1.2"})
    Enum("app_state", "State.", states=["up", "down"], registry=registry).state("down")
    body, count = encode_request(registry.collect(), {"service.name": "s"}, 1000.0, 2000.0)
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    request = ExportMetricsServiceRequest.FromString(body)
    metrics = {m.name: m for m in request.resource_metrics[0].scope_metrics[0].metrics}
    (point,) = metrics["app_job_seconds"].summary.data_points
    assert (point.count, point.sum) == (2, 5.0)
    assert [(a.key, a.value.string_value) for a in point.attributes] == [("queue", "a")]
    (info,) = metrics["app_build_info"].gauge.data_points
    assert info.as_double == 1.0 and [a.value.string_value for a in info.attributes] == ["1.2"]
    states = {p.attributes[0].value.string_value: p.as_double for p in metrics["app_state"].gauge.data_points}
    assert states == {"up": 0.0, "down": 1.0}
    assert point.start_time_unix_nano == 1000 * 10**9 and point.time_unix_nano == 2000 * 10**9
    assert count >= 4
