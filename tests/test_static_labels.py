"""Static labels (GATEWAYZ_METRICS_STATIC_LABELS) on every series: /metrics in every format, JSON, OTLP."""

from __future__ import annotations

import gzip
import logging
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import configured_app
from flask import Flask
from otlp_receiver import Receiver, metrics_of, resource_of
from prometheus_client import CollectorRegistry
from prometheus_client import Counter as ClientCounter
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from flask_gatewayz_metrics import GatewayzMetrics, otlp
from flask_gatewayz_metrics.settings import Settings
from flask_gatewayz_metrics.static_labels import MAX_STATIC_LABELS

LABELS = {"region": "eu-west-1", "cluster": "c1"}
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


@pytest.fixture
def app(tmp_path: Path) -> Flask:
    app, metrics = configured_app(tmp_path, "static", static_labels=LABELS)
    collector = metrics.of(app).collector
    collector.counter("app_jobs_total", "Jobs.", labelnames=["kind"]).labels(kind="a").inc()

    @app.post("/api/chat")
    def chat() -> str:
        return "ok"

    client = app.test_client()
    client.post("/api/chat")
    collector.record_tokens("openai", "gpt-4o", 10, 5)
    collector.record_external_api_call("stripe", error=True)
    return app


def assert_every_sample_labelled(families: Iterator, expected: dict[str, str]) -> int:  # type: ignore[type-arg]
    count = 0
    for family in families:
        for sample in family.samples:
            assert {k: sample.labels.get(k) for k in expected} == expected, (family.name, sample)
            count += 1
    return count


