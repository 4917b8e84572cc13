"""Window slots of a worker file: which slot a moment falls in, and the writes that reuse
a slot position for a new interval (a file-format operation, so it lives beside ``layout``).

A windowed record holds ``slots`` clock-aligned slots; each slot starts with
``layout.SLOT_HEADER`` values (id, count, sum, errors, min, max), a sketch slot then links
its bucket blocks (``layout.SLOT_BLOCK``). The writer (``collector``, ``request_path``)
calls these under its lock; readers never write.
"""

from __future__ import annotations

import math
import struct
from typing import Any

from . import layout
from .layout import Doubles, EntryWords

_INF = math.inf
_SLOT_HEADER = layout.SLOT_HEADER
_EMPTY_SLOT_TAIL = memoryview(struct.pack(f"<{_SLOT_HEADER - 1}d", *layout.EMPTY_SLOT[1:])).cast("d")
_SLOT_BLOCK = layout.SLOT_BLOCK
_BLOCK_NEXT = layout.BLOCK_NEXT
_INDEX_MASK = layout.ENTRY_INDEX_MASK
_STRIDE = layout.slot_stride(True)

MIRROR_SLOT, MIRROR_MIN, MIRROR_MAX, MIRROR_CHAIN = range(4)
"""A sketch slot's mirror (``enter_slot``): slot id, min, max, then from ``MIRROR_CHAIN``
its {bucket: entry index} and chain state (``RecordWriter._append_bucket_entry``), then
at ``MIRROR_SUM`` the file index of the slot's ``SLOT_SUM`` field."""
MIRROR_SUM = MIRROR_CHAIN + 5


