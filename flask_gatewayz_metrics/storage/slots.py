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
from .layout import Doubles

_INF = math.inf
_SLOT_HEADER = layout.SLOT_HEADER
_EMPTY_SLOT_TAIL = memoryview(struct.pack(f"<{_SLOT_HEADER - 1}d", *layout.EMPTY_SLOT[1:])).cast("d")
_SLOT_BLOCK = layout.SLOT_BLOCK
_BLOCK_NEXT = layout.BLOCK_NEXT
_BLOCK_ENTRIES = layout.BLOCK_ENTRIES

UNKNOWN_SLOT: list[Any] = [math.nan]
"""Stands in for a window whose current slot is not mirrored yet (NaN equals no slot id)."""


def slot_bounds(now: float, slot_seconds: float, slots: int) -> tuple[int, int, float, float]:
    """The clock-aligned slot containing ``now``, its position in a window record of
    ``slots`` slots, and its start and end time (``slot_seconds`` 0: one slot, forever)."""
    slot = int(now // slot_seconds) if slot_seconds else 0
    if not slot_seconds:
        return slot, slot % slots, -_INF, _INF
    start = slot * slot_seconds
    return slot, slot % slots, start, start + slot_seconds


def plain_window_add(d: Doubles, base: int, slot: int, value: float, error: bool) -> None:
    """Add one observation to the slot at ``base`` of a windowed record without sketch."""
    if d[base] != slot:
        rotate(d, base, slot, False)
    d[base + 1] += 1.0
    d[base + 2] += value
    if error:
        d[base + 3] += 1.0
    if value < d[base + 4]:  # noqa: PLR1730 (no builtin call, no write)
        d[base + 4] = value
    if value > d[base + 5]:  # noqa: PLR1730
        d[base + 5] = value


def enter_slot(d: Doubles, base: int, slot: int) -> list[Any]:
    """Make the sketch slot at ``base`` hold ``slot`` (emptying it if it held an older
    interval); its mirror for the hot path: [slot id, min, max, {bucket: count index},
    then where new entries go (see ``record_writer.RecordWriter._append_bucket_entry``)]."""
    first = int(d[base + _SLOT_BLOCK])
    start = [first, layout.block_capacity(0), base + _SLOT_BLOCK, 0]
    if d[base] != slot:
        rotate(d, base, slot, True)
        return [float(slot), d[base + 4], d[base + 5], {}, *start]
    # The slot is current but not mirrored (the mirror was cleared): find its entries;
    # new ones go after them (from the first block: it skips full ones).
    entries = {}
    block = first
    while block:
        for entry in range(block + _BLOCK_ENTRIES, block + _BLOCK_ENTRIES + 2 * int(d[block]), 2):
            entries[int(d[entry]) + _SLOT_HEADER] = entry + 1
        block = int(d[block + _BLOCK_NEXT])
    return [float(slot), d[base + 4], d[base + 5], entries, *start]


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
