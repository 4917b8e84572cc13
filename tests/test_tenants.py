"""Tenants: team / API key / user on requests, errors, tokens and cost; budgets; hashing."""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, current_app
from prometheus_client.parser import text_string_to_metric_families
from servers import REPO_ROOT, Server, free_port, gateway_env, http, stop, wait_ready

from flask_gatewayz_metrics import GatewayzMetrics, MetricsCollector, PrometheusExporter, label_request
from flask_gatewayz_metrics.tenants import KEY_FILE, hash_api_key

RAW_KEY = "sk-live-RAWKEY-0123456789abcdefXYZ"


def samples(body: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition, keyed by (name, labels)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def tenant_app(metrics_dir: Path, **config: Any) -> Flask:
    """An app whose /chat labels the request from its JSON body and records tokens."""
    app = Flask("tenants")
    app.config["GATEWAYZ_METRICS_DIR"] = str(metrics_dir)
    for key, value in config.items():
        app.config[f"GATEWAYZ_METRICS_{key.upper()}"] = value
    GatewayzMetrics(app)

    @app.post("/chat")
    def chat() -> tuple[str, int]:
        from flask import request

        body = request.get_json()
        label_request("openai", "gpt-4", **body.get("tenant", {}))
        collector = current_app.extensions["gatewayz_metrics"].collector
        collector.record_tokens("openai", "gpt-4", 100, 20, cost_usd=0.5)
        return "ok", int(body.get("status", 200))

    return app


def metrics_of(app: Flask) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return samples(app.test_client().get("/metrics").data.decode())


def labels(team: str = "", api_key: str = "", user: str = "", **extra: str) -> frozenset[tuple[str, str]]:
    return frozenset({"team": team, "api_key": api_key, "user": user, **extra}.items())


def test_tenant_counted_on_requests_errors_tokens_and_cost(tmp_path: Path) -> None:
    """label_request(team, user) puts the request, its error, tokens and cost in the tenant families."""
    app = tenant_app(tmp_path)
    client = app.test_client()
    client.post("/chat", json={"tenant": {"team": "red", "user": "ann"}})
    client.post("/chat", json={"tenant": {"team": "red", "user": "ann"}, "status": 503})
    client.post("/chat", json={})  # no tenant: only the spec's families
    got = metrics_of(app)
    red = labels("red", "", "ann")
    assert got["gatewayz_tenant_requests_total", labels("red", "", "ann", status_class="2xx")] == 1
    assert got["gatewayz_tenant_requests_total", labels("red", "", "ann", status_class="5xx")] == 1
    assert got["gatewayz_tenant_errors_total", red] == 1
    assert got["gatewayz_tenant_tokens_total", labels("red", "", "ann", direction="input")] == 200
    assert got["gatewayz_tenant_tokens_total", labels("red", "", "ann", direction="output")] == 40
    assert got["gatewayz_tenant_cost_usd_total", red] == pytest.approx(1.0)
    assert sum(v for (name, _), v in got.items() if name == "gatewayz_tenant_requests_total") == 2
    assert got["http_requests_total", frozenset({("endpoint", "/chat"), ("method", "POST")})] == 3


def test_team_cap_and_allowlist(tmp_path: Path) -> None:
    """Teams past LABEL_LIMITS, and users outside an allowlist, become "other" and are counted."""
    app = tenant_app(tmp_path / "a", label_limits={"team": 2, "user": 1})
    client = app.test_client()
    for team in ("t1", "t2", "t3", "t4"):
        client.post("/chat", json={"tenant": {"team": team, "user": f"u-{team}"}})
    got = metrics_of(app)
    teams = {dict(k)["team"] for (name, k) in got if name == "gatewayz_tenant_requests_total"}
    users = {dict(k)["user"] for (name, k) in got if name == "gatewayz_tenant_requests_total"}
    assert teams == {"t1", "t2", "other"} and users == {"u-t1", "other"}
    assert got["gatewayz_metrics_label_overflow_total", frozenset({("label", "team")})] == 2

    allowed = tenant_app(tmp_path / "b", allowed_teams="red, blue")
    for team in ("red", "green"):
        allowed.test_client().post("/chat", json={"tenant": {"team": team}})
    got = metrics_of(allowed)
    assert {dict(k)["team"] for (n, k) in got if n == "gatewayz_tenant_requests_total"} == {"red", "other"}


def test_api_key_never_stored_or_exported_raw(tmp_path: Path) -> None:
    """The API key becomes a keyed hash prefix: its bytes are in no file and no output."""
    metrics_dir = tmp_path / "m"
    app = tenant_app(metrics_dir, tenant_headers={"api_key": "Authorization"})
    client = app.test_client()
    client.post("/chat", json={"tenant": {"api_key": RAW_KEY, "team": "red"}})
    client.post("/chat", json={}, headers={"Authorization": f"Bearer {RAW_KEY}"})
    client.post("/chat", json={"tenant": {"api_key": RAW_KEY, "api_key_alias": "prod-app"}})
    outputs = [
        client.get("/metrics").data,
        client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}).data,
        client.get("/metrics/json").data,
        client.get("/metrics/health").data,
    ]
    raw = RAW_KEY.encode()
    for path in metrics_dir.rglob("*"):
        if path.is_file():
            assert raw not in path.read_bytes(), path
            assert RAW_KEY[8:20].encode() not in path.read_bytes(), path
    for output in outputs:
        assert raw not in output and RAW_KEY[8:20].encode() not in output
    key = (metrics_dir / KEY_FILE).read_bytes()
    assert oct((metrics_dir / KEY_FILE).stat().st_mode & 0o777) == "0o600"
    hashed = "key-" + hmac.new(key, raw, hashlib.sha256).hexdigest()[:16]
    got = samples(outputs[0].decode())
    assert got["gatewayz_tenant_requests_total", labels("red", hashed, status_class="2xx")] == 1
    assert got["gatewayz_tenant_requests_total", labels("", hashed, status_class="2xx")] == 1  # from the header
    assert got["gatewayz_tenant_requests_total", labels("", "prod-app", status_class="2xx")] == 1


