"""Lock-free reading of every worker file in a metrics directory.

Readers never lock writers: they map each file read-only, read ``used``, and index only
the records below it. The index of a file is kept between scrapes and extended with new
records only, so a scrape does not re-parse keys it has seen. A file that is empty,
truncated, foreign or corrupt is skipped and reported; it never fails the scrape.

Everything in the directory is untrusted (see SECURITY.md): names are opened relative
to a descriptor of the directory, non-blocking (a FIFO cannot stall a scrape) and with
``O_NOFOLLOW``; only regular files owned by a trusted uid are mapped (a file another
user owns could be truncated under our mapping, and its numbers are not ours to
report); every length and offset read from a file is checked against what was mapped.
"""

from __future__ import annotations

import fcntl
import json
import mmap
import os
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from . import kinds, layout
from .directory import is_worker_file
from .layout import Doubles

OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
"""How any name in the metrics directory is opened for reading."""
DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_SLOTS = 1024
MIN_SLOT_SECONDS = 1e-9
MAX_SLOT_SECONDS = 1e12
"""Slot widths a header may give (0 = one slot since start): slot ids stay finite."""
TRUSTED_UIDS_ENV = "GATEWAYZ_METRICS_TRUSTED_UIDS"
"""Comma-separated uids (besides our own) whose files in the directory are read."""


def usable_geometry(slot_seconds: float, slots: int) -> bool:
    """Whether a header's window geometry is one the reader accepts: ``slots`` in 1 ..
    ``MAX_SLOTS``, ``slot_seconds`` 0 or in ``MIN_SLOT_SECONDS`` .. ``MAX_SLOT_SECONDS``.
    The one rule for every reader of headers (compaction picks the archive's geometry
    with it, so the archive it writes is always readable)."""
    return 1 <= slots <= MAX_SLOTS and (slot_seconds == 0.0 or MIN_SLOT_SECONDS <= slot_seconds <= MAX_SLOT_SECONDS)


def trusted_uids(extra: Iterable[int] | None = None) -> frozenset[int]:
    """Our effective uid, ``extra``, and the uids of ``$GATEWAYZ_METRICS_TRUSTED_UIDS``.

    A malformed environment entry is ignored (it must never stop the application).
    """
    uids = {os.geteuid(), *(extra or ())}
    for part in os.environ.get(TRUSTED_UIDS_ENV, "").split(","):
        if part.strip().isdigit():
            uids.add(int(part))
    return frozenset(uids)


@dataclass
class Record:
    """One record of a file, as indexed by the reader."""

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
    """The records that fit in ``doubles``: a list of this view's own (another
    thread's later read of the same file never changes it)."""
    blocks: dict[float, int] = field(default_factory=dict)
    """Payload index -> capacity of the file's bucket blocks (``layout``), shared with
    later reads of the same file: ``sparse.slot_entries`` reads only blocks inside
    ``doubles``."""
    inode: int = 0
    used: int = 0
    """Bytes of complete records when read (with ``inode``: which content this is)."""

    @property
    def name(self) -> str:
        """The file's name in the directory."""
        return os.path.basename(self.path)

    @property
    def is_archive(self) -> bool:
        """Whether this is the archive (``archive.gwza``) rather than a worker file."""
        return self.name == layout.ARCHIVE_NAME

    @property
    def writer_pid(self) -> int | None:
        """The writer's pid from a worker file name (``worker-<pid>-<nonce>.gwzm``)."""
        parts = self.name.split("-")
        if len(parts) >= 3 and parts[1].isdigit():
            return int(parts[1])
        return None

    def absorbed(self) -> set[str]:
        """Worker file names this (archive) view has folded in."""
        return {str(r.labels[0]) for r in self.records if r.kind == "absorbed"}


@dataclass
class StorageProblem:
    """A file the reader skipped, and why (counted as a storage error)."""

    path: str
    reason: str


@dataclass
class _Indexed:
    inode: int
    size: int
    """Bytes mapped: the file's size rounded down to a multiple of 8."""
    mm: mmap.mmap
    parsed_to: int
    records: list[Record] = field(default_factory=list)
    blocks: dict[float, int] = field(default_factory=dict)


