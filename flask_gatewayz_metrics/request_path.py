"""The request fast path of ``MetricsCollector``: ``observe_request`` and the caches that
make it cheap.

``observe_request`` is one function on purpose: every Python call costs about as much
as the additions it would wrap, so the window writes, the sketch bucket search and the
cache lookups are inlined (``docs/DESIGN.md``, "The request path must stay cheap"). A
label combination not seen lately is resolved once per part (route, provider, model) by
``label_resolution`` and kept in the bounded caches of ``label_cache``; a sketch slot's
first observation of a bucket goes through ``RecordWriter._append_bucket_entry``. The
window slots' format operations live in ``storage.slots``.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from . import sketch
from .label_cache import FRONT_ADMIT_EVERY, BoundedCache
from .label_resolution import LabelResolution
from .labels import as_number, as_status
from .record_writer import _InvalidLabel
from .storage import StorageUnavailable, kinds, layout, slots
from .storage.layout import Doubles, EntryWords
from .storage.slots import enter_slot as _enter_slot
from .storage.slots import slot_bounds

if TYPE_CHECKING:
    import threading

    from .native_histograms import _NativeState

_MAX_SECONDS = layout.MAX_SECONDS
_monotonic = time.monotonic
_wall_clock = time.time
"""The collectors' default clock, which elapses with the monotonic one (``_renew_span``)."""
_SKETCH_STRIDE = layout.slot_stride(True)
# sketch.bucket_index, shifted to index a slot directly (its buckets follow the header);
# every constant comes from sketch.py, so the inlined copy cannot drift from it.
_SKETCH_LOWEST = sketch.LOWEST
_SKETCH_HIGHEST = sketch.HIGHEST
_SKETCH_SCALE = float(sketch.SCALE)  # a float: float * int has no specialised opcode (a generic multiply)
_SKETCH_KEY_BIAS = sketch.KEY_BIAS
_KEY_TO_SLOT = sketch.MIN_KEY - layout.SLOT_HEADER
"""Subtracted from a bucket key to give its index within a slot."""
_UNDERFLOW_SLOT = layout.SLOT_HEADER + sketch.UNDERFLOW_INDEX
_OVERFLOW_SLOT = layout.SLOT_HEADER + sketch.OVERFLOW_INDEX
_SLOT_UPPER_BOUNDS = (math.nan,) * layout.SLOT_HEADER + sketch.UPPER_BOUNDS
"""``sketch.UPPER_BOUNDS`` indexed by position within a slot."""
_log2 = math.log2
_ceil = math.ceil
_EPOCH_INDEX = layout.CONTROL_EPOCH_INDEX
# Payload fields (storage/kinds.py and layout.py name them; bound here, read as fast as a literal).
_REQ_SUM = kinds.REQ_SUM
if kinds.VALUE != 0:  # the request path adds a model record's count at its offset itself
    raise ImportError("request_path expects VALUE at payload index 0")
# A sketch slot's fields, from its SLOT_SUM (whose file index its mirror keeps: MIRROR_SUM).
_ERRORS_FROM_SUM = layout.SLOT_ERRORS - layout.SLOT_SUM
_MIN_FROM_SUM = layout.SLOT_MIN - layout.SLOT_SUM
_MAX_FROM_SUM = layout.SLOT_MAX - layout.SLOT_SUM
# A sketch slot's mirror (storage/slots.py names its fields; bound here like the others).
_MIRROR_MIN, _MIRROR_MAX, _MIRROR_SUM = slots.MIRROR_MIN, slots.MIRROR_MAX, slots.MIRROR_SUM
_WINDOW_ENTRIES = slots.MIRROR_CHAIN
_ENTRY_ONE = layout.ENTRY_ONE


class _InvalidStatus(Exception):
    """A status code outside 100 .. 599 (found under the lock, dropped after it)."""


