"""The metrics directory is hostile input: files, links, FIFOs, other users, races, full disks.

Real processes throughout: a second Unix user made with ``useradd``, forked writers,
a small tmpfs. The gunicorn cases (master and deleted directory) are in
``test_hostile_gunicorn.py``.
"""

from __future__ import annotations

import gc
import math
import multiprocessing
import os
import pwd
import shutil
import signal
import stat
import struct
import subprocess
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flask_gatewayz_metrics import GatewayzMetrics, MetricsCollector, PrometheusExporter
from flask_gatewayz_metrics.health import health_report
from flask_gatewayz_metrics.settings import Settings
from flask_gatewayz_metrics.snapshot import Snapshot
from flask_gatewayz_metrics.storage import compact, kinds, layout
from flask_gatewayz_metrics.storage.directory import MetricsDirectoryError

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="useradd, chown and mount need root (CI runs as root)")


# ----------------------------------------------------------------- helpers
def _worker_files(directory: str) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(layout.WORKER_SUFFIX) and not n.startswith("."))


def _scrape(collector: MetricsCollector) -> Snapshot:
    """What a scrape does: snapshot, exposition text, JSON and health (none may raise)."""
    PrometheusExporter(collector).export()
    snap = collector.snapshot()
    snap.to_dict()
    health_report(snap, Settings())
    return snap


def _real_file(record: Callable[[MetricsCollector], None]) -> bytes:
    """The used bytes of a worker file written by this library."""
    directory = tempfile.mkdtemp(prefix="gwzm-real-")
    try:
        c = MetricsCollector(directory)
        record(c)
        c.close()
        name = _worker_files(directory)[0]
        with open(os.path.join(directory, name), "rb") as f:
            data = f.read()
        used = struct.unpack_from("<Q", data, 8)[0]
        return data[:used]
    finally:
        shutil.rmtree(directory)


def _small(c: MetricsCollector) -> None:
    c.record_cache_hit()
    c.record_db_query(0.01)
    c.record_external_api_call("stripe", error=True)


def _full(c: MetricsCollector) -> None:
    c.record_request("/v1/chat", "POST", 0.25, 200, provider="openai", model="gpt-4o")
    c.record_request("/v1/chat", "POST", 1.5, 502, provider="anthropic", model="claude")
    # 30 distinct sketch buckets: a chain of four bucket blocks (4 + 8 + 16 + 32 entries).
    for k in range(30):
        c.record_request("/v1/chat", "POST", 0.01 * 1.1**k, 200, provider="openai", model="gpt-4o")
    _small(c)


SMALL = _real_file(_small)
FULL = _real_file(_full)


class FuzzTarget:
    """One directory and one scraping collector; each case drops a new file into it."""

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="gwzm-fuzz-")
        self.collector = MetricsCollector(self.directory, auto_compact=False)
        self.collector.record_request("/kept", "GET", 0.1, 200)
        self.cases = 0
        self.ran: set[str] = set()

    def check(self, content: bytes, compact_too: bool = False, expect_records: bool = False) -> None:
        self.ran.add(os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0].split("[")[0])
        self.cases += 1
        path = os.path.join(self.directory, f"worker-1-{self.cases:08x}.gwzm")
        with open(path, "wb") as f:
            f.write(content)
        snap = _scrape(self.collector)
        if compact_too:
            compact(self.directory)
            snap = _scrape(self.collector)
        else:
            os.unlink(path)
        assert snap.to_dict()["endpoints"]["/kept"]["requests"] >= 1
        if expect_records:
            assert not snap.problems and snap.to_dict()["cache"]["hits"] == 1


FUZZ_TESTS = 4
"""Tests that feed ``FuzzTarget``: together at least 10,000 cases."""


@pytest.fixture(scope="module")
def fuzz() -> Iterator[FuzzTarget]:
    target = FuzzTarget()
    yield target
    print(f"fuzz cases: {target.cases} from {len(target.ran)} tests")
    target.collector.close()
    shutil.rmtree(target.directory)
    if len(target.ran) == FUZZ_TESTS:  # all of them ran (not a -k selection)
        assert target.cases >= 10_000, target.cases


