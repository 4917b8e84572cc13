"""One process's access to a metrics directory: its own worker file, the control file,
and a reader of everyone's files.

The worker file is created lazily on the first write, so a process that only reads (a
gunicorn master with ``--preload``, a scrape-only tool) leaves no file behind. After a
fork the child drops the inherited file and opens its own on its next write; after a
reset (a newer epoch in the control file) the writer deletes its file and starts a
fresh one, which is how "every worker zeroes its own file" is done without readers ever
seeing a half-zeroed file.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

from ..errors import StorageUnavailable  # re-exported: its old home
from . import kinds, layout
from .control import ControlFile
from .directory import ensure_directory
from .layout import Doubles, EntryWords
from .reader import DirectoryReader, StorageProblem, WorkerView, trusted_uids
from .worker_file import WorkerFile

RETRY_SECONDS = 5.0
"""How long a write path that failed to create its file waits before trying again."""


class DirectoryAccess:
    """One process's access to a metrics directory: its own worker file (created on the
    first write, replaced after a reset or a fork), the control file, and the reader."""

    def __init__(
        self, directory: str, slot_seconds: float, slots: int, trusted: Iterable[int] | None = None
    ) -> None:
        self.directory = directory
        self.slot_seconds = slot_seconds
        self.slots = slots
        self.trusted = trusted_uids(trusted)
        """Uids whose files in the directory are read (ours, configured ones)."""
        self.control = ControlFile(directory)
        self.reader = DirectoryReader(directory, trusted=self.trusted)
        self.generation = 0
        """Bumped whenever offsets from ``offset()`` become invalid (new file)."""
        self._file: WorkerFile | None = None
        self._offsets: dict[tuple[str, tuple[str, ...]], int] = {}
        self._epoch_word = self.control.words
        self._retry_at = 0.0
        self.last_error: str | None = None

    def writable(self) -> Doubles:
        """The float64 view of this process's file, opening a new file when needed.

        Raises ``StorageUnavailable`` while the file cannot be created.
        """
        file = self._file
        if file is not None and file.pid != os.getpid():
            # Forked without the at-fork hook (uWSGI forks from C): the file is the
            # parent's; drop it untouched and open our own.
            self.after_fork_in_child()
            file = None
        if file is not None and file.epoch == self._epoch_word[layout.CONTROL_EPOCH_INDEX]:
            return file.doubles
        return self._open_new_file().doubles

    def offset(self, kind: str, labels: tuple[str, ...]) -> int:
        """Payload index of the record for ``kind``/``labels``, appending it if new.

        Call after ``writable()``; raises ``StorageUnavailable`` if the file cannot grow.
        Appending may grow (and so re-map) the file: re-read ``doubles`` afterwards.
        """
        found = self._offsets.get((kind, labels))
        if found is not None:
            return found
        assert self._file is not None
        payload = kinds.empty_payload(kinds.KINDS[kind], self.slots)
        try:
            found = self._file.allocate(layout.encode_key(kind, labels), payload)
        except OSError as exc:
            # Disk full while growing: keep the file and every series it already has;
            # only this new series cannot be recorded until space is back.
            raise self._unavailable(exc) from exc
        self.last_error = None
        self._offsets[(kind, labels)] = found
        return found

    def append_block(self, payload: list[float]) -> int:
        """Append a bucket block (``layout``) holding ``payload``; its payload index.

        Like ``offset``: raises ``StorageUnavailable`` when the file cannot grow (space is
        reserved with ``posix_fallocate`` first, so a full disk is never a SIGBUS), and
        may re-map the file.
        """
        assert self._file is not None
        try:
            found = self._file.allocate(layout.BLOCK_KEY, payload)
        except OSError as exc:
            raise self._unavailable(exc) from exc
        self.last_error = None
        return found

    @property
    def doubles(self) -> Doubles:
        """The current mapping of this process's file (call after ``writable()``)."""
        assert self._file is not None
        return self._file.doubles

    @property
    def entry_words(self) -> EntryWords:
        """The same mapping as ``doubles``, viewed as u32 (bucket block entries)."""
        assert self._file is not None
        return self._file.entry_words

    def _open_new_file(self) -> WorkerFile:
        if time.monotonic() < self._retry_at:
            raise StorageUnavailable(self.last_error or "storage unavailable")
        lost = self._drop_file()
        try:
            if self.control.replaced():
                # The directory vanished (or was emptied) under us: start it again.
                self._reopen_control()
            if lost:
                self._count_lost_safely("directory_lost", lost)
            self._file = WorkerFile(
                self.directory, self.control.epoch, self.slot_seconds, self.slots
            )
        except (OSError, RuntimeError) as exc:
            raise self._unavailable(exc) from exc
        self.last_error = None
        return self._file

    def _drop_file(self) -> float:
        """Close this process's file (deleting it unless it is already gone); forget its
        offsets. Returns the requests lost with it when the directory lost it."""
        lost = 0.0
        if self._file is not None:
            if self._file.deleted():
                # The directory was deleted or replaced: what this file holds is gone.
                lost = self._recorded_requests()
            self._file.close(unlink=not lost)  # older epoch: readers ignore it anyway
            self._file = None
        self._offsets.clear()
        self.generation += 1
        return lost

    def _recorded_requests(self) -> float:
        """Requests this process recorded into its current file (what is lost with it)."""
        assert self._file is not None
        d = self._file.doubles
        try:
            # The buckets' total: the request path does not write the stored count
            # (kinds.UNCOUNTED_KINDS).
            return float(
                sum(
                    sum(d[o + kinds.REQ_BUCKETS : o + kinds.KINDS[kind].size])
                    for (kind, _), o in self._offsets.items()
                    if kind in kinds.REQUEST_KINDS
                )
            )
        except (ValueError, IndexError):
            return 0.0

    def _reopen_control(self) -> None:
        """Re-create the directory (same checks as at start) and map its control file."""
        self.control.retire()
        ensure_directory(self.directory)
        self.control = ControlFile(self.directory)
        self._epoch_word = self.control.words

    def check_directory(self) -> bool:
        """Notice a deleted or replaced directory (a scrape calls this: two ``stat`` calls).

        Every process that still maps the old control file is told through it (its epoch
        moves), so each writer starts a new file in the new directory at its next write.
        Returns whether the directory had been replaced.
        """
        if not self.control.replaced():
            return False
        lost = self._drop_file() if self._file is not None and self._file.deleted() else 0.0
        try:
            self._reopen_control()
        except (OSError, RuntimeError) as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
        if lost:
            self._count_lost_safely("directory_lost", lost)
        return True

    def count_lost(self, reason: str, count: float = 1.0) -> None:
        """Count observations that could not be recorded in the shared control file.

        Raises ``OSError`` / ``LookupError`` when even that is impossible.
        """
        self.control.add_lost(reason, count)

    def _count_lost_safely(self, reason: str, count: float) -> None:
        try:
            self.control.add_lost(reason, count)
        except (OSError, LookupError):
            pass

    def lost(self) -> dict[str, float]:
        """Lost observations of every process, by reason (never going down between resets)."""
        return self.control.lost()

    def _unavailable(self, exc: Exception) -> StorageUnavailable:
        self._retry_at = time.monotonic() + RETRY_SECONDS
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        self.last_error = f"{type(exc).__name__}: {reason}"
        return StorageUnavailable(self.last_error)

    def after_fork_in_child(self) -> None:
        """Forget the parent's file without touching it; the next write opens our own."""
        if self._file is not None:
            self._file.abandon_after_fork()
            self._file = None
        self._offsets.clear()
        self.generation += 1
        self.reader = DirectoryReader(self.directory, trusted=self.trusted)

    def reset(self) -> int:
        """Start a new epoch for every process sharing the directory."""
        return self.control.bump_epoch()

    def read(self) -> tuple[list[WorkerView], list[StorageProblem]]:
        """Every readable file of the directory, and the problems of those skipped."""
        return self.reader.read()

    @property
    def file_epoch(self) -> int:
        """Epoch of this process's current file (-1 when it has none)."""
        return self._file.epoch if self._file is not None else -1

    @property
    def own_file(self) -> str | None:
        """The path of this process's worker file (None before its first write)."""
        return self._file.path if self._file is not None else None

    def close(self) -> None:
        """Close (and unlock) this process's worker file; the next write opens a new one."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self.generation += 1
