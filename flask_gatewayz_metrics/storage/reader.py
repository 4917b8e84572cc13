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

from . import layout
from .layout import Doubles


@dataclass
class Record:
    kind: str
    labels: tuple[str | None, ...]
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

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._index: dict[str, _Indexed] = {}

    def read(self) -> tuple[list[WorkerView], list[StorageProblem]]:
        views: list[WorkerView] = []
        problems: list[StorageProblem] = []
        try:
            names = sorted(n for n in os.listdir(self.directory) if n.endswith(layout.WORKER_SUFFIX))
        except OSError as exc:
            return [], [StorageProblem(self.directory, f"unreadable_directory: {exc.strerror}")]
        seen = set()
        for name in names:
            path = os.path.join(self.directory, name)
            seen.add(path)
            try:
                view = self._read_file(path)
            except _Skip as skip:
                self._index.pop(path, None)
                problems.append(StorageProblem(path, skip.reason))
                continue
            except OSError as exc:
                self._index.pop(path, None)
                if not isinstance(exc, FileNotFoundError):  # removed while listing: fine
                    problems.append(StorageProblem(path, "unreadable"))
                continue
            views.append(view)
        for path in set(self._index) - seen:
            del self._index[path]
        return views, problems

    def _read_file(self, path: str) -> WorkerView:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if st.st_size == 0:
                raise _Skip("empty")
            if st.st_size < layout.HEADER_SIZE:
                raise _Skip("truncated")
            cached = self._index.get(path)
            if cached is None or cached.inode != st.st_ino or cached.size != st.st_size:
                mm = mmap.mmap(fd, st.st_size, prot=mmap.PROT_READ)
                records = cached.records if cached and cached.inode == st.st_ino else []
                parsed_to = cached.parsed_to if cached and cached.inode == st.st_ino else layout.HEADER_SIZE
                cached = _Indexed(st.st_ino, st.st_size, mm, parsed_to, records)
                self._index[path] = cached
            live = _is_locked(fd)
        finally:
            os.close(fd)
        magic, version, used, epoch, _pid, _created, slot_seconds, slots = layout.HEADER.unpack_from(
            cached.mm, 0
        )
        if magic != layout.WORKER_MAGIC:
            raise _Skip("foreign")
        if version != layout.VERSION:
            raise _Skip("wrong_version")
        if used > cached.size or used < layout.HEADER_SIZE or not 1 <= slots <= 1024:
            raise _Skip("truncated" if used > cached.size else "corrupt_header")
        if cached.parsed_to < used:
            _index_records(cached, used, int(slots))
        return WorkerView(
            path, int(epoch), float(slot_seconds), int(slots), live,
            memoryview(cached.mm).cast("d"), cached.records,
        )


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
            or not all(
                isinstance(v, str) or (v is None and name in layout.NULLABLE_LABELS)
                for name, v in zip(kind.labels, labels, strict=True)
            )
            or pos + length - payload_start != 8 * kind.payload_size(slots)
        ):
            raise _Skip("corrupt_record")
        cached.records.append(Record(key[0], labels, payload_start // 8))
        pos += length
    cached.parsed_to = pos


def _is_locked(fd: int) -> bool:
    """Whether a live writer holds the file's flock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False
