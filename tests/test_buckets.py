"""Configurable latency histogram buckets (``GATEWAYZ_METRICS_BUCKETS`` / ``buckets=``)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families
from servers import REPO_ROOT, Server, http, scrape

from flask_gatewayz_metrics import GatewayzMetrics, MetricsCollector
from flask_gatewayz_metrics.exposition import PrometheusExporter
from flask_gatewayz_metrics.health import health_report
from flask_gatewayz_metrics.semconv import latency_bucket_tables
from flask_gatewayz_metrics.settings import Settings, collector_options_from_env
from flask_gatewayz_metrics.storage import kinds

BOUNDS = (0.05, 0.5, 2.0)


def _samples(body: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples called ``name`` of an exposition, by sorted labels."""
    out = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def _buckets(body: str, family: str, **labels: str) -> dict[str, float]:
    """``le`` -> cumulative count of one series of a histogram family."""
    found = {}
    for key, value in _samples(body, family + "_bucket").items():
        named = dict(key)
        if all(named.get(k) == v for k, v in labels.items()):
            found[named["le"]] = value
    return found


def test_configured_bounds_exact_counts(metrics_dir: str) -> None:
    """Every latency histogram shows the configured ``le`` values with exact cumulative counts."""
    collector = MetricsCollector(metrics_dir, buckets=list(BOUNDS))
    try:
        for latency in (0.01, 0.05, 0.2, 1.0, 3.0, 3.0):
            collector.record_request("/chat", "POST", latency, 200, provider="openai", model="m")
        collector.record_stream("openai", "m", "completed", 1.5, 0.04)
        body = PrometheusExporter(collector).export()
    finally:
        collector.close()
    expected = {"0.05": 2.0, "0.5": 3.0, "2.0": 4.0, "+Inf": 6.0}
    assert _buckets(body, "http_request_duration_seconds", endpoint="/chat") == expected
    assert _buckets(body, "provider_request_duration_seconds", provider="openai") == expected
    assert _buckets(body, "llm_stream_duration_seconds") == {"0.05": 0.0, "0.5": 0.0, "2.0": 1.0, "+Inf": 1.0}
    assert _buckets(body, "llm_time_to_first_chunk_seconds") == {"0.05": 1.0, "0.5": 1.0, "2.0": 1.0, "+Inf": 1.0}
    # The conventions' http.server.request.duration keeps its own bounds, exactly.
    http_server = _buckets(body, "http_server_request_duration_seconds", http_route="/chat")
    assert http_server["0.01"] == 1.0 and http_server["0.05"] == 2.0 and http_server["2.5"] == 4.0
    assert http_server["+Inf"] == 6.0 and len(http_server) == len(kinds.HTTP_SERVER_BOUNDS) + 1


def test_bucket_tables_match_a_search() -> None:
    """The request path's single search gives the same buckets as searching each bound set."""
    from bisect import bisect_left

    for bounds in (kinds.HISTOGRAM_BOUNDS, BOUNDS, (1.0,), tuple(0.001 * 1.5**i for i in range(64))):
        union, request, gen_ai = latency_bucket_tables(bounds)
        stored = kinds.stored_bounds("request", bounds)
        assert set(bounds) <= set(stored) and set(kinds.HTTP_SERVER_BOUNDS) <= set(stored)
        for latency in (0.0, 0.001, 0.005, 0.0050001, 0.01, 0.02, 0.05, 0.07, 1.0, 2.0, 7.5, 9.9, 10.0, 81.92, 82, 1e6):
            u = bisect_left(union, latency)
            assert request[u] == kinds.REQ_BUCKETS + bisect_left(stored, latency)
            assert gen_ai[u] == 1 + bisect_left(kinds.GEN_AI_DURATION_BOUNDS, latency)


