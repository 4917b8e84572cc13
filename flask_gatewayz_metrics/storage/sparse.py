"""Sparse sketch buckets: reading a slot's bucket blocks, and the compactor's form of them.

The byte format is in ``layout`` (bucket blocks). Everything here reads untrusted
files: a chain is followed only through blocks the reader indexed (``WorkerView.blocks``),
strictly forward and within the mapping, and an entry (bucket index and count packed in
one u32, ``layout``) is taken only with a valid bucket index (its count is a u32's
high bits: an integer, >= 0, below 2**21). A chain that breaks any of these makes the
slot unusable (``None``), never an exception.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from itertools import repeat
from operator import and_, rshift
from typing import Any

from .. import sketch
from . import layout
from .layout import Doubles

Entries = tuple[list[int], list[int]]
"""(bucket indexes, counts) of one slot, in the order they were touched."""

_INDEX_MASK = layout.ENTRY_INDEX_MASK
_INDEX_BITS = layout.ENTRY_INDEX_BITS
_PER_DOUBLE = layout.ENTRIES_PER_DOUBLE


def slot_entries(doubles: Doubles, blocks: Mapping[float, int], first: float) -> Entries | None:
    """Bucket indexes and counts of the slot whose ``SLOT_BLOCK`` field is ``first``.

    ``blocks``: payload index -> capacity of every block the reader indexed. ``None``
    when the chain or an entry is damaged.
    """
    values: list[int] = []
    block = first
    previous = 0.0
    size = len(doubles)
    while block:
        capacity = blocks.get(block)
        if capacity is None:
            # Not a block this reader indexed: linked by the writer after this view's
            # records were indexed (the chain, as of then, ends here), or damage
            # (nothing is read from it either way).
            break
        if not block > previous:
            return None  # chains only run forward: a loop is damage
        start = int(block)
        if start + layout.BLOCK_ENTRIES + capacity // _PER_DOUBLE > size:
            break  # indexed by a later read of the grown file: not in this mapping
        used = doubles[start + layout.BLOCK_USED]
        if not 0 <= used <= capacity or used != int(used):
            return None
        count = int(used)
        if count:
            begin = start + layout.BLOCK_ENTRIES
            words = doubles[begin : begin + (count + 1) // _PER_DOUBLE].cast("B").cast("I")
            values += words[:count].tolist()
        previous = block
        block = doubles[start + layout.BLOCK_NEXT]
    if not values:
        return [], []
    # Both halves as C-level loops (operator functions: cheaper calls than int's slots);
    # every count is valid by construction, only an index past the sketch is damage.
    n = len(values)
    indexes = list(map(and_, values, repeat(_INDEX_MASK, n)))
    if max(indexes) >= sketch.BUCKET_COUNT:
        return None
    return indexes, list(map(rshift, values, repeat(_INDEX_BITS, n)))


def window_slots(doubles: Doubles, blocks: Mapping[float, int], offset: int, slots: int) -> list[Any]:
    """The windowed sketch payload at ``offset`` for the compactor: per slot its
    ``SLOT_HEADER`` fields, then a dict bucket index -> count in place of ``SLOT_BLOCK``.

    A slot whose buckets cannot be read is marked unused (its id -1): dropped, not guessed.
    """
    stride = layout.slot_stride(True)
    out: list[Any] = []
    for position in range(slots):
        base = offset + position * stride
        header: list[Any] = list(doubles[base : base + layout.SLOT_HEADER])
        buckets: dict[int, float] = {}
        entries = slot_entries(doubles, blocks, doubles[base + layout.SLOT_BLOCK])
        if entries is None:
            header[layout.SLOT_ID] = -1.0
        else:
            for index, count in zip(*entries, strict=True):
                buckets[index] = buckets.get(index, 0.0) + count
        out += header
        out.append(buckets)
    return out


def encode_window(slots_payload: list[Any], slots: int, first_block: int) -> tuple[list[float], list[bytes]]:
    """A compactor's sketch payload (``window_slots``) as (record payload, bucket block
    records) for a file whose next record after this payload's record has its payload
    at float64 index ``first_block``: one chain per slot with buckets, of exactly the
    capacity it needs (``encode_blocks``), entries in bucket order."""
    stride = layout.slot_stride(True)
    payload: list[float] = []
    records: list[bytes] = []
    at = first_block
    for position in range(slots):
        base = position * stride
        payload += slots_payload[base : base + layout.SLOT_HEADER]
        link, new = encode_blocks(slots_payload[base + layout.SLOT_HEADER], at)
        payload.append(link)
        records += new
        at += sum(len(r) for r in new) // 8
    return payload, records


def encode_blocks(buckets: Mapping[int, float], first_block: int) -> tuple[float, list[bytes]]:
    """``buckets`` (sketch index -> count; zero counts left out) as a chain of bucket block
    records whose first payload will be at float64 index ``first_block``, and that index
    (0.0 and no records when empty). Entries go in bucket order; a count above
    ``layout.MAX_ENTRY_COUNT`` takes several entries, a chain longer than
    ``layout.MAX_ARCHIVE_BLOCK_ENTRIES`` several linked blocks (both only for absurd
    totals, which the merge then judges)."""
    entries: list[int] = []
    for index in sorted(buckets):
        count = int(buckets[index])
        # Bounded by the input: a count is a sum of entries read (each < 2**21), so it
        # never needs more entries here than were read for it (+1).
        while count > layout.MAX_ENTRY_COUNT:
            entries.append(layout.pack_entry(index, layout.MAX_ENTRY_COUNT))
            count -= layout.MAX_ENTRY_COUNT
        if count > 0:
            entries.append(layout.pack_entry(index, count))
    if not entries:
        return 0.0, []
    records: list[bytes] = []
    at = first_block
    step = layout.MAX_ARCHIVE_BLOCK_ENTRIES
    for start in range(0, len(entries), step):
        chunk = entries[start : start + step]
        capacity = layout.even_capacity(len(chunk))
        after = at + layout.BLOCK_ENTRIES + capacity // _PER_DOUBLE + 1  # the next block's payload
        head = (float(len(chunk)), float(after) if start + step < len(entries) else 0.0)
        length = layout.RECORD_HEADER.size + 8 * layout.BLOCK_ENTRIES + 4 * capacity
        records.append(
            layout.RECORD_HEADER.pack(length, 0)
            + struct.pack(f"<{layout.BLOCK_ENTRIES}d{capacity}I", *head, *chunk, *(0,) * (capacity - len(chunk)))
        )
        at = after
    return float(first_block), records


def chain_buckets(doubles: Doubles, blocks: Mapping[float, int], first: float) -> dict[int, float] | None:
    """A native record's chain (``kinds.NATIVE_KINDS``) as bucket index -> count, read
    under ``slot_entries``'s checks (``None``: damaged). A bucket appears in several
    entries when the archive split a count past ``layout.MAX_ENTRY_COUNT``, or in a
    hostile file; its counts add."""
    entries = slot_entries(doubles, blocks, first)
    if entries is None:
        return None
    indexes, counts = entries
    buckets: dict[int, float] = dict(zip(indexes, map(float, counts), strict=True))
    if len(buckets) != len(indexes):  # a bucket in several entries: add them up
        buckets = {}
        for index, count in zip(indexes, counts, strict=True):
            buckets[index] = buckets.get(index, 0.0) + count
    return buckets


def encode_chain(buckets: Mapping[int, float], first_block: int) -> tuple[list[float], list[bytes]]:
    """A native record's payload and its bucket blocks (none when empty), for a file
    whose next record after this one has its payload at float64 index ``first_block``
    (the archive's form: ``encode_blocks``)."""
    link, records = encode_blocks(buckets, first_block)
    return [link], records
