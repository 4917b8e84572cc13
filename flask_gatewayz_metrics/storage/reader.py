"""Lock-free reading of every worker file in a metrics directory.

Readers never lock writers: they map each file read-only, read ``used``, and index only
the records below it. The index of a file is kept between scrapes and extended with new
records only, so a scrape does not re-parse keys it has seen. A file that is empty,
truncated, foreign or corrupt is skipped and reported; it never fails the scrape.
"""

from __future__ import annotations

import fcntl
import json
import mmap
import os
from dataclasses import dataclass, field
from typing import Any

from . import layout
from .layout import Doubles


@dataclass
class Record:
    kind: str
    labels: tuple[str, ...]
    offset: int
    """Index of the first payload value in ``WorkerView.doubles``."""


@dataclass
class WorkerView:
    """A readable worker file: its header fields and its complete records."""

    path: str
    epoch: int
    slot_seconds: float
    slots: int
    live: bool
    doubles: Doubles
    records: list[Record]

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @property
    def is_archive(self) -> bool:
        return self.name == layout.ARCHIVE_NAME

    def absorbed(self) -> set[str]:
        """Worker file names this (archive) view has folded in."""
        return {str(r.labels[0]) for r in self.records if r.kind == "absorbed"}


@dataclass
class StorageProblem:
    path: str
    reason: str


@dataclass
class _Indexed:
    inode: int
    size: int
    mm: mmap.mmap
    parsed_to: int
    records: list[Record] = field(default_factory=list)


class DirectoryReader:
    """Reads all worker files of one directory; keeps per-file indexes between calls."""

    def __init__(self, directory: str, dead_only: bool = False) -> None:
        self.directory = directory
        self.dead_only = dead_only
        """Skip (without parsing) files a live writer holds: the compactor's view."""
        self._index: dict[str, _Indexed] = {}

    def read(self) -> tuple[list[WorkerView], list[StorageProblem]]:
        """Every readable file: the archive (if any) first, then the worker files it has
        not absorbed.

        The archive is read before the directory is listed, and its identity checked
        again afterwards: if a compaction replaced it in between (and may have deleted
        files the old archive did not hold yet), the read is repeated, so no value is
        ever missing from, or counted twice in, one result.
        """
        for _ in range(_READ_ATTEMPTS):
            archive_before = _identity(os.path.join(self.directory, layout.ARCHIVE_NAME))
            views, problems = self._read_once()
            if _identity(os.path.join(self.directory, layout.ARCHIVE_NAME)) == archive_before:
                break
        return views, problems

    def _read_once(self) -> tuple[list[WorkerView], list[StorageProblem]]:
        views: list[WorkerView] = []
        problems: list[StorageProblem] = []
        absorbed: set[str] = set()
        seen = set()
        archive_path = os.path.join(self.directory, layout.ARCHIVE_NAME)
        archive = self._try_read(archive_path, problems)
        if archive is not None:
            seen.add(archive_path)
            views.append(archive)
            absorbed = archive.absorbed()
        try:
            names = sorted(
                n for n in os.listdir(self.directory)
                if n.endswith(layout.WORKER_SUFFIX) and not n.startswith(layout.TEMP_PREFIX)
            )
        except OSError as exc:
            return views, [StorageProblem(self.directory, f"unreadable_directory: {exc.strerror}")]
        for name in names:
            if name in absorbed:
                continue
            path = os.path.join(self.directory, name)
            seen.add(path)
            view = self._try_read(path, problems)
            if view is not None:
                views.append(view)
        for path in set(self._index) - seen:
            del self._index[path]
        return views, problems

    def _try_read(self, path: str, problems: list[StorageProblem]) -> WorkerView | None:
        try:
            return self._read_file(path)
        except _Live:
            pass
        except _Skip as skip:
            self._index.pop(path, None)
            problems.append(StorageProblem(path, skip.reason))
        except OSError as exc:
            self._index.pop(path, None)
            if not isinstance(exc, FileNotFoundError):  # removed since listed: compacted
                problems.append(StorageProblem(path, "unreadable"))
        return None

    def _read_file(self, path: str) -> WorkerView:
        for _ in range(_READ_ATTEMPTS):
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                live = is_locked(fd)
                if live and self.dead_only:
                    raise _Live
                cached = self._mapped(path, fd)
            finally:
                os.close(fd)
            header = layout.HEADER.unpack_from(cached.mm, 0)
            if header[2] <= cached.size:
                break
            # ``used`` is past what we mapped: the writer grew the file since our fstat.
            self._index.pop(path, None)
        return _view(path, cached, header, live)

    def _mapped(self, path: str, fd: int) -> _Indexed:
        st = os.fstat(fd)
        if st.st_size == 0:
            raise _Skip("empty")
        if st.st_size < layout.HEADER_SIZE:
            raise _Skip("truncated")
        cached = self._index.get(path)
        if cached is not None and cached.inode == st.st_ino and cached.size == st.st_size:
            return cached
        mm = mmap.mmap(fd, st.st_size, prot=mmap.PROT_READ)
        same_file = cached is not None and cached.inode == st.st_ino
        records = cached.records if cached is not None and same_file else []
        parsed_to = cached.parsed_to if cached is not None and same_file else layout.HEADER_SIZE
        cached = self._index[path] = _Indexed(st.st_ino, st.st_size, mm, parsed_to, records)
        return cached


