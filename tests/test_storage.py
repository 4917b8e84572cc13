"""Per-worker files: exact merging, bad files skipped and reported, names, modes, liveness."""

from __future__ import annotations

import os
import re
import shutil
import stat

import pytest

from flask_gatewayz_metrics import MetricsCollector, PrometheusExporter
from flask_gatewayz_metrics.storage import layout
from flask_gatewayz_metrics.storage.reader import DirectoryReader
from flask_gatewayz_metrics.testing import collectors_on_one_directory, worker_file

WORKER_NAME = re.compile(r"^worker-(\d+)-([0-9a-f]{16})\.gwzm$")


def worker_files(directory: str) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(layout.WORKER_SUFFIX))


@pytest.fixture
def four(metrics_dir: str, clock):  # type: ignore[no-untyped-def]
    """Four collectors on one directory, standing in for four worker processes."""
    with collectors_on_one_directory(4, metrics_dir, clock=clock) as collectors:
        yield collectors


def record_some(collectors: list[MetricsCollector]) -> None:
    """Worker i records i+1 rounds of every kind of metric."""
    for i, c in enumerate(collectors):
        for _ in range(i + 1):
            c.record_request("/api/chat", "POST", 0.5, 200, provider="openai", model="gpt-4")
            c.record_request("/api/chat", "POST", 0.25, 500)
            c.record_cache_hit()
            c.record_cache_miss()
            c.record_db_query(0.125)
            c.record_external_api_call("stripe", error=True)
            c.record_request("/x", "GET", -1.0, 200)


def test_merged_totals_are_exact_sums(four: list[MetricsCollector]) -> None:
    """Totals merged from four worker files equal the sum of what each recorded, exactly."""
    record_some(four)
    rounds = 1 + 2 + 3 + 4
    for reader in four:
        d = reader.to_dict()
        chat = d["endpoints"]["/api/chat"]
        assert (chat["requests"], chat["errors"]) == (2 * rounds, rounds)
        assert chat["status"] == {"200": rounds, "500": rounds}
        assert chat["latency_seconds"]["avg"] == 0.375
        assert chat["window"]["requests"] == 2 * rounds
        assert d["providers"]["openai"]["requests"] == rounds
        assert d["providers"]["openai"]["latency_seconds"]["min"] == 0.5
        assert d["models"]["gpt-4"]["requests"] == rounds
        assert d["cache"] == {"hits": rounds, "misses": rounds, "hit_rate": 0.5}
        assert d["database"] == {
            "queries": rounds, "latency_avg_seconds": 0.125, "latency_min_seconds": 0.125, "latency_max_seconds": 0.125,
        }
        assert d["external_apis"] == {"stripe": {"calls": rounds, "errors": rounds}}
        assert d["storage"]["dropped"] == {"invalid_latency": rounds}
        assert d["storage"]["worker_files"] == 4
        assert d["storage"]["live_worker_files"] == 4
        assert d["storage"]["problems"] == []
    text = PrometheusExporter(four[0]).export()
    assert 'http_requests_total{endpoint="/api/chat",method="POST"} 20.0\n' in text
    assert 'http_request_duration_seconds_sum{endpoint="/api/chat",method="POST"} 7.5\n' in text
    assert 'gatewayz_metrics_worker_files{state="live"} 4.0\n' in text


def test_files_are_created_lazily(four: list[MetricsCollector], metrics_dir: str) -> None:
    """A collector that only reads leaves no worker file; the first write creates one."""
    four[0].snapshot()
    assert worker_files(metrics_dir) == []
    four[1].record_cache_hit()
    assert len(worker_files(metrics_dir)) == 1


