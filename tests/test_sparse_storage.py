"""Sparse sketch storage (format 4): size, exactness, crash safety, full disk, hostile bucket blocks, versions."""

from __future__ import annotations

import itertools
import math
import multiprocessing
import os
import random
import struct
import subprocess
from typing import Any

import pytest
from conftest import FakeClock
from hypothesis import given, settings
from hypothesis import strategies as st
from test_hostile_disk import fill_file_system

from flask_gatewayz_metrics import MetricsCollector, PrometheusExporter, sketch
from flask_gatewayz_metrics.storage import access, layout, slots
from flask_gatewayz_metrics.storage.reader import DirectoryReader, WorkerView
from flask_gatewayz_metrics.storage.window_stats import WindowStats
from flask_gatewayz_metrics.testing import worker_file

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root (CI runs as root)")


def _own_view(directory: str, collector: MetricsCollector) -> WorkerView:
    name = os.path.basename(worker_file(collector) or "")
    return next(v for v in DirectoryReader(directory).read()[0] if v.name == name)


def _used(collector: MetricsCollector) -> int:
    with open(worker_file(collector) or "", "rb") as f:
        return int(struct.unpack_from("<Q", f.read(16), 8)[0])


def _lognormal(rng: random.Random) -> float:
    return min(60.0, max(0.001, rng.lognormvariate(-1.0, 1.2)))


def test_percentiles_equal_a_dense_sketch_of_the_same_values(metrics_dir: str, clock: FakeClock) -> None:
    """Merged over slots, workers and long block chains, sparse buckets answer exactly what dense counts would."""
    rng = random.Random(7)
    workers = [MetricsCollector(metrics_dir, window_seconds=300, window_slots=5, clock=clock) for _ in range(3)]
    dense = [0.0] * sketch.BUCKET_COUNT
    values: list[float] = []
    for _ in range(5):  # every slot of the window
        for worker in workers:
            for _ in range(400):
                value = _lognormal(rng) if rng.random() < 0.9 else rng.choice([1e-7, 4e4, 0.1])
                worker.record_request("/chat", "POST", value, 200)
                dense[sketch.bucket_index(value)] += 1
                values.append(value)
        clock.advance(60)
    clock.advance(-60)
    stats = workers[0].snapshot().window("endpoint_window", ("/chat",))
    assert stats.count == len(values)
    for q in (0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0):
        assert stats.quantile(q) == sketch.quantile(dense, q, min(values), max(values))
    for worker in workers:
        worker.close()


def test_worker_file_at_200x20x100_with_every_slot_filled_is_at_most_1_mib(metrics_dir: str, clock: FakeClock) -> None:
    """200 endpoints x 20 providers x 100 models, 2,000 log-normal requests in each of 5 slots: file <= 1 MiB.

    Model ``k`` belongs to provider ``k % 20``, as in ``benchmarks/bench_steady_scrape.py``
    (the issue's mix): the OpenTelemetry conventions' records are kept per (provider,
    model) pair, so pairs no gateway serves (every provider with every model) would
    add records that this mix does not have.
    """
    rng = random.Random(1)
    worker = MetricsCollector(metrics_dir, window_seconds=300, window_slots=5, clock=clock)
    for _ in range(5):
        for _ in range(2000):
            model = rng.randrange(100)
            worker.record_request(
                f"/e{rng.randrange(200)}", "GET", _lognormal(rng), 200, provider=f"p{model % 20}", model=f"m{model}",
            )
        clock.advance(60)
    assert all(s.count > 0 for s in _window_stats(worker, "endpoint_window")) and _used(worker) > 0
    assert os.path.getsize(worker_file(worker) or "") <= 1024 * 1024
    worker.close()


STEADY_STATUSES = ([200, 429, 400, 500, 502, 503], [90, 4, 2, 2, 1, 1])
"""``benchmarks/bench_steady_scrape.py``'s status mix."""


