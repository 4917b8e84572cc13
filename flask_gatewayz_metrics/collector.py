"""MetricsCollector: the recording API of the spec, writing into per-process storage.

Every ``record_*`` call resolves its series to float64 offsets in this process's worker
file once (cached in bounded caches, see ``label_cache``), then does a few in-place
additions under a process-local lock. Bad input is dropped and counted in
``gatewayz_metrics_dropped_total{reason}``; with ``strict=True`` it raises instead.
Nothing here imports Flask.

The class is assembled from one mixin per concern: ``request_path`` (the request fast
path), ``record_writer`` (this process's file and guarded writes), ``reading``
(snapshot, history, compaction trigger), ``llm``, ``semconv``, ``tenants``, ``custom``,
``native_histograms``. The process-wide default lives in ``default_collector``.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from . import record_writer
from .custom import CustomMetrics
from .default_collector import _live_collectors, collector_for_app, get_metrics_collector
from .errors import InvalidMetric  # re-exported: its old home
from .label_cache import (
    FRONT_BUDGET_BYTES,
    MODEL_BUDGET_BYTES,
    PROVIDER_BUDGET_BYTES,
    ROUTE_BUDGET_BYTES,
    BoundedCache,
    front_entry_cost,
    part_entry_cost,
)
from .labels import LabelGuard, as_flag, as_number, as_status
from .llm import GatewayRecording
from .native_histograms import NativeRecording, native_state
from .reading import COMPACTION_BUDGET_SECONDS, COMPACTION_INTERVAL_SECONDS, Reading
from .record_writer import DIRECTORY_CHECK_SECONDS, FOLD_AT_START_FILES, RecordWriter
from .request_path import RequestPath, union_positions
from .request_state import current_request
from .semconv import ConventionsRecording, latency_bucket_tables
from .settings import Settings, check
from .storage import DirectoryAccess, StorageUnavailable, kinds, layout, location
from .storage.merge import MergeCache
from .storage.process import ForkSentinel
from .storage.slots import plain_window_add as _plain_window_add
from .tenants import TenantRecording

__all__ = [  # the old homes of these names stay importable from here
    "COMPACTION_BUDGET_SECONDS",
    "COMPACTION_INTERVAL_SECONDS",
    "DIRECTORY_CHECK_SECONDS",
    "FOLD_AT_START_FILES",
    "InvalidMetric",
    "MetricsCollector",
    "collector_for_app",
    "get_metrics_collector",
]

log = logging.getLogger("flask_gatewayz_metrics")

LOG_INTERVAL_SECONDS = 60.0

_INF = math.inf
_MAX_SECONDS = layout.MAX_SECONDS
_monotonic = time.monotonic
_PLAIN_STRIDE = layout.slot_stride(False)
_EPOCH_INDEX = layout.CONTROL_EPOCH_INDEX


class MetricsCollector(
    RequestPath,
    RecordWriter,
    Reading,
    NativeRecording,
    GatewayRecording,
    CustomMetrics,
    ConventionsRecording,
    TenantRecording,
):
    """Records requests, provider/model calls, cache, database and external API use.

    ``directory`` is the metrics directory shared by all worker processes (default:
    ``$GATEWAYZ_METRICS_DIR``, else a directory the processes of this server find on
    their own, see ``storage.location``; ``namespace`` gives the collector its own
    subdirectory of that, which is how a second app in a process gets its own numbers).
    ``location`` says which and why. Windowed gauges
    cover the last ``window_seconds`` (0 = since start), kept as ``window_slots``
    clock-aligned slots. A status code ``>= error_status`` counts as an error.
    With ``auto_compact`` a snapshot that finds dead workers' files folds them into the
    archive afterwards (see ``storage.compaction``). ``label_limits`` (per label name:
    endpoint, provider, model, service) and ``allowed_labels`` (allowlists) bound the
    distinct values recorded; see ``labels``. Files in the directory owned by another
    user are ignored and reported unless their uid is in ``trusted_uids`` (or
    ``$GATEWAYZ_METRICS_TRUSTED_UIDS``, comma-separated), e.g. a Celery worker that
    records as another user. ``buckets``: the finite upper bounds of the since-start
    latency histograms (default ``kinds.HISTOGRAM_BOUNDS``; see ``layout`` for how
    records of different bound sets are kept apart). ``native_histograms``: also record the
    latency histograms' native buckets for protobuf scrapes (None:
    ``$GATEWAYZ_METRICS_NATIVE_HISTOGRAMS``, else off; see ``native_histograms``).
    """

    # The request path's attributes (``RequestPath.observe_request``, ``add_in_flight``)
    # as slots, in the order it reads them: a few adjacent cache lines of the object
    # itself rather than entries scattered over a dict of some fifty (issue 12: what
    # a request costs under many workers is set by the cache lines it misses). The
    # other attributes stay in the instance dict (the mixins have no ``__slots__``).
    __slots__ = (  # noqa: RUF023 (in reading order, not sorted)
        "_lock", "_clock", "_span_start", "_span_end", "_doubles", "_file_epoch", "_epoch_words", "_armed",
        "_request_targets", "_request_bucket_at", "_slot_extremes", "_entry_words", "_in_flight",
        "_in_flight_offset", "_gen_ai_bucket_at", "_native_state",
    )  # fmt: skip

    def __init__(
        self,
        directory: str | None = None,
        *,
        window_seconds: float = Settings.window_seconds,
        window_slots: int = Settings.window_slots,
        error_status: int = Settings.error_status,
        strict: bool = False,
        auto_compact: bool = True,
        label_limits: Mapping[str, int] | None = None,
        allowed_labels: Mapping[str, Iterable[str]] | None = None,
        clock: Callable[[], float] = time.time,
        trusted_uids: Iterable[int] | None = None,
        namespace: str | None = None,
        buckets: Sequence[float] | None = None,
        native_histograms: bool | None = None,
    ) -> None:
        # The same checks (and error messages) as the extension's settings.
        window_seconds = check("window_seconds", window_seconds, "MetricsCollector(window_seconds=...)")
        window_slots = check("window_slots", window_slots, "MetricsCollector(window_slots=...)")
        error_status = check("error_status", error_status, "MetricsCollector(error_status=...)")
        bounds = check("buckets", buckets, "MetricsCollector(buckets=...)") or kinds.HISTOGRAM_BOUNDS
        self.histogram_bounds: tuple[float, ...] = bounds
        """Finite upper bounds of the since-start latency histograms."""
        self._histogram_kinds = {kind: kinds.histogram_kind(kind, bounds) for kind in kinds.BOUNDED_KINDS}
        """Kind name and leading label values each of ``kinds.BOUNDED_KINDS`` is stored as."""
        self._latency_union, self._request_bucket, self._gen_ai_bucket = latency_bucket_tables(bounds)
        """The request path's one search (``semconv.latency_bucket_tables``)."""
        self._union_position = union_positions(self._latency_union)
        # The same, indexed by the sketch bucket (-1: bounds lie inside it, see _union_index).
        self._request_bucket_at = tuple(-1 if at < 0 else self._request_bucket[at] for at in self._union_position)
        self._gen_ai_bucket_at = tuple(-1 if at < 0 else self._gen_ai_bucket[at] for at in self._union_position)
        self.location = location.resolve(directory, namespace)
        self.directory = self.location.path
        announce = not os.path.exists(os.path.join(self.directory, layout.CONTROL_NAME))
        self.window_seconds = float(window_seconds)
        slots = window_slots if window_seconds > 0 else 1
        self._slot_seconds = self.window_seconds / slots
        self._slots = slots
        self.error_status = error_status
        self.strict = strict
        self.auto_compact = auto_compact
        self._guard = LabelGuard(label_limits, allowed_labels)
        self._in_flight = 0
        self._in_flight_offset = -1
        self._clock = clock
        self._storage = DirectoryAccess(self.directory, self._slot_seconds, slots, trusted_uids)
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._generation = -1
        self._forget_views()
        self._epoch_words = self._storage.control.words
        self._directory_check_at = _monotonic() + record_writer.DIRECTORY_CHECK_SECONDS
        self._current_slot = self._position = 0
        self._slot_start = self._slot_end = 0.0
        self._span_start = self._span_end = 0.0  # the request path's (RequestPath._renew_span)
        self._front_cache = BoundedCache(FRONT_BUDGET_BYTES, front_entry_cost)
        self._route_cache = BoundedCache(ROUTE_BUDGET_BYTES, part_entry_cost)
        self._provider_cache = BoundedCache(PROVIDER_BUDGET_BYTES, part_entry_cost)
        self._model_cache = BoundedCache(MODEL_BUDGET_BYTES, part_entry_cost)
        self._request_targets = self._front_cache.entries
        """Whole combinations -> offsets (the request's own, two flags,
        ``RequestPath._flagged``, then the offsets of its OpenTelemetry conventions'
        records, ``semconv.ConventionsRecording._with_conventions``): the request path's
        one lookup (``label_cache``)."""
        self._front_misses = 0
        # Bound once: the caches are cleared in place, never replaced.
        self._route_get = self._route_cache.entries.get
        self._provider_get = self._provider_cache.entries.get
        self._model_get = self._model_cache.entries.get
        self._native_state = native_state(native_histograms)
        self._slot_extremes: dict[int, list[Any]] = {}
        """Sketch window record offset -> [slot id, min, max, {bucket: entry index}] of
        the slot last written: a copy of the file's values (only this process writes
        them), forgotten whenever the file is (re)opened."""
        self._unrecorded: Counter[str] = Counter()
        """Drops that could not be written to storage (it was unavailable)."""
        self._merge_cache = MergeCache()
        """Sealed slots, the archive and dead files, merged once (``storage.merge``)."""
        self._last_log = -_INF
        self._last_compaction = -_INF
        self._compaction_error: str | None = None
        self._multi_process: str | None = None
        # Fork detection on the write path: the sentinel reads 0 in any forked child,
        # also one forked from C (uWSGI), where no at-fork handler runs.
        self._sentinel = ForkSentinel()
        self._armed = self._sentinel.word
        self._owner_pid = os.getpid()
        _live_collectors.add(self)
        location.announce(self.location, announce)

    # ----------------------------------------------------------------- requests
    def record_request(
        self,
        endpoint: str,
        method: str,
        latency_seconds: float,
        status_code: int,
        provider: str | None = None,
        model: str | None = None,
    ) -> None:
        """Record one HTTP request (and, if given, its provider and model).

        Inside a request already timed by ``GatewayzMetrics`` the HTTP request is not
        counted again: only the provider and model metrics are recorded.
        """
        state = current_request.get()  # (an int-subclass status: both calls below take its value)
        if state is not None and state.collector is self:
            if provider is None and model is None:
                return
            state.provider_recorded = True
            self.record_provider_call(provider, model, latency_seconds, status_code)
            return
        self.observe_request(endpoint, method, latency_seconds, status_code, provider, model)

    def record_provider_call(
        self,
        provider: str | None,
        model: str | None,
        latency_seconds: float,
        status_code: int | None = 200,
        error: bool | None = None,
        error_type: str | None = None,
    ) -> None:
        """Record one upstream call to ``provider``/``model`` (not an HTTP request of ours).

        A gateway that tries several providers for one request calls this once per
        attempt. The call is an error when ``status_code >= error_status`` or when
        ``error`` is true (a time-out or connection failure that has no status: leave
        ``status_code`` out or pass None); failed calls are also counted by type
        (``error_type``, else derived from the status).
        """
        # None: no HTTP status (a time-out); whether it failed is ``error``'s to say.
        status: int = 200 if status_code is None else as_status(status_code)  # type: ignore[assignment]
        errored = as_flag(error)
        if errored is None:  # an ``error`` whose truth cannot be told
            self._drop("invalid_value")
            return
        state = current_request.get()
        if state is not None and state.collector is self:
            state.provider_recorded = True
        self.observe_request(None, None, latency_seconds, status, provider, model, errored)
        failed = errored or (isinstance(status, int) and status >= self.error_status)
        if failed:  # gen_ai.client.operation.duration by error type (a success: observe_request)
            self._record_client_operation(provider, model, latency_seconds, status, errored, error_type)
        if failed and provider is not None:
            self.record_provider_error(provider, status, error_type)

    # ------------------------------------------------------- cache, db, external
    def record_cache_hit(self) -> None:
        """Count one cache lookup that found its entry."""
        self._record_cache(hit=True)

    def record_cache_miss(self) -> None:
        """Count one cache lookup that did not find its entry."""
        self._record_cache(hit=False)

    def _record_cache(self, hit: bool) -> None:
        try:
            with self._lock:
                self._writable()
                # The clock under the lock: a thread that waited for it must not write
                # into a slot older than one another thread has entered (request_path).
                slot, position = self._slot_position(self._clock())
                counts, window = self._fixed("cache"), self._fixed("cache_window") + position * _PLAIN_STRIDE
                d = self._doubles
                d[counts + (kinds.CACHE_HITS if hit else kinds.CACHE_MISSES)] += 1.0
                _plain_window_add(d, window, slot, 0.0, not hit)
        except StorageUnavailable:
            self._drop("storage_unavailable")
        except Exception as exc:
            self._internal_error(exc)

    def record_db_query(self, latency_seconds: float) -> None:
        """Count one database query that took ``latency_seconds``."""
        latency = as_number(latency_seconds)
        if not 0.0 <= latency <= _MAX_SECONDS:
            return self._drop("invalid_latency")
        try:
            with self._lock:
                self._writable()
                slot, position = self._slot_position(self._clock())  # under the lock: see _record_cache
                o, window = self._fixed("db"), self._fixed("db_window") + position * _PLAIN_STRIDE
                d = self._doubles
                d[o + kinds.DB_QUERIES] += 1.0
                d[o + kinds.DB_LATENCY_SUM] += latency
                _plain_window_add(d, window, slot, latency, False)
        except StorageUnavailable:
            self._drop("storage_unavailable")
        except Exception as exc:
            self._internal_error(exc)
        return None

    def record_external_api_call(self, service: str, error: bool = False) -> None:
        """Count one call to an external service (stripe, sendgrid, ...)."""
        errored = as_flag(error)
        if errored is None:  # an ``error`` whose truth cannot be told
            self._drop("invalid_value")
            return
        increments = ((kinds.EXTERNAL_CALLS, 1.0), (kinds.EXTERNAL_ERRORS, 1.0 if errored else 0.0))
        self._add("external", (("service", service),), increments)

    # ---------------------------------------------------------------- in flight
    def add_in_flight(self, delta: int) -> None:
        """Track requests being served by this process (``http_requests_in_flight``).

        The count lives in memory and its absolute value is written to the file, so a
        new file (after a reset) starts from the right number.
        """
        lock = self._lock  # acquire / release: half the cost of ``with`` (once per request)
        try:
            lock.acquire()
            try:
                if self._file_epoch != self._epoch_words[_EPOCH_INDEX] or not self._armed[0]:
                    self._refresh_file()  # first, so a forked child starts from 0
                self._in_flight += delta
                o = self._in_flight_offset
                if o < 0:
                    o = self._in_flight_offset = self._fixed("in_flight")
                self._doubles[o] = self._in_flight  # an int: stored as float64
            finally:
                lock.release()
        except StorageUnavailable:
            pass  # counted when requests are recorded; a gauge has nothing to drop
        except Exception as exc:
            self._internal_error(exc)

    # ------------------------------------------------------------- input policy
    def _drop(self, reason: str, leaving: bool = False) -> None:
        """Count input that was not recorded, under ``reason`` (and, for a request that
        was in flight, still let it leave)."""
        if leaving:
            self.add_in_flight(-1)
        if self.strict and reason != "storage_unavailable":
            raise InvalidMetric(f"metric input dropped: {reason}")
        try:
            with self._lock:
                self._writable()
                offset = self._fixed("dropped", (reason,))
                self._doubles[offset] += 1.0
        except (StorageUnavailable, OSError):
            try:
                # Shared and pre-allocated: survives this worker, adds up over all of them.
                self._storage.count_lost(reason)
            except (OSError, LookupError, ValueError):
                self._unrecorded[reason] += 1  # not even the control file: this process only
            self._log_rate_limited("metrics storage unavailable: %s", self._storage.last_error)

    def _internal_error(self, exc: Exception) -> None:
        if self.strict:
            raise exc
        self._log_rate_limited("metrics recording failed: %r", exc)
        self._unrecorded["internal_error"] += 1

    def _log_rate_limited(self, message: str, arg: object) -> None:
        now = time.monotonic()
        if now - self._last_log >= LOG_INTERVAL_SECONDS:
            self._last_log = now
            log.warning(message, arg)

    # ------------------------------------------------------------ reset, close
    def reset(self) -> None:
        """Zero every metric of every process sharing the metrics directory."""
        with self._lock:
            self._storage.reset()
            self._unrecorded.clear()

    def close(self) -> None:
        """Release this process's file (it stays readable until compacted)."""
        with self._lock:
            self._storage.close()
            self._forget_views()

