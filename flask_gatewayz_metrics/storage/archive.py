"""Compaction: folding dead workers' files into one archive, crash-safe at every step.

Under gunicorn with ``max_requests`` thousands of workers live and die; re-reading all
their files at every scrape is what makes other multiprocess clients slow. Here a
compactor, holding an exclusive ``flock`` on ``compaction.lock``:

1. reads the archive and every worker file whose writer is gone (its flock is free);
2. merges them into new archive content: totals add, windowed slots add when they cover
   the same interval (else the newer wins; windows of another geometry are re-bucketed
   into the newest configuration's, see ``ArchiveBuilder``), and the names of the
   absorbed files are recorded in the archive itself;
3. writes it to a temporary file, fsyncs it, renames it over ``archive.gwza`` (atomic)
   and fsyncs the directory;
4. only then deletes the absorbed worker files.

Readers skip files the archive names as absorbed, so a crash after step 3 double-counts
nothing, and a crash before it loses nothing (the old archive and all files are intact).
A name is dropped from the archive once its file is gone, since names are never reused.
Bad files nobody holds are moved to ``quarantine/`` and counted by reason in the
archive (``gatewayz_metrics_storage_errors_total``); files of an older reset epoch are
deleted.
"""

from __future__ import annotations

import fcntl
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import add

from . import layout
from .control import ControlFile
from .merge import combine
from .reader import DirectoryReader, StorageProblem, WorkerView, is_locked

MAX_FILES_PER_RUN = 256
"""Dead files folded per compaction, which bounds the time one run (one scrape) takes."""
QUARANTINE_KEEP = 16
DEFAULT_SLOT_SECONDS = 60.0
DEFAULT_SLOTS = 5
"""Archive geometry when no file tells it (only bad files to count): the defaults."""


@dataclass
class CompactionResult:
    ran: bool = False
    """False when another process held the compaction lock (it is doing the work)."""
    absorbed: int = 0
    stale_deleted: int = 0
    quarantined: int = 0


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
    payloads: dict[tuple[str, tuple[str, ...]], list[float]] = field(default_factory=dict)
    now: float = field(default_factory=time.time)
    """Wall time of the compaction (writers stamp slots with wall time too)."""

    def add(self, view: WorkerView, skip_absorbed: bool = False) -> None:
        same_geometry = view.slot_seconds == self.slot_seconds and view.slots == self.slots
        lost = 0
        for record in view.records:
            kind = layout.KINDS[record.kind]
            if (
                (skip_absorbed and record.kind == "absorbed")
                or kind.merge == "live"  # only live workers count (requests in flight)
            ):
                continue
            key = (record.kind, record.labels)
            current = self.payloads.get(key)
            if kind.windowed:
                stride = layout.slot_stride(kind.with_sketch)
                incoming = list(view.doubles[record.offset : record.offset + view.slots * stride])
                if not same_geometry:
                    incoming, unplaced = self._rebucket(incoming, view.slot_seconds, view.slots, stride)
                    lost += unplaced
                if current is None:
                    self.payloads[key] = incoming
                else:
                    _merge_slots(current, incoming, self.slots, stride)
                continue
            incoming = list(view.doubles[record.offset : record.offset + kind.size])
            self.payloads[key] = incoming if current is None else combine(kind, current, incoming)
        if lost:
            self.count_error(WINDOW_GEOMETRY_REASON, lost)

    def _rebucket(
        self, payload: list[float], slot_seconds: float, slots: int, stride: int
    ) -> tuple[list[float], int]:
        """``payload`` (``slots`` slots of ``slot_seconds``) in this builder's geometry,
        and how many non-empty slots still in the window found no place."""
        out = (list(layout.EMPTY_SLOT) + [0.0] * (stride - layout.SLOT_HEADER)) * self.slots
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
        self.payloads[("absorbed", (name,))] = []

    def count_error(self, reason: str, count: int = 1) -> None:
        key = ("storage_errors", (reason,))
        self.payloads[key] = [self.payloads.get(key, [0.0])[0] + count]

    def encode(self) -> bytes:
        body = b"".join(
            layout.encode_record(layout.encode_key(kind, labels), payload)
            for (kind, labels), payload in sorted(self.payloads.items(), key=_sort_key)
        )
        header = layout.HEADER.pack(
            layout.WORKER_MAGIC, layout.VERSION, layout.HEADER_SIZE + len(body), self.epoch, 0,
            time.time(), self.slot_seconds, self.slots,
        )
        return header + body


_MAX_SLOT_ID = 2.0**53
"""Slot ids are integers stored as float64; anything larger (or NaN) is damage."""
_EPSILON = 1e-9
"""Tolerance of the interval arithmetic (slot bounds are float products)."""


def _sort_key(item: tuple[tuple[str, tuple[str, ...]], list[float]]) -> tuple[str, str]:
    (kind, labels), _ = item
    return kind, repr(labels)


def _has_values(payload: list[float], base: int, stride: int) -> bool:
    """Whether the slot at ``base`` saw anything (sketch slots count in their buckets)."""
    return payload[base + layout.SLOT_COUNT] > 0 or any(payload[base + layout.SLOT_HEADER : base + stride])


def _merge_slots(current: list[float], incoming: list[float], slots: int, stride: int) -> None:
    """Merge windowed payloads slot position by slot position (in place into ``current``)."""
    for position in range(slots):
        _merge_slot(current, position * stride, incoming, position * stride, stride)


