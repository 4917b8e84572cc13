"""MetricsCollector: the recording API of the spec, writing into per-process storage.

Every ``record_*`` call resolves its series to float64 offsets in this process's worker
file once (cached in bounded caches, see ``label_cache``), then does a few in-place
additions under a process-local lock. Bad input is dropped and counted in
``gatewayz_metrics_dropped_total{reason}``; with ``strict=True`` it raises instead.
Nothing here imports Flask.
"""

from __future__ import annotations

import logging
import math
import os
import struct
import threading
import time
import weakref
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from . import sketch
from .custom import CustomMetrics
from .default_registry import multi_process_reason
from .errors import InvalidMetric  # re-exported: its old home
from .label_cache import (
    FRONT_ADMIT_EVERY,
    FRONT_BUDGET_BYTES,
    MODEL_BUDGET_BYTES,
    PROVIDER_BUDGET_BYTES,
    ROUTE_BUDGET_BYTES,
    BoundedCache,
    front_entry_cost,
    part_entry_cost,
)
from .labels import LabelGuard, as_number, method_label
from .llm import GatewayRecording
from .native_histograms import NativeRecording, native_state
from .otlp_status import otlp_report
from .request_state import current_request
from .semconv import ConventionsRecording, latency_bucket_tables
from .settings import Settings, check, collector_options_from_env
from .snapshot import Snapshot
from .storage import CompactionResult, Storage, StorageUnavailable, compact, layout, location, merge
from .storage.history import SlotHistory, slot_history
from .storage.layout import Doubles
from .storage.merge import MergeCache
from .storage.process import ForkSentinel
from .tenants import TENANT_LABELS, Tenant, TenantRecording

log = logging.getLogger("flask_gatewayz_metrics")

LOG_INTERVAL_SECONDS = 60.0
COMPACTION_INTERVAL_SECONDS = 10.0
"""Least time between two compactions a scrape triggers (child_exit may run more often)."""
COMPACTION_BUDGET_SECONDS = 2.0
"""Time one compaction may spend reading files; the rest is left for the next one."""
DIRECTORY_CHECK_SECONDS = 1.0
"""How often (at most) a writing process checks that the metrics directory still holds
its control file (one ``stat``). A scrape in a process that maps the old control file
tells every such process at once; this check covers the processes a scrape cannot reach:
the directory may have been re-created by a worker that started after the deletion (it
never mapped the old file), and a server may not be scraped at all."""
FOLD_AT_START_FILES = 64
"""A process that opens its file in a directory holding this many worker files folds the
dead ones first (a process-per-request server leaves one file per request)."""

_INF = math.inf
_MAX_SECONDS = layout.MAX_SECONDS
_MAX_VALUE = layout.MAX_VALUE
_monotonic = time.monotonic
_SKETCH_STRIDE = layout.slot_stride(True)
_PLAIN_STRIDE = layout.slot_stride(False)
_SLOT_HEADER = layout.SLOT_HEADER
# sketch.bucket_index, shifted to index a slot directly (its buckets follow the header);
# every constant comes from sketch.py, so the inlined copy cannot drift from it.
_SKETCH_LOWEST = sketch.LOWEST
_SKETCH_HIGHEST = sketch.HIGHEST
_SKETCH_SCALE = sketch.SCALE
_KEY_TO_SLOT = sketch.MIN_KEY - layout.SLOT_HEADER
"""Subtracted from a bucket key to give its index within a slot."""
_UNDERFLOW_SLOT = layout.SLOT_HEADER + sketch.UNDERFLOW_INDEX
_OVERFLOW_SLOT = layout.SLOT_HEADER + sketch.OVERFLOW_INDEX
_SLOT_UPPER_BOUNDS = (math.nan,) * layout.SLOT_HEADER + sketch.UPPER_BOUNDS
"""``sketch.UPPER_BOUNDS`` indexed by position within a slot."""
_log2 = math.log2
_ceil = math.ceil
_EPOCH_INDEX = layout.CONTROL_EPOCH_INDEX
_EMPTY_SLOT_TAIL = memoryview(struct.pack(f"<{_SLOT_HEADER - 1}d", *layout.EMPTY_SLOT[1:])).cast("d")
_SLOT_BLOCK = layout.SLOT_BLOCK
_BLOCK_NEXT = layout.BLOCK_NEXT
_BLOCK_ENTRIES = layout.BLOCK_ENTRIES
_NO_FILE: Doubles = memoryview(b"").cast("d")
"""Stand-in until the first write opens this process's file (the epoch check forces that)."""


