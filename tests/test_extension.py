"""The Flask extension: hooks, labels, routes, configuration."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, Response, abort

from flask_gatewayz_metrics import (
    GatewayzMetrics,
    MetricsCollector,
    get_metrics_collector,
    label_request,
    track_request,
)
from flask_gatewayz_metrics.testing import parse_samples as samples


def make_app(metrics_dir: str, **config: Any) -> Flask:
    app = Flask(__name__)
    app.config.update(GATEWAYZ_METRICS_DIR=metrics_dir, **config)
    GatewayzMetrics(app)

    @app.get("/api/items/<int:item_id>")
    def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    @app.post("/api/chat")
    def chat() -> dict[str, bool]:
        label_request(provider="openai", model="gpt-4")
        return {"ok": True}

    @app.post("/api/decorated")
    @track_request(endpoint="/api/decorated", method="POST", provider="anthropic", model="claude-3")
    def decorated() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/api/fallback")
    def fallback() -> dict[str, bool]:
        collector = get_metrics_collector()
        collector.record_provider_call("openai", "gpt-4", 0.2, status_code=503)
        collector.record_provider_call("anthropic", "claude-3", 0.3)
        return {"ok": True}

    @app.post("/api/manual")
    def manual() -> dict[str, bool]:
        get_metrics_collector().record_request("/api/manual", "POST", 0.5, 200, provider="google", model="gemini-pro")
        return {"ok": True}

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("view failed")

    @app.get("/teapot")
    def teapot() -> str:
        abort(418)

    @app.get("/stream")
    def stream() -> Response:
        def chunks() -> Iterator[str]:
            for i in range(3):
                time.sleep(0.05)
                yield f"data: {i}\n\n"

        return Response(chunks(), mimetype="text/event-stream")

    return app


@pytest.fixture
def app(metrics_dir: str) -> Flask:
    return make_app(metrics_dir, GATEWAYZ_METRICS_RESET_TOKEN="s3cret")


def scrape(client: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return samples(client.get("/metrics").get_data(as_text=True))


def test_route_template_is_the_label_not_the_raw_path(client: Any) -> None:
    """Requests to /api/items/1, /2, /3 share the label of their route template."""
    for i in range(3):
        assert client.get(f"/api/items/{i}").status_code == 200
    got = scrape(client)
    assert got[("http_requests_total", (("endpoint", "/api/items/<int:item_id>"), ("method", "GET")))] == 3
    assert not any("/api/items/1" in str(key) for key in got)


def test_unmatched_requests_share_one_label(client: Any) -> None:
    """404s for any path land under endpoint="unmatched"; a 405 keeps its real route."""
    for path in ("/nope", "/x/y/z", "/%00%ff"):
        assert client.get(path).status_code == 404
    assert client.put("/api/chat").status_code == 405
    got = scrape(client)
    assert got[("http_requests_total", (("endpoint", "unmatched"), ("method", "GET")))] == 3
    assert got[("http_response_status_total", (("endpoint", "unmatched"), ("status", "404")))] == 3
    assert ("http_response_status_total", (("endpoint", "unmatched"), ("status", "405"))) not in got
    assert got[("http_response_status_total", (("endpoint", "/api/chat"), ("status", "405")))] == 1


def test_unhandled_exception_counts_as_500_error(app: Flask, client: Any) -> None:
    """A view that raises is recorded once as a 500 and an error."""
    app.config["PROPAGATE_EXCEPTIONS"] = False
    assert client.get("/boom").status_code == 500
    got = scrape(client)
    key = (("endpoint", "/boom"), ("method", "GET"))
    assert got[("http_requests_total", key)] == 1
    assert got[("http_request_errors_total", key)] == 1


def test_propagated_exception_is_recorded_in_teardown(metrics_dir: str) -> None:
    """With PROPAGATE_EXCEPTIONS (testing), after_request never runs; teardown records it."""
    app = make_app(metrics_dir, TESTING=True)
    client = app.test_client()
    with pytest.raises(RuntimeError):
        client.get("/boom")
    got = scrape(client)
    assert got[("http_request_errors_total", (("endpoint", "/boom"), ("method", "GET")))] == 1
    assert got[("http_response_status_total", (("endpoint", "/boom"), ("status", "500")))] == 1


def test_client_errors_are_not_server_errors(client: Any) -> None:
    """A 418 is counted by status but is not an error under the default threshold."""
    assert client.get("/teapot").status_code == 418
    got = scrape(client)
    assert got[("http_response_status_total", (("endpoint", "/teapot"), ("status", "418")))] == 1
    assert got[("http_request_errors_total", (("endpoint", "/teapot"), ("method", "GET")))] == 0


def test_label_request_records_provider_and_model_once(client: Any) -> None:
    """label_request adds provider and model metrics without a second HTTP count."""
    client.post("/api/chat")
    got = scrape(client)
    assert got[("http_requests_total", (("endpoint", "/api/chat"), ("method", "POST")))] == 1
    assert got[("provider_requests_total", (("provider", "openai"),))] == 1
    assert got[("model_requests_total", (("model", "gpt-4"),))] == 1


def test_track_request_inside_hooked_view_does_not_double_count(client: Any) -> None:
    """A view decorated with track_request is counted once, with its provider and model."""
    client.post("/api/decorated")
    got = scrape(client)
    assert sum(v for (name, _), v in got.items() if name == "http_requests_total") == 1
    assert got[("provider_requests_total", (("provider", "anthropic"),))] == 1
    assert got[("model_requests_total", (("model", "claude-3"),))] == 1


def test_record_request_inside_hooked_view_records_only_provider(client: Any) -> None:
    """record_request from a timed view adds provider/model but not another HTTP request."""
    client.post("/api/manual")
    got = scrape(client)
    assert sum(v for (name, _), v in got.items() if name == "http_requests_total") == 1
    assert got[("provider_requests_total", (("provider", "google"),))] == 1
    assert got[("provider_latency_avg_seconds", (("provider", "google"),))] == pytest.approx(0.5)


def test_provider_calls_recorded_per_attempt(client: Any) -> None:
    """A fallback records each upstream attempt; the failed one counts as a provider error."""
    client.post("/api/fallback")
    got = scrape(client)
    assert got[("provider_requests_total", (("provider", "openai"),))] == 1
    assert got[("provider_errors_total", (("provider", "openai"),))] == 1
    assert got[("provider_requests_total", (("provider", "anthropic"),))] == 1
    assert got[("provider_errors_total", (("provider", "anthropic"),))] == 0
    assert got[("http_requests_total", (("endpoint", "/api/fallback"), ("method", "POST")))] == 1


def test_streamed_response_timed_until_body_closed(client: Any) -> None:
    """A 3 x 50 ms generator is recorded after it is consumed, with its full duration."""
    response = client.get("/stream")
    assert ("http_requests_total", (("endpoint", "/stream"), ("method", "GET"))) not in scrape(client)
    assert response.get_data(as_text=True).count("data:") == 3
    response.close()
    got = scrape(client)
    assert got[("http_requests_total", (("endpoint", "/stream"), ("method", "GET")))] == 1
    assert got[("http_request_latency_avg_seconds", (("endpoint", "/stream"),))] >= 0.15


def test_metrics_routes_not_recorded_by_default(client: Any) -> None:
    """Scrapes do not count as application traffic unless configured."""
    client.get("/metrics")
    client.get("/metrics/json")
    assert client.get("/metrics/json").get_json()["endpoints"] == {}


def test_metrics_routes_recorded_when_configured(metrics_dir: str) -> None:
    """GATEWAYZ_METRICS_RECORD_OWN_ROUTES=True records the scrapes themselves."""
    client = make_app(metrics_dir, GATEWAYZ_METRICS_RECORD_OWN_ROUTES=True).test_client()
    client.get("/metrics")
    assert "/metrics" in client.get("/metrics/json").get_json()["endpoints"]


def test_content_negotiation(client: Any) -> None:
    """Text 0.0.4 by default, OpenMetrics when the scraper asks for it."""
    client.get("/api/items/1")
    plain = client.get("/metrics")
    assert plain.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    om = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert om.headers["Content-Type"].startswith("application/openmetrics-text")
    assert om.get_data(as_text=True).endswith("# EOF\n")


def test_json_has_spec_top_level_keys(client: Any) -> None:
    """/metrics/json has the keys the spec's troubleshooting queries use."""
    client.post("/api/chat")
    doc = client.get("/metrics/json").get_json()
    for key in ("uptime_seconds", "endpoints", "providers", "models", "cache", "database", "external_apis"):
        assert key in doc
    assert len(doc["providers"]) == 1


