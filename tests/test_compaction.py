"""Compaction of dead workers' files: crash safety, windows, bounded directory, faults."""

from __future__ import annotations

import mmap
import os
import shutil
import signal
import stat
import struct
import subprocess
import time
from typing import Any

import pytest

from flask_gatewayz_metrics import MetricsCollector, PrometheusExporter, record_writer
from flask_gatewayz_metrics.storage import access, compact, layout, worker_file
from flask_gatewayz_metrics.storage.compaction import QUARANTINE_KEEP
from flask_gatewayz_metrics.testing import worker_file as file_of
from flask_gatewayz_metrics.testing import worker_files

STEPS = ("temp_written", "archive_renamed", "worker_unlinked")


def totals(directory: str, clock: Any = time.time) -> dict[str, Any]:
    """What a scrape shows, read by a collector that never compacts."""
    reader = MetricsCollector(directory, auto_compact=False, clock=clock)
    try:
        d = reader.to_dict()
    finally:
        reader.close()
    return {k: d[k] for k in ("endpoints", "providers", "models", "cache", "database", "external_apis")}


def dead_generation(directory: str, index: int, clock: Any = time.time) -> None:
    """A worker that records a little and exits (its file stays, unlocked)."""
    c = MetricsCollector(directory, clock=clock, strict=True)
    c.record_request("/api/chat", "POST", 0.01 * (1 + index % 7), 200 if index % 5 else 502, "openai", "gpt-4")
    c.record_request(f"/gen/{index % 3}", "GET", 0.002, 200)
    c.record_cache_hit()
    c.record_db_query(0.003)
    c.record_external_api_call("stripe", error=index % 2 == 0)
    c.close()


def crash_at(step: str) -> Any:
    def hook(name: str) -> None:
        if name == step:
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


@pytest.mark.parametrize("step", STEPS)
def test_crash_at_any_step_neither_loses_nor_double_counts(metrics_dir: str, step: str) -> None:
    """A compactor SIGKILLed after each durable step leaves totals exact; the next run finishes the job."""
    for i in range(3):
        dead_generation(metrics_dir, i)
    assert compact(metrics_dir).absorbed == 3  # an archive exists before the crash
    for i in range(3, 8):
        dead_generation(metrics_dir, i)
    live = MetricsCollector(metrics_dir, strict=True)
    live.record_request("/live", "GET", 0.1, 200)
    expected = totals(metrics_dir)
    assert expected["endpoints"]["/api/chat"]["requests"] == 8

    pid = os.fork()
    if pid == 0:  # the compactor that dies mid-way
        try:
            compact(metrics_dir, step=crash_at(step))
        finally:
            os._exit(3)  # not reached when the step exists
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == -signal.SIGKILL

    assert totals(metrics_dir) == expected
    result = compact(metrics_dir)
    assert result.ran
    assert totals(metrics_dir) == expected
    assert worker_files(metrics_dir) == [os.path.basename(file_of(live) or "")]
    live.close()


def test_archive_forgets_names_of_deleted_files(metrics_dir: str) -> None:
    """Absorbed names are dropped once their files are gone, so the archive does not grow with generations."""
    for i in range(50):
        dead_generation(metrics_dir, i)
        compact(metrics_dir)
    size_after_50 = os.path.getsize(os.path.join(metrics_dir, layout.ARCHIVE_NAME))
    for i in range(50, 150):
        dead_generation(metrics_dir, i)
        compact(metrics_dir)
    assert os.path.getsize(os.path.join(metrics_dir, layout.ARCHIVE_NAME)) <= size_after_50 + 1024
    assert totals(metrics_dir)["endpoints"]["/api/chat"]["requests"] == 150


def test_directory_bounded_by_live_workers(metrics_dir: str) -> None:
    """300 generations scraped along the way leave only live files + a constant in the directory."""
    scraper = MetricsCollector(metrics_dir)
    live = [MetricsCollector(metrics_dir) for _ in range(4)]
    for c in live:
        c.record_cache_miss()
    for i in range(300):
        dead_generation(metrics_dir, i)
        if i % 25 == 0:
            scraper._last_compaction = float("-inf")  # as if COMPACTION_INTERVAL_SECONDS had passed
            scraper.snapshot()
    scraper._last_compaction = float("-inf")
    d = scraper.to_dict()
    assert d["endpoints"]["/api/chat"]["requests"] == 300
    assert d["cache"] == {"hits": 300, "misses": 4, "hit_rate": pytest.approx(300 / 304)}
    assert len(worker_files(metrics_dir)) <= len(live) + 1
    others = set(os.listdir(metrics_dir)) - set(worker_files(metrics_dir))
    assert others <= {layout.CONTROL_NAME, layout.ARCHIVE_NAME, layout.COMPACTION_LOCK_NAME}
    for c in [*live, scraper]:
        c.close()


