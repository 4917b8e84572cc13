"""A fleet of gateways behind one real Prometheus: exact fleet totals, every instance its own target.

Three instances of the example gateway (gunicorn, 2 workers each, own metrics directory,
own port, own provider simulator) and one Prometheus 2.42 (`--enable-feature=native-histograms`,
so it negotiates our protobuf format) scraping all three every second with conf/'s rule
files (evaluated every second). Each instance gets a different, known amount of traffic:
seed-API and OpenAI-API chats over three providers (some answered 500 on request),
streamed chats, catalogue reads and unmatched paths. Prometheus's fleet sums must equal
what was sent, exactly, overall, per instance, endpoint, provider and model, and for
tokens; the fleet latency recording rules must answer.

Latency: the /api/chat requests ask the simulated provider for a latency drawn from a
fixed list (90 % fast, 10 % in 0.26 .. 0.29 s), so the test knows a lower bound of every
latency the instances served (the injected one; the gateway's own time comes on top, and
is measured: fleet histogram sum minus injected sum). The fleet p95 from the classic
buckets is reported beside the exact p95 of the served latencies (gunicorn's access
logs) and must lie between the exact p92 and p98 widened to their classic buckets; the
native rule must stay empty while the histograms carry no native buckets, and once they
do it must lie between the exact p92 and p98 widened by the native bucket width.
Figures are printed (`pytest -s`) and written to ``fleet-figures.json`` in the test's
temporary directory.
"""

from __future__ import annotations

import json
import math
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from servers import Server, free_port, http, start_gateway, stop
from test_prometheus import CONF, JOB, Deadline, PromAPI, load_yaml, require_binary, wait_for

from flask_gatewayz_metrics.storage.kinds import HISTOGRAM_BOUNDS

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

BUDGET = 90.0  # seconds for the whole test; it takes ~30 s on an idle 2-core machine
INSTANCES = 3
CHAT_MODELS = {"gpt-4": "openai", "claude-3-haiku": "anthropic", "gemini-1.5-pro": "google"}
OPENAI_MODELS = {"gpt-4o": "openai", "claude-3-opus": "anthropic"}
STREAM_MODEL = ("gemini-1.5-flash", "google")  # streamed only, so token checks leave it out
REQUESTS = 'http_requests_total{endpoint!="/healthz"}'
"""The test's requests: start_gateway's readiness probe (GET /healthz until a 200) is recorded too."""


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    endpoint: str
    body: dict[str, Any] | None = None
    model: str | None = None
    injected: float | None = None  # the latency asked of the simulated provider
    status: int = 200


@dataclass
class Sent:
    request: Request
    status: int
    body: bytes


