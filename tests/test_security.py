"""Security promises: access control, hostile input, directory safety, rate-limited logging."""

from __future__ import annotations

import base64
import logging
import math
import os
import shutil
import subprocess
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from example_app.app import create_app
from flask_gatewayz_metrics import GatewayzMetrics, MetricsCollector, PrometheusExporter
from flask_gatewayz_metrics.labels import KNOWN_METHODS
from flask_gatewayz_metrics.storage.directory import MetricsDirectoryError
from flask_gatewayz_metrics.testing import scrape_samples, worker_file

SCRAPE_ROUTES = ("/metrics", "/metrics/json", "/metrics/health")


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def secured_app(metrics_dir: str, **config: Any) -> Flask:
    app = Flask(__name__)
    app.config.update(GATEWAYZ_METRICS_DIR=metrics_dir, **config)
    GatewayzMetrics(app)
    app.add_url_rule("/hello", "hello", lambda: "hi")
    return app


# ------------------------------------------------------------------ access control
def test_scrape_routes_open_by_default(metrics_dir: str) -> None:
    """Without scrape credentials the metrics routes answer anyone."""
    client = secured_app(metrics_dir).test_client()
    for route in SCRAPE_ROUTES:
        assert client.get(route).status_code == 200


def test_bearer_token_protects_every_scrape_route(metrics_dir: str) -> None:
    """With a token, each scrape route needs `Authorization: Bearer <token>`; 401 names the scheme."""
    client = secured_app(metrics_dir, GATEWAYZ_METRICS_AUTH_TOKEN="scrape-secret").test_client()
    for route in SCRAPE_ROUTES:
        denied = client.get(route)
        assert denied.status_code == 401
        assert denied.headers["WWW-Authenticate"].startswith("Bearer")
        assert client.get(route, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get(route, headers={"Authorization": "Basic c2NyYXBlLXNlY3JldA=="}).status_code == 401
        assert client.get(route, headers={"Authorization": "Bearer scrape-secret"}).status_code == 200


def test_basic_auth_protects_every_scrape_route(metrics_dir: str) -> None:
    """With username and password, HTTP basic auth is required (and a bearer token alone is not enough)."""
    client = secured_app(
        metrics_dir, GATEWAYZ_METRICS_AUTH_USERNAME="prometheus", GATEWAYZ_METRICS_AUTH_PASSWORD="pa:ss"
    ).test_client()
    for route in SCRAPE_ROUTES:
        assert client.get(route).status_code == 401
        assert client.get(route, headers={"Authorization": basic("prometheus", "wrong")}).status_code == 401
        assert client.get(route, headers={"Authorization": "Basic %%%"}).status_code == 401
        assert client.get(route, headers={"Authorization": "Bearer pa:ss"}).status_code == 401
        assert client.get(route, headers={"Authorization": basic("prometheus", "pa:ss")}).status_code == 200


def test_credentials_from_environment_and_files(metrics_dir: str, tmp_path: Any, monkeypatch: Any) -> None:
    """Secrets can come from environment variables or files (trailing newline ignored)."""
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    monkeypatch.setenv("GATEWAYZ_METRICS_AUTH_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("GATEWAYZ_METRICS_RESET_TOKEN", "reset-from-env")
    client = secured_app(metrics_dir).test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer from-file"}).status_code == 200
    reset = client.post("/metrics/reset", headers={"Authorization": "Bearer reset-from-env"})
    assert reset.status_code == 200


def test_reset_never_accepts_scrape_credentials(metrics_dir: str) -> None:
    """The scrape token does not reset; the reset token does not scrape; reset is POST only."""
    client = secured_app(
        metrics_dir, GATEWAYZ_METRICS_AUTH_TOKEN="scrape", GATEWAYZ_METRICS_RESET_TOKEN="reset"
    ).test_client()
    client.get("/hello")
    assert client.post("/metrics/reset", headers={"Authorization": "Bearer scrape"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer reset"}).status_code == 401
    assert client.get("/metrics/reset", headers={"Authorization": "Bearer reset"}).status_code == 405
    body = client.get("/metrics/json", headers={"Authorization": "Bearer scrape"}).get_json()
    assert body["endpoints"]["/hello"]["requests"] == 1


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"GATEWAYZ_METRICS_AUTH_USERNAME": "u"}, "must be set together"),
        ({"GATEWAYZ_METRICS_AUTH_TOKEN": "a", "GATEWAYZ_METRICS_AUTH_TOKEN_FILE": "/x"}, "not both"),
        ({"GATEWAYZ_METRICS_RESET_TOKEN_FILE": "/nonexistent/token"}, "cannot read"),
    ],
)
def test_bad_credential_settings_fail_at_start(metrics_dir: str, config: dict[str, str], message: str) -> None:
    """Inconsistent credential settings fail at init_app with a clear message, not during a request."""
    with pytest.raises(ValueError, match=message):
        secured_app(metrics_dir, **config)


