"""The hostile metrics directory under real gunicorn: the master and every worker keep going."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from typing import Any

import pytest
from servers import Server, http, scrape, send_concurrently

from flask_gatewayz_metrics.collector import DIRECTORY_CHECK_SECONDS

pytestmark = pytest.mark.slow


def _workers(server: Server) -> set[int]:
    """Pids of the master's children (its workers)."""
    pid = server.process.pid
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return {int(p) for p in f.read().split()}


def _models_requests(url: str, count: int) -> None:
    statuses = send_concurrently(url, [("GET", "/api/models", None)] * count, 6, 60.0)
    assert statuses == {200: count}


def _requests_of(samples: dict[Any, float], endpoint: str) -> float:
    return sum(
        value for (name, labels), value in samples.items()
        if name == "http_requests_total" and dict(labels).get("endpoint") == endpoint
    )  # fmt: skip


def test_fifo_cannot_stop_the_master_replacing_workers(start_gunicorn: Any) -> None:
    """With a FIFO named x.gwzm in the directory, killed workers are still replaced and the app answers."""
    server = start_gunicorn(workers=2)
    os.mkfifo(server.metrics_dir / "x.gwzm")
    for _ in range(3):
        deadline = time.monotonic() + 30
        while len(_workers(server)) != 2 and time.monotonic() < deadline:
            time.sleep(0.1)  # the last one may still be booting
        old = _workers(server)
        assert len(old) == 2
        for pid in old:
            os.kill(pid, signal.SIGKILL)  # child_exit compacts in the master, FIFO included
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            current = _workers(server)
            if len(current) == 2 and not current & old:
                break
            time.sleep(0.1)
        assert len(current) == 2 and not current & old, "the master did not replace its workers"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if http("GET", server.url + "/healthz", timeout=2.0)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        _models_requests(server.url, 10)
    assert server.process.poll() is None
    status, body = http("GET", server.url + "/metrics")
    assert status == 200 and b"http_requests_total" in body


def test_deleted_directory_is_noticed_by_every_worker(start_gunicorn: Any) -> None:
    """After the directory is deleted, one scrape makes every worker start over; losses counted; health says so."""
    server = start_gunicorn(workers=3)
    _models_requests(server.url, 60)
    assert _requests_of(scrape(server.url), "/api/models") == 60
    shutil.rmtree(server.metrics_dir)
    # Written into deleted files and lost, unless a worker that had no file yet noticed
    # the deletion when creating one (it then tells every other worker at once).
    _models_requests(server.url, 90)
    # A scrape by a worker that maps the old control file tells every worker at once.
    # A worker that booted after the deletion re-created the directory without ever
    # mapping the old file and cannot tell anyone: each worker also checks the directory
    # at most once a second, before its next write.
    scrape(server.url)
    time.sleep(DIRECTORY_CHECK_SECONDS + 0.1)
    _models_requests(server.url, 300)
    seen = {_requests_of(scrape(server.url), "/api/models") for _ in range(6)}
    assert len(seen) == 1, seen  # every worker's scrape agrees (likely answered by different ones)
    counted = seen.pop()
    assert 300 <= counted <= 390
    assert (server.metrics_dir / "control.gwzc").is_file()
    status, body = http("GET", server.url + "/metrics/health")
    report = json.loads(body)
    assert status == 200 and report["status"] == "degraded", report
    assert any("deleted or replaced" in reason for reason in report["reasons"]), report
    # 60 + the uncounted part of the 90 (and readiness probes) were recorded into deleted files
    assert report["dropped"]["directory_lost"] >= 60 + 390 - counted
