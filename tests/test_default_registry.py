"""prometheus_client's default registry: served whole by a single process, filtered (with a
health reason and a log line) once the server is multi-process; custom counters exact
across real forked processes."""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
from collections.abc import Iterator

import pytest
from flask import Flask
from prometheus_client import REGISTRY
from prometheus_client import Counter as ClientCounter
from prometheus_client.parser import text_string_to_metric_families

from flask_gatewayz_metrics import GatewayzMetrics, MetricsCollector, default_registry

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
CHILD_TIMEOUT_SECONDS = 30


def family_names(app: Flask) -> set[str]:
    body = app.test_client().get("/metrics").get_data(as_text=True)
    return {family.name for family in text_string_to_metric_families(body)}


@pytest.fixture
def widgets() -> Iterator[ClientCounter]:
    """An application counter in prometheus_client's default registry."""
    counter = ClientCounter("app_widgets", "Widgets made by the application.")
    yield counter
    REGISTRY.unregister(counter)


def hold_a_file_in_a_child(collector: MetricsCollector) -> tuple[int, int]:
    """Fork a child that records one request (its own live file) and waits; its pid and a
    pipe end that, once closed, lets it exit."""
    ready_r, ready_w = os.pipe()
    release_r, release_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            signal.alarm(CHILD_TIMEOUT_SECONDS)
            os.close(release_w)
            collector.record_request("/child", "GET", 0.01, 200)
            os.write(ready_w, b"x")
            os.read(release_r, 1)  # EOF when the parent closes its end
            code = 0
        finally:
            os._exit(code)
    os.close(ready_w)
    os.close(release_r)
    assert os.read(ready_r, 1) == b"x"
    os.close(ready_r)
    return pid, release_w


def release(pid: int, release_w: int) -> None:
    os.close(release_w)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_single_process_serves_the_default_registry(metrics_dir: str, widgets: ClientCounter) -> None:
    """One process: the app's counters and the process collectors are served as they are (they are true)."""
    app = Flask(__name__)
    GatewayzMetrics(app, dir=metrics_dir)
    widgets.inc(3)
    names = family_names(app)
    assert {"app_widgets", "process_cpu_seconds", "python_gc_objects_collected", "python_info"} <= names
    report = app.test_client().get("/metrics/health").get_json()
    assert report["status"] == "healthy", report


def test_multi_process_withholds_per_process_families(
    metrics_dir: str, widgets: ClientCounter, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another live process on the directory: app and per-process families withheld; health and a log say why."""
    monkeypatch.setattr(default_registry, "_last_log", -math.inf)
    app = Flask(__name__)
    GatewayzMetrics(app, dir=metrics_dir)
    collector = GatewayzMetrics.of(app).collector
    widgets.inc(3)
    assert "app_widgets" in family_names(app)
    pid, release_w = hold_a_file_in_a_child(collector)
    try:
        with caplog.at_level(logging.WARNING, logger="flask_gatewayz_metrics"):
            names = family_names(app)
            family_names(app)  # rate-limited: one line
        assert "app_widgets" not in names
        assert not [n for n in names if n.startswith(("process_", "python_gc_"))]
        assert "python_info" in names
        assert "http_requests" in names  # ours, merged
        lines = [r.getMessage() for r in caplog.records if "default-registry" in r.getMessage()]
        assert len(lines) == 1
        assert "app_widgets" in lines[0]
        assert "collector.counter()" in lines[0]
        assert "PROMETHEUS_MULTIPROC_DIR" in lines[0]
        report = app.test_client().get("/metrics/health").get_json()
        assert report["status"] == "degraded"
        (reason,) = [r for r in report["reasons"] if "default-registry" in r]
        assert "app_widgets" in reason
        assert "PROMETHEUS_MULTIPROC_DIR" in reason
    finally:
        release(pid, release_w)
    # The child is gone; the server is still known to be multi-process (no flapping).
    assert "app_widgets" not in family_names(app)


def test_app_metrics_off_means_no_health_reason(metrics_dir: str, widgets: ClientCounter) -> None:
    """With INCLUDE_APP_METRICS off nothing is withheld, so health does not complain about it."""
    app = Flask(__name__)
    GatewayzMetrics(app, dir=metrics_dir, include_app_metrics=False)
    pid, release_w = hold_a_file_in_a_child(GatewayzMetrics.of(app).collector)
    try:
        report = app.test_client().get("/metrics/health").get_json()
        assert not [r for r in report["reasons"] if "default-registry" in r]
    finally:
        release(pid, release_w)


def test_prometheus_multiproc_dir_is_served_instead(
    metrics_dir: str, tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With PROMETHEUS_MULTIPROC_DIR, prometheus_client's (exact) multiprocess merge is served, no health reason."""
    multiproc = os.path.join(str(tmp_path), "prom")
    os.mkdir(multiproc)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", multiproc)
    app = Flask(__name__)
    GatewayzMetrics(app, dir=metrics_dir)
    assert not isinstance(GatewayzMetrics.of(app).exporter.app_metrics, default_registry.DefaultRegistry)
    pid, release_w = hold_a_file_in_a_child(GatewayzMetrics.of(app).collector)
    try:
        report = app.test_client().get("/metrics/health").get_json()
        assert not [r for r in report["reasons"] if "default-registry" in r]
    finally:
        release(pid, release_w)


def test_custom_counter_exact_across_forked_processes(metrics_dir: str) -> None:
    """4 forked processes x 2 threads x 500 increments of a custom counter: the parent reads exactly 4000."""
    collector = MetricsCollector(metrics_dir)
    chats = collector.counter("app_chats", "Chats.", ["team"])
    sizes = collector.histogram("app_sizes", "Sizes.", buckets=[1, 2])
    pids = []
    for index in range(4):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.alarm(CHILD_TIMEOUT_SECONDS)

                def work(team: str) -> None:
                    for _ in range(500):
                        chats.labels(team=team).inc()
                        sizes.observe(1.5)

                threads = [threading.Thread(target=work, args=(f"t{index % 2}",)) for _ in range(2)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    try:
        custom = collector.to_dict()["custom"]
        assert isinstance(custom, dict)
        teams = {s["labels"]["team"]: s["value"] for s in custom["app_chats"]["series"]}
        assert teams == {"t0": 2000.0, "t1": 2000.0}
        (series,) = custom["app_sizes"]["series"]
        assert series["count"] == 4000.0
        assert series["buckets"] == {"1.0": 0.0, "2.0": 4000.0, "+Inf": 4000.0}
        collector.compact()
        assert collector.to_dict()["custom"] == custom
    finally:
        collector.close()