def test_hash_key_setting_and_shared_directory_key(tmp_path: Path) -> None:
    """A configured hash key gives the documented HMAC; without one, collectors on one
    directory (the workers of a server) agree on the key kept there."""
    app = tenant_app(tmp_path / "k", tenant_hash_key="s3cret")
    app.test_client().post("/chat", json={"tenant": {"api_key": RAW_KEY}})
    assert ("gatewayz_tenant_requests_total", labels("", hash_api_key(RAW_KEY, b"s3cret"), status_class="2xx")) in (
        metrics_of(app)
    )
    assert not (tmp_path / "k" / KEY_FILE).exists()
    first, second = MetricsCollector(str(tmp_path / "d")), MetricsCollector(str(tmp_path / "d"))
    try:
        assert first.tenant(api_key=RAW_KEY) == second.tenant(api_key=RAW_KEY)
        assert first.tenant(api_key=RAW_KEY, api_key_alias="ci") == (None, "ci", None)
        assert first.tenant() is None
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize(
    "value",
    [["X-Team"], {"tenant": "X-Team"}, {"team": "X Team"}, {"team": 5}, {"team": ""}],
    ids=["list", "unknown-label", "bad-header", "not-str", "empty"],
)
def test_tenant_headers_setting_type_checked(tmp_path: Path, value: Any) -> None:
    """A malformed TENANT_HEADERS setting raises at init_app, naming the key."""
    with pytest.raises((TypeError, ValueError), match="GATEWAYZ_METRICS_TENANT_HEADERS"):
        tenant_app(tmp_path, tenant_headers=value)


def test_headers_name_the_tenant(tmp_path: Path) -> None:
    """With TENANT_HEADERS, team and user come from the request's headers (bounded)."""
    app = tenant_app(tmp_path, tenant_headers={"team": "X-Team", "user": "X-User"})
    client = app.test_client()
    client.post("/chat", json={}, headers={"X-Team": "blue", "X-User": "bob"})
    client.post("/chat", json={}, headers={"X-Team": "x" * 600})  # too long: ignored
    got = metrics_of(app)
    assert got["gatewayz_tenant_requests_total", labels("blue", "", "bob", status_class="2xx")] == 1
    assert got["gatewayz_tenant_tokens_total", labels("blue", "", "bob", direction="input")] == 100
    assert sum(v for (name, _), v in got.items() if name == "gatewayz_tenant_requests_total") == 1


def test_budget_gauge_latest_value_wins(tmp_path: Path) -> None:
    """llm_budget_remaining_usd{team}: the newest value set by any process; bad values dropped."""
    clock = iter([1000.0, 1001.0, 1002.0, 1003.0, 1004.0])
    first = MetricsCollector(str(tmp_path), clock=lambda: next(clock, 2000.0))
    second = MetricsCollector(str(tmp_path))
    try:
        first.set_budget_remaining("red", 100.0)
        second.set_budget_remaining("red", 42.5)
        first.set_budget_remaining("blue", -3)
        first.set_budget_remaining("blue", float("nan"))
        first.set_budget_remaining("blue", True)  # type: ignore[arg-type]
        got = samples(PrometheusExporter(second).export())
    finally:
        first.close()
        second.close()
    assert got["llm_budget_remaining_usd", frozenset({("team", "red")})] == 42.5
    assert got["llm_budget_remaining_usd", frozenset({("team", "blue")})] == -3
    assert got["gatewayz_metrics_dropped_total", frozenset({("reason", "invalid_value")})] == 2