def test_every_truncation_of_a_real_file_is_skipped_or_read(fuzz: FuzzTarget) -> None:
    """A real worker file cut at every length (aligned or not) never breaks a scrape."""
    for length in range(len(SMALL) + 1):
        fuzz.check(SMALL[:length])
    # Files are pre-allocated beyond ``used``: a copy cut anywhere there (at any length,
    # not only multiples of 8) still holds every record.
    preallocated = SMALL + bytes(256)
    for length in range(len(SMALL) + 1, len(preallocated) + 1):
        fuzz.check(preallocated[:length], expect_records=True)
    # The big file (windows with sparse sketches: records, then bucket blocks) at every length.
    for length in range(len(FULL)):
        fuzz.check(FULL[:length])


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.binary(max_size=4096))
def test_random_bytes_never_break_a_scrape(fuzz: FuzzTarget, data: bytes) -> None:
    """Random bytes, also behind a valid magic and version, are skipped or read, never raised."""
    fuzz.check(data)
    fuzz.check(FULL[:16] + data)


@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    source=st.sampled_from([SMALL, FULL]),
    flips=st.lists(st.tuples(st.integers(0, 2**31), st.integers(0, 7)), min_size=1, max_size=4),
    header_only=st.booleans(),
    compact_too=st.booleans(),
)
def test_bit_flips_in_headers_and_records_never_break_a_scrape(
    fuzz: FuzzTarget, source: bytes, flips: list[tuple[int, int]], header_only: bool, compact_too: bool
) -> None:
    """Bit flips in file and record headers, keys and payloads (then compaction) never break a scrape."""
    data = bytearray(source)
    for position, bit in flips:
        index = position % (layout.HEADER_SIZE + 16 if header_only else len(data))
        data[index] ^= 1 << bit
    fuzz.check(bytes(data), compact_too)


HOSTILE_DOUBLES = [math.nan, math.inf, -math.inf, 1e308, -1e308, -1.0, 2.0**53 + 2, 5e-324, 0.5, 1e6]


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    source=st.sampled_from([SMALL, FULL]),
    writes=st.lists(
        st.tuples(st.integers(0, 2**31), st.sampled_from(HOSTILE_DOUBLES) | st.floats()), min_size=1, max_size=6
    ),
    compact_too=st.booleans(),
)
def test_hostile_values_in_records_never_break_a_scrape(
    fuzz: FuzzTarget, source: bytes, writes: list[tuple[int, float]], compact_too: bool
) -> None:
    """NaN, infinities, huge and negative numbers written over payloads (also archived) never break a scrape."""
    data = bytearray(source)
    slots = (len(data) - layout.HEADER_SIZE) // 8
    for position, value in writes:
        struct.pack_into("<d", data, layout.HEADER_SIZE + 8 * (position % slots), value)
    fuzz.check(bytes(data), compact_too)


