"""Real Prometheus in the loop: promtool on our output and on conf/, and a real server.

- ``promtool check metrics`` on what /metrics serves after mixed traffic;
- ``promtool check rules`` / ``test rules`` / ``check config`` on conf/;
- every metric name used in conf/ exists in a real scrape;
- the Grafana dashboard covers every query of the spec's "Grafana Dashboard Queries";
- prometheus_client's parsers accept every format /metrics serves;
- the example app under gunicorn (4 workers) scraped by a real Prometheus on loopback:
  exact totals, every dashboard/rule expression answered, rules healthy, alerts firing.

The binaries come from the Debian package ``prometheus``. Without them these tests are
skipped, unless ``CI=true``: there a missing binary is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text
from servers import REPO_ROOT, free_port, http, send_concurrently, start_simulator, stop

from example_app.app import create_app
from flask_gatewayz_metrics.exposition import STORAGE_ERROR_REASONS

pytestmark = pytest.mark.prometheus

CONF = REPO_ROOT / "conf"
PROMETHEUS_CONFIG = CONF / "prometheus.yml"
ALERT_RULES = CONF / "prometheus-alerts.yml"
RECORDING_RULES = CONF / "prometheus-recording.yml"
RULE_FILES = (ALERT_RULES, RECORDING_RULES)
RULE_TESTS = (CONF / "prometheus-alerts.test.yml", CONF / "prometheus-recording.test.yml")
DASHBOARD = CONF / "grafana-dashboard.json"
JOB = "gatewayz-api"
HISTOGRAM_P99 = "histogram_quantile(0.99, sum by (le, endpoint) (rate(http_request_duration_seconds_bucket[5m])))"

# The spec's "Grafana Dashboard Queries", panel title -> its queries. The dashboard has a
# panel with each title that runs each query verbatim, or explains in its description
# ("Spec query: `<query>` -- changed: ...") why it runs a corrected one instead.
SPEC_DASHBOARD_QUERIES: dict[str, list[str]] = {
    "P99 Latency by Endpoint": ["http_request_latency_p99_seconds"],
    "Average Latency Trend": ["rate(http_request_latency_avg_seconds[5m])"],
    "Request Rate": ["rate(http_requests_total[1m])"],
    "Error Rate by Endpoint": ["rate(http_request_errors_total[5m]) / rate(http_requests_total[5m])"],
    "Total Errors": ["http_request_errors_total"],
    "Errors by Status Code": ['http_response_status_total{status=~"5.."}'],
    "Provider Error Rates": ["provider_error_rate"],
    "Provider Latency Comparison": ["provider_latency_avg_seconds"],
    "Provider Request Volume": ["rate(provider_requests_total[5m])"],
    "Model Error Rates": ["model_error_rate"],
    "Model Latency": ["model_latency_avg_seconds"],
    "Model Request Volume": ["rate(model_requests_total[5m])"],
    "Cache Hit Rate": ["cache_hit_rate"],
    "Cache Operations": ["rate(cache_hits_total[5m])", "rate(cache_misses_total[5m])"],
    "Database Query Rate": ["rate(db_queries_total[5m])"],
    "Database Latency": ["db_query_latency_avg_seconds"],
}

# Series Prometheus itself attaches to every scrape target.
PROMETHEUS_SERIES = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})


# --------------------------------------------------------------------------- helpers


def require_binary(name: str) -> str:
    """The binary's path; skip without it (fail when CI=true)."""
    path = shutil.which(name)
    if path is None:
        reason = f"`{name}` not found on PATH (Debian package `prometheus`: apt-get install prometheus)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; CI=true, so this is a failure, not a skip")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_binary("promtool")


def run(command: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO_ROOT)


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def rules(path: Path) -> list[dict[str, Any]]:
    return [rule for group in load_yaml(path)["groups"] for rule in group["rules"]]


def alert_rules() -> list[dict[str, Any]]:
    return rules(ALERT_RULES)


def recording_rules() -> list[dict[str, Any]]:
    return rules(RECORDING_RULES)


