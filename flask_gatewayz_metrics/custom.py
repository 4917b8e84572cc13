"""Custom metrics: the application's own counters, gauges and histograms, in our engine.

``collector.counter(...)``, ``collector.gauge(..., mode=...)`` and
``collector.histogram(..., buckets=...)`` define a metric once (at import time, say) and
return a handle used like ``prometheus_client``'s: ``handle.labels(team="a").inc()``.
Values go into this process's worker file like ours, so they are merged across
workers, kept when a worker exits (compaction), zeroed by ``/metrics/reset`` and served
on ``/metrics`` and ``/metrics/json`` by whichever worker answers.

Definition errors (a bad name, a clash with one of our families, bad buckets) raise
``ValueError`` at once: they are programming errors. Recording never raises (strict
mode aside): a bad label set or value is dropped and counted in
``gatewayz_metrics_dropped_total`` (``invalid_label``, ``invalid_value``). Label values
are guarded per metric like ours: past ``max_label_values`` distinct values of a label
in one process, new values are recorded as ``other`` and counted in
``gatewayz_metrics_label_overflow_total{label="<metric>.<label>"}``.

Gauges merge across processes by ``mode``: ``sum`` (of every process's value, exited
ones included: their last value stays), ``livesum`` (of live processes only, like
requests in flight), ``max``, ``min``, ``latest`` (the most recently set value). Each
process keeps its gauge values in memory and writes them whole, so after a reset a
gauge shows its process's value again at its next change; a forked child starts its
gauges at 0.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from itertools import pairwise
from typing import TYPE_CHECKING, cast

from .custom_families import (
    COUNTER_KIND,
    GAUGE_KIND_PREFIX,
    GAUGE_MODES,
    LABEL_NAME,
    MAX_DOCUMENTATION,
    MAX_LABEL_NAMES,
    MAX_NAME_LENGTH,
    META_KIND,
    METRIC_NAME,
    Definition,
    bounds_label,
    histogram_kind,
)
from .exposition import our_sample_names
from .labels import LabelGuard, as_number
from .storage import StorageUnavailable, layout

if TYPE_CHECKING:
    from .collector import MetricsCollector

DEFAULT_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Histogram bounds when none are given (prometheus_client's defaults)."""
DEFAULT_MAX_LABEL_VALUES = 100
"""Distinct values per label of one custom metric and process before ``other``."""
MAX_CHILDREN = 10_000
"""Label sets whose handles one metric keeps (bounded by the label guard anyway)."""


class _Series:
    """One label set's place in this process's file (re-found after a new file)."""

    __slots__ = ("generation", "key", "offset", "pid", "storable", "value")

    def __init__(self, kind: str, key: tuple[str, ...]) -> None:
        self.key = key
        self.storable = len(layout.encode_key(kind, key)) <= layout.MAX_KEY_BYTES
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
            if values or named.keys() != self._label_set:
                self._dropped("invalid_label")
                return None
            values = tuple(named[n] for n in names)
        try:
            known = self._children.get(values)  # type: ignore[arg-type]
        except TypeError:  # an unhashable value: the guard refuses it below
            known = None
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
            if len(self._children) >= MAX_CHILDREN:
                self._children.clear()  # a gauge's value is read back from the file (_offset)
            labels = json.dumps(list(values), ensure_ascii=False)
            name = self.definition.name
            key = (name, labels) if self._bounds is None else (name, self._bounds, labels)
            found = self._children[values] = _Series(self.definition.kind, key)
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
            collector._doubles[o] += value
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
        _gauge(self, self._no_labels(), amount, True)

    def dec(self, amount: float = 1.0) -> None:
        _gauge(self, self._no_labels(), -as_number(amount), True)


class GaugeChild(_Child):
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
            if not math.isfinite(new):
                raise _Invalid
            series.value = new
            d = collector._doubles
            d[o] = new
            if mode in ("max", "min"):
                d[o + 1] = 1.0  # set flag, after the value: a reader never sees it unset-but-used
            elif mode == "latest":
                d[o + 1] = collector._clock()
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
            d[o] += value
            d[o + bucket] += 1.0
    except StorageUnavailable:
        collector._drop("storage_unavailable")
    except Exception as exc:
        collector._internal_error(exc)
    return None