def test_promtool_accepts_tenant_families(tmp_path: Path) -> None:
    """promtool check metrics passes with every tenant family populated."""
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    assert os.path.exists(promtool), "promtool is installed by scripts/test.sh"
    app = tenant_app(tmp_path)
    app.test_client().post("/chat", json={"tenant": {"team": "red", "api_key": RAW_KEY, "user": "u"}, "status": 500})
    app.extensions["gatewayz_metrics"].collector.set_budget_remaining("red", 9.0)
    body = app.test_client().get("/metrics").data.decode()
    present = {family.name for family in text_string_to_metric_families(body) if family.samples}
    assert {
        "gatewayz_tenant_requests", "gatewayz_tenant_errors", "gatewayz_tenant_tokens",
        "gatewayz_tenant_cost_usd", "llm_budget_remaining_usd",
    } <= present  # fmt: skip
    result = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, text=True, timeout=30, check=False
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


GUNICORN_APP = '''
from flask import Flask, request
from flask_gatewayz_metrics import GatewayzMetrics, label_request

app = Flask(__name__)
app.config["GATEWAYZ_METRICS_TENANT_HEADERS"] = {"team": "X-Team", "api_key": "X-Api-Key"}
metrics = GatewayzMetrics(app)


@app.get("/healthz")
def healthz():
    return "ok"


@app.post("/chat")
def chat():
    label_request("openai", "gpt-4", user=request.args.get("user"))
    metrics.of(app).collector.record_tokens("openai", "gpt-4", 10, 1, cost_usd=0.25)
    return "ok", int(request.args.get("status", "200"))
'''


@pytest.mark.slow
def test_tenants_merged_across_gunicorn_workers(tmp_path: Path) -> None:
    """3 gunicorn workers: every scrape shows the exact tenant totals, the key hashed alike."""
    (tmp_path / "tenant_app.py").write_text(GUNICORN_APP)
    metrics_dir = tmp_path / "metrics"
    port = free_port()
    command = [
        sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "3",
        "--pythonpath", str(tmp_path), "--log-level", "warning", "tenant_app:app",
    ]  # fmt: skip
    log = tmp_path / "gunicorn.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=gateway_env(tmp_path, metrics_dir),
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    server = Server(f"http://127.0.0.1:{port}", port, process, metrics_dir, log)
    try:
        wait_ready(server)
        for i in range(60):
            status = 500 if i % 6 == 0 else 200
            headers = {"X-Team": "red" if i % 2 else "blue", "X-Api-Key": RAW_KEY}
            code, _ = http("POST", f"{server.url}/chat?user=u{i % 3}&status={status}", None, headers=headers)
            assert code == status
        bodies = [http("GET", server.url + "/metrics")[1] for _ in range(6)]
    finally:
        stop(process)
    hashed = hash_api_key(RAW_KEY, (metrics_dir / KEY_FILE).read_bytes())
    for body in bodies:
        assert RAW_KEY.encode() not in body
        got = samples(body.decode())
        requests = {k: v for (n, k), v in got.items() if n == "gatewayz_tenant_requests_total"}
        assert sum(requests.values()) == 60
        assert {dict(k)["api_key"] for k in requests} == {hashed}
        errors = sum(v for (n, _), v in got.items() if n == "gatewayz_tenant_errors_total")
        assert errors == 10
        cost = sum(v for (n, _), v in got.items() if n == "gatewayz_tenant_cost_usd_total")
        assert cost == pytest.approx(15.0)
    for path in metrics_dir.rglob("*"):
        if path.is_file():
            assert RAW_KEY.encode() not in path.read_bytes()


