"""The request path's span (``RequestPath._renew_span``): one range test on the clock
stands for the window slot check and the directory check's deadline. It must record
exactly what a check of both on every request records."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from flask_gatewayz_metrics import MetricsCollector, record_writer, request_path
from flask_gatewayz_metrics.testing import ManualClock, scrape_samples

T0 = 1_700_000_010.0
"""A start of a 30 s slot (of a 90 s window in three)."""
STEPS = (
    # (seconds after T0 the clock reads, what is recorded then)
    (0.0, "request"),
    (0.4, "request"),
    (0.8, "cache"),
    (1.2, "request"),
    (30.7, "request"),  # the next slot
    (30.8, "cache"),
    (30.5, "request"),  # set back within the slot
    (29.5, "request"),  # set back into the previous slot
    (29.7, "db"),
    (31.0, "cache"),  # another writer enters the next slot first
    (29.8, "request"),  # then a request from before it: the previous slot's
    (29.9, "request"),
    (75.0, "labelled"),
    (95.0, "request"),  # the first slot leaves the window
    (95.5, "provider"),
    (250.0, "request"),  # past the whole window
)


def _record(collector: MetricsCollector, what: str, step: int) -> None:
    latency = 0.01 * (step + 1)
    if what == "request":
        collector.observe_request("/a", "GET", latency, 200 if step % 3 else 503)
    elif what == "labelled":
        collector.observe_request("/a", "POST", latency, 200, "openai", "gpt-4o")
    elif what == "provider":
        collector.record_provider_call("openai", "gpt-4o", latency, 200)
    elif what == "cache":
        collector.record_cache_hit()
    else:
        collector.record_db_query(latency)


def _timeless(collector: MetricsCollector) -> dict[object, float]:
    """A scrape's samples but the ones of the real clock (the directory's start time)."""
    return {key: value for key, value in scrape_samples(collector).items() if "start_time" not in key[0]}


def test_span_records_what_a_check_on_every_request_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same requests and other writes, the clock moving forward, back within a slot
    and back across slots, another writer entering a slot first: a collector whose clock
    counts as elapsing (spans in use) and one whose clock does not (each request checks
    the slot and the directory) serve the same windows and totals."""
    spanned_clock, checked_clock = ManualClock(T0), ManualClock(T0)
    monkeypatch.setattr(request_path, "_wall_clock", spanned_clock)
    spanned = MetricsCollector(str(tmp_path / "spanned"), clock=spanned_clock, window_seconds=90, window_slots=3)
    checked = MetricsCollector(str(tmp_path / "checked"), clock=checked_clock, window_seconds=90, window_slots=3)
    try:
        for step, (seconds, what) in enumerate(STEPS):
            for clock, collector in ((spanned_clock, spanned), (checked_clock, checked)):
                clock.now = T0 + seconds
                _record(collector, what, step)
            assert _timeless(spanned) == _timeless(checked), (step, what)
        assert spanned._span_end > spanned._span_start  # the spans were in use
        assert checked._span_end <= checked._span_start
    finally:
        spanned.close()
        checked.close()


def test_directory_re_created_is_noticed_with_a_clock_of_ones_own(
    metrics_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clock that does not move (a test's) still lets the request path check the
    directory every ``DIRECTORY_CHECK_SECONDS`` (it says nothing of elapsed time, so no
    span stands for that check)."""
    monkeypatch.setattr(record_writer, "DIRECTORY_CHECK_SECONDS", 0.2)
    clock = ManualClock()
    old = MetricsCollector(metrics_dir, clock=clock)
    for _ in range(4):
        old.observe_request("/a", "GET", 0.1, 200)
    shutil.rmtree(metrics_dir)
    newcomer = MetricsCollector(metrics_dir, clock=clock)
    newcomer.observe_request("/b", "GET", 0.1, 200)
    time.sleep(0.25)
    for _ in range(3):
        old.observe_request("/a", "GET", 0.1, 200)
    try:
        endpoints = newcomer.snapshot().to_dict()["endpoints"]
        assert endpoints["/a"]["requests"] == 3 and endpoints["/b"]["requests"] == 1
        assert newcomer.snapshot().dropped()["directory_lost"] == 4
    finally:
        old.close()
        newcomer.close()


def test_span_ends_when_the_directory_check_falls_due(metrics_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the default clock the span ends where the directory check falls due: a
    directory re-created by a newcomer is noticed at the first request after it."""
    monkeypatch.setattr(record_writer, "DIRECTORY_CHECK_SECONDS", 0.2)
    old = MetricsCollector(metrics_dir)
    for _ in range(4):
        old.observe_request("/a", "GET", 0.1, 200)
    assert old._span_end - old._span_start <= 0.2
    shutil.rmtree(metrics_dir)
    newcomer = MetricsCollector(metrics_dir)
    newcomer.observe_request("/b", "GET", 0.1, 200)
    time.sleep(0.25)
    old.observe_request("/a", "GET", 0.1, 200)
    try:
        assert newcomer.snapshot().dropped()["directory_lost"] == 4
        assert newcomer.snapshot().to_dict()["endpoints"]["/a"]["requests"] == 1
    finally:
        old.close()
        newcomer.close()