def _steady_worker(metrics_dir: str, per_slot: int) -> tuple[int, int]:
    """Worker 0 of ``bench_steady_scrape.py`` at 200 x 20 x 100 with ``per_slot`` requests per
    60 s slot: its request sequence (endpoint, provider and model from the request index,
    seeded statuses and log-normal latencies), 4.5 slots, then 16 rounds of a quarter slot,
    as the benchmark serves them. Returns the file's (used bytes, size)."""
    clock = FakeClock(1_800_000_000.0)
    worker = MetricsCollector(metrics_dir, window_seconds=300, window_slots=5, clock=clock, auto_compact=False)
    fill = per_slot * 4 + per_slot // 2
    chunks = [(0, fill)] + [(fill + r * (per_slot // 4), per_slot // 4) for r in range(16)]
    for first, count in chunks:  # the benchmark's chunks, each with its own seed
        rng = random.Random(f"200x20x100:0:{first}")
        for n in range(first, first + count):
            clock.now = 1_800_000_000.0 + (n + 0.5) * 60 / per_slot
            m = (n + n // 200) % 100
            latency = _lognormal(rng)
            worker.record_request(
                f"/api/v1/endpoint{n % 200:03d}", "POST", latency, rng.choices(*STEADY_STATUSES)[0],
                provider=f"provider{m % 20:02d}", model=f"model-{m:03d}",
            )
    history = [p for p in worker.history().to_dict()["requests"] if p["requests"]]
    assert len(history) == 5 and all(p["requests"] >= per_slot // 2 for p in history)  # every slot filled
    assert not worker.snapshot().dropped()
    used, size = _used(worker), os.path.getsize(worker_file(worker) or "")
    worker.close()
    return used, size


def test_steady_bench_mix_at_2400_requests_per_slot_fits_in_1_mib(metrics_dir: str) -> None:
    """bench_steady_scrape's 200x20x100 mix (statuses 200..503) at its --quick rate, 2,400 a
    slot: file <= 1 MiB, with room (format 4: 967 KiB used; format 5 with paced blocks: 796;
    format 6: 655)."""
    used, size = _steady_worker(metrics_dir, 2400)
    assert used <= 690_000 and size <= 1024 * 1024, (used, size)


def test_steady_bench_mix_at_4800_requests_per_slot_fits_in_1_mib(metrics_dir: str) -> None:
    """At the benchmark's full rate (4,800 a slot) the file is at most 1 MiB, within 1/8 of its used bytes.

    Format 3 with doubling growth made this file 2 MiB (2,086,296 bytes used): the bucket
    entries were two float64 each and chains doubled from 4 entries at every slot position.
    Format 4: ~1,300,000 used in 1.25 MiB (one more record per request label set,
    ``http_server_buckets``, and chains doubling through a series' first interval). Format
    5 with paced blocks: 1,085,752 in 1.125 MiB. Format 6 (u32 entries): 822,256 in 832 KiB.
    """
    used, size = _steady_worker(metrics_dir, 4800)
    assert used <= 850_000 and size <= used + used // 8 and size <= 1024 * 1024, (used, size)


def test_paced_block_capacity_extrapolates_the_interval() -> None:
    """A chain's next block holds what the rest of the interval will likely touch at the pace so far (+2), bounded."""
    # 60 s slots; slot 10 runs from 600 to 660.
    assert slots.paced_block_capacity(10, 60.0, 606.0, 4, 1) == 4 * 54 // 6 + 2  # 10 % gone, 4 touched: 36 more
    assert slots.paced_block_capacity(10, 60.0, 630.0, 20, 1) == 22  # half way: as many again
    assert slots.paced_block_capacity(10, 60.0, 659.9, 40, 2) == layout.FIRST_BLOCK_ENTRIES  # nearly over
    assert slots.paced_block_capacity(10, 60.0, 600.5, 4, 1) == layout.MAX_BLOCK_ENTRIES  # a busy series: capped
    # Pace unknown: the doubling sizes.
    assert slots.paced_block_capacity(10, 60.0, 600.0, 4, 1) == layout.block_capacity(1)  # no time elapsed
    assert slots.paced_block_capacity(10, 60.0, 700.0, 4, 2) == layout.block_capacity(2)  # clock past the interval
    assert slots.paced_block_capacity(0, 0.0, 5.0, 4, 3) == layout.block_capacity(3)  # one slot since start


def test_a_new_series_sizes_its_next_block_by_the_pace_of_its_interval(metrics_dir: str, clock: FakeClock) -> None:
    """40 buckets touched evenly over a new series' first interval: blocks of 4, 34, 4 (doubling made 4+8+16+32)."""
    worker = MetricsCollector(metrics_dir, window_seconds=300, window_slots=5, clock=clock, auto_compact=False)
    clock.now = 1_800_000_000.0  # a slot boundary
    values = [0.01 * 1.1**k for k in range(40)]  # 40 distinct buckets
    for k, value in enumerate(values):
        clock.now = 1_800_000_000.0 + (k + 0.5) * 60 / 40
        worker.record_request("/s", "GET", value, 200)
    view = _own_view(metrics_dir, worker)
    (record,) = [r for r in view.records if r.kind == "endpoint_window"]
    block = int(view.doubles[record.offset + layout.SLOT_BLOCK])
    capacities = []
    while block:
        capacities.append(view.blocks[float(block)])
        block = int(view.doubles[block + layout.BLOCK_NEXT])
    # The 5th bucket came at 6.75 s: 4 * (60 - 6.75) / 6.75 -> 32, + 2; the 39th at 57.75 s:
    # 38 * 2.25 / 57.75 -> 2, + 2.
    assert capacities == [4, 34, 4]
    stats = worker.snapshot().window("endpoint_window", ("/s",))
    dense = [0.0] * sketch.BUCKET_COUNT
    for value in values:
        dense[sketch.bucket_index(value)] += 1
    assert stats.count == 40 and stats.buckets == dense
    worker.close()


def test_files_past_256_kib_grow_by_eighths_never_past_what_doubling_gives() -> None:
    """A file's size stays within 1/8 of what it needs past 256 KiB, and is never larger than doubling made it."""
    from flask_gatewayz_metrics.storage.worker_file import DOUBLING_LIMIT, INITIAL_SIZE, grown_size

    for needed in [*range(INITIAL_SIZE, 8 << 20, 4093), 1 << 20, (1 << 20) + 1, 64 << 20]:
        size = grown_size(INITIAL_SIZE, needed)
        doubled = INITIAL_SIZE
        while doubled < needed:
            doubled *= 2
        assert needed <= size <= doubled
        if needed > DOUBLING_LIMIT:
            assert size - needed < size // 8 + 1 and size % (32 * 1024) == 0
    assert grown_size(1 << 20, (1 << 20) + 1) == (1 << 20) + (128 << 10)


def _window_stats(collector: MetricsCollector, kind: str) -> list[WindowStats]:
    return list(collector.snapshot().merged.windows[kind].values())


def test_rotated_slots_reuse_their_bucket_blocks(metrics_dir: str, clock: FakeClock) -> None:
    """A slot position moving to a new interval keeps its blocks: steady traffic stops growing the file."""
    rng = random.Random(3)
    worker = MetricsCollector(metrics_dir, window_seconds=300, window_slots=5, clock=clock)
    sizes = []
    for _ in range(4):  # four full windows
        for _ in range(5):
            for _ in range(300):
                worker.record_request("/chat", "POST", _lognormal(rng), 200, provider="p", model="m")
            clock.advance(60)
        sizes.append(_used(worker))
    # The first window allocates; later ones only refill what is there (a busier
    # interval may add a block here and there).
    assert sizes[3] <= sizes[1] * 1.05, sizes
    stats = worker.snapshot().window("endpoint_window", ("/chat",))
    assert stats.count == 4 * 300  # only the 4 slots still in the window (the clock moved past the 5th)
    worker.close()


def test_a_reopened_collector_continues_the_current_slot(metrics_dir: str, clock: FakeClock) -> None:
    """After the slot mirror is dropped (fork, reset), entries already in the slot are found, not duplicated."""
    worker = MetricsCollector(metrics_dir, clock=clock)
    for k in range(20):
        worker.record_request("/chat", "POST", 0.01 * 1.2**k, 200)
    worker._slot_extremes.clear()
    for k in range(20):
        worker.record_request("/chat", "POST", 0.01 * 1.2**k, 200)
    view = _own_view(metrics_dir, worker)
    (record,) = [r for r in view.records if r.kind == "endpoint_window"]
    stats = WindowStats()
    position = int(clock.now // worker._slot_seconds) % worker._slots
    stats.add_slot(view, record.offset + position * layout.slot_stride(True), True)
    assert stats.count == 40 and stats.buckets is not None
    assert sorted(c for c in stats.buckets if c) == [2.0] * 20
    worker.close()


def test_a_new_slot_position_sizes_its_first_block_from_the_busiest_other(metrics_dir: str, clock: FakeClock) -> None:
    """Slot 2's first block holds slot 1's 30 entries + 2; past it a small block follows; counts stay exact."""
    worker = MetricsCollector(metrics_dir, window_seconds=300, window_slots=5, clock=clock, auto_compact=False)
    clock.now = 1_800_000_000.0  # a slot boundary: position 0
    values = [0.01 * 1.1**k for k in range(30)]  # 30 distinct buckets (each step > 2**(1/32))
    for value in values:
        worker.record_request("/s", "GET", value, 200)
    clock.advance(60)
    more = [0.01 * 1.1**k for k in range(40)]  # 40 buckets: 32 in the first block, 8 in a second
    for k, value in enumerate(more):
        worker.record_request("/s", "GET", value, 200)
        if k == 20:
            worker._slot_extremes.clear()  # the mirror dropped mid-chain: rebuilt from the file
    view = _own_view(metrics_dir, worker)
    (record,) = [r for r in view.records if r.kind == "endpoint_window"]
    stride = layout.slot_stride(True)
    first = [int(view.doubles[record.offset + p * stride + layout.SLOT_BLOCK]) for p in range(2)]
    assert [view.blocks[float(b)] for b in first] == [4, 32]  # a new series doubles from 4
    second = int(view.doubles[first[1] + layout.BLOCK_NEXT])
    assert view.blocks[float(second)] == 8 and view.doubles[second + layout.BLOCK_USED] == 8
    stats = worker.snapshot().window("endpoint_window", ("/s",))
    dense = [0.0] * sketch.BUCKET_COUNT
    for value in values + more:
        dense[sketch.bucket_index(value)] += 1
    assert stats.count == 70 and stats.buckets == dense
    worker.close()


def _record_distinct(directory: str, now: float, count: int) -> None:
    c = MetricsCollector(directory, clock=lambda: now, auto_compact=False)
    for k in range(count):
        # each step is wider than a bucket (2**(1/32)): 1,000 distinct buckets, 1e-6 .. 2.8e3 s
        c.record_request("/grow", "GET", 1e-6 * 1.022**k, 200)
    os._exit(0)


def test_readers_never_see_a_half_written_block(metrics_dir: str, clock: FakeClock) -> None:
    """While a writer adds entries and blocks (and re-maps), every scrape reads a consistent, growing slot."""
    reader = MetricsCollector(metrics_dir, clock=clock)
    reader.record_cache_hit()
    total = 1000  # distinct buckets: a chain of 18 blocks, many file growths
    child = multiprocessing.get_context("fork").Process(target=_record_distinct, args=(metrics_dir, clock.now, total))
    child.start()
    seen = []
    while child.is_alive() or not seen or seen[-1] < total:
        stats = reader.snapshot().window("endpoint_window", ("/grow",))
        seen.append(stats.count)
        assert stats.buckets is None or sum(stats.buckets) == stats.count
        if len(seen) > 100_000:
            break
    child.join(60)
    assert child.exitcode == 0
    assert seen == sorted(seen) and seen[-1] == total, seen[-5:]
    reader.close()


def _new_buckets_on_a_full_disk(directory: str, mount: str, clock: FakeClock) -> None:
    access.RETRY_SECONDS = 0.0
    # A clock standing still: on the wall clock a new window slot could start mid-test,
    # and its first request of a bucket needs a new block, which the full disk refuses.
    c = MetricsCollector(directory, auto_compact=False, clock=clock)
    for k in range(50):  # every series exists before the disk fills: only blocks need room
        c.record_request(f"/full{k}", "GET", 0.1, 200)
    fill_file_system(os.path.join(mount, "filler"))
    dropped_before = c.snapshot().dropped().get("storage_unavailable", 0)
    # Far more bucket blocks than the file's reserve holds: each needs the file to grow.
    for k in range(20_000):
        c.record_request(f"/full{k % 50}", "GET", 1e-6 * 1.001**k, 200)
    snap = c.snapshot()
    assert snap.dropped().get("storage_unavailable", 0) > dropped_before
    c.record_request("/full0", "GET", 0.1, 200)  # a bucket the slot has: still counted
    buckets = c.snapshot().window("endpoint_window", ("/full0",)).buckets
    assert buckets is not None and buckets[sketch.bucket_index(0.1)] == 2
    os.unlink(os.path.join(mount, "filler"))
    c.record_request("/after", "GET", 0.2, 200)  # space is back: the next block grows the file
    assert c.snapshot().window("endpoint_window", ("/after",)).count == 1
    os._exit(0)


@needs_root
def test_a_full_disk_fails_block_growth_cleanly_never_sigbus(tmp_path: Any, clock: FakeClock) -> None:
    """Bucket blocks on a full tmpfs: growth fails as StorageUnavailable (counted), no SIGBUS; recording resumes."""
    mount = str(tmp_path / "tiny")
    os.makedirs(mount)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mount], check=True)
    try:
        child = multiprocessing.get_context("fork").Process(
            target=_new_buckets_on_a_full_disk, args=(os.path.join(mount, "metrics"), mount, clock)
        )
        child.start()
        child.join(120)
        assert child.exitcode == 0  # -7 would be SIGBUS, 1 a failed assertion
    finally:
        subprocess.run(["umount", "-l", mount], check=False)


# ------------------------------------------------------------ hostile blocks
def _chain_file(metrics_dir: str, clock: FakeClock) -> tuple[MetricsCollector, bytes, int]:
    """A dead file whose one sketch slot has a chain of 3 blocks; its bytes and the slot's index."""
    c = MetricsCollector(metrics_dir, clock=clock, auto_compact=False)
    for k in range(20):
        c.record_request("/x", "GET", 0.01 * 1.2**k, 200)
    view = _own_view(metrics_dir, c)
    (record,) = [r for r in view.records if r.kind == "endpoint_window"]
    slot = record.offset + (int(clock.now // c._slot_seconds) % c._slots) * layout.slot_stride(True)
    path = worker_file(c) or ""
    c.close()
    with open(path, "rb") as f:
        data = f.read()
    os.unlink(path)
    return MetricsCollector(metrics_dir, clock=clock, auto_compact=False), data, slot


def _damaged(data: bytes, slot: int, how: str) -> bytes:
    out = bytearray(data)
    d = memoryview(out).cast("d")
    first = int(d[slot + layout.SLOT_BLOCK])
    second = int(d[first + layout.BLOCK_NEXT])
    entry = layout.first_entry(first)  # the first entry (a u32: count << 11 | bucket index)
    if how == "loop":
        d[second + layout.BLOCK_NEXT] = float(first)
    elif how == "self":
        d[first + layout.BLOCK_NEXT] = float(first)
    elif how in ENTRY_DAMAGES:
        memoryview(out).cast("I")[entry] = ENTRY_DAMAGES[how]
    elif how == "used_over_capacity":
        d[first + layout.BLOCK_USED] = 5.0
    elif how == "used_nan":
        d[first + layout.BLOCK_USED] = math.nan
    elif how == "used_fraction":
        d[first + layout.BLOCK_USED] = 2.5
    elif how == "pointer_into_record":
        d[slot + layout.SLOT_BLOCK] = float(slot)
    elif how == "pointer_past_end":
        d[slot + layout.SLOT_BLOCK] = float(len(d) + 10)
    elif how == "pointer_huge":
        d[slot + layout.SLOT_BLOCK] = 1e300
    elif how == "block_length":
        struct.pack_into("<I", out, 8 * first - 8, 8 * 2 + 8)  # a block record of no entries
    elif how == "block_too_long":
        too_many = layout.BLOCK_ENTRIES + layout.MAX_ARCHIVE_BLOCK_ENTRIES // layout.ENTRIES_PER_DOUBLE + 1
        struct.pack_into("<I", out, 8 * first - 8, 8 * too_many + 8)
    return bytes(out)


ENTRY_DAMAGES = {
    "index_range": layout.pack_entry(sketch.BUCKET_COUNT, 1),  # the first index past the sketch
    "index_top": layout.pack_entry(layout.ENTRY_INDEX_MASK, 1),  # the largest index the bits hold
    "index_top_no_count": layout.ENTRY_INDEX_MASK,
    "entry_all_ones": 2**32 - 1,
}
"""Values of a block entry no writer makes: each makes the slot unusable. (Any count is
one a writer could make: a u32 entry has no NaN, sign or fraction.)"""
DAMAGES = [
    "loop", "self", *ENTRY_DAMAGES, "used_over_capacity", "used_nan", "used_fraction",
    "pointer_into_record", "pointer_past_end", "pointer_huge", "block_length", "block_too_long",
]


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_bucket_blocks_are_never_believed(metrics_dir: str, clock: FakeClock, how: str) -> None:
    """Loops, bad entries and bad pointers in bucket blocks: slot dropped or chain cut, never raised."""
    scraper, data, slot = _chain_file(metrics_dir, clock)
    with open(os.path.join(metrics_dir, "worker-1-00000000000000aa.gwzm"), "wb") as f:
        f.write(_damaged(data, slot, how))
    PrometheusExporter(scraper).export()
    snap = scraper.snapshot()
    stats = snap.window("endpoint_window", ("/x",))
    assert 0 <= stats.count <= 20 and math.isfinite(stats.count)
    if stats.buckets is not None:
        assert all(c >= 0 and math.isfinite(c) for c in stats.buckets)
        assert sum(stats.buckets) == stats.count
    p99 = stats.quantile(0.99)
    assert p99 is None or 0 <= p99 <= sketch.HIGHEST
    if how in ENTRY_DAMAGES or how.startswith("used_"):
        assert stats.count == 0  # the slot's entries are not believed, not even the good ones
    if how.startswith("block_"):
        assert snap.problems  # a malformed block record makes the file corrupt
    scraper.compact()  # the compactor reads it the same way
    after = scraper.snapshot().window("endpoint_window", ("/x",))
    assert 0 <= after.count <= 20 and (after.count == 0 or how not in ENTRY_DAMAGES)
    scraper.close()


def test_a_count_past_one_entry_is_split_into_several(metrics_dir: str, clock: FakeClock) -> None:
    """The archive writes a count above 2**21 - 1 as several entries of its bucket; readers add them back."""
    from flask_gatewayz_metrics.storage.sparse import chain_buckets, encode_blocks

    big = 3.0 * layout.MAX_ENTRY_COUNT + 5.0
    buckets = {0: 1.0, 7: big, sketch.BUCKET_COUNT - 1: 2.0}
    link, records = encode_blocks(buckets, 1)
    raw = b"".join(records)
    doubles = memoryview(bytearray(b"\0" * 0 + raw)).cast("d")  # payload of the first block at index 1
    length, key_length = layout.RECORD_HEADER.unpack_from(raw, 0)
    assert key_length == 0 and link == 1.0
    assert chain_buckets(doubles, {1.0: layout.block_capacity_of_length(length)}, link) == buckets
    assert layout.block_capacity_of_length(length) == 6  # 1 + 4 entries for bucket 7 + 1


def test_a_long_archive_chain_is_split_into_linked_blocks() -> None:
    """More entries than one block may hold go into linked blocks, each within the reader's limit."""
    from flask_gatewayz_metrics.storage.sparse import chain_buckets, encode_blocks

    buckets = dict.fromkeys(range(sketch.BUCKET_COUNT), 2.0 * layout.MAX_ENTRY_COUNT)  # 2 entries each: > 2,048
    assert 2 * sketch.BUCKET_COUNT > layout.MAX_ARCHIVE_BLOCK_ENTRIES
    link, records = encode_blocks(buckets, 1)
    raw = b"".join(records)
    doubles = memoryview(bytearray(raw)).cast("d")
    blocks: dict[float, int] = {}
    position = 0
    for _ in records:
        length, _ = layout.RECORD_HEADER.unpack_from(raw, position)
        blocks[float(position // 8 + 1)] = layout.block_capacity_of_length(length)
        position += length
    assert len(records) == 2 and max(blocks.values()) == layout.MAX_ARCHIVE_BLOCK_ENTRIES
    assert chain_buckets(doubles, blocks, link) == buckets


def test_packed_entries_fit_the_sketch() -> None:
    """Every bucket index fits an entry's index bits; adding ENTRY_ONE adds one to the count
    up to MAX_ENTRY_COUNT, and past it the u32 store refuses the value (it never carries into
    another bucket); one block holds a sketch."""
    assert sketch.BUCKET_COUNT <= layout.ENTRY_INDEX_MASK + 1
    assert sketch.BUCKET_COUNT <= layout.MAX_ARCHIVE_BLOCK_ENTRIES
    top = layout.pack_entry(sketch.BUCKET_COUNT - 1, layout.MAX_ENTRY_COUNT - 1)
    words = memoryview(bytearray(8)).cast("I")
    words[1] = top
    words[1] += layout.ENTRY_ONE  # the hot path's add
    assert words[1] == layout.pack_entry(sketch.BUCKET_COUNT - 1, layout.MAX_ENTRY_COUNT)
    assert (words[1] & layout.ENTRY_INDEX_MASK, words[1] >> layout.ENTRY_INDEX_BITS) == (
        sketch.BUCKET_COUNT - 1, layout.MAX_ENTRY_COUNT,
    )  # fmt: skip
    with pytest.raises(ValueError):
        words[1] += layout.ENTRY_ONE
    assert words[1] == layout.pack_entry(sketch.BUCKET_COUNT - 1, layout.MAX_ENTRY_COUNT) and words[0] == 0


def test_a_full_entry_continues_in_a_new_one(metrics_dir: str, clock: FakeClock) -> None:
    """A window's or native chain's entry at MAX_ENTRY_COUNT: the next count of its bucket
    starts another entry of the same bucket; the scrape, the archive and the native
    histogram count every observation."""
    from flask_gatewayz_metrics.storage import slots

    c = MetricsCollector(metrics_dir, clock=clock, auto_compact=False, native_histograms=True)
    c.record_request("/x", "GET", 0.1, 200)
    index = layout.SLOT_HEADER + sketch.bucket_index(0.1)
    (mirror,) = [m for m in c._slot_extremes.values() if index in m[slots.MIRROR_CHAIN]]
    full = layout.pack_entry(index - layout.SLOT_HEADER, layout.MAX_ENTRY_COUNT)
    c._entry_words[mirror[slots.MIRROR_CHAIN][index]] = full
    (native,) = c._native_state.mirrors.values()  # type: ignore[union-attr]
    c._entry_words[native[0][index]] = full
    c.record_request("/x", "GET", 0.1, 200)
    c.record_request("/x", "GET", 0.1, 200)
    expected = layout.MAX_ENTRY_COUNT + 2
    assert c.snapshot().window("endpoint_window", ("/x",)).count == expected
    assert [b.count for b in c.native_lookup().values()] == [expected]
    c.close()
    scraper = MetricsCollector(metrics_dir, clock=clock, auto_compact=False, native_histograms=True)
    scraper.compact()  # the dead file folded into the archive: its entries split again
    assert os.path.exists(os.path.join(metrics_dir, layout.ARCHIVE_NAME))
    assert scraper.snapshot().window("endpoint_window", ("/x",)).count == expected
    assert [b.count for b in scraper.native_lookup().values()] == [expected]
    scraper.close()


def test_a_file_of_another_format_version_is_skipped_and_quarantined(metrics_dir: str, clock: FakeClock) -> None:
    """A format-3 worker file is never read as format 4: skipped as wrong_version, then quarantined and counted."""
    old = MetricsCollector(metrics_dir, clock=clock, auto_compact=False)
    old.record_request("/old", "GET", 0.1, 200)
    path = worker_file(old) or ""
    old.close()
    with open(path, "r+b") as f:
        f.seek(4)
        f.write(struct.pack("<I", 3))
    current = MetricsCollector(metrics_dir, clock=clock, auto_compact=False)
    current.record_request("/new", "GET", 0.1, 200)
    snap = current.snapshot()
    assert [(os.path.basename(p.path), p.reason) for p in snap.problems] == [(os.path.basename(path), "wrong_version")]
    assert set(current.to_dict()["endpoints"]) == {"/new"}
    current.compact()  # a dead file of another version: moved aside and counted, never folded in
    assert not os.path.exists(path)
    (kept,) = os.listdir(os.path.join(metrics_dir, layout.QUARANTINE_DIR))
    assert kept.endswith("-wrong_version-" + os.path.basename(path))
    assert set(current.to_dict()["endpoints"]) == {"/new"} and not current.snapshot().problems
    body = PrometheusExporter(current).export()
    assert 'gatewayz_metrics_storage_errors_total{reason="wrong_version"} 1.0' in body
    current.close()


@settings(max_examples=400, deadline=None)
@given(
    counts=st.lists(st.sampled_from([0.0, 1.0, 2.0, 3.0, 7.0, 1e6]) | st.integers(0, 50).map(float), max_size=60),
    q=st.floats(0.0, 1.0),
    offset=st.integers(0, sketch.BUCKET_COUNT - 61),
)
def test_quantiles_from_running_sums_equal_the_plain_walk(counts: list[float], q: float, offset: int) -> None:
    """The scrape's bisection over running sums answers exactly what sketch.quantile's walk does."""
    running = list(itertools.accumulate(counts))
    total = math.fsum(counts)
    expected = sketch.quantile(counts, q, 1e-4, 50.0, offset)
    if not counts:
        assert expected is None
        return
    assert sketch.quantile_of_running_sums(total, running, q, 1e-4, 50.0, offset) == expected
