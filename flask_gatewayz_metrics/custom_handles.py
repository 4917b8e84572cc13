"""The handles of custom metrics (``Counter``, ``Gauge``, ``Histogram`` and their
labelled children) and how each writes its value into this process's worker file.

A handle is returned by ``collector.counter()`` / ``gauge()`` / ``histogram()`` (the
definition side, ``custom.py``, which re-exports these classes). Recording never raises
(strict mode aside): a bad label set or value is dropped and counted in
``gatewayz_metrics_dropped_total`` (``invalid_label``, ``invalid_value``); label values
are guarded per metric (past ``max_label_values`` distinct values, ``other``).
"""

from __future__ import annotations

import json
import math
import os
import time
import weakref
from bisect import bisect_left
from collections.abc import Mapping
from typing import TYPE_CHECKING

from .custom_families import META_KIND, Definition, bounds_label
from .labels import LabelGuard, as_number
from .storage import StorageUnavailable, kinds, layout

if TYPE_CHECKING:
    from .collector import MetricsCollector

MAX_CHILDREN = 10_000
_MAX_VALUE = layout.MAX_VALUE
"""Label sets whose handles one metric keeps (bounded by the label guard anyway)."""


class _Series:
    """One label set's place in this process's file (re-found after a new file)."""

    __slots__ = ("__weakref__", "generation", "key", "offset", "pid", "storable", "value")

    def __init__(self, kind: str, key: tuple[str, ...]) -> None:
        self.key = key
        try:
            self.storable = len(layout.encode_key(kind, key)) <= layout.MAX_KEY_BYTES
        except ValueError:  # not encodable (label values are cleaned: defence in depth)
            self.storable = False
        """False for label values too long together to fit a record key."""
        self.generation = -1
        self.offset = -1
        self.value = 0.0
        """A gauge's value in this process (written whole on every change)."""
        self.pid = os.getpid()