def test_health_reports_status_and_totals(client: Any) -> None:
    """/metrics/health is healthy with traffic and reports totals and live files."""
    client.get("/api/items/1")
    response = client.get("/metrics/health")
    body = response.get_json()
    assert response.status_code == 200
    assert body["status"] == "healthy"
    assert body["total_requests"] == 1
    assert body["worker_files"]["live"] == 1


def test_health_unhealthy_when_errors_dominate(app: Flask, client: Any) -> None:
    """An error rate over the unhealthy threshold answers 503 unhealthy."""
    app.config["PROPAGATE_EXCEPTIONS"] = False
    for _ in range(3):
        client.get("/boom")
    response = client.get("/metrics/health")
    assert response.status_code == 503
    assert response.get_json()["status"] == "unhealthy"


def test_health_degraded_on_bad_file(metrics_dir: str, client: Any) -> None:
    """A garbage file in the metrics directory degrades health but not the scrape."""
    client.get("/api/items/1")
    with open(f"{metrics_dir}/worker-1-bad.gwzm", "wb") as f:
        f.write(b"garbage" * 100)
    body = client.get("/metrics/health").get_json()
    assert body["status"] == "degraded"
    assert body["storage_problems"][0]["reason"] == "foreign"
    assert client.get("/metrics").status_code == 200


