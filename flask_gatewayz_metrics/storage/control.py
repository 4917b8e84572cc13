"""The control file every process shares: reset epoch and server start time.

Writers compare the mapped epoch with their own on each record (one memory read, no
syscall) and start a new worker file when a reset bumped it; readers ignore files whose
epoch is older than the control file's, so nothing from before a reset reappears.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import time

from . import layout


class ControlFile:
    """Memory-mapped view of ``control.gwzc`` in a metrics directory."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, layout.CONTROL_NAME)
        fd = _open_or_create(self.path)
        try:
            self._mmap = mmap.mmap(fd, layout.CONTROL_SIZE)
        finally:
            os.close(fd)
        self.words = memoryview(self._mmap).cast("Q")
        self._doubles = memoryview(self._mmap).cast("d")

    @property
    def epoch(self) -> int:
        return int(self.words[layout.CONTROL_EPOCH_INDEX])

    @property
    def start_time(self) -> float:
        return float(self._doubles[layout.CONTROL_START_INDEX])

    def bump_epoch(self) -> int:
        """Atomically (across processes) increment the reset epoch; return the new one."""
        fd = os.open(self.path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            epoch = self.epoch + 1
            self.words[layout.CONTROL_EPOCH_INDEX] = epoch
            self._mmap.flush()
            return epoch
        finally:
            os.close(fd)  # releases the lock


def _open_or_create(path: str) -> int:
    """Open the control file, creating it complete (via rename) if it does not exist."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        pass
    else:
        if os.fstat(fd).st_size >= layout.CONTROL_SIZE and os.pread(fd, 4, 0) == layout.CONTROL_MAGIC:
            return fd
        os.close(fd)
        raise RuntimeError(
            f"{path} is not a gatewayz metrics control file; point GATEWAYZ_METRICS_DIR "
            "at a directory used only for metrics"
        )
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    content = layout.CONTROL.pack(layout.CONTROL_MAGIC, layout.VERSION, 0, time.time())
    os.write(fd, content.ljust(layout.CONTROL_SIZE, b"\0"))
    os.fsync(fd)
    os.close(fd)
    try:
        os.link(tmp, path)  # fails if another process won the race: use theirs
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    return os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
