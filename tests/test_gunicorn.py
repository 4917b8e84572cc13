"""The example gateway under real gunicorn: several workers, recycled ones, and ``--preload``.

Every scrape may hit a different worker, and each must report the whole server's
totals exactly, including requests served by workers that ``--max-requests`` retired.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

REPO_ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 30.0
SEND_TIMEOUT = 40.0
SENDERS = 8
PROVIDER_OF = {"gpt-4": "openai", "claude-3-haiku": "anthropic", "gemini-1.5-pro": "google"}

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Server:
    url: str
    process: subprocess.Popen[bytes]
    metrics_dir: Path
    log: Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(method: str, url: str, body: dict[str, Any] | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if body is not None else {}
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


@pytest.fixture
def start_gunicorn(tmp_path: Path) -> Iterator[Any]:
    """Start gunicorn with extra options; always stop it (SIGTERM, then SIGKILL) afterwards."""
    started: list[Server] = []

    def start(*extra: str) -> Server:
        metrics_dir = tmp_path / f"metrics-{len(started)}"
        log = tmp_path / f"gunicorn-{len(started)}.log"
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAYZ_METRICS_", "GATEWAY_"))}
        env.update(
            GATEWAYZ_METRICS_DIR=str(metrics_dir),
            GATEWAY_SIMULATED_LATENCY_SCALE="0.02",
            GATEWAY_UPSTREAM_ERROR_RATE="0",
            GATEWAY_BILLING_ERROR_RATE="0",
            GATEWAY_DB_PATH=str(tmp_path / f"models-{len(started)}.sqlite3"),
        )
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            "conf/gunicorn.conf.py",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "4",
            *extra,
            "example_app.app:app",
        ]
        with log.open("wb") as out:
            process = subprocess.Popen(
                command, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        server = Server(f"http://127.0.0.1:{port}", process, metrics_dir, log)
        started.append(server)
        wait_ready(server)
        return server

    yield start
    for server in started:
        stop(server.process)


def wait_ready(server: Server) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"gunicorn exited with {server.process.returncode}:\n{server.log.read_text()}")
        try:
            if http("GET", server.url + "/healthz", timeout=2.0)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    pytest.fail(f"gunicorn not ready after {READY_TIMEOUT}s:\n{server.log.read_text()}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the master's group: itself and its workers
            process.wait(timeout=10)


def traffic_plan(total: int) -> list[dict[str, Any]]:
    """Chat bodies with known outcomes: 75% succeed, 15% simulate a 500, 10% a 429."""
    models = list(PROVIDER_OF)
    plan = []
    for i in range(total):
        status = 500 if i % 20 < 3 else 429 if i % 20 < 5 else 200
        plan.append({"model": models[i % len(models)], "message": f"request {i}", "simulate_status": status})
    return plan


def send_all(url: str, plan: list[dict[str, Any]]) -> Counter[int]:
    """Send every body from ``SENDERS`` threads; return the statuses received."""
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    lock = threading.Lock()
    pending = iter(plan)
    deadline = time.monotonic() + SEND_TIMEOUT

    def sender() -> None:
        while time.monotonic() < deadline:
            with lock:
                body = next(pending, None)
            if body is None:
                return
            try:
                status, _ = http("POST", url + "/api/chat", body)
            except OSError as exc:
                with lock:
                    failures.append(repr(exc))
                continue
            with lock:
                statuses[status] += 1

    threads = [threading.Thread(target=sender) for _ in range(SENDERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=SEND_TIMEOUT + 15)
    assert not failures, failures[:5]
    return statuses


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """One /metrics scrape as {(sample name, sorted labels): value}."""
    status, body = http("GET", url + "/metrics")
    assert status == 200
    samples = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def expected_totals(plan: list[dict[str, Any]]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    statuses = Counter(str(body["simulate_status"]) for body in plan)
    providers = Counter(PROVIDER_OF[body["model"]] for body in plan)
    provider_errors = Counter(PROVIDER_OF[body["model"]] for body in plan if body["simulate_status"] >= 500)
    chat = (("endpoint", "/api/chat"),)
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {
        ("http_requests_total", (*chat, ("method", "POST"))): float(len(plan)),
        ("http_request_errors_total", (*chat, ("method", "POST"))): float(statuses["500"]),
        ("external_api_calls_total", (("service", "stripe"),)): float(statuses["200"]),
    }
    for code, count in statuses.items():
        out["http_response_status_total", (*chat, ("status", code))] = float(count)
    for provider, count in providers.items():
        out["provider_requests_total", (("provider", provider),)] = float(count)
        out["provider_errors_total", (("provider", provider),)] = float(provider_errors[provider])
    return out


def assert_exact_on_every_worker(url: str, plan: list[dict[str, Any]], scrapes: int = 8) -> None:
    """Several scrapes (likely served by different workers) all report exactly what was sent."""
    expected = expected_totals(plan)
    for _ in range(scrapes):
        samples = scrape(url)
        assert {key: samples.get(key) for key in expected} == expected
        chat_statuses = {
            dict(labels)["status"]: value
            for (name, labels), value in samples.items()
            if name == "http_response_status_total" and dict(labels)["endpoint"] == "/api/chat"
        }
        assert sum(chat_statuses.values()) == len(plan)


def worker_files(metrics_dir: Path) -> list[Path]:
    return sorted(metrics_dir.glob("*.gwzm"))


def test_counts_exact_across_recycled_workers(start_gunicorn: Any) -> None:
    """400 chats over 4 workers recycled every ~40 requests are counted exactly by every scrape."""
    server = start_gunicorn("--max-requests", "40", "--max-requests-jitter", "5")
    plan = traffic_plan(400)
    statuses = send_all(server.url, plan)
    assert statuses == Counter({200: 300, 500: 60, 429: 40})
    assert_exact_on_every_worker(server.url, plan)

    status, body = http("GET", server.url + "/metrics/health")
    health = json.loads(body)
    assert status == 200
    files = health["worker_files"]
    # No worker serves more than 45 requests, so at least 400 / 45 workers wrote a file;
    # the exited ones were folded into the archive (child_exit / scrape compaction), so
    # the directory holds the live workers' files and at most a couple not yet folded.
    assert (server.metrics_dir / "archive.gwza").exists()
    assert 1 <= files["live"] <= 4
    assert files["total"] <= files["live"] + 2
    assert health["storage_problems"] == []
    assert health["total_errors"] == 60
    assert len(worker_files(server.metrics_dir)) <= 4 + 2


def test_preload_gives_each_worker_its_own_file(start_gunicorn: Any) -> None:
    """With --preload, forked workers each write their own file and totals stay exact."""
    server = start_gunicorn("--preload")
    plan = traffic_plan(200)
    statuses = send_all(server.url, plan)
    assert statuses == Counter({200: 150, 500: 30, 429: 20})
    assert_exact_on_every_worker(server.url, plan)

    files = worker_files(server.metrics_dir)
    writer_pids = [int(path.name.split("-")[1]) for path in files]
    assert len(files) >= 2
    assert len(set(writer_pids)) == len(writer_pids), "two files written by one process"
    assert server.process.pid not in writer_pids, "the preloading master wrote a file"
    status, body = http("GET", server.url + "/metrics/json")
    storage = json.loads(body)["storage"]
    assert status == 200
    assert storage["worker_files"] == len(files)
    assert storage["problems"] == []


def test_hundred_generations_cost_nothing(start_gunicorn: Any) -> None:
    """With --max-requests 4, >= 100 workers live and die: totals exact, directory bounded by live workers."""
    server = start_gunicorn("--max-requests", "4")
    plan = traffic_plan(480)
    statuses = send_all(server.url, plan)
    assert statuses == Counter({200: 360, 500: 72, 429: 48})
    booted = server.log.read_text().count("Booting worker")
    assert booted >= 100, f"only {booted} workers booted"
    assert_exact_on_every_worker(server.url, plan, scrapes=4)
    files = worker_files(server.metrics_dir)
    assert len(files) <= 4 + 2, [f.name for f in files]
    others = {p.name for p in server.metrics_dir.iterdir()} - {f.name for f in files}
    assert others <= {"control.gwzc", "archive.gwza", "compaction.lock"}