# ---------------------------------------------------------------- directory safety
def test_directory_created_owner_only(tmp_path: Any) -> None:
    """A metrics directory the collector creates is mode 0700, its files 0600."""
    path = str(tmp_path / "new" / "metrics")
    c = MetricsCollector(path)
    c.record_cache_hit()
    assert os.stat(path).st_mode & 0o777 == 0o700
    assert os.stat(worker_file(c) or "").st_mode & 0o777 == 0o600
    c.close()


def test_world_writable_directory_refused(metrics_dir: str) -> None:
    """A world-writable directory is refused at start with a clear error."""
    os.chmod(metrics_dir, 0o777)
    with pytest.raises(MetricsDirectoryError, match="world-writable"):
        secured_app(metrics_dir)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root (CI runs as root)")
def test_directory_of_another_user_refused(metrics_dir: str) -> None:
    """A directory owned by another user is refused at start."""
    os.chown(metrics_dir, 65534, 65534)
    with pytest.raises(MetricsDirectoryError, match="owned by uid 65534"):
        MetricsCollector(metrics_dir)


@pytest.mark.parametrize("name", ["worker-1-abc.gwzm", "control.gwzc", "archive.gwza"])
def test_symlinked_metrics_file_refused(metrics_dir: str, tmp_path: Any, name: str) -> None:
    """A metrics file that is a symlink (to anything) is refused at start."""
    target = tmp_path / "victim"
    target.write_text("precious")
    os.symlink(target, os.path.join(metrics_dir, name))
    with pytest.raises(MetricsDirectoryError, match="symlink"):
        MetricsCollector(metrics_dir)
    assert target.read_text() == "precious"


def test_symlinked_directory_refused(metrics_dir: str, tmp_path: Any) -> None:
    """GATEWAYZ_METRICS_DIR pointing at a symlink is refused."""
    link = str(tmp_path / "link")
    os.symlink(metrics_dir, link)
    with pytest.raises(MetricsDirectoryError, match="symlink"):
        MetricsCollector(link)


def test_symlink_planted_after_start_is_not_followed(metrics_dir: str, tmp_path: Any) -> None:
    """A control file swapped for a symlink while running is never opened through the link."""
    c = MetricsCollector(metrics_dir)
    c.record_cache_hit()
    target = tmp_path / "victim"
    target.write_text("precious")
    control = os.path.join(metrics_dir, "control.gwzc")
    os.unlink(control)
    os.symlink(target, control)
    with pytest.raises(OSError, match="symbolic links"):
        c.reset()  # opens the control file to lock it: refuses to follow the link
    assert target.read_text() == "precious"


# ------------------------------------------------------------------ hostile input
@st.composite
def hostile_values(draw: Any) -> object:
    return draw(
        st.one_of(
            st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
            st.text(), st.binary(max_size=20), st.lists(st.integers(), max_size=3),
            st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.just(math.nan),
        )
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls=st.lists(st.tuples(st.integers(0, 5), st.lists(hostile_values(), min_size=6, max_size=6)), max_size=8))
def test_recording_api_never_raises_and_exposition_parses(calls: list[tuple[int, list[object]]]) -> None:
    """record_* with any types and values never raises, and each call is recorded or counted as
    dropped (never silently lost); the exposition always parses in both formats."""
    directory = tempfile.mkdtemp()
    try:
        c = MetricsCollector(os.path.join(directory, "m"))
        for which, a in calls:
            method: Any = [
                c.record_request, c.record_provider_call, c.record_db_query,
                c.record_external_api_call, c.record_cache_hit, c.record_cache_miss,
            ][which]
            arity = [6, 5, 1, 2, 0, 0][which]
            before = _recorded_or_dropped(c, which)
            method(*a[:arity])
            assert _recorded_or_dropped(c, which) > before, (method.__name__, a[:arity])
        exporter = PrometheusExporter(c)
        list(parse_text(exporter.export()))
        body, _ = exporter.render("application/openmetrics-text; version=1.0.0")
        list(parse_openmetrics(body.decode()))
        c.close()
    finally:
        shutil.rmtree(directory)


