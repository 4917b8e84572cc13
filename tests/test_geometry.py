"""Window geometry across compaction: the newest configuration's geometry is kept, and
windows of another geometry are re-bucketed into it or counted, never silently dropped."""

from __future__ import annotations

import os

from prometheus_client.parser import text_string_to_metric_families

from flask_gatewayz_metrics import MetricsCollector, PrometheusExporter
from flask_gatewayz_metrics.health import health_report
from flask_gatewayz_metrics.settings import Settings
from flask_gatewayz_metrics.storage import compact, kinds, layout
from flask_gatewayz_metrics.storage.archive_builder import WINDOW_GEOMETRY_REASON, ArchiveBuilder
from flask_gatewayz_metrics.storage.reader import DirectoryReader

# Collectors here use the wall clock (their default): the compactor judges whether a
# slot it cannot place is still in the window by the wall clock, like writers stamp it.
VALUES = (0.004, 0.25, 1.5, 2400.0)


def _record_and_close(directory: str, window_seconds: float, slots: int, values: tuple[float, ...] = VALUES) -> str:
    """A worker with this window geometry records ``values`` and exits; its file's name."""
    before = set(os.listdir(directory))
    worker = MetricsCollector(directory, window_seconds=window_seconds, window_slots=slots)
    for value in values:
        worker.record_request("/chat", "POST", value, 200, provider="openai", model="gpt-4")
    worker.record_db_query(0.02)
    (name,) = {n for n in os.listdir(directory) if n.endswith(layout.WORKER_SUFFIX)} - before
    worker.close()
    return name


def _used_slots(directory: str, name: str) -> int:
    """Non-empty slots of the value-carrying windows (endpoint, provider, model, db) of a
    file: one each, unless the recording happened to cross a slot boundary."""
    view = next(v for v in DirectoryReader(directory).read()[0] if v.name == name)
    used = 0
    for record in view.records:
        kind = kinds.KINDS[record.kind]
        if kind.windowed and record.kind != "cache_window":
            stride = layout.slot_stride(kind.with_sketch)
            for position in range(view.slots):
                base = record.offset + position * stride
                used += view.doubles[base + layout.SLOT_MIN] <= view.doubles[base + layout.SLOT_MAX]
    return used


def _reader(directory: str, window_seconds: float, slots: int = 5) -> MetricsCollector:
    """The process running the new configuration: live, with a file (it served a cache
    lookup), compacting only when told to."""
    reader = MetricsCollector(directory, window_seconds=window_seconds, window_slots=slots, auto_compact=False)
    reader.record_cache_hit()
    return reader


def _archive_geometry(directory: str) -> tuple[float, int]:
    archive = next(v for v in DirectoryReader(directory).read()[0] if v.is_archive)
    return archive.slot_seconds, archive.slots


def _storage_errors(reader: MetricsCollector) -> dict[str, float]:
    text = PrometheusExporter(reader).export()
    return {
        s.labels["reason"]: s.value
        for family in text_string_to_metric_families(text)
        if family.name == "gatewayz_metrics_storage_errors"
        for s in family.samples
        if s.name.endswith("_total")
    }


def test_narrower_slots_are_rebucketed_into_the_new_geometry(metrics_dir: str) -> None:
    """A dead worker's 60 s slots fold into the live configuration's 120 s slots: its window
    values (count, exact min / max, percentiles) stay, and nothing is counted as lost."""
    _record_and_close(metrics_dir, 300, 5)
    reader = _reader(metrics_dir, 600, 5)
    try:
        before = reader.to_dict()
        assert reader.compact().absorbed == 1
        assert _archive_geometry(metrics_dir) == (120.0, 5)
        after = reader.to_dict()
        for section, key in (("endpoints", "/chat"), ("providers", "openai"), ("models", "gpt-4")):
            assert after[section][key]["latency_seconds"] == before[section][key]["latency_seconds"]
            assert after[section][key]["latency_seconds"]["min"] == min(VALUES)
            assert after[section][key]["latency_seconds"]["max"] == max(VALUES)
        assert after["endpoints"]["/chat"]["window"]["requests"] == len(VALUES)
        assert after["database"]["latency_min_seconds"] == after["database"]["latency_max_seconds"] == 0.02
        assert _storage_errors(reader)[WINDOW_GEOMETRY_REASON] == 0
    finally:
        reader.close()


def test_slots_that_fit_nowhere_are_counted_and_shown_in_health(metrics_dir: str) -> None:
    """60 s slots cannot be split into 30 s ones: each non-empty slot still in the window is
    counted as a storage error (Prometheus, JSON and health); totals are kept."""
    name = _record_and_close(metrics_dir, 300, 5)
    lost = _used_slots(metrics_dir, name)
    assert lost >= 4
    reader = _reader(metrics_dir, 90, 3)
    try:
        reader.compact()
        assert _archive_geometry(metrics_dir) == (30.0, 3)
        assert _storage_errors(reader)[WINDOW_GEOMETRY_REASON] == lost
        d = reader.to_dict()
        assert d["storage"]["errors"] == {WINDOW_GEOMETRY_REASON: lost}
        assert d["endpoints"]["/chat"]["requests"] == len(VALUES)  # since-start totals kept
        report, _ = health_report(reader.snapshot(), Settings())
        assert report["storage_errors"] == {WINDOW_GEOMETRY_REASON: lost}
    finally:
        reader.close()