def test_reset_disabled_without_token(metrics_dir: str) -> None:
    """Without GATEWAYZ_METRICS_RESET_TOKEN, reset answers 403."""
    client = make_app(metrics_dir).test_client()
    assert client.post("/metrics/reset", headers={"Authorization": "Bearer x"}).status_code == 403


def test_reset_requires_bearer_token(client: Any) -> None:
    """Reset: 401 without or with a wrong token, 405 for GET, 200 and zeros with the token."""
    client.get("/api/items/1")
    assert client.post("/metrics/reset").status_code == 401
    assert client.post("/metrics/reset", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/metrics/reset").status_code == 405
    assert client.post("/metrics/reset", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/metrics/json").get_json()["endpoints"] == {}


def test_reset_clears_other_workers(metrics_dir: str, client: Any) -> None:
    """Reset through one app zeroes what another collector on the same directory wrote."""
    other = MetricsCollector(metrics_dir)
    other.record_request("/elsewhere", "GET", 0.1, 200)
    assert "/elsewhere" in client.get("/metrics/json").get_json()["endpoints"]
    client.post("/metrics/reset", headers={"Authorization": "Bearer s3cret"})
    assert client.get("/metrics/json").get_json()["endpoints"] == {}
    other.record_request("/elsewhere", "GET", 0.1, 200)
    assert client.get("/metrics/json").get_json()["endpoints"]["/elsewhere"]["requests"] == 1
    other.close()


def test_url_prefix_configurable(metrics_dir: str) -> None:
    """GATEWAYZ_METRICS_URL_PREFIX moves every metrics route."""
    client = make_app(metrics_dir, GATEWAYZ_METRICS_URL_PREFIX="/internal/metrics").test_client()
    assert client.get("/internal/metrics").status_code == 200
    assert client.get("/internal/metrics/health").status_code == 200
    assert client.get("/metrics").status_code == 404


def test_factory_pattern_and_two_apps(tmp_path: Any) -> None:
    """One extension object serves two apps, each with its own collector and numbers."""
    metrics = GatewayzMetrics()
    apps = []
    for name in ("a", "b"):
        app = Flask(name)
        app.config["GATEWAYZ_METRICS_DIR"] = str(tmp_path / name)
        metrics.init_app(app)
        app.add_url_rule("/hello", "hello", lambda: "hi")
        apps.append(app)
    apps[0].test_client().get("/hello")
    apps[0].test_client().get("/hello")
    apps[1].test_client().get("/hello")
    counts = [app.test_client().get("/metrics/json").get_json()["endpoints"]["/hello"]["requests"] for app in apps]
    assert counts == [2, 1]
    assert GatewayzMetrics.of(apps[0]).collector is not GatewayzMetrics.of(apps[1]).collector


def test_init_app_twice_raises(metrics_dir: str) -> None:
    """A second init_app on the same app is a helpful RuntimeError."""
    app = Flask(__name__)
    app.config["GATEWAYZ_METRICS_DIR"] = metrics_dir
    metrics = GatewayzMetrics(app)
    with pytest.raises(RuntimeError, match="already initialised"):
        metrics.init_app(app)


def test_config_overrides_constructor_options(metrics_dir: str) -> None:
    """app.config GATEWAYZ_METRICS_* wins over the constructor's keyword defaults."""
    app = Flask(__name__)
    app.config.update(GATEWAYZ_METRICS_DIR=metrics_dir, GATEWAYZ_METRICS_WINDOW_SECONDS=60)
    GatewayzMetrics(app, window_seconds=600, url_prefix="/m")
    state = GatewayzMetrics.of(app)
    assert state.collector.window_seconds == 60
    assert state.settings.url_prefix == "/m"


def test_unknown_option_rejected() -> None:
    """A misspelt option fails at construction, naming the known ones."""
    with pytest.raises(TypeError, match="window_second"):
        GatewayzMetrics(window_second=5)


def test_of_without_init_app_is_helpful() -> None:
    """GatewayzMetrics.of on a bare app tells the user to call init_app."""
    with pytest.raises(RuntimeError, match="init_app"):
        GatewayzMetrics.of(Flask(__name__))


def test_error_status_threshold_configurable(metrics_dir: str) -> None:
    """GATEWAYZ_METRICS_ERROR_STATUS=400 makes 4xx responses errors."""
    client = make_app(metrics_dir, GATEWAYZ_METRICS_ERROR_STATUS=400).test_client()
    client.get("/teapot")
    got = scrape(client)
    assert got[("http_request_errors_total", (("endpoint", "/teapot"), ("method", "GET")))] == 1


TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def test_traceparent_becomes_openmetrics_exemplar(client: Any) -> None:
    """With OpenMetrics, the request's latency bucket carries the trace id of its W3C traceparent."""
    client.get("/api/items/1", headers={"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"})
    client.get("/api/items/2", headers={"traceparent": "garbage"})
    text = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}).get_data(
        as_text=True
    )
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

    duration = {f.name: f for f in parse_openmetrics(text)}["http_request_duration_seconds"]
    exemplars = [s.exemplar for s in duration.samples if s.exemplar is not None]
    assert len(exemplars) == 1
    assert exemplars[0].labels == {"trace_id": TRACE_ID}
    assert 0 < exemplars[0].value < 1
    assert f'trace_id="{TRACE_ID}"' not in client.get("/metrics").get_data(as_text=True)  # 0.0.4 has none