class _Metric:
    """What the three metric types share: definition, label guard, storage access."""

    def __init__(self, collector: MetricsCollector, definition: Definition, max_label_values: int) -> None:
        self.definition = definition
        self._collector = collector
        self._guard = LabelGuard(dict.fromkeys(definition.labelnames, max_label_values))
        self._label_set = frozenset(definition.labelnames)
        self._children: dict[tuple[str, ...], _Series] = {}
        self._held: weakref.WeakValueDictionary[tuple[str, ...], _Series] = weakref.WeakValueDictionary()
        """Every series a handle still holds, also once ``_children`` was emptied: one
        label set has one ``_Series`` (a gauge's value in this process) at a time."""
        self._meta = definition.meta_labels()
        self._defined_at = time.time()
        self._bounds = bounds_label(definition.bounds) if definition.type == "histogram" else None
        self._unlabelled = None if definition.labelnames else self._series(())

    # ------------------------------------------------------------------ labels
    def _resolve_labels(self, values: tuple[object, ...], named: Mapping[str, object]) -> _Series | None:
        """The series for these label values (positional or by name); None (counted as a
        drop) if they do not match the label names or a value is unusable."""
        names = self.definition.labelnames
        if named:
            try:
                if values or named.keys() != self._label_set:
                    self._dropped("invalid_label")
                    return None
            except Exception:  # a label name (a str subclass) whose __hash__ / __eq__ raises
                self._dropped("invalid_label")
                return None
            values = tuple(named[n] for n in names)
        try:
            known = self._children.get(values)  # type: ignore[arg-type]
        except Exception:  # unhashable, or a str subclass whose __hash__ / __eq__ raises:
            known = None  # the guard refuses (or copies) each value below
        if known is not None and known.storable:
            return known  # label values already admitted as they are
        if len(values) != len(names) or not names:
            self._dropped("invalid_label")
            return None
        collector = self._collector
        admitted = []
        with collector._lock:  # neither the guard nor the handles' cache is thread-safe
            for name, raw in zip(names, values, strict=True):
                value, overflowed = self._guard.admit(name, raw)
                if value is None:
                    break
                if overflowed:
                    self._count_overflow(name)
                admitted.append(value)
            else:
                series = self._series(tuple(admitted))
                if series.storable:
                    return series
        self._dropped("invalid_label")  # unusable, or too long together to be stored
        return None

    def _count_overflow(self, label: str) -> None:
        """Count a value recorded as ``other`` (call under the lock; storage trouble only
        loses this count, the value is recorded as ``other`` all the same)."""
        collector = self._collector
        try:
            collector._writable()
            o = collector._fixed("label_overflow", (f"{self.definition.name}.{label}",))
            collector._doubles[o] += 1.0
        except Exception:  # storage unavailable: nothing to count into
            pass

    def _series(self, values: tuple[str, ...]) -> _Series:
        found = self._children.get(values)
        if found is None:
            found = self._held.get(values)
            if found is None:
                # A new series (a gauge's value is read back from the file: _offset).
                labels = json.dumps(list(values), ensure_ascii=False)
                name = self.definition.name
                key = (name, labels) if self._bounds is None else (name, self._bounds, labels)
                found = self._held[values] = _Series(self.definition.kind, key)
            if len(self._children) >= MAX_CHILDREN:
                self._children.clear()
            self._children[values] = found
        return found

    def _no_labels(self) -> _Series | None:
        if self._unlabelled is None:
            self._dropped("invalid_label")
            return None  # a labelled metric used without .labels()
        return self._unlabelled

    def _dropped(self, reason: str) -> None:
        self._collector._drop(reason)  # raises InvalidMetric in strict mode

    # ----------------------------------------------------------------- storage
    def _offset(self, series: _Series) -> int:
        """The payload index of ``series`` in this process's file (call under the lock,
        after ``_writable()``); allocated with this metric's description on first use."""
        collector = self._collector
        generation = collector._storage.generation
        if series.generation != generation:
            meta = collector._fixed(META_KIND, self._meta)
            collector._doubles[meta] = self._defined_at
            fresh = series.generation < 0
            series.offset = collector._fixed(self.definition.kind, series.key)
            series.generation = generation
            pid = os.getpid()
            if series.pid != pid:  # a forked child: the parent's gauge values are not ours
                series.pid = pid
                series.value = 0.0
            elif fresh:  # a new handle for a series this file may already hold (evicted)
                series.value = collector._doubles[series.offset]
        return series.offset


class _Child:
    __slots__ = ("_metric", "_series")

    def __init__(self, metric: _Metric, series: _Series | None) -> None:
        self._metric = metric
        self._series = series


# ----------------------------------------------------------------------- counter
class Counter(_Metric):
    """A custom counter: ``inc(amount)`` with ``amount >= 0``; served as ``<name>_total``."""

    def labels(self, *values: object, **named: object) -> CounterChild:
        """The counter for one label set (values positional, or by label name)."""
        return CounterChild(self, self._resolve_labels(values, named))

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount`` to a counter without labels."""
        _count(self, self._no_labels(), amount)


class CounterChild(_Child):
    """A counter for one label set (from ``Counter.labels``)."""

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount`` (>= 0, finite)."""
        _count(self._metric, self._series, amount)


def _count(metric: _Metric, series: _Series | None, amount: object) -> None:
    if series is None:
        return None
    value = as_number(amount)
    if not 0.0 <= value < math.inf:
        return metric._dropped("invalid_value")
    collector = metric._collector
    try:
        with collector._lock:
            collector._writable()
            o = metric._offset(series)
            d = collector._doubles
            if d[o] + value > _MAX_VALUE:
                raise _Invalid  # the total would pass what a reader accepts
            d[o] += value
    except _Invalid:
        metric._dropped("invalid_value")
    except StorageUnavailable:
        collector._drop("storage_unavailable")
    except Exception as exc:  # never break the caller
        collector._internal_error(exc)
    return None