_FAMILIES_OF_CALL = (
    ("http_requests_total",), ("provider_requests_total", "model_requests_total"), ("db_queries_total",),
    ("external_api_calls_total",), ("cache_hits_total",), ("cache_misses_total",),
)


def _recorded_or_dropped(collector: MetricsCollector, which: int) -> float:
    """What call ``which`` adds to: its own families' counts plus every dropped input."""
    families = (*_FAMILIES_OF_CALL[which], "gatewayz_metrics_dropped_total")
    return sum(value for (name, _), value in scrape_samples(collector).items() if name in families)


NASTY_LABELS = ['a"b', "back\\slash", "new\nline", "nul\x00byte", "é🚀中文", "}{,=", "\t tab", "x" * 300, "\udcff"]


@pytest.mark.skipif(
    shutil.which("promtool") is None and os.environ.get("CI") != "true", reason="no promtool (CI installs it)"
)
def test_nasty_label_values_pass_promtool(metrics_dir: str) -> None:
    """Quotes, backslashes, newlines, NUL, non-ASCII, huge and broken values: promtool accepts the output."""
    c = MetricsCollector(metrics_dir)
    for label in NASTY_LABELS:
        c.record_request(label, "GET", 0.1, 200, provider=label, model=label)
        c.record_external_api_call(label, error=True)
    text = PrometheusExporter(c).export()
    families = {f.name: f for f in parse_text(text)}
    assert len(families["http_requests"].samples) == len(NASTY_LABELS)
    result = subprocess.run(["promtool", "check", "metrics"], input=text.encode(), capture_output=True, check=False)
    assert result.returncode == 0, result.stderr.decode() + result.stdout.decode()
    c.close()


ODD_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "PROPFIND", "FOO", "BREW", "X" * 40]


@pytest.fixture(scope="module")
def gateway() -> Any:
    directory = tempfile.mkdtemp()
    app = create_app(
        {"GATEWAYZ_METRICS_DIR": os.path.join(directory, "m"), "GATEWAY_SIMULATED_LATENCY_SCALE": 0.0, "TESTING": True}
    )
    yield app
    shutil.rmtree(directory)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    path=st.text(min_size=0, max_size=300),
    method=st.sampled_from(ODD_METHODS),
    body=st.binary(max_size=200),
    headers=st.dictionaries(
        st.from_regex(r"X-[A-Za-z]{1,10}", fullmatch=True), st.text(st.characters(min_codepoint=32, max_codepoint=126)),
        max_size=30,
    ),
)
@example(path="\r/\x80", method="GET", body=b"", headers={})  # control characters and a non-ASCII byte
def test_hostile_http_never_breaks_app_or_adds_series(
    gateway: Flask, path: str, method: str, body: bytes, headers: dict[str, str]
) -> None:
    """Random paths, odd methods, junk bodies and header floods: no 500, labels stay within routes."""
    client = gateway.test_client()
    # Percent-encoded, as an HTTP client must send it (werkzeug's test client itself
    # rejects raw control characters); the app still sees any decoded path.
    target = "/" + urllib.parse.quote(path.lstrip("/"), safe="/")
    response = client.open(target, method=method, data=body, headers=headers)
    assert response.status_code < 500 or response.status_code in (502, 503)
    doc = client.get("/metrics/json").get_json()
    routes = {rule.rule for rule in gateway.url_map.iter_rules()} | {"unmatched"}
    assert set(doc["endpoints"]) <= routes
    for entry in doc["endpoints"].values():
        assert set(entry["methods"]) <= KNOWN_METHODS | {"OTHER"}


