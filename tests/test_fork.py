"""Real forked processes with threads writing one metrics directory: totals are exact."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable

import pytest

from flask_gatewayz_metrics import MetricsCollector
from flask_gatewayz_metrics.storage import layout
from flask_gatewayz_metrics.testing import worker_file

PROCESSES = 4
THREADS = 2
PER_THREAD = 2000
TIMEOUT_SECONDS = 60.0

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def worker_files(directory: str) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(layout.WORKER_SUFFIX))


def fork_children(count: int, body: Callable[[int], None]) -> list[int]:
    """Fork ``count`` children running ``body(index)``; each exits 0 on success, 1 on error."""
    pids = []
    for index in range(count):
        pid = os.fork()
        if pid == 0:  # child: never return into pytest
            code = 1
            try:
                signal.alarm(int(TIMEOUT_SECONDS))  # a stuck child dies on its own
                body(index)
                code = 0
            except BaseException:
                traceback.print_exc(file=sys.stderr)
            finally:
                os._exit(code)
        pids.append(pid)
    return pids


def wait_all(pids: list[int]) -> dict[int, int]:
    """Wait for every child (killing stragglers after the time limit); return exit codes."""
    deadline = time.monotonic() + TIMEOUT_SECONDS
    codes: dict[int, int] = {}
    while len(codes) < len(pids):
        for pid in pids:
            if pid in codes:
                continue
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                codes[pid] = os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            for pid in pids:
                if pid not in codes:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    codes[pid] = -signal.SIGKILL
            break
        time.sleep(0.01)
    return codes


def record_in_threads(collector: MetricsCollector, index: int) -> None:
    """THREADS threads of this process record PER_THREAD requests each, concurrently."""
    barrier = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def run(thread: int) -> None:
        try:
            barrier.wait(timeout=10)
            for i in range(PER_THREAD):
                status = 500 if i % 10 == 0 else 200
                collector.record_request("/api/chat", "POST", 0.001 * (1 + i % 50), status, provider="openai")
                collector.record_request(f"/p{index}", "GET", 0.002, 200)
                collector.record_cache_hit()
                collector.record_external_api_call("stripe", error=i % 4 == 0)
        except BaseException as exc:  # reported through the exit code
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=TIMEOUT_SECONDS)
    if errors or any(t.is_alive() for t in threads):
        raise RuntimeError(f"recording threads failed: {errors!r}")


def test_forked_workers_with_threads_sum_exactly(metrics_dir: str) -> None:
    """4 forked processes x 2 threads x 2000 requests: the parent's snapshot totals are exact."""

    def child(index: int) -> None:
        collector = MetricsCollector(metrics_dir, strict=True)
        record_in_threads(collector, index)
        collector.close()

    codes = wait_all(fork_children(PROCESSES, child))
    assert list(codes.values()) == [0] * PROCESSES, codes

    reader = MetricsCollector(metrics_dir)
    try:
        d = reader.to_dict()
        per_process = THREADS * PER_THREAD
        total = PROCESSES * per_process
        chat = d["endpoints"]["/api/chat"]
        assert chat["requests"] == total
        assert chat["errors"] == total // 10
        assert chat["status"] == {"200": total - total // 10, "500": total // 10}
        assert chat["window"]["requests"] == total
        for index in range(PROCESSES):
            assert d["endpoints"][f"/p{index}"]["requests"] == per_process
        assert d["providers"]["openai"]["requests"] == total
        assert d["providers"]["openai"]["latency_seconds"]["min"] == 0.001
        assert d["providers"]["openai"]["latency_seconds"]["max"] == 0.05
        assert d["cache"]["hits"] == total
        assert d["external_apis"]["stripe"] == {"calls": total, "errors": total // 4}
        assert d["storage"]["dropped"] == {}
        assert d["storage"]["problems"] == []
        assert (d["storage"]["worker_files"], d["storage"]["live_worker_files"]) == (PROCESSES, 0)
        # That scrape found dead workers and compacted them: their files are gone,
        # folded into the archive, and the totals are unchanged.
        assert worker_files(metrics_dir) == []
        after = reader.to_dict()
        assert after["storage"]["worker_files"] == 0
        assert {k: after[k] for k in ("endpoints", "providers", "cache", "external_apis")} == {
            k: d[k] for k in ("endpoints", "providers", "cache", "external_apis")
        }
    finally:
        reader.close()


def test_collector_inherited_across_fork(metrics_dir: str) -> None:
    """A collector used in the parent before fork: children write their own files, nothing doubles."""
    collector = MetricsCollector(metrics_dir, strict=True)
    try:
        collector.record_request("/parent", "GET", 0.1, 200)
        collector.record_cache_miss()
        parent_file = worker_file(collector)
        assert worker_files(metrics_dir) == [os.path.basename(parent_file or "")]

        def child(index: int) -> None:
            record_in_threads(collector, index)
            assert worker_file(collector) != parent_file

        codes = wait_all(fork_children(PROCESSES, child))
        assert list(codes.values()) == [0] * PROCESSES, codes

        files = worker_files(metrics_dir)
        assert len(files) == PROCESSES + 1  # one per process that wrote
        pids = {int(name.split("-")[1]) for name in files}
        assert len(pids) == PROCESSES + 1 and os.getpid() in pids

        collector.record_request("/parent", "GET", 0.1, 200)  # the parent's file still works
        assert worker_file(collector) == parent_file
        d = collector.to_dict()
        total = PROCESSES * THREADS * PER_THREAD
        assert d["endpoints"]["/parent"]["requests"] == 2
        assert d["endpoints"]["/api/chat"]["requests"] == total
        assert d["cache"] == {"hits": total, "misses": 1, "hit_rate": total / (total + 1)}
        assert (d["storage"]["worker_files"], d["storage"]["live_worker_files"]) == (PROCESSES + 1, 1)
    finally:
        collector.close()


def test_in_flight_of_another_worker_survives_a_reset(metrics_dir: str) -> None:
    """A worker with a request in flight that has not written since a reset still counts it."""
    read_end, write_end = os.pipe()
    go_read, go_write = os.pipe()

    def busy_worker(_: int) -> None:
        child = MetricsCollector(metrics_dir)
        child.add_in_flight(1)  # a long request starts (a stream, say)
        os.write(write_end, b"r")
        os.read(go_read, 1)  # ... and ends only when the parent says so
        child.add_in_flight(-1)
        child.close()

    scraper = MetricsCollector(metrics_dir)
    (pid,) = fork_children(1, busy_worker)
    try:
        assert os.read(read_end, 1) == b"r"
        assert scraper.snapshot().in_flight == 1
        scraper.reset()
        assert scraper.snapshot().total_requests == 0
        assert scraper.snapshot().in_flight == 1  # the busy worker has not moved to the new epoch yet
        os.write(go_write, b"g")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert scraper.snapshot().in_flight == 0
    finally:
        for fd in (read_end, write_end, go_read, go_write):
            os.close(fd)
        scraper.close()
