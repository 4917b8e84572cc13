"""The archive's content: merging the records of several files into one (``ArchiveBuilder``).

Totals add; windowed slots add when they cover the same interval, else the newer wins;
windows of another geometry (slot width, slot count) are re-bucketed into the newest
configuration's (``newest_geometry``: a live writer's, else the newest dead file's,
else the archive's, else the defaults). What cannot be merged is counted by reason,
never dropped silently. ``compaction`` decides which files go in and writes the result.
"""

from __future__ import annotations

import math
import os
import stat
import time
from dataclasses import dataclass, field
from typing import Any

from . import kinds, layout
from .directory import is_worker_file
from .merge import combine
from .reader import WorkerView, is_locked, usable_geometry
from .sparse import chain_buckets, encode_chain, encode_window, window_slots

DEFAULT_SLOTS = layout.DEFAULT_WINDOW_SLOTS
DEFAULT_SLOT_SECONDS = layout.DEFAULT_WINDOW_SECONDS / DEFAULT_SLOTS
"""Archive geometry when no file tells it (only bad files to count): the defaults."""

NATIVE_CHAIN_REASON = "corrupt_record"
"""Storage error reason of a native histogram's chain (``kinds.NATIVE_KINDS``) that could
not be read while folding a file (dropped, not guessed): the record is corrupt."""
WINDOW_GEOMETRY_REASON = "window_geometry"
"""Storage error reason: windowed slots of another geometry that could not be re-bucketed
into the archive's (an interval straddling two new slots, or "since start" data going
into a sliding window) while still inside the window."""