@pytest.mark.parametrize(
    "trace_id",
    ["1234567_89abcdef0123456789abcdef", "0x23456789abcdef0123456789abcdef", "+1234567" + "89abcdef" * 3,
     " 1234567" + "89abcdef" * 3, "g" * 32],
)
def test_a_client_chosen_traceparent_never_breaks_the_request(client: Any, trace_id: str) -> None:
    """A trace id that ``int(x, 16)`` parses but that is not 32 hex digits ("_", "+", a
    space, "0x") is ignored: the request succeeds and is counted, with no exemplar."""
    response = client.get("/api/items/1", headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
    assert response.status_code == 200
    got = scrape(client)
    assert got[("http_requests_total", (("endpoint", "/api/items/<int:item_id>"), ("method", "GET")))] == 1
    text = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}).get_data(
        as_text=True
    )
    assert "trace_id=" not in text

def test_application_metrics_served_without_duplicates(metrics_dir: str) -> None:
    """The app's own prometheus_client metrics appear on /metrics; a clash with ours is left out."""
    from prometheus_client import REGISTRY, Counter

    widgets = Counter("app_widgets", "Widgets made by the application.")
    clash = Counter("http_requests", "An app metric named like one of ours.")
    try:
        widgets.inc(3)
        clash.inc(1000)
        client = make_app(metrics_dir).test_client()
        client.get("/api/items/1")
        got = scrape(client)
        assert got[("app_widgets_total", ())] == 3
        assert got[("http_requests_total", (("endpoint", "/api/items/<int:item_id>"), ("method", "GET")))] == 1
        assert ("http_requests_total", ()) not in got
        text = client.get("/metrics").get_data(as_text=True)
        assert text.count("# TYPE http_requests_total counter") == 1
        off = make_app(metrics_dir + "-off", GATEWAYZ_METRICS_INCLUDE_APP_METRICS=False).test_client()
        assert "app_widgets_total" not in off.get("/metrics").get_data(as_text=True)
    finally:
        REGISTRY.unregister(widgets)
        REGISTRY.unregister(clash)