def test_file_names_unique_and_private(four: list[MetricsCollector], metrics_dir: str) -> None:
    """Each collector writes its own uniquely named worker file, mode 0o600."""
    record_some(four)
    names = worker_files(metrics_dir)
    assert len(names) == 4
    nonces = set()
    for name in names:
        match = WORKER_NAME.match(name)
        assert match, name
        assert int(match.group(1)) == os.getpid()
        nonces.add(match.group(2))
        mode = os.stat(os.path.join(metrics_dir, name)).st_mode
        assert stat.S_IMODE(mode) == 0o600, oct(mode)
    assert len(nonces) == 4
    control = os.stat(os.path.join(metrics_dir, layout.CONTROL_NAME)).st_mode
    assert stat.S_IMODE(control) == 0o600


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def test_bad_files_are_skipped_and_reported(four: list[MetricsCollector], metrics_dir: str) -> None:
    """Garbage, empty, truncated and foreign files are skipped and reported; other values stay intact."""
    record_some(four[:2])
    before = four[2].to_dict()
    # A truncated copy of a real worker file: its header claims more bytes than there are.
    source = os.path.join(metrics_dir, worker_files(metrics_dir)[0])
    with open(source, "rb") as f:
        real = f.read()
    used = layout.HEADER.unpack_from(real, 0)[2]
    assert used > layout.HEADER_SIZE
    bad = {
        "worker-1-garbage.gwzm": (os.urandom(4096), "foreign"),
        "worker-2-empty.gwzm": (b"", "empty"),
        "worker-3-short.gwzm": (real[:40], "truncated"),
        "worker-4-cut.gwzm": (real[: used - 8], "truncated"),
        "worker-5-magic.gwzm": (b"NOPE" + real[4:], "foreign"),
    }
    for name, (data, _) in bad.items():
        _write(os.path.join(metrics_dir, name), data)
    shutil.copy(source, os.path.join(metrics_dir, "not-a-worker-file.txt"))  # ignored: wrong suffix

    snap = four[2].snapshot()
    reported = {os.path.basename(p.path): p.reason for p in snap.problems}
    assert reported == {name: reason for name, (_, reason) in bad.items()}
    d = snap.to_dict()
    assert d["endpoints"] == before["endpoints"]
    assert d["cache"] == before["cache"] == {"hits": 3, "misses": 3, "hit_rate": 0.5}
    assert d["storage"]["worker_files"] == 2
    assert len(d["storage"]["problems"]) == len(bad)
    # That scrape's compaction moved the bad files to quarantine/ and counted them.
    quarantined = os.listdir(os.path.join(metrics_dir, layout.QUARANTINE_DIR))
    assert sorted(name.split("-", 2)[2] for name in quarantined) == sorted(bad)
    for reader in four:
        d = reader.to_dict()
        assert d["storage"]["problems"] == []
        assert d["storage"]["errors"] == {"empty": 1, "foreign": 2, "truncated": 2}
        assert d["endpoints"] == before["endpoints"]
        assert d["cache"] == before["cache"]
    text = PrometheusExporter(four[0]).export()
    assert 'gatewayz_metrics_storage_errors_total{reason="foreign"} 2.0\n' in text
    # Recording goes on and is still merged.
    four[3].record_cache_hit()
    assert four[0].to_dict()["cache"]["hits"] == 4


def test_file_that_turns_bad_later_is_dropped_not_fatal(four: list[MetricsCollector], metrics_dir: str) -> None:
    """A worker file indexed by an earlier scrape that is later overwritten with garbage is skipped."""
    record_some(four[:2])
    assert four[0].to_dict()["cache"]["hits"] == 3
    four[1].close()
    victim = next(
        os.path.join(metrics_dir, n) for n in worker_files(metrics_dir)
        if os.path.join(metrics_dir, n) != worker_file(four[0])
    )
    with open(victim, "r+b") as f:
        f.write(b"JUNK")
    snap = four[0].snapshot()
    assert [(p.path, p.reason) for p in snap.problems] == [(victim, "foreign")]
    assert snap.to_dict()["cache"]["hits"] == 1


def test_closed_collector_is_dead_but_counted(four: list[MetricsCollector]) -> None:
    """A closed collector's file is reported dead (not live) and its counts remain."""
    record_some(four)
    four[3].close()
    text = PrometheusExporter(four[0]).export()
    assert 'gatewayz_metrics_worker_files{state="live"} 3.0\n' in text
    assert 'gatewayz_metrics_worker_files{state="dead"} 1.0\n' in text
    # That scrape compacted the dead file into the archive; its counts remain.
    snap = four[0].snapshot()
    assert (snap.worker_files, snap.live_files) == (3, 3)
    assert snap.to_dict()["cache"]["hits"] == 10


def test_liveness_follows_the_flock(four: list[MetricsCollector], metrics_dir: str) -> None:
    """A file is live exactly while its writer holds the flock; closing releases it."""
    record_some(four[:2])
    views, _ = DirectoryReader(metrics_dir).read()
    assert sorted(v.live for v in views) == [True, True]
    four[0].close()
    views, _ = DirectoryReader(metrics_dir).read()
    live = {os.path.basename(v.path): v.live for v in views}
    assert live[os.path.basename(worker_file(four[1]) or "")] is True
    assert sorted(live.values()) == [False, True]
    # A collector that writes again after close starts a new (live) file.
    four[0].record_cache_hit()
    snap = four[2].snapshot()
    assert (snap.worker_files, snap.live_files) == (3, 2)
    assert snap.to_dict()["cache"]["hits"] == 4


def test_other_directory_is_not_merged(four: list[MetricsCollector], tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Collectors on different directories do not see each other's values."""
    record_some(four[:1])
    other = MetricsCollector(str(tmp_path / "other"))
    try:
        assert other.to_dict()["cache"]["hits"] == 0
        other.record_cache_hit()
        assert four[0].to_dict()["cache"]["hits"] == 1
    finally:
        other.close()