def load_dashboard() -> dict[str, Any]:
    with DASHBOARD.open(encoding="utf-8") as f:
        return json.load(f)  # type: ignore[no-any-return]


def dashboard_panels() -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    out = []
    for panel in load_dashboard()["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def dashboard_exprs() -> list[str]:
    """The PromQL of every dashboard target: the JSON is their single source."""
    return [target["expr"] for panel in dashboard_panels() for target in panel.get("targets", [])]


THRESHOLD = re.compile(r"(?s)\s*(.*\S)\s*(?:==|!=|>=|<=|>|<)\s*[-+]?\d+(?:\.\d+)?\s*")


def alert_signal(expr: str) -> str:
    """An alert expression without its trailing threshold comparison (``a / b > 0.05`` -> ``a / b``)."""
    match = THRESHOLD.fullmatch(expr)
    assert match, f"alert expression does not end in `<op> <number>`: {expr!r}"
    return match.group(1)


_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.:])[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    }
)


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (identifiers that are not functions, keywords or labels)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^{}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\[\]]*\]", " ", text)  # range and subquery durations
    text = _GROUPING.sub(" ", text)  # by (...), on (...), ...
    text = re.sub(r"\boffset\s+\w+", " ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        if text[match.end() :].lstrip().startswith("(") or match.group().lower() in _KEYWORDS:
            continue  # a function or aggregation, or a keyword
        names.add(match.group())
    return names


# --------------------------------------------------------------------------- a scrape after mixed traffic


@dataclass(frozen=True)
class Scrapes:
    """/metrics bodies by Accept header, and how many requests produced them."""

    bodies: dict[str, tuple[str, str]]  # accept -> (content type, body)
    requests: int


ACCEPT_DEFAULT = ""
ACCEPT_OPENMETRICS = "application/openmetrics-text; version=1.0.0"
ACCEPT_TEXT_1 = "text/plain; version=1.0.0"


@pytest.fixture(scope="module")
def scrapes(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Scrapes:
    """The example app (Flask test client) after every kind of traffic, scraped in each format."""
    tmp = tmp_path_factory.mktemp("scrape")
    metrics_dir = tmp / "metrics"
    metrics_dir.mkdir(mode=0o700)
    upstreams = start_simulator(
        tmp, "--latency-scale", "0.01", "--error-rate", "0.1", "--billing-error-rate", "0.2", "--seed", "7"
    )
    request.addfinalizer(lambda: stop(upstreams.process))
    app = create_app(
        {
            "TESTING": True,
            "GATEWAYZ_METRICS_DIR": str(metrics_dir),
            "GATEWAY_DB_PATH": str(tmp / "models.sqlite3"),
            **upstreams.config,
        }
    )
    client = app.test_client()
    sent = 0
    models = ("gpt-4", "claude-3-haiku", "gemini-1.5-pro")
    for i in range(30):
        body = {"model": models[i % 3], "message": f"hello {i}", "stream": i % 4 == 0}
        if i % 5 == 0:
            body["simulate_status"] = (500, 429, 503)[i % 3]
        responses = [
            client.post("/api/chat", json=body),
            client.get("/api/models"),
            client.get(f"/api/models/{models[i % 3]}"),
            client.get("/api/models/no-such-model"),
            client.get("/does/not/exist"),
            client.delete("/api/models"),
            client.post("/api/chat", json={"model": "llama-3", "message": "x"}),  # 400
        ]
        for response in responses:
            response.get_data()
            response.close()
        sent += len(responses)
    # A bad file in the metrics directory: skipped, quarantined and counted.
    (metrics_dir / "worker-1-garbage.gwzm").write_bytes(b"NOT-GWZM" * 512)
    client.get("/metrics").close()
    bodies = {}
    for accept in (ACCEPT_DEFAULT, ACCEPT_OPENMETRICS, ACCEPT_TEXT_1):
        response = client.get("/metrics", headers={"Accept": accept} if accept else {})
        assert response.status_code == 200
        bodies[accept] = (response.content_type, response.get_data(as_text=True))
        response.close()
    return Scrapes(bodies, sent)


def exported_names(text_0_0_4: str) -> set[str]:
    """Every series name a 0.0.4 scrape can hold: families (even without samples), samples, histogram parts."""
    names = set()
    for line in text_0_0_4.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names.add(name)
            if kind == "histogram":
                names.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


# --------------------------------------------------------------------------- promtool


@pytest.mark.parametrize("accept", [ACCEPT_DEFAULT, ACCEPT_TEXT_1], ids=["text-0.0.4", "text-1.0.0"])
def test_promtool_check_metrics_is_clean(promtool: str, scrapes: Scrapes, accept: str) -> None:
    """promtool parses and lints the text formats /metrics serves after mixed traffic: no problem at all.

    (promtool 2.42 reads only the text format; the OpenMetrics body is checked by
    prometheus_client's OpenMetrics parser below and by the real server scraping it.)
    """
    content_type, body = scrapes.bodies[accept]
    assert content_type.startswith("text/plain")
    assert 'gatewayz_metrics_storage_errors_total{reason="foreign"} 1.0' in body
    result = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, text=True, timeout=30, check=False
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_promtool_check_rules(promtool: str, path: Path) -> None:
    result = run([promtool, "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules(path))} rules found" in result.stdout


@pytest.mark.parametrize("path", RULE_TESTS, ids=lambda p: p.name)
def test_promtool_test_rules(promtool: str, path: Path) -> None:
    result = run([promtool, "test", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_firing_and_quiet_unit_tests() -> None:
    """conf/prometheus-alerts.test.yml tests every alert both firing and not firing."""
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in load_yaml(RULE_TESTS[0])["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert firing == names
    assert quiet == names
    assert {"HighErrorRate", "HighLatency", "ProviderDown", "CacheMissRate", "GatewayzMetricsDown"} <= names


def test_promtool_check_config(promtool: str) -> None:
    """conf/prometheus.yml is valid and loads both rule files (paths relative to the config file)."""
    config = load_yaml(PROMETHEUS_CONFIG)
    assert config["rule_files"] == [ALERT_RULES.name, RECORDING_RULES.name]
    (job,) = config["scrape_configs"]
    assert (job["job_name"], job["metrics_path"]) == (JOB, "/metrics")
    result = run([promtool, "check", "config", str(PROMETHEUS_CONFIG)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 2 rule files found" in result.stdout


# --------------------------------------------------------------------------- conf/ against what we export


def test_metric_name_extraction() -> None:
    """The extractor finds selected series and nothing else (labels, functions, keywords, durations)."""
    expr = (
        'sum by (job, instance, reason) ((x_total unless x_total offset 15m) or increase(y_total{a="b c"}[15m]))'
        " / on (job) group_left histogram_quantile(0.99, sum by (le) (rate(h_bucket[5m]))) > 1e3"
    )
    assert metric_names(expr) == {"x_total", "y_total", "h_bucket"}
    assert metric_names("job:http_requests:rate5m / up") == {"job:http_requests:rate5m", "up"}


def test_every_metric_used_in_conf_is_exported(scrapes: Scrapes) -> None:
    """Alert rules, recording rules and dashboard select only series a real scrape (or a recording rule) has."""
    exported = exported_names(scrapes.bodies[ACCEPT_DEFAULT][1])
    recorded = {rule["record"] for rule in recording_rules()}
    sources = {
        **{f"alert {r['alert']}": r["expr"] for r in alert_rules()},
        **{f"record {r['record']}": r["expr"] for r in recording_rules()},
        **{f"dashboard #{i}": expr for i, expr in enumerate(dashboard_exprs())},
    }
    used: dict[str, set[str]] = {}
    for source, expr in sources.items():
        names = metric_names(expr)
        assert names, f"{source}: no metric found in {expr!r}"
        for name in names:
            used.setdefault(name, set()).add(source)
    unknown = {
        name: sorted(where) for name, where in used.items() if name not in exported | recorded | PROMETHEUS_SERIES
    }
    assert unknown == {}
    # The dashboard uses recording rules, and its histogram p99 panel and the p99
    # recording rule run the very same expression.
    assert {name for name in used if name in recorded}
    p99 = {r["record"]: r["expr"] for r in recording_rules()}["endpoint:http_request_duration_seconds:p99_5m"]
    assert p99 == HISTOGRAM_P99
    assert HISTOGRAM_P99 in dashboard_exprs()


# --------------------------------------------------------------------------- dashboard, Kubernetes


def test_dashboard_is_importable_and_covers_the_spec() -> None:
    dashboard = load_dashboard()
    assert 39 <= dashboard["schemaVersion"] < 40
    assert dashboard["id"] is None
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    assert dashboard["__inputs"][0]["pluginId"] == "prometheus"
    (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert (variable["name"], variable["query"], variable["current"]["value"]) == (
        "datasource",
        "prometheus",
        "${DS_PROMETHEUS}",
    )
    panels = dashboard_panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    by_title = {p["title"]: p for p in panels}
    assert len(by_title) == len(panels)
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            assert "$" not in target["expr"], "expressions are evaluated as-is by the tests"
    for title, queries in SPEC_DASHBOARD_QUERIES.items():
        panel = by_title[title]
        exprs = [t["expr"] for t in panel["targets"]]
        for query in queries:
            assert query in exprs or f"Spec query: `{query}` -- changed" in panel["description"], (title, query)
    assert HISTOGRAM_P99 in dashboard_exprs()


@pytest.mark.parametrize(
    ("name", "kind", "endpoints"),
    [("podmonitor.yaml", "PodMonitor", "podMetricsEndpoints"), ("servicemonitor.yaml", "ServiceMonitor", "endpoints")],
)
def test_kubernetes_monitors(name: str, kind: str, endpoints: str) -> None:
    path = CONF / "kubernetes" / name
    document = load_yaml(path)
    assert (document["apiVersion"], document["kind"]) == ("monitoring.coreos.com/v1", kind)
    (endpoint,) = document["spec"][endpoints]
    assert (endpoint["path"], endpoint["interval"]) == ("/metrics", "15s")
    text = path.read_text(encoding="utf-8")
    assert "# authorization:" in text
    assert "# basicAuth:" in text


# --------------------------------------------------------------------------- prometheus_client parsers


def test_prometheus_client_parsers_accept_every_format(scrapes: Scrapes) -> None:
    """Each format /metrics serves parses with prometheus_client's matching parser, to the same numbers."""
    expected_types = {
        ACCEPT_DEFAULT: "text/plain; version=0.0.4",
        ACCEPT_OPENMETRICS: "application/openmetrics-text; version=1.0.0",
        ACCEPT_TEXT_1: "text/plain; version=1.0.0",
    }
    totals = {}
    for accept, (content_type, body) in scrapes.bodies.items():
        assert content_type.startswith(expected_types[accept]), content_type
        parser = parse_openmetrics if content_type.startswith("application/openmetrics-text") else parse_text
        families = list(parser(body))
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}
        assert len(families) >= 25
        totals[accept] = samples
        requests = sum(v for (name, _), v in samples.items() if name == "http_requests_total")
        assert requests == scrapes.requests
        kinds = {f.name: f.type for f in families}
        assert kinds["http_request_duration_seconds"] == "histogram"
        assert kinds["http_request_latency_p99_seconds"] == "gauge"
    for accept, samples in totals.items():
        # Uptime and the process's own runtime metrics (served from prometheus_client's
        # default registry beside ours) move between two scrapes.
        totals[accept] = {
            key: value for key, value in samples.items()
            if key[0] != "gatewayz_uptime_seconds" and not key[0].startswith(("python_", "process_"))
        }
    assert totals[ACCEPT_DEFAULT] == totals[ACCEPT_OPENMETRICS] == totals[ACCEPT_TEXT_1]


# --------------------------------------------------------------------------- a real Prometheus scraping gunicorn

INTEGRATION_BUDGET = 80.0  # seconds, the whole integration test
MODELS = {"gpt-4": "openai", "claude-3-haiku": "anthropic", "gemini-1.5-pro": "google"}
SLOW_CHATS = 4
SLOW_SECONDS = 1.1


@dataclass
class Deadline:
    at: float

    def left(self, cap: float) -> float:
        return max(0.0, min(cap, self.at - time.monotonic()))


def wait_for(
    what: str,
    probe: Callable[[], Any],
    deadline: Deadline,
    cap: float,
    done: Callable[[Any], bool] = bool,
    every: float = 0.25,
) -> Any:
    """Poll ``probe`` until ``done(result)``; bounded in time (``cap`` seconds and the test's deadline) and count."""
    end = time.monotonic() + deadline.left(cap)
    last: Any = None
    for _ in range(int(cap / every) + 2):
        last = probe()
        if done(last):
            return last
        if time.monotonic() >= end:
            break
        time.sleep(every)
    pytest.fail(f"timed out waiting for {what}; last: {last!r}")


@dataclass(frozen=True)
class Process:
    url: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path


@contextmanager
def launched(command: list[str], env: dict[str, str], log: Path, port: int) -> Iterator[Process]:
    """Run ``command`` (its own session, output to ``log``); always stopped on exit."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield Process(f"http://127.0.0.1:{port}", port, process, log)
    finally:
        stop(process)


def ready(process: Process, path: str, headers: dict[str, str] | None = None) -> Callable[[], bool]:
    def probe() -> bool:
        if process.process.poll() is not None:
            pytest.fail(f"{process.log.name}: exited with {process.process.returncode}:\n{process.log.read_text()}")
        try:
            return http("GET", process.url + path, timeout=2.0, headers=headers)[0] == 200
        except OSError:
            return False

    return probe


def gunicorn_command(port: int) -> list[str]:
    return [
        sys.executable, "-m", "gunicorn", "-c", "conf/gunicorn.conf.py",
        "--bind", f"127.0.0.1:{port}", "--workers", "4", "example_app.app:app",
    ]  # fmt: skip


def write_test_prometheus_config(directory: Path, target_port: int, token_file: Path) -> Path:
    """conf/prometheus.yml and its rule files, copied for the test.

    1 s scrape and evaluation intervals, every `for:` shortened to 1 s, our target, and
    the bearer-token scrape credentials (the README's `authorization` snippet).
    """
    config = load_yaml(PROMETHEUS_CONFIG)
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    (job,) = config["scrape_configs"]
    job.update(
        scrape_interval="1s",
        scrape_timeout="1s",
        static_configs=[{"targets": [f"127.0.0.1:{target_port}"]}],
        authorization={"type": "Bearer", "credentials_file": str(token_file)},
    )
    for name in config["rule_files"]:  # relative to the config file, so copied beside it
        document = load_yaml(CONF / name)
        for group in document["groups"]:
            group["interval"] = "1s"
            for rule in group["rules"]:
                if "for" in rule:
                    rule["for"] = "1s"
        (directory / name).write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


class PromAPI:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        status, body = http("GET", f"{self.url}/api/v1/{path}{query}")
        # A starting Prometheus answers 503 "Service Unavailable" in plain text: an
        # AssertionError (which the polling loops retry), not a JSONDecodeError.
        assert status == 200, (status, path, params, body[:200])
        document = json.loads(body)
        assert document["status"] == "success", (status, path, params, document)
        return document["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.get("query", query=expr)
        assert data["resultType"] == "vector", (expr, data["resultType"])
        return data["result"]  # type: ignore[no-any-return]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if len(result) == 1 else None


def traffic_plan() -> list[dict[str, Any]]:
    """Chats with known outcomes per provider, then catalogue and unmatched GETs.

    anthropic: half answer 500 (ProviderDown); google: 1 in 10 answers 500 (under the
    20 % provider threshold); openai: 1 in 10 answers 429 (not an error). Overall /api/chat
    fails ~20 % (HighErrorRate); the other endpoints never fail (no alert for them).
    """
    plan: list[dict[str, Any]] = []
    models = list(MODELS)
    for i in range(210):
        model = models[i % 3]
        n = i // 3
        status = {"anthropic": 500 if n % 2 else 200, "google": 500 if n % 10 == 0 else 200}.get(
            MODELS[model], 429 if n % 10 == 0 else 200
        )
        plan.append(
            {
                "method": "POST",
                "path": "/api/chat",
                "body": {"model": model, "message": f"m{i}", "simulate_status": status},
            }
        )
    plan += [{"method": "GET", "path": "/api/models"} for _ in range(40)]
    plan += [{"method": "GET", "path": "/api/models/gpt-4"} for _ in range(40)]
    plan += [{"method": "GET", "path": "/api/models/no-such-model"} for _ in range(20)]  # 404, not an error
    plan += [{"method": "GET", "path": "/does/not/exist"} for _ in range(10)]  # unmatched 404
    return plan


def send(url: str, plan: list[dict[str, Any]], senders: int, timeout: float) -> Counter[int]:
    requests = [(item["method"], item["path"], item.get("body")) for item in plan]
    return send_concurrently(url, requests, senders, timeout)


def alert_key(alert: dict[str, Any]) -> tuple[str, str]:
    labels = alert["labels"]
    detail = labels.get("endpoint") or labels.get("provider") or labels.get("reason") or labels.get("instance", "")
    return labels["alertname"], detail


@pytest.mark.slow
def test_real_prometheus_scrapes_gunicorn(tmp_path: Path, example_upstreams: dict[str, str]) -> None:
    """The example app under gunicorn (4 workers), scraped every second by a real Prometheus."""
    prometheus = require_binary("prometheus")
    require_binary("promtool")
    deadline = Deadline(time.monotonic() + INTEGRATION_BUDGET)
    app_port, prom_port = free_port(), free_port()
    metrics_dir = tmp_path / "metrics"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAYZ_METRICS_", "GATEWAY_"))}
    token_file = tmp_path / "scrape-token"
    token_file.write_text("s3cret-scrape-token\n", encoding="utf-8")
    token_file.chmod(0o600)
    bearer = {"Authorization": "Bearer s3cret-scrape-token"}
    env.update(
        GATEWAYZ_METRICS_DIR=str(metrics_dir),
        GATEWAYZ_METRICS_AUTH_TOKEN_FILE=str(token_file),
        GATEWAY_DB_PATH=str(tmp_path / "models.sqlite3"),
        **example_upstreams,
    )
    config = write_test_prometheus_config(tmp_path, app_port, token_file)
    prometheus_command = [
        prometheus,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{prom_port}",
    ]
    with (
        launched(gunicorn_command(app_port), env, tmp_path / "gunicorn.log", app_port) as app,
        launched(prometheus_command, dict(os.environ), tmp_path / "prometheus.log", prom_port) as prom,
    ):
        # Readiness through /metrics, which the extension does not record (unlike /healthz).
        wait_for("gunicorn", ready(app, "/metrics", bearer), deadline, 30)
        assert http("GET", app.url + "/metrics")[0] == 401  # the scrape credentials are required
        wait_for("prometheus", ready(prom, "/-/ready"), deadline, 30)
        api = PromAPI(prom.url)

        # The target is up.
        def target_up() -> dict[str, Any] | None:
            targets = api.get("targets", state="active")["activeTargets"]
            return targets[0] if len(targets) == 1 and targets[0]["health"] == "up" else None

        target = wait_for("target up", target_up, deadline, 15)
        assert target["labels"] == {"instance": f"127.0.0.1:{app_port}", "job": JOB}
        assert target["scrapeUrl"] == f"{app.url}/metrics"
        assert target["lastError"] == ""
        # Prometheus marks the target up before it commits that scrape's samples (``up``
        # among them): right after its first scrape, the query can still find no sample.
        up = f'up{{job="{JOB}"}}'
        assert wait_for("the up sample", lambda: api.value(up), deadline, 10, done=lambda v: v is not None) == 1.0

        # Traffic of a known shape. First one successful request per series, scraped before
        # anything else: a series is exported from its first use, and rate() cannot see
        # the increase that made a counter appear, only those it has scraped since.
        warm_up: list[dict[str, Any]] = [
            *({"method": "POST", "path": "/api/chat", "body": {"model": m, "message": "warm-up"}} for m in MODELS),
            # a streamed chat, for the per-model stream latency rules
            {"method": "POST", "path": "/api/chat", "body": {"model": "gpt-4", "message": "warm-up", "stream": True}},
            {"method": "GET", "path": "/api/models"},
            {"method": "GET", "path": "/api/models/gpt-4"},
            {"method": "GET", "path": "/does/not/exist"},
        ]
        assert send(app.url, warm_up, senders=1, timeout=deadline.left(10)) == Counter({200: 6, 404: 1})
        wait_for("the warm-up scraped", lambda: api.value("sum(http_requests_total)") == len(warm_up), deadline, 10)
        # Then a few slow chats (2 at a time, so 2 workers stay free for scrapes), the mix,
        # and a foreign file in the metrics directory.
        slow_body = {"model": "gpt-4", "message": "slow", "simulate_latency_seconds": SLOW_SECONDS}
        slow = [{"method": "POST", "path": "/api/chat", "body": slow_body} for _ in range(SLOW_CHATS)]
        plan = traffic_plan()
        assert send(app.url, slow, senders=2, timeout=deadline.left(20)) == Counter({200: SLOW_CHATS})
        statuses = send(app.url, plan, senders=4, timeout=deadline.left(30))
        chat_500 = sum(1 for p in plan if p.get("body", {}).get("simulate_status") == 500)
        assert statuses[500] == chat_500
        (metrics_dir / "worker-1-garbage.gwzm").write_bytes(b"NOT-GWZM" * 512)
        everything = [*warm_up, *slow, *plan]
        sent = len(everything)
        sent_by_endpoint = Counter(
            "/api/chat" if p["path"] == "/api/chat" else
            "/api/models" if p["path"] == "/api/models" else
            "/api/models/<model_id>" if p["path"].startswith("/api/models/") else "unmatched"
            for p in everything
        )  # fmt: skip

        # Prometheus' view: exactly the requests sent (its own scrapes, and the 401 above,
        # are not recorded: they went to the metrics routes).
        wait_for("all requests scraped", lambda: api.value("sum(http_requests_total)") == sent, deadline, 15)
        by_endpoint = {
            r["metric"]["endpoint"]: float(r["value"][1]) for r in api.query("sum by (endpoint) (http_requests_total)")
        }
        assert by_endpoint == {k: float(v) for k, v in sent_by_endpoint.items()}
        assert api.value("sum(http_request_errors_total)") == chat_500
        assert api.value('sum(http_response_status_total{status="500"})') == chat_500
        providers = {
            r["metric"]["provider"]: float(r["value"][1])
            for r in api.query("sum by (provider) (provider_requests_total)")
        }
        chats = Counter(MODELS[p["body"]["model"]] for p in everything if p["path"] == "/api/chat")
        assert providers == {k: float(v) for k, v in chats.items()}
        # The foreign file was quarantined and counted (by a scrape's compaction, at most every 10 s).
        quarantined = wait_for(
            "the foreign file to be counted",
            lambda: api.query("gatewayz_metrics_storage_errors_total > 0"),
            deadline,
            20,
        )
        assert [(r["metric"]["reason"], r["value"][1]) for r in quarantined] == [("foreign", "1")]
        # Every other reason is exported at 0 from the start, so increase() sees first errors.
        zeros = api.query("gatewayz_metrics_storage_errors_total == 0")
        assert len(zeros) == len(STORAGE_ERROR_REASONS) - 1
        # The spec's rate() queries answer, over every instance of the target.
        assert (api.value("sum(rate(http_requests_total[1m]))") or 0) > 0
        assert (api.value("sum(rate(provider_requests_total[5m]))") or 0) > 0

        # Every expression of the dashboard and of the recording rules returns data (rates
        # need two scrapes, recording rules an evaluation: polled, bounded).
        # The `_native` rules stay empty here: this Prometheus scrapes classic histograms
        # (no native-histograms feature); tests/test_fleet_native.py runs them on native data.
        classic = [r for r in recording_rules() if not r["record"].endswith("_native")]
        exprs = {*dashboard_exprs(), *(r["expr"] for r in classic), *(r["record"] for r in classic)}

        def empty_exprs() -> list[str]:
            return [expr for expr in sorted(exprs) if not api.query(expr)]

        wait_for("every dashboard/recording expression to return data", empty_exprs, deadline, 20, done=lambda e: not e)
        # Alert expressions: the whole expression is valid (the API answers success), and
        # its signal (the expression without its threshold) returns data; for dropped
        # inputs (exported at 0 for every reason) that data is all zeros: none happened.
        for rule in alert_rules():
            api.query(rule["expr"])
            signal_result = api.query(alert_signal(rule["expr"]))
            assert signal_result, rule["alert"]
            if rule["alert"] == "GatewayzMetricsDroppedInputs":
                assert {float(r["value"][1]) for r in signal_result} == {0.0}, signal_result

        # Rules loaded from both files, every one evaluated without error.
        expected_groups = {g["name"]: len(g["rules"]) for f in RULE_FILES for g in load_yaml(f)["groups"]}

        def rules_healthy() -> list[dict[str, Any]] | None:
            groups = api.get("rules")["groups"]
            loaded = [rule for g in groups for rule in g["rules"]]
            if {g["name"]: len(g["rules"]) for g in groups} != expected_groups:
                return None
            return loaded if all(r["health"] == "ok" and not r.get("lastError") for r in loaded) else None

        loaded = wait_for("rules healthy", rules_healthy, deadline, 10)
        assert {r["name"] for r in loaded} == {r.get("alert") or r["record"] for f in RULE_FILES for r in rules(f)}

        # Alerts: exactly the conditions driven fire; nothing else is pending or firing.
        expected_firing = {
            ("HighErrorRate", "/api/chat"),
            ("HighLatency", "/api/chat"),
            ("ProviderDown", "anthropic"),
            ("GatewayzMetricsStorageErrors", "foreign"),
            # the fleet variants: this one instance is the whole fleet
            ("FleetHighErrorRate", "/api/chat"),
            ("FleetHighLatency", "/api/chat"),
            ("FleetProviderDown", "anthropic"),
        }

        def active_alerts() -> dict[tuple[str, str], dict[str, Any]]:
            return {alert_key(a): a for a in api.get("alerts")["alerts"]}

        def as_expected(active: dict[tuple[str, str], dict[str, Any]]) -> bool:
            return {key: a["state"] for key, a in active.items()} == dict.fromkeys(expected_firing, "firing")

        by_key = wait_for("exactly the driven alerts to fire", active_alerts, deadline, 20, done=as_expected)
        assert by_key["HighErrorRate", "/api/chat"]["annotations"]["description"].startswith("/api/chat fails ")
        assert by_key["ProviderDown", "anthropic"]["labels"]["severity"] == "critical"
        assert float(by_key["HighLatency", "/api/chat"]["value"]) >= SLOW_SECONDS * 0.98
        firing_rules = {
            r["name"] for r in api.get("rules", type="alert")["groups"][0]["rules"] if r["state"] == "firing"
        }
        assert firing_rules == {"HighErrorRate", "HighLatency", "ProviderDown"}

        # Still exactly what was sent, after dozens of scrapes.
        assert api.value("sum(http_requests_total)") == sent
        assert api.value(f'up{{job="{JOB}"}}') == 1.0
