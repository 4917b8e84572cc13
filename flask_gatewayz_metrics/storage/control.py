"""The control file every process shares: reset epoch, server start time, lost counts.

Writers compare the mapped epoch with their own on each record (one memory read, no
syscall) and start a new worker file when a reset bumped it; readers ignore files whose
epoch is older than the control file's, so nothing from before a reset reappears.

After the 64-byte header the file holds a small fixed table of counters of observations
that could not be recorded (the worker file could not be created or grown: disk full,
directory unusable, deleted). They live here, not in a worker's memory, so they survive
the worker, add up over all processes and never go down (a reset aside). Each slot is
``LOST_NAME_BYTES`` of ASCII name and a float64 count, updated under an exclusive flock
of the file (taken on a fresh descriptor each time: flock is per open file description,
which a forked child would otherwise share with its parent).
"""

from __future__ import annotations

import fcntl
import mmap
import os
import secrets
import stat
import struct
import time

from . import layout

CONTROL_FILE_SIZE = 4096
"""Bytes a new control file is created with (header + lost-count table), pre-allocated."""
LOST_NAME_BYTES = 24
LOST_SLOT = struct.Struct(f"<{LOST_NAME_BYTES}sd")
LOST_SLOTS = (CONTROL_FILE_SIZE - layout.CONTROL_SIZE) // LOST_SLOT.size
_OPEN_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class ControlFile:
    """Memory-mapped view of ``control.gwzc`` in a metrics directory."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, layout.CONTROL_NAME)
        fd = _open_or_create(self.path)
        try:
            st = os.fstat(fd)
            self.identity = (st.st_dev, st.st_ino)
            """Which file this maps: compared with the path's to notice a replaced directory."""
            self._size = CONTROL_FILE_SIZE if st.st_size >= CONTROL_FILE_SIZE else layout.CONTROL_SIZE
            self._mmap = mmap.mmap(fd, self._size)
        finally:
            os.close(fd)
        self.words = memoryview(self._mmap).cast("Q")
        self._doubles = memoryview(self._mmap).cast("d")

    @property
    def epoch(self) -> int:
        """The reset epoch: data of files with another epoch is not counted."""
        return int(self.words[layout.CONTROL_EPOCH_INDEX])

    @property
    def start_time(self) -> float:
        """When the server (the directory's first process) started, Unix seconds."""
        return float(self._doubles[layout.CONTROL_START_INDEX])

    def bump_epoch(self) -> int:
        """Atomically (across processes) increment the reset epoch; return the new one.

        The lost-count table starts again from zero too: a reset zeroes every metric.
        """
        fd = self._locked()
        try:
            epoch = self.epoch + 1
            self._mmap[layout.CONTROL_SIZE : self._size] = bytes(self._size - layout.CONTROL_SIZE)
            self.words[layout.CONTROL_EPOCH_INDEX] = epoch
            self._mmap.flush()
            return epoch
        finally:
            os.close(fd)  # releases the lock

    def replaced(self) -> bool:
        """Whether the directory no longer holds this file (deleted, or directory replaced)."""
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except OSError:
            return True
        return (st.st_dev, st.st_ino) != self.identity

    def retire(self) -> None:
        """Tell every process still mapping this (replaced) file to look again.

        Bumping the epoch in the old file is what each writer already checks on every
        record, so all of them notice at their next write, at no cost to the hot path.
        """
        self.words[layout.CONTROL_EPOCH_INDEX] = self.epoch + 1

    def add_lost(self, reason: str, count: float = 1.0) -> None:
        """Add ``count`` lost observations under ``reason`` (raises ``OSError`` if the
        file cannot be locked, ``LookupError`` if it has no table or the table is full)."""
        name = reason.encode("ascii", "replace")[:LOST_NAME_BYTES]
        fd = self._locked()
        try:
            free = -1
            for slot in range(self._slots()):
                at = layout.CONTROL_SIZE + slot * LOST_SLOT.size
                found, value = LOST_SLOT.unpack_from(self._mmap, at)
                if found.rstrip(b"\0") == name:
                    LOST_SLOT.pack_into(self._mmap, at, name, value + count)
                    return
                if free < 0 and not found.strip(b"\0"):
                    free = at
            if free < 0:
                raise LookupError("lost-count table full")
            LOST_SLOT.pack_into(self._mmap, free, name, count)
        finally:
            os.close(fd)

    def lost(self) -> dict[str, float]:
        """The lost-count table (untrusted bytes: odd names or values are skipped)."""
        out: dict[str, float] = {}
        for slot in range(self._slots()):
            raw, value = LOST_SLOT.unpack_from(self._mmap, layout.CONTROL_SIZE + slot * LOST_SLOT.size)
            name = raw.rstrip(b"\0")
            if name and name.isascii() and name.replace(b"_", b"").isalnum() and 0.0 < value < 2.0**53:
                out[name.decode("ascii")] = out.get(name.decode("ascii"), 0.0) + value
        return out

    def _slots(self) -> int:
        return LOST_SLOTS if self._size >= CONTROL_FILE_SIZE else 0

    def _locked(self) -> int:
        fd = os.open(self.path, _OPEN_FLAGS)
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != self.identity:
                raise FileNotFoundError(f"{self.path} was replaced")
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        return fd


def _open_or_create(path: str) -> int:
    """Open the control file, creating it complete (via rename) if it does not exist.

    Non-blocking and without following links; it must be a regular file of ours.
    """
    for _ in range(3):
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except FileNotFoundError:
            _create(path)
            continue
        st = os.fstat(fd)
        if (
            stat.S_ISREG(st.st_mode)
            and st.st_uid == os.geteuid()
            and st.st_size >= layout.CONTROL_SIZE
            and os.pread(fd, 4, 0) == layout.CONTROL_MAGIC
        ):
            return fd
        os.close(fd)
        raise RuntimeError(
            f"{path} is not a gatewayz metrics control file of this user; point GATEWAYZ_METRICS_DIR "
            "at a directory used only for metrics"
        )
    raise FileNotFoundError(f"{path} keeps disappearing")


def _create(path: str) -> None:
    tmp = f"{path}.{secrets.token_hex(8)}.tmp"  # a fresh name: nothing planted can be reused
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        content = layout.CONTROL.pack(layout.CONTROL_MAGIC, layout.VERSION, 0, time.time())
        os.write(fd, content.ljust(CONTROL_FILE_SIZE, b"\0"))
        os.fsync(fd)
        os.link(tmp, path)  # fails if another process won the race: use theirs
    except FileExistsError:
        pass
    finally:
        os.close(fd)
        os.unlink(tmp)