def test_oversize_body_is_rejected_not_buffered(gateway: Flask) -> None:
    """A 2 MiB body to the chat API is a 413 and is still counted under its route."""
    client = gateway.test_client()
    before = client.get("/metrics/json").get_json()["endpoints"].get("/api/chat", {}).get("status", {}).get("413", 0)
    response = client.post("/api/chat", data=b"{" + b" " * (2 * 1024 * 1024) + b"}", content_type="application/json")
    assert response.status_code == 413
    after = client.get("/metrics/json").get_json()["endpoints"]["/api/chat"]["status"]["413"]
    assert after == before + 1


# ----------------------------------------------------------------- degraded storage
def test_storage_problems_logged_at_most_once_a_minute(metrics_dir: str, caplog: Any, monkeypatch: Any) -> None:
    """A thousand failing writes produce one warning, not a thousand."""
    from flask_gatewayz_metrics.storage import access

    monkeypatch.setattr(access, "RETRY_SECONDS", 0.0)
    c = MetricsCollector(metrics_dir)
    c.record_cache_hit()
    c.close()
    shutil.rmtree(metrics_dir)
    with open(metrics_dir, "w") as f:
        f.write("in the way")
    with caplog.at_level(logging.WARNING, logger="flask_gatewayz_metrics"):
        for _ in range(1000):
            c.record_request("/x", "GET", 0.1, 200)
    assert len([r for r in caplog.records if r.name == "flask_gatewayz_metrics"]) == 1
    assert c.snapshot().dropped()["storage_unavailable"] == 1000


@settings(max_examples=25, deadline=None)
@given(labels=st.lists(st.text(max_size=40), min_size=1, max_size=6))
def test_fuzzed_label_values_pass_promtool(labels: list[str]) -> None:
    """Any unicode label values (endpoint, provider, model, service): promtool check metrics accepts the output."""
    promtool = shutil.which("promtool")
    if promtool is None:
        assert os.environ.get("CI") != "true", "promtool is required in CI"
        pytest.skip("promtool not installed (CI installs it)")
    directory = tempfile.mkdtemp()
    try:
        c = MetricsCollector(os.path.join(directory, "m"))
        for label in labels:
            c.record_request(label, "GET", 0.1, 200, provider=label, model=label)
            c.record_external_api_call(label)
            c.record_tokens(label, label, 3, 5, cost_usd=0.01)
        text = PrometheusExporter(c).export()
        list(parse_text(text))
        result = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, check=False)
        assert result.returncode == 0, result.stderr.decode() + result.stdout.decode()
        c.close()
    finally:
        shutil.rmtree(directory)


def test_values_a_reader_would_reject_are_dropped_not_written(tmp_path: Path) -> None:
    """An absurd but finite input (a latency of 1e15 s, 1e16 tokens, a custom counter pushed
    past 2**53) is dropped and counted; the series keeps its earlier counts (the merge drops a
    series beyond ``layout.MAX_VALUE`` as damaged, so writing it would hide them)."""
    c = MetricsCollector(str(tmp_path / "m"))
    c.record_request("/x", "GET", 0.5, 200)
    c.record_db_query(0.25)
    c.record_tokens("openai", "gpt-4", 10, 20)
    counter = c.counter("app_events", "events")
    counter.inc(5)
    c.record_request("/x", "GET", 1e15, 200)
    c.record_db_query(9.007e15)
    c.record_provider_call("openai", "gpt-4", 2.0**21, 200)
    c.record_tokens("openai", "gpt-4", 1e16, 1)
    c.record_stream("openai", "gpt-4", "completed", 1e12)
    counter.inc(2.0**53)
    samples = scrape_samples(c)
    assert samples[("http_requests_total", (("endpoint", "/x"), ("method", "GET")))] == 1
    assert samples[("http_request_duration_seconds_sum", (("endpoint", "/x"), ("method", "GET")))] == 0.5
    assert samples[("db_queries_total", ())] == 1
    assert samples[("llm_tokens_total", (("direction", "input"), ("model", "gpt-4"), ("provider", "openai")))] == 10
    assert samples[("app_events_total", ())] == 5
    dropped = {labels: v for (name, labels), v in samples.items() if name == "gatewayz_metrics_dropped_total"}
    assert dropped[(("reason", "invalid_latency"),)] == 3
    assert dropped[(("reason", "invalid_value"),)] == 3
    c.close()