def injected_latency(i: int) -> float:
    """A fixed spread: 9 in 10 fast (10 .. 42 ms), 1 in 10 slow (0.26 .. 0.29 s).

    Both groups sit well inside a classic bucket ([0, 0.25] and (0.25, 0.5]) with room for
    the gateway's own time on a loaded machine (up to ~0.2 s), so the p95 is in (0.25, 0.5]
    however noisy the run: 90 % below, 100 % above the rank.
    """
    if i % 10 == 9:
        return 0.26 + 0.01 * ((i // 10) % 4)
    return 0.010 + 0.004 * (i % 9)


def chat(model: str, latency: float, n: int, status: int = 200) -> Request:
    body: dict[str, Any] = {"model": model, "message": f"fleet {n}", "simulate_latency_seconds": latency}
    if status != 200:
        body["simulate_status"] = status
    return Request("POST", "/api/chat", "/api/chat", body, model, latency, status)


def warm_up() -> list[Request]:
    """One request per series the main traffic uses, so that rate() sees all of the main traffic."""
    fast = 0.01
    return [
        *(chat(model, fast, 0) for model in CHAT_MODELS),
        *(openai_chat(model) for model in OPENAI_MODELS),
        stream(),
        Request("GET", "/api/models", "/api/models"),
        Request("GET", "/no/such/path", "unmatched", status=404),
    ]


def openai_chat(model: str) -> Request:
    body = {"model": model, "messages": [{"role": "user", "content": "hello fleet"}]}
    return Request("POST", "/v1/chat/completions", "/v1/chat/completions", body, model)


def stream() -> Request:
    body = {"model": STREAM_MODEL[0], "message": "stream", "stream": True, "simulate_latency_seconds": 0.02}
    return Request("POST", "/api/chat", "/api/chat", body, STREAM_MODEL[0], injected=0.02)


def main_traffic(k: int) -> list[Request]:
    """Instance k (1, 2, 3) gets k times the base amount, and k - 1 chats answered 500."""
    plan: list[Request] = []
    models = list(CHAT_MODELS)
    for i in range(20 * k):
        plan.append(chat(models[i % 3], injected_latency(i), i))
    plan += [chat("gpt-4", 0.01, -n, status=500) for n in range(1, k)]
    plan += [openai_chat(list(OPENAI_MODELS)[i % 2]) for i in range(4 * k)]
    plan += [stream() for _ in range(2 * k)]
    plan += [Request("GET", "/api/models", "/api/models") for _ in range(8 * k)]
    plan += [Request("GET", "/no/such/path", "unmatched", status=404) for _ in range(k)]
    return plan


def send_all(url: str, plan: list[Request], senders: int, deadline: Deadline) -> list[Sent]:
    """Every request of ``plan`` from ``senders`` threads, bounded by the deadline; the answers."""
    out: list[Sent] = []
    failures: list[str] = []
    lock = threading.Lock()
    pending = iter(plan)
    end = time.monotonic() + deadline.left(60)

    def sender() -> None:
        while time.monotonic() < end:
            with lock:
                item = next(pending, None)
            if item is None:
                return
            try:
                status, body = http(item.method, url + item.path, item.body, timeout=15.0)
            except OSError as exc:
                with lock:
                    failures.append(f"{item.path}: {exc!r}")
                continue
            with lock:
                out.append(Sent(item, status, body))

    threads = [threading.Thread(target=sender) for _ in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=deadline.left(75))
    assert not failures, failures[:5]
    assert len(out) == len(plan), "not every request was sent in time"
    wrong = [(s.request.path, s.request.status, s.status, s.body[:200]) for s in out if s.status != s.request.status]
    assert not wrong, wrong[:5]
    return out


def write_config(directory: Path, targets: list[str]) -> Path:
    """One job scraping every instance every second, and conf/'s rule files evaluated every second."""
    rule_files = ["prometheus-alerts.yml", "prometheus-recording.yml"]
    for name in rule_files:
        document = load_yaml(CONF / name)
        for group in document["groups"]:
            group["interval"] = "1s"
            for rule in group["rules"]:
                if "for" in rule:
                    rule["for"] = "1s"
        (directory / name).write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": rule_files,
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": targets}]}],
    }
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


@contextmanager
def prometheus(tmp_path: Path, targets: list[str]) -> Iterator[PromAPI]:
    """A real Prometheus with native histograms on, scraping ``targets``; stopped on exit."""
    binary = require_binary("prometheus")
    port = free_port()
    config = write_config(tmp_path, targets)
    log = tmp_path / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--enable-feature=native-histograms"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path,
        )  # fmt: skip
    try:
        yield PromAPI(f"http://127.0.0.1:{port}")
    finally:
        stop(process)


def by(api: PromAPI, expr: str, label: str) -> dict[str, float]:
    return {r["metric"].get(label, ""): float(r["value"][1]) for r in api.query(expr)}


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def access_log(tmp_path: Path, k: int) -> list[str]:
    """gunicorn's access log of instance k: path, method and the request's time in microseconds."""
    return ["--access-logfile", str(tmp_path / f"access-{k}.log"), "--access-logformat", "%(U)s %(m)s %(D)s"]


