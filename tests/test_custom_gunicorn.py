"""Real gunicorn workers: no served counter ever goes down, custom totals are exact, and the
default registry's per-process numbers are never served from a random worker."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from servers import REPO_ROOT, Server, free_port, gateway_env, http, stop, wait_ready

pytestmark = pytest.mark.slow

SCRAPES = 25
TRAFFIC_SECONDS = 60.0
MAX_REQUESTS = 3000
SENDERS = 6
TEAMS = ("search", "support", "billing")
MONOTONIC_SUFFIXES = ("_total", "_count", "_bucket", "_sum")
"""Sample names of counter and histogram families that may only go up."""

SampleKey = tuple[str, tuple[tuple[str, str], ...]]


def monotonic_samples(body: str) -> tuple[dict[SampleKey, float], set[str]]:
    """Every counter / histogram sample of one scrape, and the names of all families served."""
    out: dict[SampleKey, float] = {}
    names = set()
    for family in text_string_to_metric_families(body):
        names.add(family.name)
        if family.type not in ("counter", "histogram"):
            continue
        for sample in family.samples:
            if sample.name.endswith(MONOTONIC_SUFFIXES):
                out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return out, names


class Traffic:
    """Chat requests with an X-Team header from several threads, until stopped (bounded)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sent: Counter[str] = Counter()
        self.failures: list[str] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._deadline = time.monotonic() + TRAFFIC_SECONDS
        self._threads = [threading.Thread(target=self._send, args=(i,)) for i in range(SENDERS)]

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(timeout=TRAFFIC_SECONDS + 20)

    def _send(self, index: int) -> None:
        i = 0
        while not self.stop.is_set() and time.monotonic() < self._deadline:
            with self._lock:
                if sum(self.sent.values()) >= MAX_REQUESTS:
                    return
            team = TEAMS[(index + i) % len(TEAMS)]
            i += 1
            body = {"model": "gpt-4", "message": f"hi {i}", "simulate_status": 500 if i % 7 == 0 else 200}
            try:
                status, _ = http("POST", self.url + "/api/chat", body, headers={"X-Team": team})
            except OSError as exc:
                with self._lock:
                    self.failures.append(repr(exc))
                continue
            with self._lock:
                self.sent[team] += 1
                if status not in (200, 500):
                    self.failures.append(f"status {status}")


def scrape_until_done(server: Server, traffic: Traffic) -> list[tuple[dict[SampleKey, float], set[str]]]:
    """At least ``SCRAPES`` scrapes while the traffic flows."""
    scrapes = []
    deadline = time.monotonic() + TRAFFIC_SECONDS
    while len(scrapes) < SCRAPES and time.monotonic() < deadline:
        status, body = http("GET", server.url + "/metrics")
        assert status == 200
        scrapes.append(monotonic_samples(body.decode()))
        time.sleep(0.05)
        if traffic.stop.is_set():
            break
    return scrapes


def assert_never_down(scrapes: list[tuple[dict[SampleKey, float], set[str]]]) -> None:
    """No counter or histogram sample ever goes down or disappears between two scrapes."""
    previous: dict[SampleKey, float] = {}
    for number, (samples, _) in enumerate(scrapes):
        for key, before in previous.items():
            assert key in samples, f"scrape {number}: {key} disappeared"
            assert samples[key] >= before, f"scrape {number}: {key} went down from {before} to {samples[key]}"
        previous = samples


def test_every_counter_monotonic_and_custom_totals_exact(start_gunicorn: Any) -> None:
    """4 recycled workers: 25+ scrapes during traffic never see a counter go down; team counts equal what was sent."""
    server = start_gunicorn("--max-requests", "60", "--max-requests-jitter", "10")
    with Traffic(server.url) as traffic:
        scrapes = scrape_until_done(server, traffic)
    assert not traffic.failures, traffic.failures[:5]
    assert len(scrapes) >= SCRAPES
    assert_never_down(scrapes)
    served = set().union(*(names for _, names in scrapes))
    assert "gateway_team_chats" in served
    assert not [n for n in served if n.startswith(("process_", "python_gc_"))], served
    # Once the traffic has stopped, every worker reports exactly what the clients sent.
    expected = {team: float(count) for team, count in traffic.sent.items()}
    assert sum(expected.values()) > 0
    for _ in range(6):
        samples, _ = monotonic_samples(http("GET", server.url + "/metrics")[1].decode())
        teams = {dict(labels)["team"]: v for (name, labels), v in samples.items() if name == "gateway_team_chats_total"}
        assert teams == expected
        requests = samples[("http_requests_total", (("endpoint", "/api/chat"), ("method", "POST")))]
        assert requests == sum(expected.values())


APP_SOURCE = '''
from flask import Flask
from prometheus_client import Counter

from flask_gatewayz_metrics import GatewayzMetrics

app = Flask(__name__)
metrics = GatewayzMetrics(app)
widgets = Counter("app_widgets", "Widgets, in the default registry.")
made = metrics.of(app).collector.counter("app_made", "Widgets, as a custom counter.")


@app.get("/healthz")
def healthz():
    return "ok"


@app.post("/make")
def make():
    widgets.inc()
    made.inc()
    return "made"
'''


@pytest.mark.parametrize("preload", [False, True], ids=["fork-then-import", "preload"])
def test_default_registry_counter_not_served_under_gunicorn(tmp_path: Path, preload: bool) -> None:
    """A default-registry app counter under 3 gunicorn workers: withheld, health degraded, a log says how to fix."""
    (tmp_path / "registry_app.py").write_text(APP_SOURCE)
    metrics_dir = tmp_path / "metrics"
    log = tmp_path / "gunicorn.log"
    port = free_port()
    command = [
        sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "3",
        "--pythonpath", str(tmp_path), "--log-level", "warning", *(["--preload"] if preload else []),
        "registry_app:app",
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=gateway_env(tmp_path, metrics_dir),
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    server = Server(f"http://127.0.0.1:{port}", port, process, metrics_dir, log)
    try:
        wait_ready(server)
        for _ in range(30):
            assert http("POST", server.url + "/make")[0] == 200
        for _ in range(SCRAPES):
            body = http("GET", server.url + "/metrics")[1].decode()
            samples, names = monotonic_samples(body)
            assert "app_widgets" not in names
            assert samples[("app_made_total", ())] == 30.0
        report = http("GET", server.url + "/metrics/health")[1].decode()
        assert '"degraded"' in report
        assert "app_widgets" in report
    finally:
        stop(process)
    text = log.read_text()
    assert "not serving prometheus_client default-registry metrics app_widgets" in text
    assert "PROMETHEUS_MULTIPROC_DIR" in text