def _post_in_threads(app: Flask, count: int, timeout: float) -> tuple[dict[int, int], int]:
    """``count`` requests with an API key header, each in its own thread, joined within
    ``timeout`` seconds: (status by request, threads still running)."""
    answers: dict[int, int] = {}

    def post(i: int) -> None:
        answers[i] = app.test_client().post("/chat", json={}, headers={"Authorization": f"Bearer sk-{i}"}).status_code

    threads = [threading.Thread(target=post, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return answers, sum(thread.is_alive() for thread in threads)


def test_a_planted_fifo_as_tenant_key_never_blocks_a_request(tmp_path: Path) -> None:
    """A FIFO named tenant.key in a group-writable directory (SECURITY.md's threat model):
    requests with an API key are answered at once, the key is left out and counted, and
    the FIFO is left where it is."""
    metrics_dir = tmp_path / "m"
    app = tenant_app(metrics_dir, tenant_headers={"api_key": "Authorization", "team": "X-Team"})
    os.chmod(metrics_dir, 0o770)
    os.mkfifo(metrics_dir / KEY_FILE)
    answers, hanging = _post_in_threads(app, 3, timeout=10.0)
    assert hanging == 0 and answers == {0: 200, 1: 200, 2: 200}
    client = app.test_client()
    assert client.post("/chat", json={"tenant": {"api_key": RAW_KEY, "team": "red"}}).status_code == 200
    assert stat.S_ISFIFO(os.lstat(metrics_dir / KEY_FILE).st_mode)  # never removed
    got = metrics_of(app)
    assert got["gatewayz_tenant_requests_total", labels("red", "", status_class="2xx")] == 1  # team kept, key left out
    assert not any(name == "gatewayz_tenant_requests_total" and ("api_key", "") not in ls for (name, ls) in got)
    assert got["gatewayz_metrics_dropped_total", frozenset({("reason", "storage_unavailable")})] >= 1
    health = client.get("/metrics/health")
    assert health.status_code == 200 and health.json["status"] == "degraded"
    assert any("tenant API keys are not recorded" in r and KEY_FILE in r for r in health.json["reasons"])


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root (CI runs as root)")
@pytest.mark.parametrize("size", [32, 5], ids=["key-sized", "wrong-size"])
def test_another_users_tenant_key_is_never_used_nor_removed(tmp_path: Path, size: int) -> None:
    """A tenant.key of another (untrusted) uid is not the HMAC key, whatever its size, and
    is not unlinked; trusting that uid (trusted_uids) makes a key-sized one the key."""
    metrics_dir = tmp_path / "m"
    collector = MetricsCollector(str(metrics_dir))
    planted = metrics_dir / KEY_FILE
    planted.write_bytes(b"k" * size)
    os.chown(planted, 65534, 65534)
    try:
        assert collector.tenant(team="red", api_key=RAW_KEY) == ("red", None, None)
        assert planted.read_bytes() == b"k" * size and planted.stat().st_uid == 65534
        assert collector.snapshot().dropped().get("storage_unavailable") == 1
    finally:
        collector.close()
    trusting = MetricsCollector(str(metrics_dir), trusted_uids=[65534])
    try:
        expected = ("red", hash_api_key(RAW_KEY, b"k" * size), None) if size == 32 else ("red", None, None)
        assert trusting.tenant(team="red", api_key=RAW_KEY) == expected
        assert planted.read_bytes() == b"k" * size  # a trusted user's short file is not ours to remove
    finally:
        trusting.close()


def test_our_own_truncated_tenant_key_is_replaced(tmp_path: Path) -> None:
    """A tenant.key of ours with the wrong length is replaced by a fresh 0600 key."""
    metrics_dir = tmp_path / "m"
    collector = MetricsCollector(str(metrics_dir))
    (metrics_dir / KEY_FILE).write_bytes(b"short")
    try:
        _, hashed, _ = collector.tenant(team="red", api_key=RAW_KEY) or (None, None, None)
        key = (metrics_dir / KEY_FILE).read_bytes()
        assert len(key) == 32 and hashed == hash_api_key(RAW_KEY, key)
    finally:
        collector.close()


def test_hash_key_of_non_utf8_environment_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GATEWAYZ_METRICS_TENANT_HASH_KEY holding bytes that are not UTF-8 (os.environ gives
    them as lone surrogates) hashes with the environment's own bytes; a request is never
    failed by a hash key, whatever str (or other value) it is."""
    monkeypatch.setitem(os.environb, b"GATEWAYZ_METRICS_TENANT_HASH_KEY", b"k3y-\xff\xfe-random")
    app = tenant_app(tmp_path / "env")
    assert app.test_client().post("/chat", json={"tenant": {"api_key": RAW_KEY, "team": "red"}}).status_code == 200
    hashed = hash_api_key(RAW_KEY, b"k3y-\xff\xfe-random")
    assert metrics_of(app)["gatewayz_tenant_requests_total", labels("red", hashed, status_class="2xx")] == 1
    monkeypatch.delitem(os.environb, b"GATEWAYZ_METRICS_TENANT_HASH_KEY")
    configured = tenant_app(tmp_path / "config", tenant_hash_key="k\ud800\udcff")  # lone surrogates from config
    assert configured.test_client().post("/chat", json={"tenant": {"api_key": RAW_KEY}}).status_code == 200
    hashed = hash_api_key(RAW_KEY, "k\ud800\udcff".encode("utf-8", "surrogatepass"))
    assert metrics_of(configured)["gatewayz_tenant_requests_total", labels("", hashed, status_class="2xx")] == 1
    collector = MetricsCollector(str(tmp_path / "direct"))
    try:
        assert collector.tenant(team="red", api_key=RAW_KEY, hash_key=5) == ("red", None, None)  # type: ignore[arg-type]
        assert collector.snapshot().dropped().get("internal_error") == 1
    finally:
        collector.close()