class DirectoryReader:
    """Reads all worker files of one directory; keeps per-file indexes between calls."""

    def __init__(self, directory: str, dead_only: bool = False, trusted: Iterable[int] | None = None) -> None:
        self.directory = directory
        self.dead_only = dead_only
        """Skip (without parsing) files a live writer holds: the compactor's view."""
        self.trusted = frozenset(trusted) if trusted is not None else trusted_uids()
        """Owners whose files are read; others are skipped as ``untrusted_owner``."""
        self._index: dict[str, _Indexed] = {}
        self.deadline: float | None = None
        """``time.monotonic()`` after which no further worker file is read (compaction)."""

    def read(self, dir_fd: int | None = None) -> tuple[list[WorkerView], list[StorageProblem]]:
        """Every readable file: the archive (if any) first, then the worker files it has
        not absorbed.

        The archive is read before the directory is listed, and its identity checked
        again afterwards: if a compaction replaced it in between (and may have deleted
        files the old archive did not hold yet), the read is repeated, so no value is
        ever missing from, or counted twice in, one result. ``dir_fd``: an open
        descriptor of the directory to use (the compactor's), else it is opened here.
        """
        own_fd = dir_fd is None
        try:
            fd = os.open(self.directory, DIRECTORY_FLAGS) if dir_fd is None else dir_fd
        except OSError as exc:
            return [], [StorageProblem(self.directory, f"unreadable_directory: {exc.strerror}")]
        try:
            for _ in range(_READ_ATTEMPTS):
                archive_before = _identity(fd, layout.ARCHIVE_NAME)
                views, problems = self._read_once(fd)
                if _identity(fd, layout.ARCHIVE_NAME) == archive_before:
                    break
        finally:
            if own_fd:
                os.close(fd)
        return views, problems

    def _read_once(self, dir_fd: int) -> tuple[list[WorkerView], list[StorageProblem]]:
        views: list[WorkerView] = []
        problems: list[StorageProblem] = []
        absorbed: set[str] = set()
        seen = set()
        inodes: set[int] = set()  # read in this pass: a second name of one (a hard link) is skipped
        archive = self._try_read(dir_fd, layout.ARCHIVE_NAME, problems, inodes)
        if archive is not None:
            seen.add(layout.ARCHIVE_NAME)
            views.append(archive)
            absorbed = archive.absorbed()
        try:
            names = sorted(
                n for n in os.listdir(dir_fd)
                if is_worker_file(n)
            )
        except OSError as exc:
            return views, [StorageProblem(self.directory, f"unreadable_directory: {exc.strerror}")]
        for name in names:
            if name in absorbed:
                continue
            if self.deadline is not None and time.monotonic() > self.deadline:
                break  # the compactor's time budget is spent: the rest waits for the next run
            seen.add(name)
            view = self._try_read(dir_fd, name, problems, inodes)
            if view is not None:
                views.append(view)
        for name in set(self._index) - seen:
            del self._index[name]
        return views, problems

    def _try_read(
        self, dir_fd: int, name: str, problems: list[StorageProblem], inodes: set[int]
    ) -> WorkerView | None:
        path = os.path.join(self.directory, name)
        try:
            return self._read_file(dir_fd, name, path, inodes)
        except _Live:
            pass
        except _Skip as skip:
            self._index.pop(name, None)
            problems.append(StorageProblem(path, skip.reason))
        except OSError as exc:
            self._index.pop(name, None)
            if not isinstance(exc, FileNotFoundError):  # removed since listed: compacted
                problems.append(StorageProblem(path, "symlink" if exc.errno == _ELOOP else "unreadable"))
        except (ValueError, OverflowError, TypeError):  # anything else a hostile file manages
            self._index.pop(name, None)
            problems.append(StorageProblem(path, "corrupt_header"))
        return None

    def _read_file(self, dir_fd: int, name: str, path: str, inodes: set[int]) -> WorkerView:
        """The view of one file; ``inodes``: those read earlier in this pass (one is added)."""
        for _ in range(_READ_ATTEMPTS):
            fd = os.open(name, OPEN_FLAGS, dir_fd=dir_fd)
            try:
                st = _checked(fd, self.trusted)
                live = is_locked(fd)
                if live and self.dead_only:
                    raise _Live
                if st.st_nlink > 1 and st.st_ino in inodes:
                    # Another name of a file read already (``ln``, ``cp -al``, a hostile link
                    # to the archive): read once. (The link count tells a reused inode apart.)
                    raise _Skip("duplicate_link")
                cached = self._mapped(name, fd, st)
            finally:
                os.close(fd)
            header = layout.HEADER.unpack_from(cached.mm, 0)
            if header[2] <= cached.size:
                break
            # ``used`` is past what we mapped: the writer grew the file since our fstat.
            self._index.pop(name, None)
        view = _view(path, cached, header, live)
        inodes.add(st.st_ino)
        return view

    def _mapped(self, name: str, fd: int, st: os.stat_result) -> _Indexed:
        # Only whole float64 values are mapped: a length that is not a multiple of 8
        # (a copy cut short) must not make the float64 view impossible.
        size = st.st_size & ~7
        if size < layout.HEADER_SIZE:
            raise _Skip("truncated")
        cached = self._index.get(name)
        if cached is not None and cached.inode == st.st_ino and cached.size == size:
            return cached
        mm = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        same_file = cached is not None and cached.inode == st.st_ino
        records = cached.records if cached is not None and same_file else []
        blocks = cached.blocks if cached is not None and same_file else {}
        parsed_to = cached.parsed_to if cached is not None and same_file else layout.HEADER_SIZE
        cached = self._index[name] = _Indexed(st.st_ino, size, mm, parsed_to, records, blocks)
        return cached