@dataclass
class ArchiveBuilder:
    """Accumulates the merged payload of every series of several files.

    Windows of a file with another geometry (slot width, slot count) are re-bucketed:
    each old slot whose interval lies inside one slot of this geometry is added to it;
    a non-empty one that fits none while still in the window is counted under
    ``WINDOW_GEOMETRY_REASON``, never dropped silently.
    """

    epoch: int
    slot_seconds: float
    slots: int
    payloads: dict[tuple[str, tuple[str, ...]], list[Any]] = field(default_factory=dict)
    """Merged payload of each series (sketch slots hold a dict bucket -> count)."""
    now: float = field(default_factory=time.time)
    """Wall time of the compaction (writers stamp slots with wall time too)."""

    def add(self, view: WorkerView, skip_absorbed: bool = False) -> None:
        """Merge every record of ``view`` (a dead worker's file or the old archive) into the
        archive being built; ``skip_absorbed`` leaves out its list of absorbed files."""
        same_geometry = view.slot_seconds == self.slot_seconds and view.slots == self.slots
        lost = lost_native = 0
        for record in view.records:
            kind = kinds.KINDS[record.kind]
            if (
                (skip_absorbed and record.kind == "absorbed")
                or kind.merge == "live"  # only live workers count (requests in flight)
            ):
                continue
            key = (record.kind, record.labels)
            current = self.payloads.get(key)
            if kind.windowed:
                # Sketch slots carry a dict bucket -> count (``sparse.window_slots``),
                # written back as bucket blocks by ``encode``.
                stride = layout.slot_stride(kind.with_sketch)
                if kind.with_sketch:
                    incoming = window_slots(view.doubles, view.blocks, record.offset, view.slots)
                else:
                    incoming = list(view.doubles[record.offset : record.offset + view.slots * stride])
                if not same_geometry:
                    incoming, unplaced = self._rebucket(incoming, view.slot_seconds, view.slots, stride)
                    lost += unplaced
                if current is None:
                    self.payloads[key] = incoming
                else:
                    merge_slots(current, incoming, self.slots, stride)
                continue
            if kind.merge == "native":  # a chain: carried as a dict bucket -> count
                buckets = chain_buckets(view.doubles, view.blocks, view.doubles[record.offset + kinds.NATIVE_FIRST])
                if buckets is None:
                    lost_native += 1
                    continue
                self.payloads[key] = combine_native(current, [buckets])
                continue
            incoming = list(view.doubles[record.offset : record.offset + kind.size])
            if record.kind in kinds.UNCOUNTED_KINDS:  # a count the request path leaves unwritten
                incoming[kinds.REQ_COUNT] = sum(incoming[kinds.REQ_BUCKETS :])
            self.payloads[key] = incoming if current is None else combine(kind, current, incoming)
        if lost_native:
            self.count_error(NATIVE_CHAIN_REASON, lost_native)
        if lost:
            self.count_error(WINDOW_GEOMETRY_REASON, lost)

    def _rebucket(
        self, payload: list[Any], slot_seconds: float, slots: int, stride: int
    ) -> tuple[list[Any], int]:
        """``payload`` (``slots`` slots of ``slot_seconds``) in this builder's geometry,
        and how many non-empty slots still in the window found no place."""
        out = _empty_slots(self.slots, stride)
        lost = 0
        for position in range(slots):
            base = position * stride
            slot_id = payload[base + layout.SLOT_ID]
            if not 0 <= slot_id < _MAX_SLOT_ID or not _has_values(payload, base, stride):
                continue  # unused (or damaged) slot
            target = self._target_slot(slot_id, slot_seconds)
            if target is None:
                lost += self._in_window(slot_id, slot_seconds)
                continue
            piece = payload[base : base + stride]
            piece[layout.SLOT_ID] = float(target)
            _merge_slot(out, (target % self.slots) * stride, piece, 0, stride)
        return out, lost

    def _target_slot(self, slot_id: float, slot_seconds: float) -> int | None:
        """The slot of this geometry containing old slot ``slot_id`` entirely, if any."""
        if self.slot_seconds <= 0:
            return 0  # one slot since start holds every interval
        if not 0 < slot_seconds < math.inf:
            return None  # "since start" (or damaged): no interval to place
        start = slot_id * slot_seconds
        target = math.floor(start / self.slot_seconds + _EPSILON)
        if start + slot_seconds <= (target + 1) * self.slot_seconds * (1 + _EPSILON):
            return target
        return None

    def _in_window(self, slot_id: float, slot_seconds: float) -> bool:
        """Whether an old slot's interval reaches into this geometry's current window."""
        if not 0 < slot_seconds < math.inf:
            return True  # "since start" data may be recent
        oldest = math.floor(self.now / self.slot_seconds) - self.slots + 1
        return (slot_id + 1) * slot_seconds > oldest * self.slot_seconds

    def absorb(self, name: str) -> None:
        """Remember that worker file ``name`` is folded into this archive."""
        self.payloads[("absorbed", (name,))] = []

    def count_error(self, reason: str, count: int = 1) -> None:
        """Add ``count`` to the archive's ``storage_errors`` record of ``reason``."""
        key = ("storage_errors", (reason,))
        self.payloads[key] = [self.payloads.get(key, [0.0])[0] + count]

    def encode(self) -> bytes:
        """The archive file: header, every record, then the bucket blocks of the sketch
        windows (located once the size of all records is known)."""
        items = sorted(self.payloads.items(), key=_sort_key)
        keys = [layout.encode_key(kind, labels) for (kind, labels), _ in items]
        records_end = layout.HEADER_SIZE + sum(
            layout.RECORD_HEADER.size + layout.padded(len(key)) + 8 * len(payload)
            for key, ((kind, _), payload) in zip(keys, items, strict=True)
        )
        parts: list[bytes] = []
        blocks: list[bytes] = []
        next_block = records_end // 8 + 1  # payload index of the next block (after its 8-byte header)
        for key, ((kind, _), payload) in zip(keys, items, strict=True):
            written = payload
            if kinds.KINDS[kind].with_sketch:
                written, new_blocks = encode_window(payload, self.slots, next_block)
                next_block += sum(len(b) for b in new_blocks) // 8
                blocks += new_blocks
            elif kinds.KINDS[kind].merge == "native":
                written, new_blocks = encode_chain(payload[0], next_block)
                next_block += sum(len(b) for b in new_blocks) // 8
                blocks += new_blocks
            parts.append(layout.encode_record(key, written))
        body = b"".join(parts + blocks)
        header = layout.HEADER.pack(
            layout.WORKER_MAGIC, layout.VERSION, layout.HEADER_SIZE + len(body), self.epoch, 0,
            time.time(), self.slot_seconds, self.slots,
        )
        return header + body


_MAX_SLOT_ID = 2.0**53
"""Slot ids are integers stored as float64; anything larger (or NaN) is damage."""
_EPSILON = 1e-9
"""Tolerance of the interval arithmetic (slot bounds are float products)."""


def combine_native(current: list[Any] | None, incoming: list[Any]) -> list[Any]:
    """Two native payloads of the builder (``[dict bucket -> count]``), added into a new one."""
    buckets: dict[int, float] = dict(current[0]) if current is not None else {}
    for index, count in incoming[0].items():
        buckets[index] = buckets.get(index, 0.0) + count
    return [buckets]


def _sort_key(item: tuple[tuple[str, tuple[str, ...]], list[float]]) -> tuple[str, str]:
    (kind, labels), _ = item
    return kind, repr(labels)


def _empty_slots(slots: int, stride: int) -> list[Any]:
    """A windowed payload of unused slots (sketch slots with an empty bucket dict each)."""
    out: list[Any] = []
    for _ in range(slots):
        out += layout.EMPTY_SLOT
        if stride > layout.SLOT_HEADER:
            out.append({})
    return out