# ------------------------------------------------------------------------- gauge
class Gauge(_Metric):
    """A custom gauge, merged across processes by its mode (see the module docstring)."""

    def labels(self, *values: object, **named: object) -> GaugeChild:
        """The gauge for one label set (values positional, or by label name)."""
        return GaugeChild(self, self._resolve_labels(values, named))

    def set(self, value: float) -> None:
        """Set a gauge without labels to ``value`` (in this process)."""
        _gauge(self, self._no_labels(), value, False)

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount`` to a gauge without labels (in this process)."""
        _gauge(self, self._no_labels(), amount, True)

    def dec(self, amount: float = 1.0) -> None:
        """Subtract ``amount`` from a gauge without labels (in this process)."""
        _gauge(self, self._no_labels(), -as_number(amount), True)


class GaugeChild(_Child):
    """A gauge for one label set (from ``Gauge.labels``)."""

    def set(self, value: float) -> None:
        """Set this process's value to ``value`` (finite)."""
        _gauge(self._metric, self._series, value, False)

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount`` to this process's value."""
        _gauge(self._metric, self._series, amount, True)

    def dec(self, amount: float = 1.0) -> None:
        """Subtract ``amount`` from this process's value."""
        _gauge(self._metric, self._series, -as_number(amount), True)


def _gauge(metric: _Metric, series: _Series | None, number: object, relative: bool) -> None:
    if series is None:
        return None
    value = as_number(number)
    if not math.isfinite(value):
        return metric._dropped("invalid_value")
    collector = metric._collector
    mode = metric.definition.mode
    try:
        with collector._lock:
            collector._writable()
            o = metric._offset(series)
            new = series.value + value if relative else value
            if not -_MAX_VALUE <= new <= _MAX_VALUE:
                raise _Invalid
            series.value = new
            d = collector._doubles
            d[o + kinds.VALUE] = new
            if mode in ("max", "min"):
                d[o + kinds.GAUGE_SET] = 1.0  # set flag, after the value: a reader never sees it unset-but-used
            elif mode == "latest":
                d[o + kinds.GAUGE_SET] = collector._clock()
    except _Invalid:
        metric._dropped("invalid_value")
    except StorageUnavailable:
        collector._drop("storage_unavailable")
    except Exception as exc:
        collector._internal_error(exc)
    return None


class _Invalid(Exception):
    pass


# --------------------------------------------------------------------- histogram
class Histogram(_Metric):
    """A custom histogram with fixed bucket bounds (``_bucket``, ``_sum``, ``_count``)."""

    def labels(self, *values: object, **named: object) -> HistogramChild:
        """The histogram for one label set (values positional, or by label name)."""
        return HistogramChild(self, self._resolve_labels(values, named))

    def observe(self, value: float) -> None:
        """Observe ``value`` in a histogram without labels."""
        _observe(self, self._no_labels(), value)


class HistogramChild(_Child):
    """A histogram for one label set (from ``Histogram.labels``)."""

    def observe(self, value: float) -> None:
        """Observe ``value`` (finite)."""
        _observe(self._metric, self._series, value)


def _observe(metric: _Metric, series: _Series | None, number: object) -> None:
    if series is None:
        return None
    value = as_number(number)
    if not math.isfinite(value):
        return metric._dropped("invalid_value")
    collector = metric._collector
    bucket = 1 + bisect_left(metric.definition.bounds, value)
    try:
        with collector._lock:
            collector._writable()
            o = metric._offset(series)
            d = collector._doubles
            if not -_MAX_VALUE <= d[o] + value <= _MAX_VALUE:
                raise _Invalid  # the sum would pass what a reader accepts
            d[o] += value
            d[o + bucket] += 1.0
    except _Invalid:
        metric._dropped("invalid_value")
    except StorageUnavailable:
        collector._drop("storage_unavailable")
    except Exception as exc:
        collector._internal_error(exc)
    return None
