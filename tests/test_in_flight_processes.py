"""Requests in flight across real forked workers: a SIGKILLed worker's in-flight requests
leave the gauge."""

from __future__ import annotations

import os
import signal
import time

from flask_gatewayz_metrics import MetricsCollector
from flask_gatewayz_metrics.storage import compact
from flask_gatewayz_metrics.testing import sample_key as key
from flask_gatewayz_metrics.testing import scrape_samples as scrape

# --------------------------------------------------------------------------- in flight, real processes


def test_in_flight_of_killed_worker_excluded(metrics_dir: str) -> None:
    """A forked worker's 3 in-flight requests count while it lives, not after SIGKILL nor after compaction."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            signal.alarm(60)
            os.close(read_fd)
            child = MetricsCollector(metrics_dir)
            child.record_request("/api/chat", "POST", 0.1, 200)
            child.add_in_flight(3)
            os.write(write_fd, b"ready")
            time.sleep(60)
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    parent = MetricsCollector(metrics_dir)
    try:
        try:
            with os.fdopen(read_fd, "rb") as ready:
                assert ready.read(5) == b"ready"
            s = scrape(parent)
            assert s[key("http_requests_in_flight")] == 3
            assert parent.to_dict()["in_flight"] == 3
            assert s[key("gatewayz_metrics_worker_files", state="live")] == 1
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        parent.auto_compact = False
        s = scrape(parent)
        assert s[key("http_requests_in_flight")] == 0
        assert s[key("gatewayz_metrics_worker_files", state="dead")] == 1
        assert s[key("http_requests_total", endpoint="/api/chat", method="POST")] == 1  # its counters stay
        assert compact(metrics_dir).absorbed == 1
        s = scrape(parent)
        assert s[key("http_requests_in_flight")] == 0
        assert parent.to_dict()["in_flight"] == 0
        assert s[key("http_requests_total", endpoint="/api/chat", method="POST")] == 1
    finally:
        parent.close()