_READ_ATTEMPTS = 3


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:  # absent, or the directory itself is gone or unusable
        return None
    return st.st_ino, st.st_mtime_ns


def _view(path: str, cached: _Indexed, header: tuple[Any, ...], live: bool) -> WorkerView:
    magic, version, used, epoch, _pid, _created, slot_seconds, slots = header
    if magic != layout.WORKER_MAGIC:
        raise _Skip("foreign")
    if version != layout.VERSION:
        raise _Skip("wrong_version")
    if used > cached.size or used < layout.HEADER_SIZE or not 1 <= slots <= 1024:
        raise _Skip("truncated" if used > cached.size else "corrupt_header")
    if cached.parsed_to < used:
        _index_records(cached, used, slots)
    return WorkerView(
        path, int(epoch), float(slot_seconds), int(slots), live,
        memoryview(cached.mm).cast("d"), cached.records,
    )


class _Live(Exception):
    """A live writer holds the file (and the reader was asked for dead files only)."""


class _Skip(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _index_records(cached: _Indexed, used: int, slots: int) -> None:
    """Parse records in ``[cached.parsed_to, used)`` and add them to the index."""
    mm = cached.mm
    pos = cached.parsed_to
    while pos < used:
        if used - pos < layout.RECORD_HEADER.size:
            raise _Skip("corrupt_record")
        length, key_len = layout.RECORD_HEADER.unpack_from(mm, pos)
        key_start = pos + layout.RECORD_HEADER.size
        payload_start = key_start + layout.padded(key_len)
        if length % 8 or pos + length > used or key_len > layout.MAX_KEY_BYTES or payload_start > pos + length:
            raise _Skip("corrupt_record")
        try:
            key = json.loads(bytes(mm[key_start : key_start + key_len]).decode("utf-8"))
            kind = layout.KINDS[key[0]]
            labels = tuple(key[1:])
        except (ValueError, KeyError, TypeError, IndexError):
            raise _Skip("corrupt_record") from None
        if (
            len(labels) != len(kind.labels)
            or not all(isinstance(v, str) for v in labels)
            or pos + length - payload_start != 8 * kind.payload_size(slots)
        ):
            raise _Skip("corrupt_record")
        cached.records.append(Record(key[0], labels, payload_start // 8))
        pos += length
    cached.parsed_to = pos


def is_locked(fd: int) -> bool:
    """Whether a live writer holds the file's flock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False