def test_windows_survive_compaction(metrics_dir: str, clock: Any) -> None:
    """Dead workers' windowed sketches keep feeding the gauges until their slots age out."""
    clock.now = 1_700_000_040.0  # 40 s into a 60 s slot
    a = MetricsCollector(metrics_dir, clock=clock)
    b = MetricsCollector(metrics_dir, clock=clock)
    for i in range(100):
        a.record_request("/api/chat", "POST", 0.01 + i / 1000, 200, "openai", "gpt-4")
        b.record_request("/api/chat", "POST", 0.2 + i / 1000, 503 if i % 10 == 0 else 200, "openai", "gpt-4")
    clock.advance(61)  # a second slot, recorded by b only
    for _ in range(10):
        b.record_request("/api/chat", "POST", 0.5, 200, "anthropic", "claude-3")
    exporter = PrometheusExporter(MetricsCollector(metrics_dir, clock=clock, auto_compact=False))
    before = exporter.export()
    b.close()
    a.close()
    assert compact(metrics_dir).absorbed == 2
    assert worker_files(metrics_dir) == []
    assert exporter.export() == before.replace(
        'gatewayz_metrics_worker_files{state="live"} 2.0', 'gatewayz_metrics_worker_files{state="live"} 0.0'
    )
    assert "http_request_latency_p95_seconds{" in before
    clock.advance(300)  # both slots leave the 300 s window
    after = exporter.export()
    assert "http_request_latency_p95_seconds{" not in after
    assert 'http_requests_total{endpoint="/api/chat",method="POST"} 210.0' in after
    assert 'provider_latency_min_seconds{provider="anthropic"}' not in after


def test_compaction_drops_files_from_before_a_reset(metrics_dir: str) -> None:
    """After a reset, neither the old archive nor old dead files come back through compaction."""
    for i in range(3):
        dead_generation(metrics_dir, i)
    compact(metrics_dir)
    dead_generation(metrics_dir, 99)
    resetter = MetricsCollector(metrics_dir)
    resetter.reset()
    result = compact(metrics_dir)
    assert result.stale_deleted == 1
    assert totals(metrics_dir)["endpoints"] == {}
    dead_generation(metrics_dir, 5)
    compact(metrics_dir)
    assert totals(metrics_dir)["endpoints"]["/api/chat"]["requests"] == 1
    resetter.close()