def union_positions(union: tuple[float, ...]) -> tuple[int, ...]:
    """For each index within a sketch slot (``SLOT_HEADER`` + sketch bucket index): how
    many bounds of the sorted ``union`` lie below the bucket's upper bound, ``n``; or
    ``~n`` (negative) when a bound lies strictly inside the bucket.

    A latency in a bucket of ``n`` has ``bisect_left(union, latency) == n``; in a bucket
    of ``~n``, ``n`` less the bounds at or above the latency (``_union_index`` steps down
    past them: one comparison each, and few buckets hold one, as bounds are far wider
    apart than the ~2 % buckets). The collector maps the positions to payload indexes
    per sketch bucket (``_request_bucket_at``, ``_gen_ai_bucket_at``: -1 for a bucket of
    ``~n``), so the one search of the latency histograms' bounds costs a tuple lookup and
    a sign test on top of the sketch index."""
    uppers = (*(-math.inf,) * layout.SLOT_HEADER, *sketch.UPPER_BOUNDS, math.inf)
    positions = []
    for at, upper in enumerate(uppers):
        below = bisect_left(union, upper)
        lower = uppers[at - 1] if at else -math.inf
        positions.append(~below if bisect_right(union, lower) < below else below)
    return tuple(positions)


class RequestPath(LabelResolution):
    """The request path of ``MetricsCollector`` (which holds the state declared here)."""

    if TYPE_CHECKING:
        error_status: int
        _lock: threading.Lock
        _doubles: Doubles
        _entry_words: EntryWords
        _file_epoch: int
        _epoch_words: memoryview
        _armed: memoryview
        _directory_check_at: float
        _span_start: float
        _span_end: float
        _clock: Callable[[], float]
        _in_flight: int
        _in_flight_offset: int
        _latency_union: tuple[float, ...]
        _union_position: tuple[int, ...]
        _request_bucket: tuple[int, ...]
        _gen_ai_bucket: tuple[int, ...]
        _request_bucket_at: tuple[int, ...]
        _gen_ai_bucket_at: tuple[int, ...]
        _slot_seconds: float
        _slots: int
        _current_slot: int
        _position: int
        _slot_start: float
        _slot_end: float
        _slot_extremes: dict[int, list[Any]]
        _native_state: _NativeState | None
        _front_cache: BoundedCache
        _request_targets: dict[Hashable, tuple[int, ...]]
        _front_misses: int
        _route_get: Callable[[Hashable], tuple[int, ...] | None]
        _provider_get: Callable[[Hashable], tuple[int, ...] | None]
        _model_get: Callable[[Hashable], tuple[int, ...] | None]

        def _writable(self) -> Doubles: ...
        def _map_file(self) -> Doubles: ...
        def _fixed(self, kind: str, labels: tuple[str, ...] = ()) -> int: ...
        def _append_bucket_entry(self, mirror: list[Any], at: int, index: int) -> Doubles: ...
        def _drop(self, reason: str, leaving: bool = False) -> None: ...
        def _internal_error(self, exc: Exception) -> None: ...
        def add_in_flight(self, delta: int) -> None: ...
        def _with_conventions(self, key: tuple[object, ...], targets: tuple[int, ...]) -> tuple[int, ...]: ...
        def _native_add(self, request: int, provider: int, index: int) -> None: ...

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
        This is the hot path: about ten float additions into the mmap, no
        allocation beyond the cache-key tuple, no syscall.
        """
        if latency.__class__ is not float:
            latency = as_number(latency)
        # The latency's sketch bucket (sketch.bucket_index, inlined; index within a slot),
        # whose range tests also check the latency (NaN fails them all).
        if _SKETCH_LOWEST < latency <= _SKETCH_HIGHEST:
            index = _ceil(_log2(latency) * _SKETCH_SCALE - _SKETCH_KEY_BIAS) - _KEY_TO_SLOT
            if latency > _SLOT_UPPER_BOUNDS[index]:  # never too high: sketch.KEY_BIAS
                index += 1
        elif 0.0 <= latency <= _SKETCH_LOWEST:
            index = _UNDERFLOW_SLOT
        elif _SKETCH_HIGHEST < latency <= _MAX_SECONDS:
            index = _OVERFLOW_SLOT
        else:
            return self._drop("invalid_latency", leaving)
        if status.__class__ is not int:  # its range is checked with a new label combination
            status = as_status(status)  # type: ignore[assignment]  # HTTPStatus, an IntEnum: its value
            if status.__class__ is not int:
                return self._drop("invalid_status", leaving)
        # acquire / release rather than ``with``: half the cost (the ``with`` statement looks
        # up and binds __enter__ and __exit__ on every request).
        lock = self._lock
        try:
            lock.acquire()
            try:
                # The clock under the lock: a thread that waited for the lock past a slot's
                # end must not write into it after another thread entered the next slot (the
                # older slot would replace the newer one), nor after a scrape sealed it.
                clock = self._clock  # (a slot read, then a call: a method call on a slot is not specialised)
                now = clock()
                d = self._doubles
                # One range test for two things (a C call less per request): the clock still
                # in the current window slot, and the directory check (DIRECTORY_CHECK_SECONDS
                # on the monotonic clock) not yet due; ``_renew_span`` otherwise.
                if not self._span_start <= now < self._span_end:
                    d = self._renew_span(now)
                elif self._file_epoch != self._epoch_words[_EPOCH_INDEX] or not self._armed[0]:
                    d = self._writable()
                key = (endpoint, method, status, provider, model, failed)
                try:
                    targets = self._request_targets[key]  # (a subscript: a third of .get's cost)
                except KeyError:
                    targets = None
                except TypeError:  # an unhashable label value (a list, a dict): resolved, not cached
                    targets = None
                if targets is None:
                    # Not a combination seen lately (a cached one has a valid status).
                    if not 100 <= status <= 599:
                        raise _InvalidStatus  # dropped once the lock is released
                    # One lookup per part (see label_cache), inlined as a call costs as much
                    # as a lookup.
                    try:
                        route = self._route_get((endpoint, method, status, failed))
                        upstream = self._provider_get((provider, status, failed))
                        used_model = self._model_get((model, status, failed))
                    except TypeError:  # an unhashable label value: resolved, never cached
                        route = None
                    if route is None or upstream is None or used_model is None:
                        targets = self._with_conventions(key, self._flagged(key, self._resolve_parts(key)))
                    else:
                        targets = self._with_conventions(key, self._flagged(key, route + upstream + used_model))
                        self._front_misses = misses = self._front_misses + 1
                        if not misses % FRONT_ADMIT_EVERY or not self._front_cache.full:
                            self._front_cache.put(key, targets)
                    d = self._doubles  # resolving may have grown (re-mapped) the file
                (
                    request, endpoint_window, provider_record, provider_window, model_record, model_window,
                    error, more, gen_ai_duration,
                ) = targets  # fmt: skip
                # The latency's bucket in the request and provider records, from its sketch
                # bucket (union_positions): one lookup, unless bounds lie inside that bucket.
                bucket = self._request_bucket_at[index]
                if bucket < 0:
                    bucket = self._request_bucket[self._union_index(index, latency)]
                # Since start: latency sum and histogram bucket, per status; errors and
                # per-endpoint/status totals are sums of these records at read time, and so
                # are http.server.request.duration's buckets (kinds.SERVER_KINDS). The
                # count (REQ_COUNT) of these records is left unwritten: readers take it as
                # the buckets' total (merge._counted, ArchiveBuilder), one memoryview
                # read-modify-write less per record.
                if request >= 0:
                    d[request + _REQ_SUM] += latency
                    d[request + bucket] += 1.0
                if more:  # (``_flagged``: a provider or model, or native histograms)
                    if provider_record >= 0:
                        d[provider_record + _REQ_SUM] += latency
                        d[provider_record + bucket] += 1.0
                    if model_record >= 0:
                        d[model_record] += 1.0  # its one value: the count
                # Windows: the current clock-aligned slot of each windowed record (the span
                # check above entered it).
                extremes = self._slot_extremes
                words = self._entry_words
                # Each window slot (layout: SLOT_ID ... SLOT_MAX, SLOT_BLOCK): SLOT_COUNT stays
                # unused (the buckets hold it). Slot id, min and max of the current slot are
                # mirrored in ``extremes`` (reading the mmap costs several times more; emptied
                # when the slot changes, ``_slot_position``), with a dict bucket -> index of
                # its entry in the slot's bucket blocks (in ``words``, the file as u32:
                # ``layout``, bucket blocks). The three
                # copies below are deliberate: a helper call would cost more than the
                # additions themselves.
                if endpoint_window >= 0:
                    try:
                        current = extremes[endpoint_window]
                    except KeyError:  # the slot's first request here (extremes hold the current slot's)
                        current = extremes[endpoint_window] = self._enter_window_slot(endpoint_window)
                    try:
                        words[current[_WINDOW_ENTRIES][index]] += _ENTRY_ONE
                    except (KeyError, ValueError):  # the bucket's first count in this slot, or its entry is full
                        d = self._append_bucket_entry(current, _WINDOW_ENTRIES, index)
                        words = self._entry_words
                    d[current[_MIRROR_SUM]] += latency
                    if error:
                        d[current[_MIRROR_SUM] + _ERRORS_FROM_SUM] += 1.0
                    if latency < current[_MIRROR_MIN]:
                        d[current[_MIRROR_SUM] + _MIN_FROM_SUM] = current[_MIRROR_MIN] = latency
                    if latency > current[_MIRROR_MAX]:
                        d[current[_MIRROR_SUM] + _MAX_FROM_SUM] = current[_MIRROR_MAX] = latency
                if more:
                    if provider_window >= 0:
                        try:
                            current = extremes[provider_window]
                        except KeyError:  # the slot's first request here (extremes hold the current slot's)
                            current = extremes[provider_window] = self._enter_window_slot(provider_window)
                        try:
                            words[current[_WINDOW_ENTRIES][index]] += _ENTRY_ONE
                        except (KeyError, ValueError):  # the bucket's first count in this slot, or its entry is full
                            d = self._append_bucket_entry(current, _WINDOW_ENTRIES, index)
                            words = self._entry_words
                        d[current[_MIRROR_SUM]] += latency
                        if error:
                            d[current[_MIRROR_SUM] + _ERRORS_FROM_SUM] += 1.0
                        if latency < current[_MIRROR_MIN]:
                            d[current[_MIRROR_SUM] + _MIN_FROM_SUM] = current[_MIRROR_MIN] = latency
                        if latency > current[_MIRROR_MAX]:
                            d[current[_MIRROR_SUM] + _MAX_FROM_SUM] = current[_MIRROR_MAX] = latency
                    if model_window >= 0:
                        try:
                            current = extremes[model_window]
                        except KeyError:  # the slot's first request here (extremes hold the current slot's)
                            current = extremes[model_window] = self._enter_window_slot(model_window)
                        try:
                            words[current[_WINDOW_ENTRIES][index]] += _ENTRY_ONE
                        except (KeyError, ValueError):  # the bucket's first count in this slot, or its entry is full
                            d = self._append_bucket_entry(current, _WINDOW_ENTRIES, index)
                            words = self._entry_words
                        d[current[_MIRROR_SUM]] += latency
                        if error:
                            d[current[_MIRROR_SUM] + _ERRORS_FROM_SUM] += 1.0
                        if latency < current[_MIRROR_MIN]:
                            d[current[_MIRROR_SUM] + _MIN_FROM_SUM] = current[_MIRROR_MIN] = latency
                        if latency > current[_MIRROR_MAX]:
                            d[current[_MIRROR_SUM] + _MAX_FROM_SUM] = current[_MIRROR_MAX] = latency
                    # The OpenTelemetry conventions' GenAI histograms (semconv.py), with their
                    # own bucket bounds: gen_ai.server.request.duration (a labelled request) or
                    # gen_ai.client.operation.duration (a successful provider call): sum, bucket.
                    if gen_ai_duration >= 0:
                        gen_ai_bucket = self._gen_ai_bucket_at[index]
                        if gen_ai_bucket < 0:
                            gen_ai_bucket = self._gen_ai_bucket[self._union_index(index, latency)]
                        d[gen_ai_duration] += latency  # the payload starts with the sum
                        d[gen_ai_duration + gen_ai_bucket] += 1.0
                    if self._native_state is not None:  # native histograms: native_histograms.py
                        self._native_add(request, provider_record, index)
                if leaving:
                    self._in_flight -= 1
                    o = self._in_flight_offset
                    if o < 0:
                        o = self._in_flight_offset = self._fixed("in_flight")
                    self._doubles[o] = self._in_flight  # an int: the memoryview stores it as float64
            finally:
                lock.release()
        except _InvalidLabel:
            return self._drop("invalid_label", leaving)
        except _InvalidStatus:
            return self._drop("invalid_status", leaving)
        except StorageUnavailable:
            return self._drop("storage_unavailable", leaving)
        except Exception as exc:  # never break the caller
            if leaving:
                self.add_in_flight(-1)
            return self._internal_error(exc)

    def _flagged(self, key: tuple[Any, ...], parts: tuple[int, ...]) -> tuple[int, ...]:
        """``parts`` (the six record offsets of a new label combination ``key``) followed by
        what ``observe_request`` reads from its cache entry rather than work out per
        request: whether the request is an error (the key holds its status and
        ``failed``), and whether it writes more than a plain request's record and window
        (a provider or model record, hence maybe a conventions' one, or native
        histograms, which ``native_state`` decides once)."""
        status, failed = key[2], key[5]
        error = failed or status >= self.error_status
        more = parts[2] >= 0 or parts[4] >= 0 or self._native_state is not None
        return (*parts, error, more)

    def _union_index(self, index: int, latency: float) -> int:
        """``bisect_left(self._latency_union, latency)`` for a latency in sketch slot index
        ``index`` that bounds lie inside (``union_positions``: negative there): the position
        past the bucket's bounds, stepped down past those at or above the latency."""
        union_index = ~self._union_position[index]
        while union_index and latency <= self._latency_union[union_index - 1]:
            union_index -= 1
        return union_index

    def _renew_span(self, now: float) -> Doubles:
        """The request path's check once the clock left ``_span_start`` .. ``_span_end``:
        enter the slot of ``now``, check the directory if due and refresh the file if needed
        (``_writable``), then the next span: the slot's, ended early where the directory
        check falls due. Returns the file's view (call under the lock).

        The span is in the collector's clock, the directory check's deadline on the
        monotonic one: the span ends that much later than ``now`` (so a wall clock set back
        within a span delays the check by as much, under one span's length), and starts at
        ``now``, so a clock set back further ends it at once. A clock of the caller's own
        (tests) says nothing of elapsed time: its spans stay empty and each request checks
        here, as the monotonic clock says."""
        self._slot_position(now)
        d = self._writable()
        if self._clock is _wall_clock:
            self._span_start = max(self._slot_start, now)
            self._span_end = min(self._slot_end, now + (self._directory_check_at - _monotonic()))
        return d

    def _enter_window_slot(self, record: int) -> list[Any]:
        """The mirror of the current slot of the sketch window record at payload offset
        ``record``, entering the slot (``slots.enter_slot``) at its first request."""
        base = record + self._position * _SKETCH_STRIDE
        return _enter_slot(self._doubles, self._entry_words, base, self._current_slot)

    def _slot_position(self, now: float) -> tuple[int, int]:
        """The clock-aligned slot containing ``now`` and its position in a window record.

        Cached with the slot's time bounds, so most calls compare two floats instead of
        dividing; the request hot path checks a span within them (``_renew_span``). A new
        slot ends that span, and empties the sketch slots' mirrors (``_slot_extremes``):
        each holds the current slot only, so the request path finds a mirror or enters the
        slot, without comparing slot ids.
        """
        if not self._slot_start <= now < self._slot_end:
            self._current_slot, self._position, self._slot_start, self._slot_end = slot_bounds(
                now, self._slot_seconds, self._slots
            )
            self._slot_extremes.clear()
            self._span_end = -math.inf  # the request path's span lay in the old slot
        return self._current_slot, self._position