# -------------------------------------------------------------------- definition
class CustomMetrics:
    """The custom metrics API of ``MetricsCollector`` (a mixin)."""

    _custom_metrics: dict[str, _Metric] | None = None

    def counter(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        max_label_values: int = DEFAULT_MAX_LABEL_VALUES,
    ) -> Counter:
        """Define a counter (``name`` with or without ``_total``; served with it).

        Defining the same metric again returns the same handle; a different metric
        under a taken name raises ``ValueError``.
        """
        family = name[: -len("_total")] if name.endswith("_total") else name
        definition = _definition(family, "counter", COUNTER_KIND, documentation, labelnames)
        return cast(Counter, self._define(Counter, definition, max_label_values))

    def gauge(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        mode: str = "sum",
        max_label_values: int = DEFAULT_MAX_LABEL_VALUES,
    ) -> Gauge:
        """Define a gauge merged across processes by ``mode``: "sum", "max", "min",
        "latest" or "livesum" (live processes only)."""
        if mode not in GAUGE_MODES:
            raise ValueError(f"gauge {name!r}: mode must be one of {', '.join(GAUGE_MODES)}, got {mode!r}")
        definition = _definition(name, "gauge", GAUGE_KIND_PREFIX + mode, documentation, labelnames)
        return cast(Gauge, self._define(Gauge, definition, max_label_values))

    def histogram(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Iterable[float] = DEFAULT_BUCKETS,
        max_label_values: int = DEFAULT_MAX_LABEL_VALUES,
    ) -> Histogram:
        """Define a histogram with these finite, increasing bucket upper bounds (+Inf is
        added; at most ``storage.layout.MAX_CUSTOM_BUCKETS``)."""
        bounds = _bounds(name, buckets)
        if "le" in labelnames:
            raise ValueError(f"histogram {name!r}: 'le' is reserved for the bucket label")
        definition = _definition(name, "histogram", histogram_kind(len(bounds)), documentation, labelnames, bounds)
        return cast(Histogram, self._define(Histogram, definition, max_label_values))

    def custom_definitions(self) -> tuple[Definition, ...]:
        """The custom metrics defined in this process."""
        return tuple(m.definition for m in (self._custom_metrics or {}).values())

    def _define(self, cls: type[_Metric], definition: Definition, max_label_values: int) -> _Metric:
        if isinstance(max_label_values, bool) or not isinstance(max_label_values, int) or max_label_values < 1:
            raise ValueError(f"metric {definition.name!r}: max_label_values must be an int >= 1")
        with _define_lock:
            if self._custom_metrics is None:
                self._custom_metrics = {}
            existing = self._custom_metrics.get(definition.name)
            if existing is not None:
                if existing.definition != definition:
                    raise ValueError(
                        f"metric {definition.name!r} is already defined as {existing.definition.type} "
                        f"{existing.definition}; define it once (the same definition returns the same handle)"
                    )
                return existing
            metric = cls(cast("MetricsCollector", self), definition, max_label_values)
            self._custom_metrics[definition.name] = metric
            return metric


_define_lock = threading.Lock()


def _definition(
    name: object,
    type_: str,
    kind: str,
    documentation: object,
    labelnames: Sequence[str],
    bounds: tuple[float, ...] = (),
) -> Definition:
    """A validated definition; ``ValueError`` naming what is wrong otherwise."""
    if not isinstance(name, str) or not METRIC_NAME.match(name) or len(name) > MAX_NAME_LENGTH:
        raise ValueError(
            f"metric name {name!r} is not a Prometheus metric name ([a-zA-Z_][a-zA-Z0-9_]*, "
            f"at most {MAX_NAME_LENGTH} characters, no colons)"
        )
    if not isinstance(documentation, str) or not documentation or len(documentation) > MAX_DOCUMENTATION:
        raise ValueError(f"metric {name!r}: documentation must be a non-empty string of at most {MAX_DOCUMENTATION}")
    if isinstance(labelnames, str):
        raise ValueError(f"metric {name!r}: labelnames must be a sequence of names, not a string")
    names = tuple(labelnames)
    for label in names:
        if not isinstance(label, str) or not LABEL_NAME.match(label) or label.startswith("__"):
            raise ValueError(f"metric {name!r}: {label!r} is not a valid label name")
    if len(set(names)) != len(names) or len(names) > MAX_LABEL_NAMES:
        raise ValueError(f"metric {name!r}: label names must be distinct, at most {MAX_LABEL_NAMES}")
    definition = Definition(name, type_, kind, documentation, names, bounds)
    clash = set(definition.sample_names()) & _reserved()
    if clash:
        raise ValueError(
            f"metric {name!r} clashes with flask_gatewayz_metrics's own {', '.join(sorted(clash))}; choose another name"
        )
    if len(layout.encode_key(META_KIND, definition.meta_labels())) > layout.MAX_KEY_BYTES // 2:
        raise ValueError(f"metric {name!r}: name, documentation and label names are too long together")
    return definition


def _bounds(name: str, buckets: Iterable[float]) -> tuple[float, ...]:
    try:
        bounds = [float(b) for b in buckets]
    except (TypeError, ValueError):
        raise ValueError(f"histogram {name!r}: buckets must be numbers") from None
    if bounds and bounds[-1] == math.inf:
        bounds.pop()  # +Inf is always there
    if not 1 <= len(bounds) <= layout.MAX_CUSTOM_BUCKETS:
        raise ValueError(f"histogram {name!r}: give 1 to {layout.MAX_CUSTOM_BUCKETS} finite bucket bounds")
    if not all(math.isfinite(b) for b in bounds) or any(a >= b for a, b in pairwise(bounds)):
        raise ValueError(f"histogram {name!r}: bucket bounds must be finite and strictly increasing")
    return tuple(bounds)


@cache
def _reserved() -> frozenset[str]:
    return our_sample_names()
