"""Window slots of the hot path: the in-memory copy of the current slot's id / min / max
never outlives the file it mirrors (reset, fork, close), and slots rotate as time passes."""

from __future__ import annotations

import os

from conftest import FakeClock

from flask_gatewayz_metrics import MetricsCollector


def _latency(collector: MetricsCollector, section: str, key: str) -> dict[str, float | None]:
    entry = collector.to_dict()[section][key]
    assert isinstance(entry, dict)
    return entry["latency_seconds"]  # type: ignore[no-any-return]


def test_reset_in_the_same_slot_starts_a_fresh_window(collector: MetricsCollector) -> None:
    """After a reset (a new file) a request in the same slot is counted with its own min / max,
    for the endpoint, provider and model windows."""
    collector.record_request("/a", "GET", 0.5, 200, provider="openai", model="gpt-4")
    collector.reset()
    collector.record_request("/a", "GET", 0.9, 200, provider="openai", model="gpt-4")
    collector.record_request("/a", "GET", 0.7, 200, provider="openai", model="gpt-4")
    for section, key in (("endpoints", "/a"), ("providers", "openai"), ("models", "gpt-4")):
        latency = _latency(collector, section, key)
        assert (latency["min"], latency["max"]) == (0.7, 0.9), section
    assert collector.to_dict()["endpoints"]["/a"]["window"]["requests"] == 2  # type: ignore[index]


def test_close_and_reopen_in_the_same_slot(metrics_dir: str, clock: FakeClock) -> None:
    """A closed collector that records again writes a new file: its window is complete."""
    c = MetricsCollector(metrics_dir, clock=clock)
    try:
        c.record_request("/a", "GET", 0.5, 200)
        c.close()
        c.record_request("/a", "GET", 0.9, 200)
        latency = _latency(c, "endpoints", "/a")
        assert (latency["min"], latency["max"]) == (0.5, 0.9)
        assert c.to_dict()["endpoints"]["/a"]["window"]["requests"] == 2  # type: ignore[index]
    finally:
        c.close()


def test_forked_child_writes_its_own_complete_window(collector: MetricsCollector) -> None:
    """A child forked mid-slot records into its own file with its own min / max."""
    collector.record_request("/a", "GET", 0.5, 200, model="m")
    pid = os.fork()
    if pid == 0:  # child: record in the same slot, then leave without cleanup handlers
        code = 1
        try:
            collector.record_request("/a", "GET", 0.9, 200, model="m")
            collector.close()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    collector.record_request("/a", "GET", 0.6, 200, model="m")
    for section, key in (("endpoints", "/a"), ("models", "m")):
        latency = _latency(collector, section, key)
        assert (latency["min"], latency["max"]) == (0.5, 0.9), section
    assert collector.to_dict()["endpoints"]["/a"]["window"]["requests"] == 3  # type: ignore[index]


def test_min_max_follow_the_slots_as_they_age_out(collector: MetricsCollector, clock: FakeClock) -> None:
    """Each slot keeps its own extremes: when the slot with the max leaves the window, the
    max is the largest value of the remaining slots (also after a slot position is reused)."""
    clock.now = 1_699_999_980.0  # a slot boundary (60 s slots, 5 slots)
    collector.record_request("/a", "GET", 9.0, 200)
    clock.advance(60)
    collector.record_request("/a", "GET", 2.0, 200)
    clock.advance(60)
    collector.record_request("/a", "GET", 0.1, 200)
    latency = _latency(collector, "endpoints", "/a")
    assert (latency["min"], latency["max"]) == (0.1, 9.0)
    clock.advance(180)  # the 9.0 slot has left the window; its position is reused next
    collector.record_request("/a", "GET", 3.0, 200)
    latency = _latency(collector, "endpoints", "/a")
    assert (latency["min"], latency["max"]) == (0.1, 3.0)
    clock.advance(120)  # only the 3.0 slot is left
    collector.record_request("/a", "GET", 4.0, 200)  # reuses the position of the 0.1 slot
    latency = _latency(collector, "endpoints", "/a")
    assert (latency["min"], latency["max"]) == (3.0, 4.0)