def served_latencies(tmp_path: Path, k: int, path: str, skip: int) -> list[float]:
    """The seconds gunicorn measured for each request to ``path`` on instance k, the first ``skip`` left out.

    gunicorn times the whole WSGI call around the extension's own measurement (which is
    what the histograms hold): the same requests, within well under a millisecond.
    """
    lines = (tmp_path / f"access-{k}.log").read_text(encoding="utf-8").splitlines()
    times = [int(line.split()[2]) / 1e6 for line in lines if line.split()[:2] == [path, "POST"]]
    return times[skip:]


def has_native_buckets(api: PromAPI) -> bool:
    """Whether Prometheus stored the HTTP latency histogram as a native histogram."""
    return any("histogram" in r for r in api.query("http_request_duration_seconds"))


def test_fleet_of_three_gateways_behind_one_prometheus(tmp_path: Path) -> None:
    """Three gunicorn gateways, one Prometheus: fleet totals exact, instances apart, fleet p95 from the rules."""
    require_binary("prometheus")
    deadline = Deadline(time.monotonic() + BUDGET)
    with ExitStack() as stack:
        servers: list[Server] = []
        for k in range(1, INSTANCES + 1):
            server = start_gateway(tmp_path, f"gw{k}", *access_log(tmp_path, k), workers=2)
            stack.callback(stop, server.process)
            servers.append(server)
        instances = [f"127.0.0.1:{s.port}" for s in servers]
        api = stack.enter_context(prometheus(tmp_path, instances))

        def ready() -> bool:
            try:
                return http("GET", api.url + "/-/ready", timeout=2.0)[0] == 200
            except OSError:
                return False

        wait_for("prometheus ready", ready, deadline, 30)

        def all_up() -> list[dict[str, Any]] | None:
            targets = api.get("targets", state="active")["activeTargets"]
            up = [t for t in targets if t["health"] == "up"]
            return targets if len(up) == INSTANCES else None

        targets = wait_for("every instance up", all_up, deadline, 20)
        assert sorted(t["labels"]["instance"] for t in targets) == sorted(instances)
        assert {t["labels"]["job"] for t in targets} == {JOB}

        # Warm-up, scraped before the main traffic (rate() cannot see what made a series appear).
        sent: dict[str, list[Sent]] = {}
        for instance, server in zip(instances, servers, strict=True):
            sent[instance] = send_all(server.url, warm_up(), 2, deadline)
        warm = len(warm_up()) * INSTANCES
        wait_for("the warm-up scraped", lambda: api.value(f"sum({REQUESTS})"), deadline, 15, done=lambda v: v == warm)

        # The main traffic, every instance at once.
        plans = {instance: main_traffic(k) for k, instance in enumerate(instances, 1)}
        results: dict[str, list[Sent]] = {}

        def drive(instance: str, server: Server) -> None:
            results[instance] = send_all(server.url, plans[instance], 2, deadline)

        drivers = [threading.Thread(target=drive, args=(i, s)) for i, s in zip(instances, servers, strict=True)]
        for t in drivers:
            t.start()
        for t in drivers:
            t.join(timeout=deadline.left(80))
        assert results.keys() == set(instances), "a driver did not finish"
        for instance in instances:
            sent[instance] += results[instance]
        everything = [s for answers in sent.values() for s in answers]
        total = len(everything)

        # Fleet totals: exactly what was sent.
        counted = wait_for("every request scraped", lambda: api.query(f"sum({REQUESTS})"), deadline, 20,
                           done=lambda r: len(r) == 1 and float(r[0]["value"][1]) == total)  # fmt: skip
        all_scraped_at = float(counted[0]["value"][0])  # Prometheus's time of that answer
        assert by(api, f"sum by (instance) ({REQUESTS})", "instance") == {
            instance: float(len(answers)) for instance, answers in sent.items()
        }
        expected_endpoints = Counter(s.request.endpoint for s in everything)
        assert by(api, f"sum by (endpoint) ({REQUESTS})", "endpoint") == {
            k: float(v) for k, v in expected_endpoints.items()
        }
        per_instance_endpoint = {
            (r["metric"]["instance"], r["metric"]["endpoint"]): float(r["value"][1])
            for r in api.query(f"sum by (instance, endpoint) ({REQUESTS})")
        }
        assert per_instance_endpoint == {
            (instance, endpoint): float(n)
            for instance, answers in sent.items()
            for endpoint, n in Counter(s.request.endpoint for s in answers).items()
        }
        probes = by(api, 'sum by (instance) (http_requests_total{endpoint="/healthz"})', "instance")
        assert probes.keys() == set(instances) and min(probes.values()) >= 1
        errors = sum(1 for s in everything if s.status >= 500)
        assert errors == INSTANCES * (INSTANCES - 1) // 2
        assert api.value("sum(http_request_errors_total)") == errors
        providers = {**CHAT_MODELS, **OPENAI_MODELS, STREAM_MODEL[0]: STREAM_MODEL[1]}
        upstream_calls = [s for s in everything if s.request.model is not None]
        assert by(api, "sum by (provider) (provider_requests_total)", "provider") == {
            k: float(v) for k, v in Counter(providers[s.request.model or ""] for s in upstream_calls).items()
        }
        assert by(api, "sum by (model) (model_requests_total)", "model") == {
            k: float(v) for k, v in Counter(s.request.model for s in upstream_calls).items()
        }
        # Tokens: the usage each non-streamed answer reported, summed over the fleet.
        usage: Counter[tuple[str, str]] = Counter()
        for s in upstream_calls:
            if s.request.model != STREAM_MODEL[0] and s.status == 200:
                reported = json.loads(s.body)["usage"]
                usage[(s.request.model or "", "input")] += reported["prompt_tokens"]
                usage[(s.request.model or "", "output")] += reported["completion_tokens"]
        tokens = {
            (r["metric"]["model"], r["metric"]["direction"]): float(r["value"][1])
            for r in api.query(f'sum by (model, direction) (llm_tokens_total{{model!="{STREAM_MODEL[0]}"}})')
        }
        assert tokens == {k: float(v) for k, v in usage.items() if v}
        assert sum(usage.values()) > 0

        # Fleet latency from the recording rules (evaluated every second; polled, bounded).
        # Every /api/chat request (answered 200 or 500, streamed or not) carries an injected latency.
        injected = [s.request.injected or 0.0 for s in everything if s.request.endpoint == "/api/chat"]
        assert all(s.request.injected is not None for s in everything if s.request.endpoint == "/api/chat")
        main_chats = [r.injected or 0.0 for plan in plans.values() for r in plan if r.endpoint == "/api/chat"]
        injected_p95 = nearest_rank(main_chats, 0.95)
        # What rate() sees is the main traffic (the warm-up made the series appear): its
        # served latencies, exactly, from gunicorn's access logs (warm-up lines come first).
        warm_chats = sum(1 for r in warm_up() if r.endpoint == "/api/chat")
        served = [t for k in range(1, INSTANCES + 1) for t in served_latencies(tmp_path, k, "/api/chat", warm_chats)]
        assert len(served) == len(main_chats)
        exact_p95 = nearest_rank(served, 0.95)
        classic_rule = 'endpoint:http_request_duration_seconds:p95_5m{endpoint="/api/chat"}'
        native_rule = 'endpoint:http_request_duration_seconds:p95_5m_native{endpoint="/api/chat"}'
        native = has_native_buckets(api)
        rule = native_rule if native else classic_rule
        # A rule evaluation after every request was scraped (rule samples carry their evaluation time).
        after_all = f"{rule} and timestamp({rule}) > {all_scraped_at}"
        evaluated = wait_for(f"{rule} evaluated over all the traffic", lambda: api.query(after_all), deadline, 15)
        fleet_p95 = float(evaluated[0]["value"][1])
        served_sum = api.value('sum(http_request_duration_seconds_sum{endpoint="/api/chat"})') if not native else None
        overhead = (served_sum - sum(injected)) / len(injected) if served_sum else None
        per_instance_p95 = by(api, 'http_request_latency_p95_seconds{endpoint="/api/chat"}', "instance")
        figures = {
            "representation": "native" if native else "classic",
            "fleet_p95_from_rule_seconds": fleet_p95,
            "exact_p95_seconds": exact_p95,
            "relative_error": fleet_p95 / exact_p95 - 1,
            "injected_p95_seconds": injected_p95,
            "mean_gateway_overhead_seconds": overhead,
            "histogram_sum_seconds": served_sum,
            "access_log_sum_seconds": sum(
                sum(served_latencies(tmp_path, k, "/api/chat", 0)) for k in range(1, INSTANCES + 1)
            ),
            "per_instance_p95_gauges_seconds": per_instance_p95,
            "requests": total,
            "series_per_instance": {
                k: v for k, v in by(api, f'count by (instance) ({{job="{JOB}"}})', "instance").items() if k
            },
        }
        # The access logs are a faithful exact source: gunicorn's timer wraps the extension's.
        if served_sum is not None:
            logged = figures["access_log_sum_seconds"]
            assert served_sum * 0.999 <= logged <= served_sum + 0.005 * len(injected), figures
        (tmp_path / "fleet-figures.json").write_text(json.dumps(figures, indent=2), encoding="utf-8")
        print("fleet figures:", json.dumps(figures))
        # rate() extrapolates each instance's series by its own factor, which shifts the
        # fleet's rank a little (well under 3 points): the rule's p95 lies between the exact
        # p92 and p98, widened to the bucket they fall in (2.2 % native, a bound classic).
        low, high = nearest_rank(served, 0.92), nearest_rank(served, 0.98)
        if native:
            assert low / 1.022 <= fleet_p95 <= high * 1.022, figures
        else:
            assert api.query(native_rule) == []  # the native rule records nothing from classic buckets
            below = max((b for b in HISTOGRAM_BOUNDS if b < low), default=0.0)
            above = min((b for b in HISTOGRAM_BOUNDS if b >= high), default=math.inf)
            assert below <= fleet_p95 <= above, figures
            assert overhead is not None and overhead >= 0, figures

        # Every instance is its own series: the per-instance recording rule has one per instance.
        per_instance_rate = wait_for(
            "instance:http_requests:rate5m for every instance",
            lambda: by(api, "instance:http_requests:rate5m", "instance"),
            deadline,
            10,
            done=lambda rates: set(rates) == set(instances),
        )
        assert all(rate > 0 for rate in per_instance_rate.values())
        # Fleet alerts are loaded and evaluate without error; every instance is up, so
        # FleetInstancesDown is quiet (latency may run high on a loaded machine: not checked).
        fleet_group = [g for g in api.get("rules")["groups"] if g["name"] == "gatewayz_fleet_alerts"]
        assert fleet_group and all(r["health"] == "ok" for r in fleet_group[0]["rules"])
        assert {r["name"]: r["state"] for r in fleet_group[0]["rules"]}["FleetInstancesDown"] == "inactive"

        # One instance of three goes away: a third of the fleet unscraped fires FleetInstancesDown
        # (once, for the job), beside the per-instance GatewayzMetricsDown for that instance.
        stop(servers[0].process)

        def down_alerts() -> dict[str, dict[str, Any]]:
            alerts = api.get("alerts")["alerts"]
            return {a["labels"]["alertname"]: a for a in alerts if a["state"] == "firing"}

        firing = wait_for("FleetInstancesDown to fire", down_alerts, deadline, 20,
                          done=lambda a: {"FleetInstancesDown", "GatewayzMetricsDown"} <= a.keys())  # fmt: skip
        assert firing["GatewayzMetricsDown"]["labels"]["instance"] == instances[0]
        assert "instance" not in firing["FleetInstancesDown"]["labels"]
        assert abs(float(firing["FleetInstancesDown"]["value"]) - 1 / 3) < 1e-9