_READ_ATTEMPTS = 3
_ELOOP = 40


def _checked(fd: int, trusted: frozenset[int]) -> os.stat_result:
    """``fd``'s status if it is a non-empty regular file of a trusted owner, else ``_Skip``."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise _Skip("not_regular_file")
    if st.st_uid not in trusted:
        raise _Skip("untrusted_owner")
    if st.st_size == 0:
        raise _Skip("empty")
    return st


def _identity(dir_fd: int, name: str) -> tuple[int, int] | None:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:  # absent, or the directory itself is gone or unusable
        return None
    return st.st_ino, st.st_mtime_ns


def _view(path: str, cached: _Indexed, header: tuple[Any, ...], live: bool) -> WorkerView:
    magic, version, used, epoch, _pid, _created, slot_seconds, slots = header
    if magic != layout.WORKER_MAGIC:
        raise _Skip("foreign")
    if version != layout.VERSION:
        raise _Skip("wrong_version")
    if used > cached.size:
        raise _Skip("truncated")
    if (
        used < layout.HEADER_SIZE
        or used % 8
        or not usable_geometry(slot_seconds, slots)
        or epoch >= 2**53
    ):
        raise _Skip("corrupt_header")
    if cached.parsed_to < used:
        _index_records(cached, used, slots)
    # Our own list: records appended by a later read (of a grown file) belong to that
    # read's larger mapping, never to this view's ``doubles``.
    return WorkerView(
        path, int(epoch), float(slot_seconds), int(slots), live,
        memoryview(cached.mm).cast("d"), cached.records[:], cached.blocks, cached.inode, int(used),
    )


class _Live(Exception):
    """A live writer holds the file (and the reader was asked for dead files only)."""


class _Skip(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _index_records(cached: _Indexed, used: int, slots: int) -> None:
    """Parse records in ``[cached.parsed_to, used)`` and add them to the index.

    All or nothing: a corrupt record leaves the index as it was (and skips the file).
    """
    mm = cached.mm
    pos = cached.parsed_to
    found: list[Record] = []
    blocks: dict[float, int] = {}
    while pos < used:
        if used - pos < layout.RECORD_HEADER.size:
            raise _Skip("corrupt_record")
        length, key_len = layout.RECORD_HEADER.unpack_from(mm, pos)
        key_start = pos + layout.RECORD_HEADER.size
        payload_start = key_start + layout.padded(key_len)
        if (
            length < layout.RECORD_HEADER.size
            or length % 8
            or pos + length > used
            or key_len > layout.MAX_KEY_BYTES
            or payload_start > pos + length
        ):
            raise _Skip("corrupt_record")
        if key_len == 0:  # a bucket block: used, next, then one u32 per entry
            entries = layout.block_capacity_of_length(length)
            if not 1 <= entries <= layout.MAX_ARCHIVE_BLOCK_ENTRIES:
                raise _Skip("corrupt_record")
            blocks[float(payload_start // 8)] = entries
            pos += length
            continue
        try:
            key = json.loads(bytes(mm[key_start : key_start + key_len]).decode("utf-8"))
            kind = kinds.KINDS[key[0]]
            labels = tuple(key[1:])
        except (ValueError, KeyError, TypeError, IndexError, RecursionError):
            raise _Skip("corrupt_record") from None
        if (
            len(labels) != len(kind.labels)
            or not all(isinstance(v, str) for v in labels)
            or pos + length - payload_start != 8 * kind.payload_size(slots)
            or not all(_LABEL_CHECKS.get(name, _any_label)(v) for name, v in zip(kind.labels, labels, strict=True))
        ):
            raise _Skip("corrupt_record")
        found.append(Record(key[0], labels, payload_start // 8))
        pos += length
    cached.records.extend(found)
    cached.blocks.update(blocks)
    cached.parsed_to = pos


def _any_label(value: str) -> bool:
    return True


def _small_number(value: str) -> bool:
    return value.isascii() and value.isdigit() and len(value) <= 3


_LABEL_CHECKS = {
    "status": _small_number,  # an HTTP status: read as a number at merge time
    "failed": lambda value: value in ("0", "1"),
    "bucket": _small_number,  # an exemplar's histogram bucket index
}
"""Labels the reader of a snapshot parses: anything else in them marks the record corrupt."""


def is_locked(fd: int) -> bool:
    """Whether a live writer holds the file's flock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False
