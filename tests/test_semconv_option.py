"""GATEWAYZ_METRICS_SEMCONV: the conventions' families on /metrics, in OTLP, both or neither."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from conftest import FakeClock
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from otlp_receiver import Receiver, metrics_of
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from flask_gatewayz_metrics import GatewayzMetrics, MetricsCollector, PrometheusExporter, label_request
from flask_gatewayz_metrics.exposition_semconv import CONVENTIONS, ONLY_CONVENTIONS_KINDS
from flask_gatewayz_metrics.otlp import OtlpConfig, OtlpExporter, families_of

PROMETHEUS_NAMES = {"http_server_request_duration_seconds", "gen_ai_server_request_duration_seconds"}
OTLP_NAMES = {"http.server.request.duration", "gen_ai.server.request.duration"}


def app_with(tmp_path: Path, **config: object) -> tuple[Flask, GatewayzMetrics]:
    app = Flask(__name__)
    app.config.update({"GATEWAYZ_METRICS_DIR": str(tmp_path), **config})
    metrics = GatewayzMetrics(app)

    @app.post("/v1/chat")
    def chat() -> str:
        label_request(provider="openai", model="gpt-4o")
        return "ok"

    return app, metrics


def served(app: Flask, accept: str = "") -> set[str]:
    """Family names with samples on /metrics."""
    client = app.test_client()
    for _ in range(3):
        assert client.post("/v1/chat").status_code == 200
    body = client.get("/metrics", headers={"Accept": accept} if accept else {}).get_data(as_text=True)
    return {f.name for f in text_string_to_metric_families(body) if f.samples}


def otlp_sent(app: Flask) -> set[str]:
    """Metric names one OTLP export (to a real receiver on loopback) carries."""
    receiver = Receiver()
    config = OtlpConfig(endpoint=f"http://127.0.0.1:{receiver.port}/v1/metrics", timeout=2.0, interval=60.0)
    state = app.extensions["gatewayz_metrics"]
    exporter = OtlpExporter(config, families_of(state.exporter), state.collector.directory)
    try:
        assert exporter._try_lead() and exporter.export_once()
    finally:
        exporter.close()
        receiver.stop()
    received = receiver.latest()
    assert received is not None
    return set(metrics_of(received))


@pytest.mark.parametrize(
    ("value", "on_metrics", "in_otlp"),
    [(None, True, True), ("both", True, True), ("otlp", False, True), ("metrics", True, False), ("off", False, False)],
)
def test_semconv_setting_places_the_conventions(tmp_path: Path, value: str | None, on_metrics: bool,
                                                in_otlp: bool) -> None:  # fmt: skip
    """Each value puts the conventions' families where it says; the spec's families stay everywhere."""
    app, _ = app_with(tmp_path, **({"GATEWAYZ_METRICS_SEMCONV": value} if value else {}))
    names = served(app)
    assert "http_request_duration_seconds" in names
    assert (names >= PROMETHEUS_NAMES) is on_metrics and (not PROMETHEUS_NAMES & names) is (not on_metrics)
    om_names = served(app, "application/openmetrics-text; version=1.0.0")
    assert (om_names >= PROMETHEUS_NAMES) is on_metrics
    sent = otlp_sent(app)
    assert "http_requests_total" in sent or "http_requests" in sent
    assert (sent >= OTLP_NAMES) is in_otlp and (not OTLP_NAMES & sent) is (not in_otlp)


def test_semconv_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GATEWAYZ_METRICS_SEMCONV=otlp in the environment leaves them off /metrics (case and spaces ignored)."""
    monkeypatch.setenv("GATEWAYZ_METRICS_SEMCONV", " OTLP ")
    app, _ = app_with(tmp_path)
    assert app.extensions["gatewayz_metrics"].settings.semconv == "otlp"
    assert not set(CONVENTIONS) & served(app)
    assert otlp_sent(app) >= OTLP_NAMES


@pytest.mark.parametrize("bad", ["prometheus", "", 1, True])
def test_semconv_bad_value_names_the_key(tmp_path: Path, bad: object) -> None:
    """A wrong value fails at init_app, naming the key and the choices."""
    with pytest.raises((TypeError, ValueError), match=r"GATEWAYZ_METRICS_SEMCONV.*otlp"):
        app_with(tmp_path, GATEWAYZ_METRICS_SEMCONV=bad)


@given(
    st.lists(st.tuples(st.integers(0, 2), st.integers(0, 3), st.floats(1e-4, 30.0), st.sampled_from([200, 429, 503]),
                       st.booleans(), st.sampled_from([0.0, 0.5, 20.0, 61.0])), max_size=15),
    st.integers(0, 15),
)  # fmt: skip
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_leaving_the_conventions_out_changes_nothing_else(steps: list[tuple], kill_at: int) -> None:  # type: ignore[type-arg]
    """With the conventions off /metrics their records are not merged, and every other family
    is exactly what the full scrape serves (live and dead workers, sealed and current slots)."""
    clock = FakeClock()
    with tempfile.TemporaryDirectory() as directory:
        def collector() -> MetricsCollector:
            return MetricsCollector(directory, window_seconds=60, window_slots=4, clock=clock, auto_compact=False)

        workers = [collector() for _ in range(3)]
        scraper = collector()
        full, spec = PrometheusExporter(scraper), PrometheusExporter(scraper, semconv="otlp")
        for number, (worker, label, latency, status, stream, move) in enumerate(steps):
            c = workers[worker % len(workers)]
            c.record_request(f"/e{label}", "POST", latency, status, provider=f"p{label}", model=f"m{label % 2}")
            if stream:
                c.record_stream(f"p{label}", "m0", "completed", latency, first_chunk_seconds=latency / 3)
                c.record_tokens(f"p{label}", "m0", input_tokens=number, output_tokens=5)
            if number == kill_at and len(workers) == 3:
                workers.pop().close()  # a dead worker: its file is all sealed
            clock.advance(move)
            served = [f for f in full.collect() if f.name not in CONVENTIONS]
            assert list(spec.collect()) == served
            assert spec.export().encode() == generate_latest(Listed(served))
        assert not ONLY_CONVENTIONS_KINDS & set(scraper.snapshot(ONLY_CONVENTIONS_KINDS).merged.totals)
        for c in [*workers, scraper]:
            c.close()


class Listed:
    """A collector over a fixed list of families."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families
