"""The writes under ``MetricsCollector``'s recording API: this process's worker file
(opened on the first write, re-opened after a reset, a deleted metrics directory or a
fork), offsets of records outside the request path, label admission, and one record's
guarded write (all of it or none, never past ``layout.MAX_VALUE``).

The request path (``request_path``) has its own inlined copy of the file check; the
input policy (drop, strict, rate-limited log) is the collector's.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .storage import StorageUnavailable, layout, location, slots
from .storage.layout import Doubles, EntryWords
from .tenants import TENANT_LABELS, Tenant

if TYPE_CHECKING:
    from collections import Counter

    from .labels import LabelGuard
    from .storage import DirectoryAccess
    from .storage.process import ForkSentinel

DIRECTORY_CHECK_SECONDS = 1.0
"""How often (at most) a writing process checks that the metrics directory still holds
its control file (one ``stat``). A scrape in a process that maps the old control file
tells every such process at once; this check covers the processes a scrape cannot reach:
the directory may have been re-created by a worker that started after the deletion (it
never mapped the old file), and a server may not be scraped at all."""
FOLD_AT_START_FILES = 64
"""A process that opens its file in a directory holding this many worker files folds the
dead ones first (a process-per-request server leaves one file per request)."""

_MAX_VALUE = layout.MAX_VALUE
_monotonic = time.monotonic
_EPOCH_INDEX = layout.CONTROL_EPOCH_INDEX
_SLOT_HEADER = layout.SLOT_HEADER
_BLOCK_NEXT = layout.BLOCK_NEXT
_NO_FILE: Doubles = memoryview(b"").cast("d")
"""Stand-in until the first write opens this process's file (the epoch check forces that)."""
_NO_ENTRY_WORDS: EntryWords = memoryview(b"").cast("I")
"""``_NO_FILE`` as u32 values."""
_first_entry = layout.first_entry

class _TooLarge(Exception):
    """A write would carry a stored value past ``layout.MAX_VALUE`` (the input is dropped)."""


class _InvalidLabel(Exception):
    """A value that cannot be a label (the input is dropped as ``invalid_label``)."""


