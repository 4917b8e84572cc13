"""Real servers for the tests: the example gateway under gunicorn, and loopback HTTP.

Shared by the gunicorn, soak, traffic, streaming and Prometheus tests so that each
starts, probes and stops processes the same way: loopback only, bounded waits, always
stopped (SIGTERM, then SIGKILL to the whole process group).
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

REPO_ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 30.0


@dataclass(frozen=True)
class Server:
    url: str
    port: int
    process: subprocess.Popen[bytes]
    metrics_dir: Path
    log: Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(
    method: str, url: str, body: Any = None, timeout: float = 10.0, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """One request (JSON body if given); the status and body, also for HTTP errors."""
    data = json.dumps(body).encode() if body is not None else None
    all_headers = {"Content-Type": "application/json"} if body is not None else {}
    all_headers.update(headers or {})
    request = urllib.request.Request(url, data=data, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL (to the whole process group) if it does not exit in time."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def gateway_env(tmp_path: Path, metrics_dir: Path, **overrides: str) -> dict[str, str]:
    """The environment of a test gateway: fast simulated upstreams, no random failures."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAYZ_METRICS_", "GATEWAY_"))}
    env.update(
        GATEWAYZ_METRICS_DIR=str(metrics_dir),
        GATEWAY_SIMULATED_LATENCY_SCALE="0.02",
        GATEWAY_UPSTREAM_ERROR_RATE="0",
        GATEWAY_BILLING_ERROR_RATE="0",
        GATEWAY_DB_PATH=str(tmp_path / f"models-{metrics_dir.name}.sqlite3"),
    )
    env.update(overrides)
    return env


def start_gateway(tmp_path: Path, name: str, *extra: str, workers: int = 4, **env: str) -> Server:
    """The example gateway under gunicorn (``conf/gunicorn.conf.py``), ready to serve."""
    metrics_dir = tmp_path / f"metrics-{name}"
    log = tmp_path / f"gunicorn-{name}.log"
    port = free_port()
    command = [
        sys.executable, "-m", "gunicorn", "-c", "conf/gunicorn.conf.py",
        "--bind", f"127.0.0.1:{port}", "--workers", str(workers), *extra, "example_app.app:app",
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=gateway_env(tmp_path, metrics_dir, **env),
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    server = Server(f"http://127.0.0.1:{port}", port, process, metrics_dir, log)
    try:
        wait_ready(server)
    except BaseException:
        stop(process)
        raise
    return server


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


def send_concurrently(
    url: str, requests: list[tuple[str, str, Any]], senders: int, timeout: float
) -> Counter[int]:
    """Send every (method, path, JSON body or None) from ``senders`` threads; the statuses."""
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    lock = threading.Lock()
    pending = iter(requests)
    deadline = time.monotonic() + timeout

    def sender() -> None:
        while time.monotonic() < deadline:
            with lock:
                item = next(pending, None)
            if item is None:
                return
            method, path, body = item
            try:
                status, _ = http(method, url + path, body, timeout=15.0)
            except OSError as exc:
                with lock:
                    failures.append(repr(exc))
                continue
            with lock:
                statuses[status] += 1

    threads = [threading.Thread(target=sender) for _ in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout + 15)
    assert not failures, failures[:5]
    assert sum(statuses.values()) == len(requests), "not every request was sent in time"
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