def _merge_slot(current: list[float], base: int, incoming: list[float], source: int, stride: int) -> None:
    """Merge the slot at ``incoming[source:]`` into ``current[base:]``: the same interval
    adds up, a newer one replaces an older one (which has left the window)."""
    new_id, old_id = incoming[source + layout.SLOT_ID], current[base + layout.SLOT_ID]
    if new_id < 0 or new_id < old_id:
        return
    if new_id > old_id:
        current[base : base + stride] = incoming[source : source + stride]
        return
    for field_index in (layout.SLOT_COUNT, layout.SLOT_SUM, layout.SLOT_ERRORS):
        current[base + field_index] += incoming[source + field_index]
    current[base + layout.SLOT_MIN] = min(current[base + layout.SLOT_MIN], incoming[source + layout.SLOT_MIN])
    current[base + layout.SLOT_MAX] = max(current[base + layout.SLOT_MAX], incoming[source + layout.SLOT_MAX])
    start, end = base + layout.SLOT_HEADER, base + stride
    current[start:end] = map(add, current[start:end], incoming[source + layout.SLOT_HEADER : source + stride])


def _newest_geometry(directory: str, dead: list[WorkerView], archive: WorkerView | None) -> tuple[float, int]:
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
        names = sorted(os.listdir(directory))
    except OSError:
        names = []
    for name in names[:_MAX_HEADERS_READ]:
        if name.endswith(layout.WORKER_SUFFIX) and not name.startswith(layout.TEMP_PREFIX) and name not in dead_names:
            header = _header(os.path.join(directory, name))
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
    return math.isfinite(created) and 0 <= slot_seconds < math.inf and 1 <= slots <= 1024


def _header(path: str) -> tuple[bool, float, float, int] | None:
    """(live, created, slot_seconds, slots) of a worker file, if its header is usable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
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


def compact(
    directory: str,
    *,
    max_files: int = MAX_FILES_PER_RUN,
    step: Callable[[str], None] | None = None,
) -> CompactionResult:
    """Fold dead workers' files into the archive (see the module docstring).

    Non-blocking: returns ``ran=False`` at once if another process is compacting.
    ``step`` is called after each durable step (tests use it to crash there).
    """
    lock_fd = os.open(
        os.path.join(directory, layout.COMPACTION_LOCK_NAME),
        os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
    )
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return CompactionResult(ran=False)
        return _compact_locked(directory, max_files, step or _no_step)
    finally:
        os.close(lock_fd)


def _no_step(_: str) -> None:
    pass


def _compact_locked(directory: str, max_files: int, step: Callable[[str], None]) -> CompactionResult:
    result = CompactionResult(ran=True)
    epoch = ControlFile(directory).epoch
    views, problems = DirectoryReader(directory, dead_only=True).read()
    archive = next((v for v in views if v.is_archive), None)
    if archive is not None and archive.epoch < epoch:
        archive = None  # from before a reset: its values must not come back
    present = set(os.listdir(directory))
    if archive is not None:
        for name in archive.absorbed() & present:  # a crash after the rename left these
            _unlink(os.path.join(directory, name))
    dead = [v for v in views if not v.is_archive and not v.live]
    for view in dead:
        if view.epoch < epoch:
            _unlink(view.path)
            result.stale_deleted += 1
    dead = [v for v in dead if v.epoch >= epoch][:max_files]
    bad = [p for p in problems if _is_metrics_file(p.path) and _is_unheld(p.path)]
    if not dead and not bad:
        return result
    # The newest configuration decides the window geometry; windows of any other
    # geometry (the archive's after a change, old workers') are re-bucketed into it.
    builder = ArchiveBuilder(epoch, *_newest_geometry(directory, dead, archive))
    if archive is not None:
        builder.add(archive, skip_absorbed=True)
    for view in dead:
        builder.add(view)
        builder.absorb(view.name)
    for problem in bad:
        builder.count_error(problem.reason)
    _replace_archive(directory, builder.encode(), step)
    step("archive_renamed")
    for view in dead:
        _unlink(view.path)
        result.absorbed += 1
        step("worker_unlinked")
    for problem in bad:
        _quarantine(directory, problem)
        result.quarantined += 1
    return result


def _replace_archive(directory: str, content: bytes, step: Callable[[str], None]) -> None:
    temp = os.path.join(directory, layout.TEMP_PREFIX + layout.ARCHIVE_NAME + ".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    step("temp_written")
    os.rename(temp, os.path.join(directory, layout.ARCHIVE_NAME))
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_metrics_file(path: str) -> bool:
    name = os.path.basename(path)
    return name == layout.ARCHIVE_NAME or name.endswith(layout.WORKER_SUFFIX)


def _is_unheld(path: str) -> bool:
    """Whether no process holds ``path``'s flock (a bad file nobody is writing)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return not is_locked(fd)
    finally:
        os.close(fd)


def _quarantine(directory: str, problem: StorageProblem) -> None:
    """Move a bad file out of the way, keeping only the newest few for inspection."""
    target_dir = os.path.join(directory, layout.QUARANTINE_DIR)
    os.makedirs(target_dir, mode=0o700, exist_ok=True)
    name = f"{int(time.time())}-{problem.reason}-{os.path.basename(problem.path)}"
    try:
        os.rename(problem.path, os.path.join(target_dir, name))
    except FileNotFoundError:
        return
    kept = sorted(os.listdir(target_dir))
    for old in kept[:-QUARANTINE_KEEP]:
        _unlink(os.path.join(target_dir, old))


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