def _has_values(payload: list[Any], base: int, stride: int) -> bool:
    """Whether the slot at ``base`` saw anything (sketch slots count in their buckets)."""
    if payload[base + layout.SLOT_COUNT] > 0:
        return True
    return stride > layout.SLOT_HEADER and any(payload[base + layout.SLOT_HEADER].values())


def merge_slots(current: list[Any], incoming: list[Any], slots: int, stride: int) -> None:
    """Merge windowed payloads slot position by slot position (in place into ``current``)."""
    for position in range(slots):
        _merge_slot(current, position * stride, incoming, position * stride, stride)


def _merge_slot(current: list[Any], base: int, incoming: list[Any], source: int, stride: int) -> None:
    """Merge the slot at ``incoming[source:]`` into ``current[base:]``: the same interval
    adds up, a newer one replaces an older one (which has left the window)."""
    new_id, old_id = incoming[source + layout.SLOT_ID], current[base + layout.SLOT_ID]
    if new_id < 0 or new_id < old_id:
        return
    if new_id > old_id:
        current[base : base + layout.SLOT_HEADER] = incoming[source : source + layout.SLOT_HEADER]
        if stride > layout.SLOT_HEADER:
            current[base + layout.SLOT_HEADER] = dict(incoming[source + layout.SLOT_HEADER])
        return
    for field_index in (layout.SLOT_COUNT, layout.SLOT_SUM, layout.SLOT_ERRORS):
        current[base + field_index] += incoming[source + field_index]
    current[base + layout.SLOT_MIN] = min(current[base + layout.SLOT_MIN], incoming[source + layout.SLOT_MIN])
    current[base + layout.SLOT_MAX] = max(current[base + layout.SLOT_MAX], incoming[source + layout.SLOT_MAX])
    if stride > layout.SLOT_HEADER:
        buckets = current[base + layout.SLOT_HEADER]
        for index, count in incoming[source + layout.SLOT_HEADER].items():
            buckets[index] = buckets.get(index, 0.0) + count


def newest_geometry(
    dir_fd: int, trusted: frozenset[int], dead: list[WorkerView], archive: WorkerView | None
) -> tuple[float, int]:
    """Window geometry of the newest configuration: a live writer's (it runs the current
    configuration; read from its header only), the most recently created one if several;
    else the most recently created dead file's; else the archive's; else the defaults.
    Headers are untrusted: a file with an unusable geometry is passed over."""
    newest: tuple[bool, float, float, int] | None = None
    """(live, created, slot_seconds, slots) of the best candidate so far."""
    for view in dead:
        candidate = (False, view.doubles[layout.CREATED_INDEX], view.slot_seconds, view.slots)
        if _usable(*candidate[1:]) and (newest is None or candidate > newest):
            newest = candidate
    dead_names = {view.name for view in dead}
    try:
        names = sorted(os.listdir(dir_fd))
    except OSError:
        names = []
    for name in names[:_MAX_HEADERS_READ]:
        if is_worker_file(name) and name not in dead_names:
            header = _header(dir_fd, name, trusted)
            if header is not None and (newest is None or header > newest):
                newest = header
    if newest is not None:
        return newest[2], newest[3]
    if archive is not None and _usable(0.0, archive.slot_seconds, archive.slots):
        return archive.slot_seconds, archive.slots
    return DEFAULT_SLOT_SECONDS, DEFAULT_SLOTS


_MAX_HEADERS_READ = 4096
"""Bound on the directory entries looked at for live writers' geometry."""


def _usable(created: float, slot_seconds: float, slots: int) -> bool:
    """A header this module may take the archive's geometry from: the reader's rule
    (``reader.usable_geometry``), so an archive is never written with a geometry the
    reader then refuses, and a finite creation time to order candidates by."""
    return math.isfinite(created) and usable_geometry(slot_seconds, slots)


def _header(dir_fd: int, name: str, trusted: frozenset[int]) -> tuple[bool, float, float, int] | None:
    """(live, created, slot_seconds, slots) of a worker file, if it is a regular file of a
    trusted owner and its header is usable."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid not in trusted:
            return None
        raw = os.pread(fd, layout.HEADER_SIZE, 0)
        live = is_locked(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(raw) < layout.HEADER_SIZE:
        return None
    magic, version, _used, _epoch, _pid, created, slot_seconds, slots = layout.HEADER.unpack(raw)
    if magic != layout.WORKER_MAGIC or version != layout.VERSION or not _usable(created, slot_seconds, slots):
        return None
    return live, created, slot_seconds, slots

