"""The reading side of ``MetricsCollector``: the merged snapshot of every worker file,
the window's slot history, and the compaction a scrape triggers afterwards.

Nothing here writes a record: reads take the collector's read lock (and the write lock
only for the directory check), merge outside it (``storage.merge``), and fold dead
workers' files into the archive at most every ``COMPACTION_INTERVAL_SECONDS``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

from .default_registry import multi_process_reason
from .otlp_status import otlp_report
from .snapshot import Snapshot
from .storage import CompactionResult, compact
from .storage.history import SlotHistory, slot_history
from .storage.merge import merge

if TYPE_CHECKING:
    from .custom_families import Definition
    from .json_document import Document
    from .labels import LabelGuard
    from .storage import DirectoryAccess, location
    from .storage.merge import MergeCache

COMPACTION_INTERVAL_SECONDS = 10.0
"""Least time between two compactions a scrape triggers (child_exit may run more often)."""
COMPACTION_BUDGET_SECONDS = 2.0
"""Time one compaction may spend reading files; the rest is left for the next one."""


class Reading:
    """Snapshot, history and compaction of ``MetricsCollector`` (which holds the state
    declared here)."""

    if TYPE_CHECKING:
        directory: str
        location: location.Location
        window_seconds: float
        error_status: int
        auto_compact: bool
        histogram_bounds: tuple[float, ...]
        _guard: LabelGuard
        _lock: threading.Lock
        _read_lock: threading.Lock
        _storage: DirectoryAccess
        _clock: Callable[[], float]
        _slot_seconds: float
        _slots: int
        _unrecorded: Counter[str]
        _merge_cache: MergeCache
        _last_compaction: float
        _compaction_error: str | None
        _multi_process: str | None

        def custom_definitions(self) -> tuple[Definition, ...]: ...
        def _log_rate_limited(self, message: str, arg: object) -> None: ...

    def snapshot(self, leave_out: frozenset[str] = frozenset()) -> Snapshot:
        """Merge every worker file in the directory into one consistent view.

        Record kinds in ``leave_out`` are not merged (absent from the snapshot): a
        ``/metrics`` that serves none of their families skips them.

        When the read found files of dead workers (or bad files), a compaction folds
        them into the archive afterwards, at most every ``COMPACTION_INTERVAL_SECONDS``,
        so the next scrape does not read them again.
        """
        now = self._clock()
        with self._read_lock:
            # A deleted or replaced directory is noticed here (and every process told);
            # under the write lock, as it may drop the file a writer thread is using.
            with self._lock:
                self._storage.check_directory()
            views, problems = self._storage.read()
            workers = [v for v in views if not v.is_archive]
            if self.auto_compact and (problems or any(not v.live for v in workers)):
                self._maybe_compact()
            self._multi_process = multi_process_reason(workers, self._multi_process)
            control = self._storage.control
            unrecorded = Counter(self._unrecorded)
            for reason, count in control.lost().items():
                unrecorded[reason] += int(count)
        # Each view owns its record list and mapping, so merging outside the lock is safe
        # while another thread's scrape re-reads (and re-maps) the same files.
        merged = merge(views, control.epoch, now, self._merge_cache, leave_out, self.histogram_bounds)
        return Snapshot(
            merged=merged,
            taken_at=now,
            start_time=control.start_time,
            window_seconds=self.window_seconds,
            error_status=self.error_status,
            live_files=sum(1 for v in workers if v.live),
            worker_files=len(workers),
            problems=problems,
            unrecorded=dict(unrecorded),
            storage_error=self._storage.last_error,
            compaction_error=self._compaction_error,
            custom_definitions=self.custom_definitions(),
            multi_process=self._multi_process,
            otlp=otlp_report(self.directory),
            location=self.location.report(),
            histogram_bounds=self.histogram_bounds,
        )

    def compact(self) -> CompactionResult:
        """Fold dead workers' files into the archive now (see ``storage.compaction``)."""
        result = compact(
            self.directory,
            budget_seconds=COMPACTION_BUDGET_SECONDS,
            label_limits=_archive_limits(self._guard),
            trusted=self._storage.trusted,
        )
        self._last_compaction = time.monotonic()
        return result

    def _maybe_compact(self) -> None:
        if time.monotonic() - self._last_compaction < COMPACTION_INTERVAL_SECONDS:
            return
        try:
            self.compact()
            self._compaction_error = None
        except Exception as exc:  # e.g. disk full: the scrape itself still succeeds
            # Any failure, not only OSError: a file the compactor cannot handle must not
            # fail every scrape from now on (it is reported by /metrics/health).
            self._last_compaction = time.monotonic()
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            self._compaction_error = f"{type(exc).__name__}: {detail}"
            self._log_rate_limited("metrics compaction failed: %s", self._compaction_error)

    def to_dict(self) -> Document:
        """The JSON snapshot (``/metrics/json``; its shape: ``json_document.Document``)."""
        return self.snapshot().to_dict()

    def history(self) -> SlotHistory:
        """The window's slots one by one, merged across workers (``/metrics/json?history=1``)."""
        now = self._clock()
        with self._read_lock:
            views, _ = self._storage.read()
            return slot_history(views, self._storage.control.epoch, now, self._slot_seconds, self._slots)



def _archive_limits(guard: LabelGuard) -> dict[str, int]:
    """The label limits the archive applies server-wide: the writers' own (an allowlist
    admits all of its values)."""
    limits = dict(guard.limits)
    for name, values in guard.allowed.items():
        limits[name] = max(limits.get(name, 0), len(values))
    return limits