def test_since_start_window_folds_into_a_since_start_archive(metrics_dir: str) -> None:
    """Sliding-window slots fit inside one since-start slot (window 0): all merged."""
    _record_and_close(metrics_dir, 300, 5)
    reader = _reader(metrics_dir, 0)
    try:
        reader.compact()
        assert _archive_geometry(metrics_dir) == (0.0, 1)
        d = reader.to_dict()
        assert d["endpoints"]["/chat"]["window"]["requests"] == len(VALUES)
        assert d["models"]["gpt-4"]["latency_seconds"]["max"] == max(VALUES)
        assert _storage_errors(reader)[WINDOW_GEOMETRY_REASON] == 0
    finally:
        reader.close()


def test_since_start_data_cannot_enter_a_sliding_window_and_is_counted(metrics_dir: str) -> None:
    """A since-start slot has no interval to place in a sliding window: counted, not dropped silently."""
    name = _record_and_close(metrics_dir, 0, 1)
    assert _used_slots(metrics_dir, name) == 4
    reader = _reader(metrics_dir, 300, 5)
    try:
        reader.compact()
        assert _archive_geometry(metrics_dir) == (60.0, 5)
        assert _storage_errors(reader)[WINDOW_GEOMETRY_REASON] == 4
    finally:
        reader.close()


def test_newest_file_decides_geometry_not_file_name_order(metrics_dir: str) -> None:
    """With only dead files, the most recently created one's geometry wins, whatever the names."""
    older = _record_and_close(metrics_dir, 300, 5)
    newer = _record_and_close(metrics_dir, 600, 5)
    # Make the older file sort first (the old rule took the first name).
    os.rename(os.path.join(metrics_dir, older), os.path.join(metrics_dir, "worker-0-0.gwzm"))
    assert sorted(n for n in os.listdir(metrics_dir) if n.endswith(".gwzm"))[-1] == newer
    assert compact(metrics_dir).absorbed == 2
    assert _archive_geometry(metrics_dir) == (120.0, 5)
    reader = _reader(metrics_dir, 600, 5)
    try:
        d = reader.to_dict()
        assert d["endpoints"]["/chat"]["window"]["requests"] == 2 * len(VALUES)
        assert _storage_errors(reader)[WINDOW_GEOMETRY_REASON] == 0
    finally:
        reader.close()


def test_live_writer_geometry_wins_over_dead_files(metrics_dir: str) -> None:
    """A live worker runs the current configuration: its geometry is the archive's, even
    though the dead files (of the old one) are the only ones compacted."""
    live = _reader(metrics_dir, 600, 5)
    try:
        live.record_request("/chat", "POST", 0.1, 200)
        _record_and_close(metrics_dir, 300, 5)
        assert compact(metrics_dir).absorbed == 1
        assert _archive_geometry(metrics_dir) == (120.0, 5)
        d = live.to_dict()
        assert d["endpoints"]["/chat"]["window"]["requests"] == len(VALUES) + 1
        assert d["endpoints"]["/chat"]["latency_seconds"]["min"] == min(VALUES)
    finally:
        live.close()


def test_archive_windows_of_an_old_geometry_are_rebucketed(metrics_dir: str) -> None:
    """After a configuration change the archive's own windows are re-bucketed, not dropped."""
    _record_and_close(metrics_dir, 300, 5)
    compact(metrics_dir)
    assert _archive_geometry(metrics_dir) == (60.0, 5)
    _record_and_close(metrics_dir, 600, 5, values=(0.5,))
    compact(metrics_dir)
    assert _archive_geometry(metrics_dir) == (120.0, 5)
    reader = _reader(metrics_dir, 600, 5)
    try:
        d = reader.to_dict()
        assert d["endpoints"]["/chat"]["window"]["requests"] == len(VALUES) + 1
        assert d["endpoints"]["/chat"]["latency_seconds"]["max"] == max(VALUES)
        assert _storage_errors(reader)[WINDOW_GEOMETRY_REASON] == 0
    finally:
        reader.close()


def test_unplaceable_slots_outside_the_window_are_not_a_loss(metrics_dir: str) -> None:
    """A slot that cannot be re-bucketed but has left the window anyway is not counted."""
    name = _record_and_close(metrics_dir, 300, 5)
    view = next(v for v in DirectoryReader(metrics_dir).read()[0] if v.name == name)
    soon = ArchiveBuilder(0, 30.0, 3)
    soon.add(view)
    assert soon.payloads[("storage_errors", (WINDOW_GEOMETRY_REASON,))] == [float(_used_slots(metrics_dir, name))]
    later = ArchiveBuilder(0, 30.0, 3, now=soon.now + 3600)
    later.add(view)
    assert ("storage_errors", (WINDOW_GEOMETRY_REASON,)) not in later.payloads
    assert later.payloads[("request", ("/chat", "POST", "200", "0"))][kinds.REQ_COUNT] == len(VALUES)