def slot_bounds(now: float, slot_seconds: float, slots: int) -> tuple[int, int, float, float]:
    """The clock-aligned slot containing ``now``, its position in a window record of
    ``slots`` slots, and its start and end time (``slot_seconds`` 0: one slot, forever)."""
    slot = int(now // slot_seconds) if slot_seconds else 0
    if not slot_seconds:
        return slot, slot % slots, -_INF, _INF
    start = slot * slot_seconds
    return slot, slot % slots, start, start + slot_seconds


def plain_window_add(d: Doubles, base: int, slot: int, value: float, error: bool) -> None:
    """Add one observation to the slot at ``base`` of a windowed record without sketch
    (into the newer interval it holds if the wall clock went back: see ``enter_slot``)."""
    if d[base] != slot and not _holds_newer(d, base, slot):
        rotate(d, base, slot, False)
    d[base + 1] += 1.0
    d[base + 2] += value
    if error:
        d[base + 3] += 1.0
    if value < d[base + 4]:  # noqa: PLR1730 (no builtin call, no write)
        d[base + 4] = value
    if value > d[base + 5]:  # noqa: PLR1730
        d[base + 5] = value


def _holds_newer(d: Doubles, base: int, slot: int) -> bool:
    """Whether the slot at ``base`` holds an interval newer than ``slot`` by at most one
    window (the writer's own file: its header is trusted)."""
    return slot < d[base] <= slot + layout.header_slots(d)


def enter_slot(d: Doubles, words: EntryWords, base: int, slot: int) -> list[Any]:
    """Make the sketch slot at ``base`` hold ``slot`` (emptying it if it held an older
    interval); its mirror for the hot path: [slot id, min, max, {bucket: entry index},
    then where new entries go (see ``record_writer.RecordWriter._append_bucket_entry``),
    then where the slot's sum is (``MIRROR_SUM``)].

    A slot does not move back to an older interval: if it holds one at most a window
    newer (the wall clock was set back; the writer reads the clock under its lock, so
    threads cannot cause it), the observation joins that interval instead of emptying
    it. (Further back, the clock was reset: the slot starts over.)"""
    if _holds_newer(d, base, slot):
        slot = int(d[base])
    first = int(d[base + _SLOT_BLOCK])
    capacity = layout.stored_capacity(d, first) if first else first_block_capacity(d, base, slot)
    start = [first, capacity, base + _SLOT_BLOCK, 0, base + layout.SLOT_SUM]
    if d[base] != slot:
        rotate(d, base, slot, True)
        return [float(slot), d[base + 4], d[base + 5], {}, *start]
    # The slot is current but not mirrored (the mirror was cleared): find its entries;
    # new ones go after them (from the first block: it skips full ones).
    return [float(slot), d[base + 4], d[base + 5], chain_entries(d, words, first), *start]


def chain_entries(d: Doubles, words: EntryWords, first: int) -> dict[int, int]:
    """The entries of the chain starting at block ``first`` of a writer's own file, as
    {slot index (``SLOT_HEADER`` + bucket index): entry's index in ``words``}; for a
    bucket in several entries (a count past ``layout.MAX_ENTRY_COUNT``), its last."""
    entries = {}
    block = first
    while block:
        at = layout.first_entry(block)
        for entry in range(at, at + int(d[block])):
            entries[(words[entry] & _INDEX_MASK) + _SLOT_HEADER] = entry
        following = int(d[block + _BLOCK_NEXT])
        block = following if following > block else 0  # chains run forward: always ends
    return entries


def first_block_capacity(d: Doubles, base: int, slot: int) -> int:
    """Capacity of the first bucket block of the sketch slot at ``base`` (which has none
    yet), about to hold ``slot``: the entries of the busiest other slot position of the
    same record plus 2 (the series' intervals touch similar numbers of buckets), or
    ``layout.FIRST_BLOCK_ENTRIES`` for a new series. Under steady traffic each position
    keeps its blocks, so their capacity is the file's size: a chain doubling from 4
    wastes about a quarter of its entries and 3 per extra block. (Measured at the
    200 x 20 x 100 mix of ``benchmarks/bench_steady_scrape.py``: a margin of 2 beat
    0, 4 and 1/8 or 1/4 of the count; a busier interval adds a small block.)"""
    slots = layout.header_slots(d)
    stride = _STRIDE
    record = base - (slot % slots) * stride if slots > 0 else base
    busiest = 0
    for position in range(slots):
        other = record + position * stride
        if other == base or d[other] < 0:
            continue  # this slot, or a position never used
        entries = 0
        block = int(d[other + _SLOT_BLOCK])
        while block:
            entries += int(d[block])
            following = int(d[block + _BLOCK_NEXT])
            block = following if following > block else 0  # chains run forward: always ends
        busiest = max(busiest, entries)
    if not busiest:
        return layout.FIRST_BLOCK_ENTRIES
    return layout.even_capacity(min(busiest + 2, layout.MAX_SIZED_BLOCK_ENTRIES))


def rotate(d: Doubles, base: int, slot: int, with_sketch: bool) -> None:
    """Reuse a slot position for a new interval: mark it invalid, empty it, then claim it.

    A sketch slot keeps its bucket blocks (the next interval will likely touch as many
    buckets) and only marks them empty; their stale entries are never read again."""
    d[base] = -1.0
    if with_sketch:
        block = int(d[base + _SLOT_BLOCK])
        while block:
            d[block] = 0.0
            block = int(d[block + _BLOCK_NEXT])
    d[base + 1 : base + _SLOT_HEADER] = _EMPTY_SLOT_TAIL
    d[base] = float(slot)


def paced_block_capacity(slot: float, slot_seconds: float, now: float, touched: int, position: int) -> int:
    """Capacity of the next bucket block of a sketch slot's chain (``position`` blocks so
    far, all full) at ``now`` within interval ``slot``, whose ``touched`` buckets so far
    fill those blocks: the buckets the rest of the interval is likely to touch at the
    pace so far (extrapolated over the part left: an upper estimate, as repeats grow
    with the count), plus 2 (the bucket about to be added, and a margin), within
    ``FIRST_BLOCK_ENTRIES`` .. ``MAX_BLOCK_ENTRIES``; ``layout.block_capacity`` when the
    pace is unknown (one slot since start, no time elapsed, a clock outside the interval).

    Why: a series' first interval has no earlier one to size its first block by
    (``first_block_capacity``), and a chain doubling from 4 left about a quarter of its
    capacity unused and one block header in three needless at
    ``benchmarks/bench_steady_scrape.py``'s 200 x 20 x 100 mix; blocks sized by the pace
    fit an interval in two or three. (Scaling the estimate by 0.5 .. 1 or a margin of 4
    moved that file by under 1 %.)"""
    elapsed = now - slot * slot_seconds
    if slot_seconds <= 0 or not 0.0 < elapsed < slot_seconds:
        return layout.block_capacity(position)
    rest = touched * (slot_seconds - elapsed) / elapsed
    return layout.even_capacity(max(layout.FIRST_BLOCK_ENTRIES, min(layout.MAX_BLOCK_ENTRIES, math.ceil(rest) + 2)))