class RecordWriter:
    """Write plumbing of ``MetricsCollector`` (which holds the state declared here)."""

    if TYPE_CHECKING:
        directory: str
        strict: bool
        auto_compact: bool
        _guard: LabelGuard
        _lock: threading.Lock
        _read_lock: threading.Lock
        _storage: DirectoryAccess
        _doubles: Doubles
        _entry_words: EntryWords
        _generation: int
        _file_epoch: int
        _epoch_words: memoryview
        _armed: memoryview
        _sentinel: ForkSentinel
        _owner_pid: int
        _directory_check_at: float
        _clock: Callable[[], float]
        _slot_seconds: float
        _in_flight: int
        _in_flight_offset: int
        _slot_extremes: dict[int, list[Any]]
        _unrecorded: Counter[str]

        def _drop(self, reason: str, leaving: bool = False) -> None: ...
        def _internal_error(self, exc: Exception) -> None: ...
        def _clear_label_caches(self) -> None: ...
        def _maybe_compact(self) -> None: ...

    # ------------------------------------------------------------ guarded writes
    def _add(
        self,
        kind: str,
        labels: tuple[tuple[str, object], ...],
        increments: tuple[tuple[int, float], ...],
        latest: tuple[float, ...] | None = None,
    ) -> None:
        """Add ``increments`` (payload index, amount) to the ``kind`` record for ``labels``
        (name, raw value) pairs, guarded like any label; with ``latest`` the payload is
        instead set to ``(*latest, now)`` (kinds merged as "latest"). Never raises (strict
        mode aside)."""
        self._write_record(kind, lambda: tuple(self._admit(name, raw) for name, raw in labels), increments, latest)

    def _add_tenant(
        self, kind: str, tenant: Tenant, extra: tuple[str, ...], increments: tuple[tuple[int, float], ...]
    ) -> None:
        """Add to ``kind``'s record of ``tenant``: each label given is admitted like any
        label (caps, allowlists, ``other``), one not given is ""."""

        def values() -> tuple[str, ...]:
            labelled = zip(TENANT_LABELS, tenant, strict=True)
            return (*("" if raw is None else self._admit(name, raw) for name, raw in labelled), *extra)

        self._write_record(kind, values, increments)

    def _write_record(
        self,
        kind: str,
        values: Callable[[], tuple[str, ...]],
        increments: tuple[tuple[int, float], ...],
        latest: tuple[float, ...] | None = None,
    ) -> None:
        """The write of ``_add`` / ``_add_tenant``: the record's label values come from
        ``values()``, called under the lock (label admission counts per process)."""
        try:
            with self._lock:
                self._writable()
                o = self._fixed(kind, values())
                d = self._doubles
                # Checked before anything is written: the record takes all of it or none.
                if latest is not None and not all(-_MAX_VALUE <= value <= _MAX_VALUE for value in latest):
                    raise _TooLarge
                if not all(-_MAX_VALUE <= d[o + index] + amount <= _MAX_VALUE for index, amount in increments):
                    raise _TooLarge
                if latest is not None:
                    for index, value in enumerate(latest):
                        d[o + index] = value
                    d[o + len(latest)] = self._clock()
                for index, amount in increments:
                    if amount:
                        d[o + index] += amount
        except _InvalidLabel:
            self._drop("invalid_label")
        except _TooLarge:
            self._drop("invalid_value")
        except StorageUnavailable:
            self._drop("storage_unavailable")
        except Exception as exc:
            self._internal_error(exc)

    def _admit(self, name: str, raw: object) -> str:
        """The label value to record for ``raw`` (call under the lock).

        Raises ``_InvalidLabel`` for unusable values; counts values past the guard's
        limit, which become ``other``.
        """
        value, overflowed = self._guard.admit(name, raw)
        if value is None:
            raise _InvalidLabel
        if overflowed:
            o = self._fixed("label_overflow", (name,))
            self._doubles[o] += 1.0
        return value

    def _append_bucket_entry(self, mirror: list[Any], at: int, index: int) -> Doubles:
        """Count the first observation of slot index ``index`` (``SLOT_HEADER`` + sketch
        index) in a bucket-block chain this process writes: an entry in the chain's last
        block, or a new block when it is full (call under the lock; raises
        ``StorageUnavailable`` when the file cannot grow). Returns the file's view (a new
        block may re-map it).

        ``mirror[at:at + 5]`` is the chain's writer state: {bucket: entry index}, the block
        entries go to, its capacity, where a next block is linked, and its place in the
        chain (kept so that this costs the same however long the chain). A sketch slot's
        mirror has it from ``slots.MIRROR_CHAIN``, a native chain's from 0. Publication follows
        ``layout``: an entry is filled before ``BLOCK_USED`` publishes it, a block is
        complete before it is linked, each by one aligned 8-byte store."""
        d = self._doubles
        entries = mirror[at]
        block = mirror[at + 1]
        # One u32 per entry, count and bucket packed: the request path's
        # ``words[entries[index]] += ENTRY_ONE`` adds one to the count.
        packed = layout.pack_entry(index - _SLOT_HEADER, 1)
        while block:
            used = int(d[block])
            if used < mirror[at + 2]:
                entry = _first_entry(block) + used
                self._entry_words[entry] = packed
                d[block] = used + 1.0  # publishes the entry
                entries[index] = entry
                return d
            # Full: move on to the next block of the chain (kept from earlier intervals;
            # its capacity is in its record header), or a new one of the next capacity.
            mirror[at + 3] = block + _BLOCK_NEXT
            mirror[at + 4] += 1
            block = mirror[at + 1] = int(d[mirror[at + 3]])
            if block:
                mirror[at + 2] = layout.stored_capacity(d, block)
            elif at == slots.MIRROR_CHAIN:  # a window slot's chain: sized by the interval's pace
                mirror[at + 2] = slots.paced_block_capacity(
                    mirror[slots.MIRROR_SLOT], self._slot_seconds, self._clock(), len(entries), mirror[at + 4]
                )
            else:  # a native chain (since start): doubling
                mirror[at + 2] = layout.block_capacity(mirror[at + 4])
        # Appended empty (readers reach a block only through its link), then its first
        # entry and BLOCK_USED, then linked.
        block = self._storage.append_block(layout.block_payload(mirror[at + 2]))
        d = self._map_file()
        entry = _first_entry(block)
        self._entry_words[entry] = packed
        d[block + layout.BLOCK_USED] = 1.0
        d[mirror[at + 3]] = float(block)  # links the complete block
        mirror[at + 1] = block
        entries[index] = entry
        return d

    def _forget_views(self) -> None:
        """Hold no view of a file: the next write's epoch check opens one (``_refresh_file``)."""
        self._doubles = _NO_FILE
        self._entry_words = _NO_ENTRY_WORDS
        self._file_epoch = -1

    def _map_file(self) -> Doubles:
        """Take this process's file's current mapping (after a write that may have grown
        it): both views the writes use, kept together."""
        storage = self._storage
        self._entry_words = storage.entry_words
        d = self._doubles = storage.doubles
        return d

    # ------------------------------------------------------- this process's file
    def _writable(self) -> Doubles:
        """This process's storage view (call under the lock)."""
        if _monotonic() >= self._directory_check_at:
            self._directory_check_at = _monotonic() + DIRECTORY_CHECK_SECONDS
            # A deleted or replaced directory: drop our file, re-create the directory and
            # tell the processes still mapping the old control file (its epoch moves).
            self._storage.check_directory()
        if self._file_epoch != self._epoch_words[_EPOCH_INDEX] or not self._armed[0]:
            return self._refresh_file()
        return self._doubles

    def _refresh_file(self) -> Doubles:
        """Open (or re-open after a reset or fork) this process's file; forget old offsets."""
        if self._owner_pid != os.getpid():
            # Forked without our at-fork hook (uWSGI forks from C): the parent's file is
            # still mapped here and must never be written. The lock is held, so keep it.
            self._forget_parent_process()
        self._forget_views()
        self._slot_extremes.clear()
        self._storage.writable()
        self._epoch_words = self._storage.control.words  # re-created if the directory was
        if self._storage.generation != self._generation:
            self._clear_label_caches()
            self._in_flight_offset = -1
            self._generation = self._storage.generation
            if self.auto_compact:
                self._fold_if_crowded()
        d = self._map_file()
        if self._in_flight:
            # A new file (a reset, a re-created directory) while requests are in flight
            # here: their count goes with it at once. Readers stop counting the old
            # file's value as soon as this one exists, and the next add_in_flight may be
            # a long stream away.
            self._in_flight_offset = self._fixed("in_flight")
            d = self._doubles
            d[self._in_flight_offset] = self._in_flight  # an int: stored as float64
        self._file_epoch = self._storage.file_epoch
        self._sentinel.arm()
        return d

    def _fold_if_crowded(self) -> None:
        """A new file in a crowded directory: fold dead files now (bounded, non-blocking)."""
        if location.worker_file_count(self.directory, FOLD_AT_START_FILES) >= FOLD_AT_START_FILES:
            self._maybe_compact()

    def _fixed(self, kind: str, labels: tuple[str, ...] = ()) -> int:
        """Offset of a record outside the request path (allocating it may re-map the file)."""
        offset = self._storage.offset(kind, labels)
        self._map_file()
        return offset


    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._forget_parent_process()

    def _forget_parent_process(self) -> None:
        """In a forked child: drop the parent's file (untouched) and per-process state."""
        self._owner_pid = os.getpid()
        self._sentinel.disarm()
        self._storage.after_fork_in_child()
        self._forget_views()
        self._clear_label_caches()
        self._slot_extremes.clear()
        self._unrecorded.clear()
        self._in_flight = 0  # the parent's requests are not ours
        self._in_flight_offset = -1

