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

import errno
import fcntl
import os
import stat
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from ..labels import DEFAULT_LIMITS, OVERFLOW_VALUE
from . import kinds, layout
from .archive_builder import ArchiveBuilder, combine_native, merge_slots, newest_geometry
from .directory import is_data_file, open_directory
from .merge import combine
from .reader import DirectoryReader, StorageProblem, WorkerView, is_locked

MAX_FILES_PER_RUN = 256
"""Dead files folded per compaction, which bounds the time one run (one scrape) takes."""
QUARANTINE_KEEP = 16
"""Bad files kept in ``quarantine/`` (the oldest beyond these are deleted)."""


@dataclass
class CompactionResult:
    """What one ``compact()`` run did."""

    ran: bool = False
    """False when another process held the compaction lock (it is doing the work)."""
    absorbed: int = 0
    stale_deleted: int = 0
    quarantined: int = 0


def compact(
    directory: str,
    *,
    max_files: int = MAX_FILES_PER_RUN,
    step: Callable[[str], None] | None = None,
    budget_seconds: float | None = None,
    label_limits: Mapping[str, int] | None = None,
    trusted: Iterable[int] | None = None,
) -> CompactionResult:
    """Fold dead workers' files into the archive (see the module docstring).

    Non-blocking: returns ``ran=False`` at once if another process is compacting.
    ``step`` is called after each durable step (tests use it to crash there).
    ``budget_seconds`` bounds the time spent reading files (the rest waits for the next
    run); ``label_limits`` bound the distinct values per label in the archive (default:
    ``labels.DEFAULT_LIMITS`` and ``$GATEWAYZ_METRICS_LABEL_LIMITS``); ``trusted``: the
    uids whose files are read (default: ours and ``$GATEWAYZ_METRICS_TRUSTED_UIDS``).
    Everything happens through a descriptor of the directory, with ``O_NOFOLLOW`` and
    ``O_NONBLOCK``: nothing outside it is ever created, renamed or deleted, and no file
    in it can block.
    """
    deadline = time.monotonic() + budget_seconds if budget_seconds is not None else None
    dir_fd = open_directory(directory)
    try:
        lock_fd = os.open(layout.COMPACTION_LOCK_NAME, _WRITE_FLAGS, 0o600, dir_fd=dir_fd)
        try:
            st = os.fstat(lock_fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                raise PermissionError(errno.EPERM, "not a regular file of this user", layout.COMPACTION_LOCK_NAME)
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return CompactionResult(ran=False)
            reader = DirectoryReader(directory, dead_only=True, trusted=trusted)
            reader.deadline = deadline
            limits = label_limits if label_limits is not None else limits_from_environment()
            return _compact_locked(directory, dir_fd, reader, max_files, step or _no_step, limits)
        finally:
            os.close(lock_fd)
    finally:
        os.close(dir_fd)


_WRITE_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
LABEL_LIMITS_ENV = "GATEWAYZ_METRICS_LABEL_LIMITS"
"""``name=limit,...`` (e.g. ``model=1000``): the archive's label limits for compactions
that run outside the app (gunicorn's ``child_exit``); the app's own come from its settings."""


def limits_from_environment() -> dict[str, int]:
    """``labels.DEFAULT_LIMITS`` updated from ``$GATEWAYZ_METRICS_LABEL_LIMITS`` (bad parts ignored)."""
    limits = dict(DEFAULT_LIMITS)
    for part in os.environ.get(LABEL_LIMITS_ENV, "").split(","):
        name, _, value = part.partition("=")
        if name.strip() and value.strip().isdigit():
            limits[name.strip()] = int(value)
    return limits


def _no_step(_: str) -> None:
    pass


def _compact_locked(
    directory: str,
    dir_fd: int,
    reader: DirectoryReader,
    max_files: int,
    step: Callable[[str], None],
    limits: Mapping[str, int],
) -> CompactionResult:
    result = CompactionResult(ran=True)
    epoch = _control_epoch(dir_fd)
    views, problems = reader.read(dir_fd)
    archive = next((v for v in views if v.is_archive), None)
    if archive is not None and archive.epoch < epoch:
        archive = None  # from before a reset: its values must not come back
    present = set(os.listdir(dir_fd))
    if archive is not None:
        for name in archive.absorbed() & present:  # a crash after the rename left these
            _unlink(dir_fd, name)
    dead = [v for v in views if not v.is_archive and not v.live]
    for view in dead:
        if view.epoch < epoch:
            _unlink(dir_fd, view.name)
            result.stale_deleted += 1
    # A file of a newer epoch: a reset came after we read the epoch (and its worker has
    # exited already). It waits for the next run: an archive stamped with our epoch would
    # hide it from every reader.
    dead = [v for v in dead if v.epoch == epoch][:max_files]
    bad = [p for p in problems if _is_metrics_file(p.path) and _is_unheld(dir_fd, os.path.basename(p.path))]
    if not dead and not bad:
        return result
    # The newest configuration decides the window geometry; windows of any other
    # geometry (the archive's after a change, old workers') are re-bucketed into it.
    builder = ArchiveBuilder(epoch, *newest_geometry(dir_fd, reader.trusted, dead, archive))
    kept: set[tuple[str, str]] = set()
    if archive is not None:
        kept = _label_values(archive)
        builder.add(archive, skip_absorbed=True)
    for view in dead:
        builder.add(view)
        builder.absorb(view.name)
    for problem in bad:
        builder.count_error(problem.reason)
    limit_labels(builder, limits, kept)
    _replace_archive(dir_fd, builder.encode(), step, dead)
    step("archive_renamed")
    for view in dead:
        _unlink(dir_fd, view.name)
        result.absorbed += 1
        step("worker_unlinked")
    if not bad:
        return result
    quarantine_fd = _quarantine_directory(dir_fd)
    try:
        for problem in bad:
            _quarantine(dir_fd, quarantine_fd, problem)
            result.quarantined += 1
    finally:
        if quarantine_fd >= 0:
            os.close(quarantine_fd)
    return result


def _control_epoch(dir_fd: int) -> int:
    """The reset epoch of the directory's control file (0 if it is absent or unusable)."""
    try:
        fd = os.open(layout.CONTROL_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return 0
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            return 0
        header = os.pread(fd, layout.CONTROL.size, 0)
    finally:
        os.close(fd)
    if len(header) < layout.CONTROL.size or header[:4] != layout.CONTROL_MAGIC:
        return 0
    return int(layout.CONTROL.unpack(header)[2])


def _label_values(view: WorkerView) -> set[tuple[str, str]]:
    """(label name, value) pairs present in ``view``: the archive's, kept first when limiting."""
    out: set[tuple[str, str]] = set()
    for record in view.records:
        kind = kinds.KINDS.get(record.kind)
        if kind is not None:
            out.update(zip(kind.labels, record.labels, strict=False))
    return out


def limit_labels(builder: ArchiveBuilder, limits: Mapping[str, int], kept: set[tuple[str, str]]) -> None:
    """Fold the values of each limited label beyond its limit into ``other`` (as writers do).

    Values already in the archive are kept first (a series never flaps between its name
    and ``other``), then the rest in name order. Each folded value is counted in
    ``label_overflow``, so the series of a server stay bounded however many worker
    generations each bring their own new values.
    """
    values: dict[str, set[str]] = {}
    for kind_name, labels in builder.payloads:
        kind = kinds.KINDS[kind_name]
        for name, value in zip(kind.labels, labels, strict=False):
            if name in limits and value != OVERFLOW_VALUE:
                values.setdefault(name, set()).add(value)
    allowed: dict[str, set[str]] = {}
    for name, found in values.items():
        if len(found) > limits[name]:
            ordered = sorted(found, key=lambda v, n=name: ((n, v) not in kept, v))  # type: ignore[misc]
            allowed[name] = set(ordered[: max(0, limits[name])])
    if not allowed:
        return
    payloads: dict[tuple[str, tuple[str, ...]], list[float]] = {}
    for (kind_name, labels), payload in builder.payloads.items():
        kind = kinds.KINDS[kind_name]
        folded = tuple(
            OVERFLOW_VALUE if name in allowed and value not in allowed[name] else value
            for name, value in zip(kind.labels, labels, strict=False)
        ) + labels[len(kind.labels) :]
        key = (kind_name, folded)
        current = payloads.get(key)
        if current is None:
            payloads[key] = payload
        elif kind.windowed:
            merge_slots(current, payload, builder.slots, layout.slot_stride(kind.with_sketch))
        elif kind.merge == "native":
            payloads[key] = combine_native(current, payload)
        else:
            payloads[key] = combine(kind, current, payload)
    for name, found in values.items():
        if name in allowed:
            key = ("label_overflow", (name,))
            payloads[key] = [payloads.get(key, [0.0])[0] + len(found) - len(allowed[name])]
    builder.payloads = payloads


def _replace_archive(dir_fd: int, content: bytes, step: Callable[[str], None], dead: list[WorkerView]) -> None:
    """Write ``content`` as the new archive, atomically; never leaves the temporary file.

    On a full disk the dead files about to be absorbed are first shrunk to the bytes
    they use (their writers are gone and their records stay intact, so this is as
    crash-safe as before), which frees their pre-allocated space, and the write is
    tried once more: compaction can make progress on a disk our own files filled.
    """
    temp = layout.TEMP_PREFIX + layout.ARCHIVE_NAME + ".tmp"
    try:
        try:
            _write_file(dir_fd, temp, content)
        except OSError as exc:
            if exc.errno != errno.ENOSPC or not _shrink(dir_fd, dead):
                raise
            _write_file(dir_fd, temp, content)
        step("temp_written")
        os.rename(temp, layout.ARCHIVE_NAME, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        _unlink(dir_fd, temp)
        raise
    os.fsync(dir_fd)


def _write_file(dir_fd: int, name: str, content: bytes) -> None:
    fd = os.open(name, _WRITE_FLAGS | os.O_TRUNC, 0o600, dir_fd=dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PermissionError(errno.EPERM, "not a regular file", name)
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _shrink(dir_fd: int, dead: list[WorkerView]) -> bool:
    """Truncate dead files to their used bytes; whether any space was freed."""
    freed = False
    for view in dead:
        try:
            fd = os.open(view.name, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # still dead: no writer can come back
            used = int.from_bytes(os.pread(fd, 8, 8), "little")
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and layout.HEADER_SIZE <= used < st.st_size:
                os.ftruncate(fd, layout.padded(used))
                freed = True
        except OSError:
            pass
        finally:
            os.close(fd)
    return freed


def _is_metrics_file(path: str) -> bool:
    return is_data_file(os.path.basename(path))


def _is_unheld(dir_fd: int, name: str) -> bool:
    """Whether no process holds ``name``'s flock (a bad file nobody is writing)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        return exc.errno == _ELOOP  # a symlink: nobody writes through it, move it away
    try:
        return not is_locked(fd)
    finally:
        os.close(fd)


_ELOOP = errno.ELOOP


def _quarantine_directory(dir_fd: int) -> int:
    """A descriptor of ``quarantine/`` (created if absent), or -1 if it is not a private
    directory of ours (a symlink planted there is never followed)."""
    try:
        os.mkdir(layout.QUARANTINE_DIR, 0o700, dir_fd=dir_fd)
    except FileExistsError:
        pass
    except OSError:
        return -1
    try:
        fd = os.open(layout.QUARANTINE_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return -1
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & stat.S_IWOTH:
        os.close(fd)
        return -1
    return fd


def _quarantine(dir_fd: int, quarantine_fd: int, problem: StorageProblem) -> None:
    """Move a bad file out of the way, keeping only the newest few for inspection.

    Without a usable quarantine the bad file is deleted (it is counted already).
    """
    source = os.path.basename(problem.path)
    if quarantine_fd < 0:
        _unlink(dir_fd, source)
        return
    name = f"{int(time.time())}-{problem.reason}-{source}"
    try:
        os.rename(source, name, src_dir_fd=dir_fd, dst_dir_fd=quarantine_fd)
    except OSError:
        return
    try:
        kept = sorted(os.listdir(quarantine_fd))
    except OSError:
        return
    for old in kept[:-QUARANTINE_KEEP]:
        _unlink(quarantine_fd, old)


def _unlink(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        pass
