"""Sparse sketch buckets: reading a slot's bucket blocks, and the compactor's form of them.

The byte format is in ``layout`` (bucket blocks). Everything here reads untrusted
files: a chain is followed only through blocks the reader indexed (``WorkerView.blocks``),
strictly forward and within the mapping, and an entry is taken only with a valid bucket
index and a finite, non-negative count. A chain that breaks any of these makes the slot
unusable (``None``), never an exception.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import Any

from .. import sketch
from . import layout
from .layout import Doubles

Entries = tuple[list[float], list[float]]
"""(bucket indexes, counts) of one slot, in the order they were touched."""

_INDEX_LIMIT = float(sketch.BUCKET_COUNT)


def slot_entries(doubles: Doubles, blocks: Mapping[float, int], first: float) -> Entries | None:
    """Bucket indexes and counts of the slot whose ``SLOT_BLOCK`` field is ``first``.

    ``blocks``: payload index -> capacity of every block the reader indexed. ``None``
    when the chain or an entry is damaged.
    """
    indexes: list[float] = []
    counts: list[float] = []
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
        if start + layout.BLOCK_ENTRIES + 2 * capacity > size:
            break  # indexed by a later read of the grown file: not in this mapping
        used = doubles[start + layout.BLOCK_USED]
        if not 0 <= used <= capacity or used != int(used):
            return None
        values = doubles[start + layout.BLOCK_ENTRIES : start + layout.BLOCK_ENTRIES + 2 * int(used)].tolist()
        indexes += values[0::2]
        counts += values[1::2]
        previous = block
        block = doubles[start + layout.BLOCK_NEXT]
    if indexes and not _valid(indexes, counts):
        return None
    return indexes, counts


def _valid(indexes: list[float], counts: list[float]) -> bool:
    """Bucket indexes integral and in range, counts finite and non-negative."""
    if not (min(indexes) >= 0 and max(indexes) < _INDEX_LIMIT and all(map(float.is_integer, indexes))):
        return False
    # sum, not math.fsum: fsum raises OverflowError when a partial sum overflows.
    return min(counts) >= 0 and math.isfinite(sum(counts))


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
                buckets[int(index)] = buckets.get(int(index), 0.0) + count
        out += header
        out.append(buckets)
    return out


def encode_window(slots_payload: list[Any], slots: int, first_block: int) -> tuple[list[float], list[bytes]]:
    """A compactor's sketch payload (``window_slots``) as (record payload, bucket block
    records) for a file whose next record after this payload's record has its payload
    at float64 index ``first_block``: one block per slot with buckets, of exactly the
    capacity it needs, entries in bucket order."""
    stride = layout.slot_stride(True)
    payload: list[float] = []
    records: list[bytes] = []
    at = first_block
    for position in range(slots):
        base = position * stride
        payload += slots_payload[base : base + layout.SLOT_HEADER]
        buckets: dict[int, float] = slots_payload[base + layout.SLOT_HEADER]
        entries = [v for index in sorted(buckets) if buckets[index] for v in (float(index), buckets[index])]
        if not entries:
            payload.append(0.0)
            continue
        payload.append(float(at))
        block = [float(len(entries) // 2), 0.0, *entries]
        records.append(layout.RECORD_HEADER.pack(8 * len(block) + 8, 0) + struct.pack(f"<{len(block)}d", *block))
        at += len(block) + 1
    return payload, records


def chain_buckets(doubles: Doubles, blocks: Mapping[float, int], first: float) -> dict[int, float] | None:
    """A native record's chain (``layout.NATIVE_KINDS``) as bucket index -> count, read
    under ``slot_entries``'s checks (``None``: damaged). A bucket may appear in several
    entries only in a hostile file; its counts add."""
    entries = slot_entries(doubles, blocks, first)
    if entries is None:
        return None
    indexes, counts = entries
    buckets = dict(zip(map(int, indexes), counts, strict=True))
    if len(buckets) != len(indexes):  # a bucket in several entries (hostile): add them up
        buckets = {}
        for index, count in zip(indexes, counts, strict=True):
            buckets[int(index)] = buckets.get(int(index), 0.0) + count
    return buckets


def encode_chain(buckets: Mapping[int, float], first_block: int) -> tuple[list[float], list[bytes]]:
    """A native record's payload and its one bucket block (none when empty), for a file
    whose next record after this one has its payload at float64 index ``first_block``
    (the archive's form: exactly the capacity needed, entries in bucket order)."""
    entries = [v for index in sorted(buckets) if buckets[index] for v in (float(index), float(buckets[index]))]
    if not entries:
        return [0.0], []
    block = [float(len(entries) // 2), 0.0, *entries]
    record = layout.RECORD_HEADER.pack(8 * len(block) + 8, 0) + struct.pack(f"<{len(block)}d", *block)
    return [float(first_block)], [record]
