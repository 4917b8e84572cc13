"""Compaction: folding dead workers' files into one archive, crash-safe at every step.

Under gunicorn with ``max_requests`` thousands of workers live and die; re-reading all
their files at every scrape is what makes other multiprocess clients slow. Here a
compactor, holding an exclusive ``flock`` on ``compaction.lock``:

1. reads the archive and every worker file whose writer is gone (its flock is free);
2. merges them into new archive content: totals add, windowed slots add when they cover
   the same interval (else the newer wins), and the names of the absorbed files are
   recorded in the archive itself;
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


@dataclass
class ArchiveBuilder:
    """Accumulates the merged payload of every series of several files."""

    epoch: int
    slot_seconds: float
    slots: int
    payloads: dict[tuple[str, tuple[str, ...]], list[float]] = field(default_factory=dict)

    def add(self, view: WorkerView, skip_absorbed: bool = False) -> None:
        same_geometry = view.slot_seconds == self.slot_seconds and view.slots == self.slots
        for record in view.records:
            kind = layout.KINDS[record.kind]
            if (
                (kind.windowed and not same_geometry)
                or (skip_absorbed and record.kind == "absorbed")
                or kind.merge == "live"  # only live workers count (requests in flight)
            ):
                continue
            size = kind.payload_size(self.slots)
            incoming = list(view.doubles[record.offset : record.offset + size])
            key = (record.kind, record.labels)
            current = self.payloads.get(key)
            if current is None:
                self.payloads[key] = incoming
            elif kind.windowed:
                _merge_slots(current, incoming, self.slots, layout.slot_stride(kind.with_sketch))
            else:
                self.payloads[key] = combine(kind, current, incoming)

    def absorb(self, name: str) -> None:
        self.payloads[("absorbed", (name,))] = []

    def count_error(self, reason: str) -> None:
        key = ("storage_errors", (reason,))
        self.payloads[key] = [self.payloads.get(key, [0.0])[0] + 1.0]

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


def _sort_key(item: tuple[tuple[str, tuple[str, ...]], list[float]]) -> tuple[str, str]:
    (kind, labels), _ = item
    return kind, repr(labels)


def _merge_slots(current: list[float], incoming: list[float], slots: int, stride: int) -> None:
    """Merge windowed payloads slot position by slot position (in place into ``current``)."""
    for position in range(slots):
        base = position * stride
        new_id, old_id = incoming[base + layout.SLOT_ID], current[base + layout.SLOT_ID]
        if new_id < 0 or new_id < old_id:
            continue
        if new_id > old_id:
            current[base : base + stride] = incoming[base : base + stride]
            continue
        for field_index in (layout.SLOT_COUNT, layout.SLOT_SUM, layout.SLOT_ERRORS):
            current[base + field_index] += incoming[base + field_index]
        current[base + layout.SLOT_MIN] = min(current[base + layout.SLOT_MIN], incoming[base + layout.SLOT_MIN])
        current[base + layout.SLOT_MAX] = max(current[base + layout.SLOT_MAX], incoming[base + layout.SLOT_MAX])
        start, end = base + layout.SLOT_HEADER, base + stride
        current[start:end] = map(add, current[start:end], incoming[start:end])


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
    # The newest files decide the window geometry: after a configuration change the
    # archive's old windows are dropped (its totals are kept).
    geometry = dead[0] if dead else archive
    builder = ArchiveBuilder(
        epoch,
        geometry.slot_seconds if geometry else DEFAULT_SLOT_SECONDS,
        geometry.slots if geometry else DEFAULT_SLOTS,
    )
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