_RequestTargets = tuple[int, int, int, int, int, int]
"""Payload offsets one (endpoint, method, status, provider, model, failed) combination
writes: request record, endpoint window, provider record and window, model record and
window (-1 = none)."""


class MetricsCollector(NativeRecording, GatewayRecording, CustomMetrics, ConventionsRecording, TenantRecording):
    """Records requests, provider/model calls, cache, database and external API use.

    ``directory`` is the metrics directory shared by all worker processes (default:
    ``$GATEWAYZ_METRICS_DIR``, else a directory the processes of this server find on
    their own, see ``storage.location``; ``namespace`` gives the collector its own
    subdirectory of that, which is how a second app in a process gets its own numbers).
    ``location`` says which and why. Windowed gauges
    cover the last ``window_seconds`` (0 = since start), kept as ``window_slots``
    clock-aligned slots. A status code ``>= error_status`` counts as an error.
    With ``auto_compact`` a snapshot that finds dead workers' files folds them into the
    archive afterwards (see ``storage.archive``). ``label_limits`` (per label name:
    endpoint, provider, model, service) and ``allowed_labels`` (allowlists) bound the
    distinct values recorded; see ``labels``. Files in the directory owned by another
    user are ignored and reported unless their uid is in ``trusted_uids`` (or
    ``$GATEWAYZ_METRICS_TRUSTED_UIDS``, comma-separated), e.g. a Celery worker that
    records as another user. ``buckets``: the finite upper bounds of the since-start
    latency histograms (default ``layout.HISTOGRAM_BOUNDS``; see ``layout`` for how
    records of different bound sets are kept apart). ``native_histograms``: also record the
    latency histograms' native buckets for protobuf scrapes (None:
    ``$GATEWAYZ_METRICS_NATIVE_HISTOGRAMS``, else off; see ``native_histograms``).
    """

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
        bounds = check("buckets", buckets, "MetricsCollector(buckets=...)") or layout.HISTOGRAM_BOUNDS
        self.histogram_bounds: tuple[float, ...] = bounds
        """Finite upper bounds of the since-start latency histograms."""
        self._histogram_kinds = {kind: layout.histogram_kind(kind, bounds) for kind in layout.BOUNDED_KINDS}
        """Kind name and leading label values each of ``layout.BOUNDED_KINDS`` is stored as."""
        self._latency_union, self._request_bucket, self._http_bucket, self._gen_ai_bucket = latency_bucket_tables(
            bounds
        )
        """The request path's one search (``semconv.latency_bucket_tables``)."""
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
        self._storage = Storage(self.directory, self._slot_seconds, slots, trusted_uids)
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._generation = -1
        self._doubles: Doubles = _NO_FILE
        self._file_epoch = -1
        self._epoch_words = self._storage.control.words
        self._directory_check_at = _monotonic() + DIRECTORY_CHECK_SECONDS
        self._current_slot = self._position = 0
        self._slot_start = self._slot_end = 0.0
        self._front_cache = BoundedCache(FRONT_BUDGET_BYTES, front_entry_cost)
        self._route_cache = BoundedCache(ROUTE_BUDGET_BYTES, part_entry_cost)
        self._provider_cache = BoundedCache(PROVIDER_BUDGET_BYTES, part_entry_cost)
        self._model_cache = BoundedCache(MODEL_BUDGET_BYTES, part_entry_cost)
        self._request_targets = self._front_cache.entries
        """Whole combinations -> offsets (the request's own, then those of its OpenTelemetry
        conventions' records, ``semconv.ConventionsRecording._with_conventions``): the
        request path's one lookup (``label_cache``)."""
        self._front_misses = 0
        # Bound once: the caches are cleared in place, never replaced.
        self._route_get = self._route_cache.entries.get
        self._provider_get = self._provider_cache.entries.get
        self._model_get = self._model_cache.entries.get
        self._native_state = native_state(native_histograms)
        self._slot_extremes: dict[int, list[Any]] = {}
        """Sketch window record offset -> [slot id, min, max, {bucket: count index}] of
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
        state = current_request.get()
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
        status_code: int = 200,
        error: bool | None = None,
        error_type: str | None = None,
    ) -> None:
        """Record one upstream call to ``provider``/``model`` (not an HTTP request of ours).

        A gateway that tries several providers for one request calls this once per
        attempt. The call is an error when ``status_code >= error_status`` or when
        ``error`` is true (a time-out or connection failure that has no status); failed
        calls are also counted by type (``error_type``, else derived from the status).
        """
        state = current_request.get()
        if state is not None and state.collector is self:
            state.provider_recorded = True
        self.observe_request(None, None, latency_seconds, status_code, provider, model, bool(error))
        failed = bool(error) or (isinstance(status_code, int) and status_code >= self.error_status)
        if failed:  # gen_ai.client.operation.duration by error type (a success: observe_request)
            self._record_client_operation(provider, model, latency_seconds, status_code, bool(error), error_type)
        if failed and provider is not None:
            self.record_provider_error(provider, status_code, error_type)

    def observe_request(
        self,
        endpoint: str | None,
        method: str | None,
        latency: float,
        status: int,
        provider: str | None = None,
        model: str | None = None,
        failed: bool = False,
        leaving: bool = False,
    ) -> None:
        """Record a request unconditionally (the Flask hooks call this; ``failed`` = exception;
        ``leaving``: the request also stops counting as in flight, in the same locked write).

        ``endpoint`` and ``method`` None: a provider call that is not an HTTP request.
        This is the hot path: about a dozen float additions into the mmap, no
        allocation beyond the cache-key tuple, no syscall.
        """
        if latency.__class__ is not float:
            latency = as_number(latency)
        if not 0.0 <= latency <= _MAX_SECONDS:
            return self._drop("invalid_latency", leaving)
        if status.__class__ is not int or not 100 <= status <= 599:
            return self._drop("invalid_status", leaving)
        now = self._clock()
        try:
            with self._lock:
                d = self._doubles
                if (
                    self._file_epoch != self._epoch_words[_EPOCH_INDEX]
                    or not self._armed[0]
                    or _monotonic() >= self._directory_check_at
                ):
                    d = self._writable()
                key = (endpoint, method, status, provider, model, failed)
                try:
                    targets = self._request_targets.get(key)
                except TypeError:  # an unhashable label value (a list, a dict): resolved, not cached
                    targets = None
                if targets is None:
                    # Not a combination seen lately: one lookup per part (see label_cache),
                    # inlined as a call costs as much as a lookup.
                    try:
                        route = self._route_get((endpoint, method, status, failed))
                        upstream = self._provider_get((provider, status, failed))
                        used_model = self._model_get((model, status, failed))
                    except TypeError:  # an unhashable label value: resolved, never cached
                        route = None
                    if route is None or upstream is None or used_model is None:
                        targets = self._with_conventions(key, self._resolve_parts(key))
                    else:
                        targets = self._with_conventions(key, route + upstream + used_model)
                        self._front_misses = misses = self._front_misses + 1
                        if not misses % FRONT_ADMIT_EVERY or not self._front_cache.full:
                            self._front_cache.put(key, targets)
                    d = self._doubles  # resolving may have grown (re-mapped) the file
                (
                    request, endpoint_window, provider_record, provider_window, model_record, model_window,
                    http_server, gen_ai_duration,
                ) = targets  # fmt: skip
                # Since start: count, latency sum, histogram bucket, per status; errors and
                # per-endpoint/status totals are sums of these records at read time.
                union_index = bisect_left(self._latency_union, latency)
                bucket = self._request_bucket[union_index]
                if request >= 0:
                    d[request] += 1.0
                    d[request + 1] += latency
                    d[request + bucket] += 1.0
                if provider_record >= 0:
                    d[provider_record] += 1.0
                    d[provider_record + 1] += latency
                    d[provider_record + bucket] += 1.0
                if model_record >= 0:
                    d[model_record] += 1.0
                # Windows: the current clock-aligned slot of each windowed record.
                if not self._slot_start <= now < self._slot_end:
                    self._slot_position(now)
                slot = self._current_slot
                shift = self._position * _SKETCH_STRIDE
                extremes = self._slot_extremes
                error = failed or status >= self.error_status
                if latency <= _SKETCH_LOWEST:
                    index = _UNDERFLOW_SLOT
                elif latency > _SKETCH_HIGHEST:
                    index = _OVERFLOW_SLOT
                else:  # sketch.bucket_index, inlined (index within the slot)
                    index = _ceil(_log2(latency) * _SKETCH_SCALE) - _KEY_TO_SLOT
                    if latency > _SLOT_UPPER_BOUNDS[index]:
                        index += 1
                    elif latency <= _SLOT_UPPER_BOUNDS[index - 1]:
                        index -= 1
                # Each window slot: id, count (unused: the buckets hold it), sum, errors,
                # min, max, first bucket block. Slot id, min and max of the current slot
                # are mirrored in ``extremes`` (reading the mmap costs several times more),
                # with a dict bucket -> index of its count in the slot's bucket blocks.
                # The three copies below are deliberate: a helper call would cost more
                # than the additions themselves.
                if endpoint_window >= 0:
                    try:
                        current = extremes[endpoint_window]
                    except KeyError:
                        current = _UNKNOWN_SLOT
                    o = endpoint_window + shift
                    if current[0] != slot:
                        current = extremes[endpoint_window] = _enter_slot(d, o, slot)
                    try:
                        d[current[3][index]] += 1.0
                    except KeyError:  # first time in this slot: an entry in its bucket blocks
                        d = self._add_bucket(o, index, current)
                    d[o + 2] += latency
                    if error:
                        d[o + 3] += 1.0
                    if latency < current[1]:
                        d[o + 4] = current[1] = latency
                    if latency > current[2]:
                        d[o + 5] = current[2] = latency
                if provider_window >= 0:
                    try:
                        current = extremes[provider_window]
                    except KeyError:
                        current = _UNKNOWN_SLOT
                    o = provider_window + shift
                    if current[0] != slot:
                        current = extremes[provider_window] = _enter_slot(d, o, slot)
                    try:
                        d[current[3][index]] += 1.0
                    except KeyError:  # first time in this slot: an entry in its bucket blocks
                        d = self._add_bucket(o, index, current)
                    d[o + 2] += latency
                    if error:
                        d[o + 3] += 1.0
                    if latency < current[1]:
                        d[o + 4] = current[1] = latency
                    if latency > current[2]:
                        d[o + 5] = current[2] = latency
                if model_window >= 0:
                    try:
                        current = extremes[model_window]
                    except KeyError:
                        current = _UNKNOWN_SLOT
                    o = model_window + shift
                    if current[0] != slot:
                        current = extremes[model_window] = _enter_slot(d, o, slot)
                    try:
                        d[current[3][index]] += 1.0
                    except KeyError:  # first time in this slot: an entry in its bucket blocks
                        d = self._add_bucket(o, index, current)
                    d[o + 2] += latency
                    if error:
                        d[o + 3] += 1.0
                    if latency < current[1]:
                        d[o + 4] = current[1] = latency
                    if latency > current[2]:
                        d[o + 5] = current[2] = latency
                # The OpenTelemetry conventions' histograms (semconv.py), with their own
                # bucket bounds: http.server.request.duration's buckets only (its count and
                # sum are the request record's; its bucket follows from the request's own
                # without a search); gen_ai.server.request.duration (a labelled request) or
                # gen_ai.client.operation.duration (a successful provider call): sum, bucket.
                if http_server >= 0:
                    d[http_server + self._http_bucket[union_index]] += 1.0
                if gen_ai_duration >= 0:
                    d[gen_ai_duration] += latency
                    d[gen_ai_duration + self._gen_ai_bucket[union_index]] += 1.0
                if self._native_state is not None:  # native histograms: native_histograms.py
                    self._native_add(request, provider_record, index)
                if leaving:
                    self._in_flight -= 1
                    o = self._in_flight_offset
                    if o < 0:
                        o = self._in_flight_offset = self._fixed("in_flight")
                    self._doubles[o] = float(self._in_flight)
                return None
        except _InvalidLabel:
            return self._drop("invalid_label", leaving)
        except StorageUnavailable:
            return self._drop("storage_unavailable", leaving)
        except Exception as exc:  # never break the caller
            if leaving:
                self.add_in_flight(-1)
            return self._internal_error(exc)

    def _resolve_parts(self, key: tuple[object, ...]) -> _RequestTargets:
        """Validate a new label combination and find or allocate its records (slow path).

        A label that cannot be one (empty, not a string, unhashable) drops only its own
        part (the HTTP request, the provider or the model), counted as ``invalid_label``;
        such parts and combinations are not cached, so each occurrence is counted. Strict
        mode raises ``_InvalidLabel`` instead.
        """
        endpoint, method, status, provider, model, failed = key
        invalid = 0
        route = self._cached_part(self._route_cache, (endpoint, method, status, failed))
        upstream = self._cached_part(self._provider_cache, (provider, status, failed))
        used_model = self._cached_part(self._model_cache, (model, status, failed))
        parts: list[int] = []
        for part in (route, upstream, used_model):
            invalid += part is None
            parts.extend(_NO_PART if part is None else part)
        request, endpoint_window, provider_off, provider_window, model_off, model_window = parts
        targets = (request, endpoint_window, provider_off, provider_window, model_off, model_window)
        if invalid:
            if self.strict:
                raise _InvalidLabel
            self._doubles = self._storage.doubles
            self._doubles[self._fixed("dropped", ("invalid_label",))] += float(invalid)
        else:
            self._front_cache.put(key, targets)
        self._doubles = self._storage.doubles
        return targets

    def _add_bucket(self, base: int, index: int, mirror: list[Any]) -> Doubles:
        """Count the first observation of bucket ``index`` (position in a dense slot) in
        the current sketch slot at ``base``: an entry in the slot's last bucket block, or
        a new block when it is full (call under the lock; raises ``StorageUnavailable``
        when the file cannot grow). Returns the file's view (a new block may re-map it).

        ``mirror`` is the slot's [id, min, max, entries, block, capacity, link, position]:
        the block entries go to, its capacity, where a next block is linked, and its
        place in the chain (kept so that this costs the same however long the chain)."""
        d = self._doubles
        block = mirror[4]
        while block:
            used = int(d[block])
            if used < mirror[5]:
                entry = block + _BLOCK_ENTRIES + 2 * used
                d[entry] = float(index - _SLOT_HEADER)
                d[entry + 1] = 1.0
                d[block] = used + 1.0  # publishes the entry (one aligned 8-byte store)
                mirror[3][index] = entry + 1
                return d
            # Full: move on to the next block of the chain (kept from earlier intervals).
            mirror[6] = block + _BLOCK_NEXT
            mirror[7] += 1
            mirror[5] = layout.block_capacity(mirror[7])
            block = mirror[4] = int(d[mirror[6]])
        payload = layout.block_payload(mirror[5])
        payload[layout.BLOCK_USED] = 1.0
        payload[_BLOCK_ENTRIES] = float(index - _SLOT_HEADER)
        payload[_BLOCK_ENTRIES + 1] = 1.0
        block = self._storage.append_block(payload)
        d = self._doubles = self._storage.doubles
        d[mirror[6]] = float(block)  # links the complete block (one aligned 8-byte store)
        mirror[4] = block
        mirror[3][index] = block + _BLOCK_ENTRIES + 1
        return d

    def _cached_part(self, cache: BoundedCache, part: tuple[object, ...]) -> tuple[int, ...] | None:
        """The offsets of one part of a request (None: its label is invalid), cached."""
        try:
            found = cache.entries.get(part)
        except TypeError:  # an unhashable label value: resolved, not cached
            return self._resolve_part(cache, part)
        if found is None:
            found = self._resolve_part(cache, part)
            if found is not None:
                cache.put(part, found)
        return found

    def _resolve_part(self, cache: BoundedCache, part: tuple[object, ...]) -> tuple[int, int] | None:
        """Admit one part's label and find or allocate its record and window."""
        storage = self._storage
        if part[0] is None and (cache is not self._route_cache or part[1] is None):
            return _NO_PART  # no provider, no model, or a provider call (no HTTP request)
        outcome = (str(part[-2]), "1" if part[-1] else "0")
        if cache is self._route_cache:
            endpoint_label = self._admit_part("endpoint", part[0])
            method_value = method_label(part[1])
            if endpoint_label is None or method_value is None:
                return None
            kind, bounds = self._histogram_kinds["request"]
            return (
                storage.offset(kind, (*bounds, endpoint_label, method_value, *outcome)),
                storage.offset("endpoint_window", (endpoint_label,)),
            )
        name = "provider" if cache is self._provider_cache else "model"
        label = self._admit_part(name, part[0])
        if label is None:
            return None
        if name == "provider":
            kind, bounds = self._histogram_kinds["provider"]
            record = storage.offset(kind, (*bounds, label, *outcome))
        else:
            record = storage.offset(name, (label, *outcome))
        return record, storage.offset(f"{name}_window", (label,))

    def _clear_label_caches(self) -> None:
        """Forget every cached resolution (offsets change with a new file)."""
        for cache in (self._front_cache, self._route_cache, self._provider_cache, self._model_cache):
            cache.clear()

    def _admit_part(self, name: str, raw: object) -> str | None:
        """``_admit``, with None for a value that cannot be a label (call under the lock)."""
        try:
            return self._admit(name, raw)
        except _InvalidLabel:
            return None

    # ------------------------------------------------------- cache, db, external
    def record_cache_hit(self) -> None:
        """Count one cache lookup that found its entry."""
        self._record_cache(hit=True)

    def record_cache_miss(self) -> None:
        """Count one cache lookup that did not find its entry."""
        self._record_cache(hit=False)

    def _record_cache(self, hit: bool) -> None:
        now = self._clock()
        try:
            with self._lock:
                self._writable()
                slot, position = self._slot_position(now)
                counts, window = self._fixed("cache"), self._fixed("cache_window") + position * _PLAIN_STRIDE
                d = self._doubles
                d[counts + (0 if hit else 1)] += 1.0
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
        now = self._clock()
        try:
            with self._lock:
                self._writable()
                slot, position = self._slot_position(now)
                o, window = self._fixed("db"), self._fixed("db_window") + position * _PLAIN_STRIDE
                d = self._doubles
                d[o] += 1.0
                d[o + 1] += latency
                _plain_window_add(d, window, slot, latency, False)
        except StorageUnavailable:
            self._drop("storage_unavailable")
        except Exception as exc:
            self._internal_error(exc)
        return None

    def record_external_api_call(self, service: str, error: bool = False) -> None:
        """Count one call to an external service (stripe, sendgrid, ...)."""
        self._add("external", (("service", service),), ((0, 1.0), (1, 1.0 if error else 0.0)))

    # ------------------------------------------------------------------ plumbing
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

    def add_in_flight(self, delta: int) -> None:
        """Track requests being served by this process (``http_requests_in_flight``).

        The count lives in memory and its absolute value is written to the file, so a
        new file (after a reset) starts from the right number.
        """
        try:
            with self._lock:
                if self._file_epoch != self._epoch_words[_EPOCH_INDEX] or not self._armed[0]:
                    self._refresh_file()  # first, so a forked child starts from 0
                self._in_flight += delta
                o = self._in_flight_offset
                if o < 0:
                    o = self._in_flight_offset = self._fixed("in_flight")
                self._doubles[o] = float(self._in_flight)
        except StorageUnavailable:
            pass  # counted when requests are recorded; a gauge has nothing to drop
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

    # ------------------------------------------------------------------ plumbing
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
        self._doubles = _NO_FILE
        self._file_epoch = -1
        self._slot_extremes.clear()
        d = self._storage.writable()
        self._epoch_words = self._storage.control.words  # re-created if the directory was
        if self._storage.generation != self._generation:
            self._clear_label_caches()
            self._in_flight_offset = -1
            self._generation = self._storage.generation
            if self.auto_compact:
                self._fold_if_crowded()
        self._doubles = d
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
        self._doubles = self._storage.doubles
        return offset

    def _slot_position(self, now: float) -> tuple[int, int]:
        """The clock-aligned slot containing ``now`` and its position in a window record.

        Cached with the slot's time bounds, so most calls compare two floats instead of
        dividing; the request hot path inlines the same check.
        """
        if not self._slot_start <= now < self._slot_end:
            slot = int(now // self._slot_seconds) if self._slot_seconds else 0
            self._current_slot = slot
            self._position = slot % self._slots
            if self._slot_seconds:
                self._slot_start = slot * self._slot_seconds
                self._slot_end = self._slot_start + self._slot_seconds
            else:
                self._slot_start, self._slot_end = -_INF, _INF
        return self._current_slot, self._position

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

    # ------------------------------------------------------------------- reading
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
        """Fold dead workers' files into the archive now (see ``storage.archive``)."""
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
        except OSError as exc:  # e.g. disk full: the scrape itself still succeeds
            self._last_compaction = time.monotonic()
            self._compaction_error = f"{type(exc).__name__}: {exc.strerror or exc}"
            self._log_rate_limited("metrics compaction failed: %s", self._compaction_error)

    def to_dict(self) -> dict[str, object]:
        """The JSON snapshot (``/metrics/json``)."""
        return self.snapshot().to_dict()

    def history(self) -> SlotHistory:
        """The window's slots one by one, merged across workers (``/metrics/json?history=1``)."""
        now = self._clock()
        with self._read_lock:
            views, _ = self._storage.read()
            return slot_history(views, self._storage.control.epoch, now, self._slot_seconds, self._slots)

    def reset(self) -> None:
        """Zero every metric of every process sharing the metrics directory."""
        with self._lock:
            self._storage.reset()
            self._unrecorded.clear()

    def close(self) -> None:
        """Release this process's file (it stays readable until compacted)."""
        with self._lock:
            self._storage.close()
            self._doubles = _NO_FILE
            self._file_epoch = -1

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._forget_parent_process()

    def _forget_parent_process(self) -> None:
        """In a forked child: drop the parent's file (untouched) and per-process state."""
        self._owner_pid = os.getpid()
        self._sentinel.disarm()
        self._storage.after_fork_in_child()
        self._doubles = _NO_FILE
        self._file_epoch = -1
        self._clear_label_caches()
        self._slot_extremes.clear()
        self._unrecorded.clear()
        self._in_flight = 0  # the parent's requests are not ours
        self._in_flight_offset = -1


class _TooLarge(Exception):
    """A write would carry a stored value past ``layout.MAX_VALUE`` (the input is dropped)."""


class _InvalidLabel(Exception):
    pass


_NO_PART = (-1, -1)
"""Offsets of a part a request does not have (e.g. no provider)."""


def _archive_limits(guard: LabelGuard) -> dict[str, int]:
    """The label limits the archive applies server-wide: the writers' own (an allowlist
    admits all of its values)."""
    limits = dict(guard.limits)
    for name, values in guard.allowed.items():
        limits[name] = max(limits.get(name, 0), len(values))
    return limits


def _plain_window_add(d: Doubles, base: int, slot: int, value: float, error: bool) -> None:
    """Add one observation to the slot at ``base`` of a windowed record without sketch."""
    if d[base] != slot:
        _rotate(d, base, slot, False)
    d[base + 1] += 1.0
    d[base + 2] += value
    if error:
        d[base + 3] += 1.0
    if value < d[base + 4]:  # noqa: PLR1730 (no builtin call, no write)
        d[base + 4] = value
    if value > d[base + 5]:  # noqa: PLR1730
        d[base + 5] = value


_UNKNOWN_SLOT: list[Any] = [math.nan]
"""Stands in for a window whose current slot is not mirrored yet (NaN equals no slot id)."""


def _enter_slot(d: Doubles, base: int, slot: int) -> list[Any]:
    """Make the sketch slot at ``base`` hold ``slot`` (emptying it if it held an older
    interval); its mirror for the hot path: [slot id, min, max, {bucket: count index},
    then where new entries go (see ``MetricsCollector._add_bucket``)]."""
    first = int(d[base + _SLOT_BLOCK])
    start = [first, layout.block_capacity(0), base + _SLOT_BLOCK, 0]
    if d[base] != slot:
        _rotate(d, base, slot, True)
        return [float(slot), d[base + 4], d[base + 5], {}, *start]
    # The slot is current but not mirrored (the mirror was cleared): find its entries;
    # new ones go after them (from the first block: it skips full ones).
    entries = {}
    block = first
    while block:
        for entry in range(block + _BLOCK_ENTRIES, block + _BLOCK_ENTRIES + 2 * int(d[block]), 2):
            entries[int(d[entry]) + _SLOT_HEADER] = entry + 1
        block = int(d[block + _BLOCK_NEXT])
    return [float(slot), d[base + 4], d[base + 5], entries, *start]


def _rotate(d: Doubles, base: int, slot: int, with_sketch: bool) -> None:
    """Reuse a slot position for a new interval: mark it invalid, empty it, then claim it.

    A sketch slot keeps its bucket blocks (the next interval will likely touch as many
    buckets) and only marks them empty; their stale entries are never read again."""
    d[base] = -1.0
    if with_sketch:
        block = int(d[base + _SLOT_BLOCK])
        while block:
            d[block] = 0.0
            block = int(d[block + _BLOCK_NEXT])
    d[base + 1 : base + _SLOT_HEADER] = _EMPTY_SLOT_TAIL
    d[base] = float(slot)


_default: MetricsCollector | None = None
_default_lock = threading.Lock()
_live_collectors: weakref.WeakSet[MetricsCollector] = weakref.WeakSet()
_base_taken = False
"""Whether an app of this process already records into the base directory."""
_automatic_apps = 0
"""Apps of this process given a collector without a directory of their own, so far."""


def get_metrics_collector() -> MetricsCollector:
    """The collector of the request being timed, else the process-wide collector.

    The process-wide collector is the first app's (the first ``init_app`` in this
    process, whichever collector it got); before any app exists it is created on first
    use from the environment: ``GATEWAYZ_METRICS_DIR``, ``GATEWAYZ_METRICS_WINDOW_SECONDS``,
    ``GATEWAYZ_METRICS_WINDOW_SLOTS``, ``GATEWAYZ_METRICS_ERROR_STATUS`` (and the first app
    without storage options then adopts it).
    """
    state = current_request.get()
    if state is not None:
        return state.collector
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = _from_environment()
    return _default


def _from_environment(namespace: str | None = None) -> MetricsCollector:
    # The directory: GATEWAYZ_METRICS_DIR or automatic (location.resolve); the window and
    # error threshold from their variables, parsed and checked like config values.
    return MetricsCollector(None, namespace=namespace, **collector_options_from_env())


def collector_for_app(
    app_name: str,
    given: MetricsCollector | None,
    make: Callable[[str | None], MetricsCollector] | None,
) -> MetricsCollector:
    """The collector of a new app: one set of numbers per app unless it is shared on purpose.

    ``given`` (a collector passed by the user) is used as is. Otherwise ``make(namespace)``
    builds one (``make`` None: no storage options, the environment's settings). The first
    such app records into the base directory (``GATEWAYZ_METRICS_DIR`` or the server's
    automatic one), adopting the process-wide collector when it has no options; each
    later app gets the subdirectory ``apps/<app name>-<n>``, ``n`` counting these apps in
    the order they are initialised, which is the same in every worker of a server. The
    first app's collector is what ``get_metrics_collector()`` returns outside a request.
    """
    global _default, _base_taken, _automatic_apps
    with _default_lock:
        collector = given
        if collector is None:
            _automatic_apps += 1
            namespace = f"{app_name}-{_automatic_apps}" if _base_taken else None
            _base_taken = True
            if namespace is None and make is None and _default is not None:
                collector = _default
            elif make is None:
                collector = _from_environment(namespace)
            else:
                collector = make(namespace)
        if _default is None:
            _default = collector
        return collector


def _after_fork_in_child() -> None:
    global _default_lock
    _default_lock = threading.Lock()
    for collector in list(_live_collectors):
        collector._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