def test_default_bounds_keep_the_default_kinds(metrics_dir: str) -> None:
    """Buckets equal to the defaults are stored as before (kind "request", no bounds label)."""
    collector = MetricsCollector(metrics_dir, buckets=[*kinds.HISTOGRAM_BOUNDS, float("inf")])
    try:
        collector.record_request("/x", "GET", 0.1, 200)
        assert kinds.histogram_kind("request", collector.histogram_bounds) == ("request", ())
        assert collector.snapshot().merged.total("request", ("/x", "GET", "200", "0")) is not None
    finally:
        collector.close()


def test_other_bound_sets_are_skipped_and_reported(tmp_path: Path) -> None:
    """Two processes with different bounds on one directory: each scrape serves only its own
    bounds' counts, never the other's under its bounds, and health reports the skipped series."""
    directory = str(tmp_path / "metrics")
    other = subprocess.run(
        [sys.executable, "-c", (
            "from flask_gatewayz_metrics import MetricsCollector\n"
            f"c = MetricsCollector({directory!r}, buckets=[1.0, 10.0])\n"
            "for _ in range(7): c.record_request('/chat', 'POST', 0.2, 200, provider='openai')\n"
            "c.record_stream('openai', 'm', 'completed', 1.5, 0.2)\n"
            "c.close()\n"
        )],
        cwd=REPO_ROOT, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert other.returncode == 0, other.stderr
    collector = MetricsCollector(directory, buckets=list(BOUNDS))
    default = MetricsCollector(directory, namespace=None)
    try:
        for _ in range(3):
            collector.record_request("/chat", "POST", 0.2, 200, provider="openai")
        for snapshot_of, own in ((collector, 3.0), (default, 0.0)):
            body = PrometheusExporter(snapshot_of).export()
            counts = _samples(body, "http_request_duration_seconds_count")
            assert sum(counts.values()) == own, (snapshot_of.histogram_bounds, counts)
            les = {dict(k)["le"] for k in _samples(body, "http_request_duration_seconds_bucket")}
            assert les <= {*(repr(b) for b in snapshot_of.histogram_bounds), "+Inf"}
        snap = collector.snapshot()
        assert snap.merged.bounds_mismatched == 4  # the other process's request, provider, stream, first chunk
        report, status = health_report(snap, Settings())
        assert status == 200 and report["status"] == "degraded"
        assert report["histogram_bounds_mismatched_series"] == 4
        assert any("other bucket bounds" in reason for reason in report["reasons"])
        # Folded into the archive, the other bounds' records stay apart (another kind).
        collector.compact()
        body = PrometheusExporter(collector).export()
        assert sum(_samples(body, "http_request_duration_seconds_count").values()) == 3
        assert collector.snapshot().merged.bounds_mismatched == 4
    finally:
        collector.close()
        default.close()


@pytest.mark.parametrize(
    "value",
    [[], [0.5, 0.1], [0.1, 0.1], [0.0, 1.0], [-1.0], [float("nan")], ["0.1"], [True], list(range(1, 66)), "a,b", 0.5],
)
def test_bad_buckets_rejected_at_init_app(tmp_path: Path, value: object) -> None:
    """A bad bound list is a TypeError / ValueError naming the key at init_app, like other settings."""
    app = Flask(__name__)
    app.config["GATEWAYZ_METRICS_DIR"] = str(tmp_path)
    app.config["GATEWAYZ_METRICS_BUCKETS"] = value
    with pytest.raises((TypeError, ValueError), match="GATEWAYZ_METRICS_BUCKETS must be"):
        GatewayzMetrics(app)
    with pytest.raises((TypeError, ValueError), match=r"MetricsCollector\(buckets=...\) must be"):
        MetricsCollector(str(tmp_path), buckets=value)  # type: ignore[arg-type]


def test_buckets_precedence_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Config over keyword over ``GATEWAYZ_METRICS_BUCKETS``; the environment's is parsed and checked."""
    monkeypatch.setenv("GATEWAYZ_METRICS_BUCKETS", "0.1, 1, +Inf")
    assert Settings.resolve({}, {})[0].buckets == (0.1, 1.0)
    assert Settings.resolve({}, {"buckets": (2, 3)})[0].buckets == (2.0, 3.0)
    assert Settings.resolve({"GATEWAYZ_METRICS_BUCKETS": [5]}, {"buckets": (2, 3)})[0].buckets == (5.0,)
    assert Settings.resolve({}, {})[1] is True  # a storage key: the app gets its own collector
    assert collector_options_from_env({"GATEWAYZ_METRICS_BUCKETS": "0.25,4"}) == {"buckets": (0.25, 4.0)}
    monkeypatch.setenv("GATEWAYZ_METRICS_BUCKETS", "0.1,x")
    with pytest.raises(ValueError, match="environment variable GATEWAYZ_METRICS_BUCKETS must be"):
        Settings.resolve({}, {})


def test_promtool_accepts_configured_buckets(metrics_dir: str) -> None:
    """promtool check metrics passes with 64 configured bounds."""
    promtool = shutil.which("promtool") or ("/usr/bin/promtool" if os.path.exists("/usr/bin/promtool") else None)
    if promtool is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("promtool missing and CI=true")
        pytest.skip("promtool not installed")
    bounds = [round(0.001 * 1.2**i, 6) for i in range(kinds.MAX_HISTOGRAM_BUCKETS)]
    collector = MetricsCollector(metrics_dir, buckets=bounds)
    try:
        for latency in (0.0005, 0.01, 0.3, 5.0, 1e4):
            collector.record_request("/x", "GET", latency, 200, provider="p", model="m")
        collector.record_stream("p", "m", "completed", 2.0, 0.1)
        body = PrometheusExporter(collector).export()
    finally:
        collector.close()
    assert len(_buckets(body, "http_request_duration_seconds")) == len(bounds) + 1
    command = [promtool, "check", "metrics"]
    result = subprocess.run(command, input=body.encode(), capture_output=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_gunicorn_hup_reload_with_other_buckets(tmp_path: Path, start_gunicorn: Callable[..., Server]) -> None:
    """A real gunicorn server reloaded (HUP) with other buckets: old workers' requests (dead
    files, then the archive) are skipped, never re-bucketed; the scrape shows the new ``le``
    values with exactly the new workers' requests, and health reports the skipped series."""
    bucket_file = tmp_path / "buckets.txt"
    bucket_file.write_text("")
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(  # read again at HUP: the new workers get the new variable
        "from flask_gatewayz_metrics.gunicorn_conf import *  # noqa\n"
        "import pathlib\n"
        f"_b = pathlib.Path({str(bucket_file)!r}).read_text().strip()\n"
        "raw_env = [f'GATEWAYZ_METRICS_BUCKETS={_b}'] if _b else []\n"
    )
    server = start_gunicorn("-c", str(conf), workers=2)
    for _ in range(5):
        assert http("GET", server.url + "/api/models")[0] == 200
    master = server.process.pid
    old_workers = _children(master)
    bucket_file.write_text("0.5,30")
    os.kill(master, signal.SIGHUP)
    deadline = time.monotonic() + 60
    while (_children(master) & old_workers or len(_children(master)) != 2) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _children(master) & old_workers, "HUP's new workers did not replace the old ones"
    for _ in range(8):
        assert http("GET", server.url + "/api/models")[0] == 200
    samples = scrape(server.url)
    buckets = {
        dict(labels)["le"]: value
        for (name, labels), value in samples.items()
        if name == "http_request_duration_seconds_bucket" and dict(labels)["endpoint"] == "/api/models"
    }
    assert set(buckets) == {"0.5", "30.0", "+Inf"}
    assert buckets["+Inf"] == 8.0 and buckets["30.0"] == 8.0
    status, body = http("GET", server.url + "/metrics/health")
    assert status == 200
    assert json.loads(body)["histogram_bounds_mismatched_series"] >= 1
    assert b"other bucket bounds" in body


def _children(pid: int) -> set[int]:
    try:
        return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except OSError:
        return set()
