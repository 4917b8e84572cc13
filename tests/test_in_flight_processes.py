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


def test_in_flight_follows_a_worker_into_its_new_file_after_a_reset(metrics_dir: str) -> None:
    """A forked worker with 2 requests in flight (a long stream) while another process
    resets: once the worker writes anything else (tokens mid-stream), it moves to a new
    file, and its in-flight count must go with it. It did not: the gauge read 0 until the
    worker's next request started or ended (found by a review of the scrape side)."""
    commands_read, commands_write = os.pipe()
    answers_read, answers_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            signal.alarm(60)
            os.close(commands_write)
            os.close(answers_read)
            child = MetricsCollector(metrics_dir)
            child.add_in_flight(2)
            os.write(answers_write, b"1")
            assert os.read(commands_read, 1) == b"t"  # after the reset
            child.record_tokens("openai", "gpt-4o", 100, 20)
            os.write(answers_write, b"2")
            assert os.read(commands_read, 1) == b"e"
            child.add_in_flight(-2)
            os.write(answers_write, b"3")
            assert os.read(commands_read, 1) == b"q"
            code = 0
        finally:
            os._exit(code)
    os.close(commands_read)
    os.close(answers_write)
    resetter = MetricsCollector(metrics_dir)
    try:
        assert os.read(answers_read, 1) == b"1"
        resetter.reset()
        os.write(commands_write, b"t")
        assert os.read(answers_read, 1) == b"2"
        for reader in (resetter, MetricsCollector(metrics_dir)):
            assert scrape(reader)[key("http_requests_in_flight")] == 2.0
        os.write(commands_write, b"e")
        assert os.read(answers_read, 1) == b"3"
        assert scrape(MetricsCollector(metrics_dir))[key("http_requests_in_flight")] == 0.0
        os.write(commands_write, b"q")
    finally:
        resetter.close()
        os.kill(pid, signal.SIGKILL)  # done (a zombie), or waiting after a failed assertion
        os.waitpid(pid, 0)
