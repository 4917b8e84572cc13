"""The file one process writes its metrics into (layout in ``layout``).

Exactly one ``WorkerFile`` object writes a file, and it holds an exclusive ``flock`` on
it for its whole life: the kernel releases the lock when the process dies (even on
SIGKILL), so a reader that can take the lock knows the writer is gone. The name carries
a random nonce, so a reused pid never reopens a dead worker's file.

Space is reserved with ``posix_fallocate`` before it is mapped: writing to an mmap page
the file system cannot back would kill the process with SIGBUS, whereas a failed
``fallocate`` is an ordinary ``OSError`` the collector can count and survive.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import secrets
import time
import weakref

from . import layout
from .directory import open_directory

INITIAL_SIZE = 16 * 1024
"""Bytes reserved for a new file; it doubles as records are added (up to
``DOUBLING_LIMIT``). Small, because a process-per-request server (the dev server with
``processes=N``) makes one per request."""
DOUBLING_LIMIT = 256 * 1024
"""Past this size a file grows in eighths of a power of two, not by doubling: its size
(what ``ls`` and the disk see) stays within 1/8 of the bytes its records use, where
doubling could leave up to half of it unused (``grown_size``)."""
_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class WorkerFile:
    """An append-only set of float64 records in an mmap'ed file owned by this process."""

    def __init__(self, directory: str, epoch: int, slot_seconds: float, slots: int) -> None:
        self.pid = os.getpid()
        name = f"worker-{self.pid}-{secrets.token_hex(8)}{layout.WORKER_SUFFIX}"
        self.path = os.path.join(directory, name)
        self.epoch = epoch
        # Created under a hidden name and renamed once locked and complete, so no reader
        # or compactor ever sees it empty and unlocked (it would look like debris).
        # Through a checked descriptor of the directory: whatever its path points to
        # meanwhile, the file is made inside a directory of ours.
        temp_name = layout.TEMP_PREFIX + name
        dir_fd = open_directory(directory)
        try:
            self._create(dir_fd, temp_name, name, epoch, slot_seconds, slots)
        finally:
            os.close(dir_fd)
        self._used = layout.HEADER_SIZE
        # A file object that is garbage-collected without close() (a discarded app, a
        # test that builds an app per case) must not keep its descriptor and flock.
        self._finalizer = weakref.finalize(self, os.close, self._fd)

    def _create(self, dir_fd: int, temp_name: str, name: str, epoch: int, slot_seconds: float, slots: int) -> None:
        self._fd = os.open(temp_name, _OPEN_FLAGS, 0o600, dir_fd=dir_fd)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._size = 0
            self._reserve(INITIAL_SIZE)
            self._map()
            header = layout.HEADER.pack(
                layout.WORKER_MAGIC, layout.VERSION, layout.HEADER_SIZE, epoch, self.pid,
                time.time(), slot_seconds, slots,
            )
            self._mmap[: layout.HEADER_SIZE] = header
            os.rename(temp_name, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            os.close(self._fd)
            os.unlink(temp_name, dir_fd=dir_fd)
            raise

    def _reserve(self, size: int) -> None:
        try:
            os.posix_fallocate(self._fd, 0, size)
        except OSError as exc:  # file systems without fallocate (some tmpfs, overlay)
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            os.ftruncate(self._fd, size)
        self._size = size

    def _map(self) -> None:
        self._mmap = mmap.mmap(self._fd, self._size)
        self.doubles = memoryview(self._mmap).cast("d")
        """The whole file as float64 values; payload offsets index into it."""
        self.entry_words = memoryview(self._mmap).cast("I")
        """The whole file as u32 values: bucket block entries index into it (``layout.first_entry``)."""
        self._words = memoryview(self._mmap).cast("Q")

    def allocate(self, key: bytes, payload: list[float]) -> int:
        """Append a record with ``key`` and initial ``payload``; return its float64 index.

        The record is complete before ``used`` moves past it, so readers never see it
        half-written.
        """
        if len(key) > layout.MAX_KEY_BYTES:
            raise ValueError("metric key too long")
        record = layout.encode_record(key, payload)
        start = self._used
        if start + len(record) > self._size:
            self._grow(start + len(record))
        self._mmap[start : start + len(record)] = record
        self._used = start + len(record)
        self._words[layout.USED_INDEX] = self._used
        return (self._used - 8 * len(payload)) // 8

    def _grow(self, needed: int) -> None:
        self._reserve(grown_size(self._size, needed))
        # Views of the old map stay valid for whoever still holds them; the map is
        # freed when the last one goes. Offsets are unchanged.
        self._map()

    def close(self, unlink: bool = False) -> None:
        """Release the file (and its lock); ``unlink`` removes it too (only in the process
        that created it: a forked child never removes its parent's file)."""
        if self._fd < 0:
            return
        if unlink and self.pid == os.getpid():
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        self._finalizer.detach()
        os.close(self._fd)
        self._fd = -1
        self._unmap()

    def _unmap(self) -> None:
        """Close the map now if nobody else holds a view of it: the map keeps its own
        duplicate of the descriptor, and with it the flock."""
        try:
            self.doubles.release()
            self.entry_words.release()
            self._words.release()
            self._mmap.close()
        except BufferError:  # someone still reads it: freed (and unlocked) with the last view
            pass

    def deleted(self) -> bool:
        """Whether this file is no longer in the metrics directory (directory deleted or
        replaced, file removed): writing on would be lost."""
        if self._fd < 0:
            return False
        try:
            if os.fstat(self._fd).st_nlink == 0:
                return True
            st = os.stat(self.path, follow_symlinks=False)
        except OSError:
            return True
        return st.st_ino != os.fstat(self._fd).st_ino

    def abandon_after_fork(self) -> None:
        """In a forked child: drop the inherited descriptor without touching the file.

        The parent's open file description keeps the lock; the child must never write
        the parent's file.
        """
        if self._fd >= 0:
            self._finalizer.detach()
            os.close(self._fd)
            self._fd = -1
            self._unmap()  # the map's own descriptor shares the parent's lock too


def grown_size(size: int, needed: int) -> int:
    """The size a file of ``size`` bytes grows to so as to hold ``needed`` bytes: doubling
    up to ``DOUBLING_LIMIT``, then by steps of an eighth of the power of two below it
    (256, 288, ... 480, 512, 576, ... 1024, 1152 KiB ...: every power of two is a step,
    so a file is never larger than doubling would make it). Each growth re-maps the
    file (in the writer, and in readers at their next read): 8 per doubling."""
    while size < needed:
        if size < DOUBLING_LIMIT:
            size *= 2
        else:
            size += 1 << (size.bit_length() - 4)
    return size
