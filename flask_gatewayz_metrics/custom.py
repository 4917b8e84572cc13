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

This module is the definition side (the ``CustomMetrics`` mixin of ``MetricsCollector``
and the checks of names, labels and buckets); the handles it returns and their recording
are in ``custom_handles.py`` (``Counter``, ``Gauge``, ``Histogram`` are importable from
both).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence
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
    histogram_kind,
)
from .custom_handles import (
    MAX_CHILDREN,
    Counter,
    CounterChild,
    Gauge,
    GaugeChild,
    Histogram,
    HistogramChild,
    _Metric,
)
from .exposition import our_sample_names
from .labels import plain_str
from .storage import kinds, layout

if TYPE_CHECKING:
    from .collector import MetricsCollector

__all__ = [
    "DEFAULT_BUCKETS",
    "DEFAULT_MAX_LABEL_VALUES",
    "MAX_CHILDREN",
    "Counter",
    "CounterChild",
    "CustomMetrics",
    "Gauge",
    "GaugeChild",
    "Histogram",
    "HistogramChild",
]

DEFAULT_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Histogram bounds when none are given (prometheus_client's defaults)."""
DEFAULT_MAX_LABEL_VALUES = 100
"""Distinct values per label of one custom metric and process before ``other``."""


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
        added; at most ``storage.kinds.MAX_CUSTOM_BUCKETS``)."""
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
    # A plain copy (a str subclass's methods are never called on what is kept), and
    # valid UTF-8 only: a lone surrogate (text decoded with errors="surrogateescape")
    # can be neither served nor stored in a record key that other processes read.
    text = plain_str(documentation)
    if not text or len(text) > MAX_DOCUMENTATION:
        raise ValueError(f"metric {name!r}: documentation must be a non-empty string of at most {MAX_DOCUMENTATION}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"metric {name!r}: documentation is not valid Unicode text (a lone surrogate)") from None
    if isinstance(labelnames, str):
        raise ValueError(f"metric {name!r}: labelnames must be a sequence of names, not a string")
    names = tuple(labelnames)
    for label in names:
        if not isinstance(label, str) or not LABEL_NAME.match(label) or label.startswith("__"):
            raise ValueError(f"metric {name!r}: {label!r} is not a valid label name")
    if len(set(names)) != len(names) or len(names) > MAX_LABEL_NAMES:
        raise ValueError(f"metric {name!r}: label names must be distinct, at most {MAX_LABEL_NAMES}")
    definition = Definition(name, type_, kind, text, names, bounds)
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
    if not 1 <= len(bounds) <= kinds.MAX_CUSTOM_BUCKETS:
        raise ValueError(f"histogram {name!r}: give 1 to {kinds.MAX_CUSTOM_BUCKETS} finite bucket bounds")
    if not all(math.isfinite(b) for b in bounds) or any(a >= b for a, b in pairwise(bounds)):
        raise ValueError(f"histogram {name!r}: bucket bounds must be finite and strictly increasing")
    return tuple(bounds)


@cache
def _reserved() -> frozenset[str]:
    return our_sample_names()