def test_every_series_carries_static_labels_in_every_format(app: Flask) -> None:
    """Text 0.0.4, OpenMetrics and gzip: every sample of every family (ours, custom) has the static labels."""
    client = app.test_client()
    text = client.get("/metrics").get_data(as_text=True)
    assert 'http_requests_total{cluster="c1",endpoint="/api/chat",method="POST",region="eu-west-1"} 1.0' in text
    assert 'app_jobs_total{cluster="c1",kind="a",region="eu-west-1"} 1.0' in text
    assert assert_every_sample_labelled(parse_text(text), LABELS) > 100
    om = client.get("/metrics", headers={"Accept": OPENMETRICS})
    assert om.content_type.startswith("application/openmetrics-text")
    assert assert_every_sample_labelled(parse_openmetrics(om.get_data(as_text=True)), LABELS) > 100
    zipped = client.get("/metrics", headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert assert_every_sample_labelled(parse_text(gzip.decompress(zipped.get_data()).decode()), LABELS) > 100


@pytest.mark.prometheus
def test_labelled_exposition_passes_promtool(app: Flask) -> None:
    """promtool accepts the exposition with static labels added everywhere."""
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is installed by scripts/test.sh"
    body = app.test_client().get("/metrics").get_data()
    result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_json_shows_static_labels(app: Flask) -> None:
    """/metrics/json has the pairs under a top-level "static_labels"."""
    assert app.test_client().get("/metrics/json").get_json()["static_labels"] == LABELS


def test_without_static_labels_nothing_changes(tmp_path: Path) -> None:
    """No setting: no extra label, no JSON key."""
    app, _ = configured_app(tmp_path, "plain")
    client = app.test_client()
    assert "region" not in client.get("/metrics").get_data(as_text=True)
    assert "static_labels" not in client.get("/metrics/json").get_json()


def test_application_prometheus_client_metrics_get_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The application's own prometheus_client metrics pass the same chokepoint."""
    registry = CollectorRegistry()
    ClientCounter("legacy_hits", "Hits.", registry=registry).inc(3)
    monkeypatch.setattr("flask_gatewayz_metrics.extension.app_metrics_source", lambda: registry)
    app, _ = configured_app(tmp_path, "legacy", static_labels={"region": "r"})
    text = app.test_client().get("/metrics").get_data(as_text=True)
    assert 'legacy_hits_total{region="r"} 3.0' in text


def test_from_environment_and_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GATEWAYZ_METRICS_STATIC_LABELS (percent-encoded pairs) and the option; config wins over both."""
    monkeypatch.setenv("GATEWAYZ_METRICS_STATIC_LABELS", "region=eu%2Cwest, cluster = c1")
    assert Settings.resolve({}, {})[0].static_labels == {"region": "eu,west", "cluster": "c1"}
    assert Settings.resolve({}, {"static_labels": {"zone": "a"}})[0].static_labels == {"zone": "a"}
    config = {"GATEWAYZ_METRICS_STATIC_LABELS": {"zone": "b"}}
    assert Settings.resolve(config, {"static_labels": {"zone": "a"}})[0].static_labels == {"zone": "b"}
    monkeypatch.setenv("GATEWAYZ_METRICS_STATIC_LABELS", "region")
    with pytest.raises(ValueError, match="environment variable GATEWAYZ_METRICS_STATIC_LABELS must be"):
        Settings.resolve({}, {})


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        ({"bad-name": "x"}, ValueError, "not a Prometheus label name"),
        ({"__meta": "x"}, ValueError, "not a Prometheus label name"),
        ({"9lives": "x"}, ValueError, "not a Prometheus label name"),
        ({"le": "x"}, ValueError, "reserved"),
        ({"job": "x"}, ValueError, "exported_job"),
        ({"region": ""}, ValueError, "1 to 256 characters"),
        ({"region": "x" * 257}, ValueError, "1 to 256 characters"),
        ({"region": "a\nb"}, ValueError, "control character"),
        ({"region": "Z\udcfcrich"}, ValueError, "not valid UTF-8"),  # Latin-1 bytes in the environment
        ({"region": 3}, TypeError, "must be a dict"),
        (["region"], TypeError, "must be a dict"),
        ({f"l{i}": "x" for i in range(MAX_STATIC_LABELS + 1)}, ValueError, "at most"),
    ],
)
def test_bad_static_labels_are_refused(value: object, error: type[Exception], match: str) -> None:
    """Names must follow Prometheus' rules (not reserved ones), values are bounded and printable."""
    with pytest.raises(error, match=match):
        Settings.resolve({"GATEWAYZ_METRICS_STATIC_LABELS": value}, {})


@pytest.mark.parametrize(("name", "family"), [("service", "external_api_calls"), ("endpoint", "http_request")])
def test_clash_with_a_family_label_is_refused_at_start(tmp_path: Path, name: str, family: str) -> None:
    """A static label named like one of a family's labels stops init_app with a message naming the family."""
    with pytest.raises(ValueError, match=rf"'{name}' is already a label of the family '{family}"):
        configured_app(tmp_path, "clash", static_labels={name: "x"})


def test_clash_with_a_custom_metric_defined_before_start(tmp_path: Path) -> None:
    """Custom metrics already defined (with data) are part of the start check."""
    app = Flask("custom_clash")
    app.config["GATEWAYZ_METRICS_DIR"] = str(tmp_path / "metrics")
    metrics = GatewayzMetrics(app)
    metrics.of(app).collector.counter("app_regions_total", "R.", labelnames=["region"]).labels(region="x").inc()
    other = Flask("custom_clash_2")
    other.config["GATEWAYZ_METRICS_STATIC_LABELS"] = {"region": "eu"}
    with pytest.raises(ValueError, match="'region' is already a label of the family 'app_regions'"):
        GatewayzMetrics(other, collector=metrics.of(app).collector)


def test_family_defined_later_keeps_its_own_label(app: Flask, caplog: pytest.LogCaptureFixture) -> None:
    """A custom metric defined after start with a static label's name keeps its value; a warning says so once."""
    collector = GatewayzMetrics.of(app).collector
    collector.counter("late_total", "Late.", labelnames=["region"]).labels(region="mine").inc()
    client = app.test_client()
    with caplog.at_level(logging.WARNING, "flask_gatewayz_metrics"):
        text = client.get("/metrics").get_data(as_text=True)
        client.get("/metrics")
    assert 'late_total{cluster="c1",region="mine"} 1.0' in text
    assert len([r for r in caplog.records if "family late has its own label" in r.getMessage()]) == 1


def test_otlp_export_sends_them_as_resource_attributes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """OTLP: the pairs are resource attributes (beside service.name), not repeated on each data point."""
    for name in [n for n in __import__("os").environ if n.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gw")
    receiver = Receiver()
    try:
        app, _ = configured_app(
            tmp_path, "otlp_static", static_labels=LABELS,
            otlp_endpoint=f"http://127.0.0.1:{receiver.port}/v1/metrics",
        )  # fmt: skip
        app.test_client().get("/metrics")  # the first request starts the export thread: it exports at once
        try:
            received = receiver.wait_for(lambda r: "gatewayz_uptime_seconds" in metrics_of(r), timeout=30)
        finally:
            otlp._exporters[GatewayzMetrics.of(app).collector.directory].close()
        assert resource_of(received) | LABELS == resource_of(received)
        assert resource_of(received)["service.name"] == "gw"
        uptime = metrics_of(received)["gatewayz_uptime_seconds"]
        assert [a.key for a in uptime.gauge.data_points[0].attributes] == []
    finally:
        receiver.stop()