def test_a_reset_during_compaction_keeps_the_new_epochs_files(
    metrics_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reset lands after the compactor read the epoch and before it read the files, and
    a worker records 50 requests into its new-epoch file and exits in between (gunicorn
    recycling right after ``POST /metrics/reset``). That file is left for the next run:
    absorbed into an archive stamped with the old epoch, which readers ignore, the 50
    requests were lost. (The interleaving is forced by running the reset and the worker
    when the compactor starts reading; the rest is the real code.)"""
    from flask_gatewayz_metrics.storage.reader import DirectoryReader

    old = MetricsCollector(metrics_dir, auto_compact=False)
    old.record_request("/a", "GET", 0.1, 200)
    old.close()  # a dead file of epoch 0: compaction has work to do
    admin = MetricsCollector(metrics_dir, auto_compact=False)
    read = DirectoryReader.read

    def reset_first(self: DirectoryReader, dir_fd: int | None = None) -> Any:
        monkeypatch.setattr(DirectoryReader, "read", read)
        admin.reset()
        worker = MetricsCollector(metrics_dir, auto_compact=False)
        for _ in range(50):
            worker.record_request("/b", "GET", 0.1, 200)
        worker.close()
        return read(self, dir_fd)

    monkeypatch.setattr(DirectoryReader, "read", reset_first)
    compact(metrics_dir)
    compact(metrics_dir)  # the next run absorbs the new epoch's file
    scraper = MetricsCollector(metrics_dir, auto_compact=False)
    assert scraper.snapshot().total_requests == 50
    scraper.close()
    admin.close()

def test_quarantine_keeps_only_the_newest(metrics_dir: str) -> None:
    """Bad files are counted and moved aside; quarantine/ keeps at most QUARANTINE_KEEP files."""
    for batch in range(3):
        for i in range(QUARANTINE_KEEP):
            with open(os.path.join(metrics_dir, f"worker-{batch}-{i}.gwzm"), "wb") as f:
                f.write(b"junk" * 40)
        compact(metrics_dir)
    assert worker_files(metrics_dir) == []
    assert len(os.listdir(os.path.join(metrics_dir, layout.QUARANTINE_DIR))) == QUARANTINE_KEEP
    reader = MetricsCollector(metrics_dir)
    assert reader.to_dict()["storage"]["errors"] == {"foreign": 3 * QUARANTINE_KEEP}
    reader.close()


def fork_recorder(metrics_dir: str, progress: mmap.mmap, provider: str | None = None, model: str | None = None) -> int:
    """A child that records /api/chat requests until killed, publishing in ``progress``
    (shared memory) how many it has finished recording."""
    pid = os.fork()
    if pid == 0:
        try:
            signal.alarm(30)  # never outlives the test
            c = MetricsCollector(metrics_dir, strict=True)
            done = 0
            while True:
                c.record_request("/api/chat", "POST", 0.01, 200, provider, model)
                done += 1
                struct.pack_into("<q", progress, 0, done)
        finally:
            os._exit(1)
    return pid


def test_sigkill_loses_nothing_recorded(metrics_dir: str) -> None:
    """A worker SIGKILLed mid-traffic keeps every request it recorded; scrapes never go backwards."""
    progress = mmap.mmap(-1, 8)
    pid = fork_recorder(metrics_dir, progress, "openai", "gpt-4")
    scraper = MetricsCollector(metrics_dir)
    seen: list[int] = []
    deadline = time.monotonic() + 20
    while struct.unpack_from("<q", progress, 0)[0] < 20_000 and time.monotonic() < deadline:
        endpoints = scraper.to_dict()["endpoints"]
        seen.append(endpoints["/api/chat"]["requests"] if endpoints else 0)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    recorded = struct.unpack_from("<q", progress, 0)[0]
    final = scraper.to_dict()["endpoints"]["/api/chat"]["requests"]
    # The kill can land between a finished record and the progress update: at most one more.
    assert recorded <= final <= recorded + 1
    assert recorded >= 1000
    assert seen == sorted(seen), "a scrape went backwards"
    scraper._last_compaction = float("-inf")
    scraper.snapshot()  # compacts the killed worker's file
    assert worker_files(metrics_dir) == []
    assert scraper.to_dict()["endpoints"]["/api/chat"]["requests"] == final
    scraper.close()


def test_reset_during_traffic(metrics_dir: str) -> None:
    """A reset while another process records: nothing from before it reappears, recording goes on."""
    progress = mmap.mmap(-1, 8)
    pid = fork_recorder(metrics_dir, progress)
    admin = MetricsCollector(metrics_dir)
    try:
        deadline = time.monotonic() + 20
        while struct.unpack_from("<q", progress, 0)[0] < 5000 and time.monotonic() < deadline:
            time.sleep(0.01)
        before_reset = struct.unpack_from("<q", progress, 0)[0]
        admin.reset()
        after_reset = struct.unpack_from("<q", progress, 0)[0]
        while struct.unpack_from("<q", progress, 0)[0] < after_reset + 5000 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        after = struct.unpack_from("<q", progress, 0)[0]
        shown = admin.to_dict()["endpoints"]["/api/chat"]["requests"]
        # Records made while reset() ran may land on either side of it; none from before.
        assert after - after_reset - 1 <= shown <= after - before_reset + 1
        admin._last_compaction = float("-inf")
        admin.snapshot()
        assert admin.to_dict()["endpoints"]["/api/chat"]["requests"] == shown
    finally:
        admin.close()


def test_reader_follows_a_growing_file(metrics_dir: str) -> None:
    """A file that grows (re-mapped several times) between scrapes is read completely and exactly."""
    writer = MetricsCollector(metrics_dir, strict=True, label_limits={"endpoint": 5000})
    reader = MetricsCollector(metrics_dir)
    writer.record_request("/first", "GET", 0.1, 200)
    assert list(reader.to_dict()["endpoints"]) == ["/first"]
    for i in range(4500):  # each new endpoint adds ~0.5 KiB (records, sparse sketch): many growths
        writer.record_request(f"/e{i}", "GET", 0.1, 200)
    endpoints = reader.to_dict()["endpoints"]
    assert len(endpoints) == 4501
    assert all(e["requests"] == 1 for e in endpoints.values())
    # At least 7 doublings from the initial size: re-mapped (and re-read) that many times.
    assert os.path.getsize(file_of(writer) or "") >= 2**7 * worker_file.INITIAL_SIZE
    writer.close()
    reader.close()


def test_vanished_directory_is_recreated(metrics_dir: str) -> None:
    """If the metrics directory is deleted while serving, the next write starts it again."""
    c = MetricsCollector(metrics_dir)
    c.record_request("/a", "GET", 0.1, 200)
    c.close()  # the next write needs a new file
    shutil.rmtree(metrics_dir)
    for _ in range(3):
        c.record_request("/a", "GET", 0.1, 200)
    snap = c.snapshot()
    assert snap.storage_error is None
    assert snap.to_dict()["endpoints"]["/a"]["requests"] == 3
    assert stat.S_IMODE(os.stat(metrics_dir).st_mode) == 0o700
    c.close()


def test_directory_re_created_by_a_newcomer_is_noticed_by_old_writers(
    metrics_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that started after the deletion re-creates the directory without telling
    anyone (it never mapped the old control file); an old writer still notices it at its
    next write once ``DIRECTORY_CHECK_SECONDS`` have passed, and counts what it lost."""
    monkeypatch.setattr(record_writer, "DIRECTORY_CHECK_SECONDS", 0.2)
    old = MetricsCollector(metrics_dir)
    for _ in range(4):
        old.record_request("/a", "GET", 0.1, 200)
    shutil.rmtree(metrics_dir)
    newcomer = MetricsCollector(metrics_dir)  # re-creates the directory and a new control file
    newcomer.record_request("/b", "GET", 0.1, 200)
    time.sleep(0.25)
    for _ in range(3):
        old.record_request("/a", "GET", 0.1, 200)  # the first one checks the directory
    endpoints = newcomer.snapshot().to_dict()["endpoints"]
    assert endpoints["/a"]["requests"] == 3 and endpoints["/b"]["requests"] == 1
    assert newcomer.snapshot().dropped()["directory_lost"] == 4
    old.close()
    newcomer.close()


def test_unusable_directory_keeps_the_app_running(metrics_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A path that cannot hold the directory: writes never raise, drops are counted, recording resumes."""
    monkeypatch.setattr(access, "RETRY_SECONDS", 0.0)
    c = MetricsCollector(metrics_dir)
    c.record_request("/a", "GET", 0.1, 200)
    c.close()
    shutil.rmtree(metrics_dir)
    with open(metrics_dir, "w") as f:  # a file where the directory should be
        f.write("not a directory")
    for _ in range(10):
        c.record_request("/a", "GET", 0.1, 200)
    snap = c.snapshot()
    assert snap.storage_error is not None
    assert snap.dropped()["storage_unavailable"] == 10
    os.unlink(metrics_dir)  # the problem goes away
    c.record_request("/a", "GET", 0.1, 200)
    snap = c.snapshot()
    assert snap.storage_error is None
    assert snap.to_dict()["endpoints"]["/a"]["requests"] == 1
    c.close()


def _mount_tmpfs(path: str, size: str) -> bool:
    os.makedirs(path, exist_ok=True)
    command = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path]
    done = subprocess.run(command, check=False, capture_output=True)
    return done.returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs to fill needs root (CI runs as root)")
def test_disk_full_keeps_recorded_series_and_reports(tmp_path: Any) -> None:
    """On a full disk the worker file keeps its series and counts; new series are dropped and reported."""
    mount = str(tmp_path / "tiny")
    assert _mount_tmpfs(mount, "400k"), "mount -t tmpfs failed although running as root"
    try:
        c = MetricsCollector(os.path.join(mount, "metrics"))  # the tmpfs root is world-writable
        c.record_request("/kept", "GET", 0.1, 200)
        for i in range(900):  # ~0.6 KiB each: grows the file past what 400 KiB can hold
            c.record_request(f"/new/{i}", "GET", 0.1, 200)
        for _ in range(5):
            c.record_request("/kept", "GET", 0.1, 200)
        snap = c.snapshot()
        assert snap.to_dict()["endpoints"]["/kept"]["requests"] == 6
        assert snap.dropped()["storage_unavailable"] >= 1
        assert snap.storage_error is not None and "No space" in snap.storage_error
        c.close()
    finally:
        subprocess.run(["umount", "-l", mount], check=False)