def test_allowlists_from_config(metrics_dir: str) -> None:
    """GATEWAYZ_METRICS_ALLOWED_MODELS (comma-separated) collapses other models into 'other'."""
    app = make_app(metrics_dir, GATEWAYZ_METRICS_ALLOWED_MODELS="gpt-4, claude-3")
    collector = GatewayzMetrics.of(app).collector
    for model in ("gpt-4", "claude-3", "mystery-1", "mystery-2"):
        collector.record_request("/x", "GET", 0.1, 200, model=model)
    models = app.test_client().get("/metrics/json").get_json()["models"]
    assert sorted(models) == ["claude-3", "gpt-4", "other"]
    assert models["other"]["requests"] == 2


def test_prepare_metrics_dir_empties_once_per_master(tmp_path: Any, monkeypatch: Any) -> None:
    """A fresh master empties the directory; a config reload in the same master keeps the counts."""
    from flask_gatewayz_metrics import gunicorn as gatewayz_gunicorn

    monkeypatch.delenv("GATEWAYZ_METRICS_PREPARED_BY", raising=False)
    monkeypatch.delenv("GATEWAYZ_METRICS_DIR", raising=False)
    path = gatewayz_gunicorn.prepare_metrics_dir(str(tmp_path / "m"))
    worker = MetricsCollector(path)
    worker.record_cache_hit()
    assert gatewayz_gunicorn.prepare_metrics_dir() == path  # HUP: the same master loads the config again
    assert MetricsCollector(path).to_dict()["cache"]["hits"] == 1
    monkeypatch.setenv("GATEWAYZ_METRICS_PREPARED_BY", "1:elsewhere")  # as if a new master started
    gatewayz_gunicorn.prepare_metrics_dir(path)
    assert MetricsCollector(path).to_dict()["cache"]["hits"] == 0
    worker.close()


@pytest.mark.parametrize(
    "accept",
    ["application/openmetrics-text; version=x", "application/openmetrics-text; version=1.x",
     "text/plain; version=abc", "text/plain; version=1.0.0-rc1"],
)
def test_a_malformed_accept_version_gets_text_not_a_500(client: Any, accept: str) -> None:
    """A ``version=`` that is not numbers (prometheus_client compares it as numbers) gets
    the text format, and the response says it varies with Accept."""
    response = client.get("/metrics", headers={"Accept": accept})
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain; version=0.0.4")
    assert "Accept" in response.vary