# ----------------------------------------------------------- FIFOs and links
def _in_thread(fn: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Run ``fn`` in a thread; fail (instead of hanging) if it blocks."""
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "blocked on the metrics directory"
    return out[0] if out else None


def test_fifo_never_blocks_a_scrape_or_compaction(metrics_dir: str) -> None:
    """A FIFO named like a worker file is reported, never opened blocking, and moved away."""
    c = MetricsCollector(metrics_dir, auto_compact=False)
    c.record_request("/a", "GET", 0.1, 200)
    os.mkfifo(os.path.join(metrics_dir, "x.gwzm"))
    snap = _in_thread(c.snapshot)
    assert [p.reason for p in snap.problems] == ["not_regular_file"]
    assert snap.to_dict()["endpoints"]["/a"]["requests"] == 1
    assert _in_thread(lambda: compact(metrics_dir)).quarantined == 1
    assert "x.gwzm" not in os.listdir(metrics_dir)
    lock = os.path.join(metrics_dir, layout.COMPACTION_LOCK_NAME)
    os.unlink(lock)
    os.mkfifo(lock)  # a FIFO as the compaction lock: refused at once, not waited on

    def compact_error() -> str:
        try:
            compact(metrics_dir)
        except OSError as exc:
            return type(exc).__name__
        return "no error"

    assert _in_thread(compact_error) == "PermissionError"
    c.close()


@pytest.fixture(scope="module")
def other_user() -> Iterator[pwd.struct_passwd]:
    """A second Unix user, created for these tests and removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("creating a user needs root (CI runs as root)")
    name = f"gwzm{os.getpid() % 100_000}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False)


def _as_user(user: pwd.struct_passwd, fn: Callable[[], None]) -> None:
    """Run ``fn`` in a forked child that has become ``user``; fail if it fails."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            fn()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.fixture
def shared_dir(other_user: pwd.struct_passwd) -> Iterator[str]:
    """A metrics directory of ours that the other user's group may write (0770)."""
    path = tempfile.mkdtemp(prefix="gwzm-shared-", dir="/tmp")
    os.chown(path, 0, other_user.pw_gid)
    os.chmod(path, 0o770)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_other_users_files_are_ignored_and_reported(shared_dir: str, other_user: pwd.struct_passwd) -> None:
    """A worker file another user wrote with this library and copied in is not counted nor archived."""

    def forge() -> None:
        own = tempfile.mkdtemp(prefix="gwzm-forger-", dir="/tmp")
        c = MetricsCollector(own)
        for _ in range(5000):
            c.record_request("/v1/chat", "POST", 0.1, 200)
        c.close()
        name = _worker_files(own)[0]
        shutil.copyfile(os.path.join(own, name), os.path.join(shared_dir, "worker-1-forged.gwzm"))
        shutil.rmtree(own)

    c = MetricsCollector(shared_dir, auto_compact=False)
    for _ in range(100):
        c.record_request("/v1/chat", "POST", 0.1, 200)
    _as_user(other_user, forge)
    snap = c.snapshot()
    assert snap.total_requests == 100
    assert [p.reason for p in snap.problems] == ["untrusted_owner"]
    report, status = health_report(snap, Settings())
    assert status == 200 and report["status"] == "degraded"
    assert any("trusted user" in r for r in report["reasons"])
    # A deployment that trusts that uid (a Celery worker running as another user) counts it.
    trusting = MetricsCollector(shared_dir, trusted_uids=[other_user.pw_uid], auto_compact=False)
    assert trusting.snapshot().total_requests == 5100
    trusting.close()
    c.compact()  # quarantined, never absorbed: the forged numbers do not become permanent
    c.close()
    assert MetricsCollector(shared_dir).snapshot().total_requests == 100


def test_links_planted_by_another_user_are_never_followed(
    shared_dir: str, other_user: pwd.struct_passwd, tmp_path: Any
) -> None:
    """A quarantine symlink and a worker-file symlink are refused at start and never followed."""
    victim = tmp_path / "victim"  # a directory only we (root) may write
    victim.mkdir(mode=0o700)
    for i in range(40):
        (victim / f"precious-{i:02d}.gwzm").write_bytes(b"keep me")
    c = MetricsCollector(shared_dir, auto_compact=False)
    c.record_request("/a", "GET", 0.1, 200)

    def plant() -> None:
        os.symlink(str(victim), os.path.join(shared_dir, layout.QUARANTINE_DIR))
        os.symlink(str(victim / "precious-00.gwzm"), os.path.join(shared_dir, "link.gwzm"))
        with open(os.path.join(shared_dir, "bad.gwzm"), "wb") as f:
            f.write(b"GWZW" + bytes(100))

    _as_user(other_user, plant)
    snap = c.snapshot()
    assert sorted(p.reason for p in snap.problems) == ["symlink", "untrusted_owner"]
    result = compact(shared_dir)
    assert result.quarantined == 2
    assert sorted(os.listdir(victim)) == [f"precious-{i:02d}.gwzm" for i in range(40)]
    assert all((victim / f"precious-{i:02d}.gwzm").read_bytes() == b"keep me" for i in range(40))
    assert os.path.islink(os.path.join(shared_dir, layout.QUARANTINE_DIR))
    assert {"bad.gwzm", "link.gwzm"}.isdisjoint(os.listdir(shared_dir))
    assert c.snapshot().to_dict()["endpoints"]["/a"]["requests"] == 1
    c.close()
    with pytest.raises(MetricsDirectoryError, match="quarantine"):
        MetricsCollector(shared_dir)


# ------------------------------------------------------------- concurrency
def _writer(directory: str, index: int, requests: int, done: Any) -> None:
    """A worker process: records ``requests`` requests on ever new endpoints (the file grows)."""
    c = MetricsCollector(directory, auto_compact=False)
    for i in range(requests):
        c.record_request(f"/w{index}/e{i % 300}", "GET", 0.01 * (i % 7), 200, provider=f"p{i % 5}", model=f"m{i % 40}")
    done.set()
    time.sleep(60)  # killed by the test (SIGKILL): a worker that dies, not one that exits


def test_concurrent_scrapes_racing_writers_and_compaction(metrics_dir: str) -> None:
    """8 threads scraping while forked writers grow their files and die: never an error, never backwards."""
    ctx = multiprocessing.get_context("fork")
    scraper = MetricsCollector(metrics_dir)  # auto_compact: scrapes compact dead files
    exporter = PrometheusExporter(scraper)
    errors: list[str] = []
    stop = threading.Event()
    scrapes = [0] * 8

    def scrape(slot: int) -> None:
        last = 0.0
        while not stop.is_set() and scrapes[slot] < 400:
            try:
                snap = scraper.snapshot()
                exporter.export()
            except Exception:
                errors.append(traceback.format_exc())
                return
            if snap.total_requests < last:
                errors.append(f"total went backwards: {last} -> {snap.total_requests}")
            last = snap.total_requests
            scrapes[slot] += 1

    threads = [threading.Thread(target=scrape, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    total = 0
    deadline = time.monotonic() + 120
    for round_ in range(6):
        events = [ctx.Event() for _ in range(2)]
        procs = [ctx.Process(target=_writer, args=(metrics_dir, round_ * 2 + k, 1500, events[k])) for k in range(2)]
        for p in procs:
            p.start()
        for p, event in zip(procs, events, strict=True):
            assert event.wait(max(1.0, deadline - time.monotonic())), "writer did not finish in time"
            os.kill(p.pid, signal.SIGKILL)
            p.join(10)
        total += 3000
        scraper.compact()
    stop.set()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]
    assert min(scrapes) > 0
    snap = scraper.snapshot()
    assert snap.total_requests == total
    assert not snap.problems
    scraper.close()


def _mount_tmpfs(path: str, size: str) -> None:
    os.makedirs(path, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], check=True)


# ----------------------------------------------------------------- closing
def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@needs_root
def test_discarded_collectors_release_descriptors_and_locks(tmp_path: Any) -> None:
    """10,000 collectors (and apps with init_app) dropped without close() leave the fd count flat."""
    mount = str(tmp_path / "mem")
    _mount_tmpfs(mount, "128m")  # 10,000 files of 256 KiB are created (and compacted away)
    try:
        metrics_dir = os.path.join(mount, "metrics")
        gc.collect()
        before = _fd_count()
        for i in range(10_000):
            if i % 20 == 0:
                app = Flask(f"app{i}")
                app.config["GATEWAYZ_METRICS_DIR"] = metrics_dir
                GatewayzMetrics(app)
                assert app.test_client().get("/metrics").status_code == 200
                del app
            c = MetricsCollector(metrics_dir, auto_compact=False)
            c.record_request("/a", "GET", 0.1, 200)
            del c
            if i % 100 == 99:
                gc.collect()
                assert _fd_count() <= before + 2
                compact(metrics_dir, max_files=1000)  # their flocks are free: they are dead
                assert len(_worker_files(metrics_dir)) <= 6, len(_worker_files(metrics_dir))
        gc.collect()
        assert _fd_count() <= before + 2
        scraper = MetricsCollector(metrics_dir)
        assert scraper.snapshot().total_requests == 10_000
        scraper.close()
    finally:
        gc.collect()
        subprocess.run(["umount", "-l", mount], check=False)


# ------------------------------------------------------ series per server
def test_archive_honours_label_limits_across_generations(metrics_dir: str) -> None:
    """Each dead generation brings 300 new model names: the archive keeps 200 + other, and counts the rest."""
    series, sizes = [], []
    for generation in range(12):
        c = MetricsCollector(metrics_dir, auto_compact=False)
        for k in range(300):
            c.record_request("/v1/chat", "POST", 0.1, 200, provider="p", model=f"g{generation}-m{k}")
        c.close()
        compact(metrics_dir)
        scraper = MetricsCollector(metrics_dir, auto_compact=False)
        snap = scraper.snapshot()
        scraper.close()
        series.append(len(snap.to_dict()["models"]))
        sizes.append(os.path.getsize(os.path.join(metrics_dir, layout.ARCHIVE_NAME)))
        assert snap.total_requests == 300 * (generation + 1)
    assert series[1:] == [201] * 11  # 200 names + "other"
    overflow = dict(snap.series("label_overflow"))[("model",)][0]
    assert overflow == 100 * 12 + 200 * 11  # writers refuse 100 per generation; the archive folds 200 per later one
    # The archive stays the size of 201 model series (plus the fixed ones) however many
    # generations brought new names: it grows only by the absorbed names' bookkeeping.
    # Per model: its window record, its since-start record (each a header, a key of up to
    # 32 bytes and its payload), its gen_ai.server.request.duration record (a key of up to
    # 64 bytes: operation, provider, model, error type) and, in the sparse format, one
    # one-entry bucket block.
    records = 2 * (layout.RECORD_HEADER.size + 32) + layout.RECORD_HEADER.size + 64
    block = layout.RECORD_HEADER.size + 8 * len(layout.block_payload(layout.even_capacity(1)))
    payloads = 8 * (
        kinds.KINDS["model_window"].payload_size(5)
        + kinds.KINDS["model"].size
        + kinds.KINDS["gen_ai_server_duration"].size
    )
    model_series = 201 * (payloads + records + block)
    assert max(sizes[1:]) < model_series * 1.2
    assert sizes[-1] <= sizes[1] * 1.02, sizes


def test_reader_maps_only_whole_doubles(metrics_dir: str) -> None:
    """A file whose length is not a multiple of 8 (a copy cut at a third) is read up to what is complete."""
    c = MetricsCollector(metrics_dir)
    c.record_request("/a", "GET", 0.1, 200)
    name = _worker_files(metrics_dir)[0]
    path = os.path.join(metrics_dir, name)
    with open(path, "rb") as f:
        data = f.read()
    with open(os.path.join(metrics_dir, "worker-2-copy.gwzm"), "wb") as f:
        f.write(data[: len(data) // 3 + 1])
    assert stat.S_ISREG(os.stat(path).st_mode)
    snap = c.snapshot()
    assert snap.to_dict()["endpoints"]["/a"]["requests"] >= 1
    c.close()


# ------------------------------------------------- headers the reader refuses
@pytest.mark.parametrize("slot_seconds", [1e13, 1e-300, 5e-324, math.nan, math.inf])
def test_a_refused_header_never_sets_the_archives_geometry(metrics_dir: str, slot_seconds: float) -> None:
    """A worker file whose header has a slot width the reader refuses (here the newest
    header in the directory, and no live writer's) is quarantined as corrupt. Compaction
    must not take the new archive's geometry from it: an archive the reader then refuses
    loses every archived request, and a width of 1e-300 overflowed out of every scrape."""
    worker = MetricsCollector(metrics_dir, auto_compact=False)
    for _ in range(100):
        worker.record_request("/v1/chat", "POST", 0.2, 200)
    worker.close()
    compact(metrics_dir)  # what child_exit does: the 100 requests are archived
    header = layout.HEADER.pack(
        layout.WORKER_MAGIC, layout.VERSION, layout.HEADER_SIZE, 0, 4242, time.time() + 10, slot_seconds, 5
    )
    planted = os.path.join(metrics_dir, "worker-4242-00000000deadbeef" + layout.WORKER_SUFFIX)
    with open(planted, "wb") as f:
        f.write(header)
    scraper = MetricsCollector(metrics_dir)  # has not recorded: no live writer's header
    result = compact(metrics_dir)
    assert result.quarantined == 1
    assert not os.path.exists(planted)
    assert any("corrupt_header" in name for name in os.listdir(os.path.join(metrics_dir, "quarantine")))
    for _ in range(2):  # and again after the scrape's own compaction of the new archive
        snap = _scrape(scraper)
        assert snap.total_requests == 100
        scraper._last_compaction = -math.inf  # the next scrape compacts again
    assert not any("archive" in name for name in os.listdir(os.path.join(metrics_dir, "quarantine")))
    scraper.close()


def test_a_hard_link_never_counts_a_file_twice(metrics_dir: str) -> None:
    """A second name of a file (``ln``, ``cp -al`` by a backup script, or a group member
    where hard links are not protected) is read once: a link to a live worker file, and
    a link to the archive under a worker file's name, which compaction absorbed as a dead
    worker, so the double count had become permanent. The extra name is reported
    (``duplicate_link``); compaction quarantines it once nobody holds the file."""
    dead = MetricsCollector(metrics_dir, auto_compact=False)
    for _ in range(100):
        dead.record_request("/v1/chat", "POST", 0.2, 200)
    dead.close()
    compact(metrics_dir)
    live = MetricsCollector(metrics_dir, auto_compact=False)
    for _ in range(10):
        live.record_request("/v1/chat", "POST", 0.2, 200)
    own = _worker_files(metrics_dir)[0]
    link = os.path.join(metrics_dir, "worker-1-0123456789abcdef" + layout.WORKER_SUFFIX)  # sorts before ours
    os.link(os.path.join(metrics_dir, own), link)
    snap = _scrape(live)
    assert snap.total_requests == 110
    assert [p.reason for p in snap.problems] == ["duplicate_link"]
    assert compact(metrics_dir).quarantined == 0  # the file is held: nothing moves
    os.unlink(link)
    archive_link = os.path.join(metrics_dir, "worker-2-0123456789abcdef" + layout.WORKER_SUFFIX)
    os.link(os.path.join(metrics_dir, layout.ARCHIVE_NAME), archive_link)
    assert _scrape(live).total_requests == 110
    result = compact(metrics_dir)
    assert result.absorbed == 0 and result.quarantined == 1
    assert not os.path.exists(archive_link)
    assert _scrape(live).total_requests == 110
    live.close()
