"""What every topic module of the exposition builds families with (one home for each helper):
cumulative histogram buckets, windowed gauges that omit an empty window, one-value series.

The topic modules: ``exposition_http`` (our HTTP requests), ``exposition_upstream`` (AI
providers, models, LLM calls, external APIs), ``exposition_resources`` (cache, database,
in-flight), ``exposition_self`` (the metrics system's own health and identity),
``exposition_tenants`` and ``exposition_semconv``; ``exposition`` puts them together.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from functools import lru_cache
from itertools import accumulate
from typing import Any

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString

from .snapshot import Snapshot, Totals
from .storage import WindowStats, kinds

WINDOW = "over the sliding window"
"""How every windowed gauge's HELP says what it covers."""
ENDPOINT_QUANTILES = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))
"""The window's sketch percentiles served per endpoint, provider and model (name, quantile)."""
WINDOW_LATENCY_GAUGES = ("avg", "min", "max", "p50", "p95", "p99")
"""Window latency gauges per endpoint, provider and model (``<prefix>_latency_<name>_seconds``)."""


def cumulative(bounds: Sequence[float], counts: Sequence[float]) -> list[tuple[str, float]]:
    """Prometheus bucket pairs (``le`` text, cumulative count) from per-bucket counts (+Inf last)."""
    # The same additions, in the same order, as a running sum from 0.0 (so -0.0 stays 0.0).
    running = accumulate(counts, initial=0.0)
    next(running)
    return list(zip(le_texts(tuple(bounds)), running, strict=True))


@lru_cache(maxsize=256)  # bounds of custom series come from files: bounded
def le_texts(bounds: tuple[float, ...]) -> tuple[str, ...]:
    """The ``le`` label values of ``bounds`` and +Inf (the few bound sets served are kept)."""
    return tuple(floatToGoString(bound) for bound in (*bounds, float("inf")))


def gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    """A labelled gauge family."""
    return GaugeMetricFamily(name, doc, labels=labels)


def add_windowed(family: GaugeMetricFamily, labels: list[str], value: float | None) -> None:
    """Add a windowed gauge sample; an empty window has no value, so no sample."""
    if value is not None:
        family.add_metric(labels, value)


def fill(family: CounterMetricFamily | GaugeMetricFamily, snap: Snapshot, kind: str) -> None:
    """One sample per series of ``kind``: its labels and its value (``kinds.VALUE``)."""
    for key, payload in snap.series(kind):
        family.add_metric(list(key), payload[kinds.VALUE])


def latency_gauges(prefix: str, label: str, words: dict[str, str]) -> dict[str, GaugeMetricFamily]:
    """``<prefix>_latency_{avg,min,max,p50,p95,p99}_seconds`` gauges labelled ``label``
    (HELP starts with ``words[name]``, else the name).

    The spec names avg/min/max/p95 for providers and avg for models; the others are
    ours (exact min / max and sketch percentiles on every window)."""
    return {
        name: gauge(f"{prefix}_latency_{name}_seconds", f"{words.get(name, name)} {prefix} latency {WINDOW}.", [label])
        for name in WINDOW_LATENCY_GAUGES
    }


def add_latency(gauges: dict[str, GaugeMetricFamily], labels: list[str], stats: WindowStats) -> None:
    """One window's samples of the ``latency_gauges`` families."""
    add_windowed(gauges["avg"], labels, stats.average)
    add_windowed(gauges["min"], labels, stats.minimum)
    add_windowed(gauges["max"], labels, stats.maximum)
    for name, q in ENDPOINT_QUANTILES:
        add_windowed(gauges[name], labels, stats.quantile(q))


def latency_histogram(
    family: HistogramMetricFamily,
    labels: list[str],
    totals: Totals,
    exemplars: dict[int, Exemplar] | None = None,
    bounds: tuple[float, ...] = kinds.HISTOGRAM_BOUNDS,
) -> None:
    """Add one series of since-start latency ``totals``, with the exemplars whose value lies
    in their bucket (one recorded under other bounds may not)."""
    buckets: list[Any] = cumulative(bounds, totals.buckets)
    for index, exemplar in (exemplars or {}).items():
        if 0 <= index < len(buckets) and bisect_left(bounds, exemplar.value) == index:
            buckets[index] = (*buckets[index], exemplar)
    family.add_metric(labels, buckets, totals.latency_sum)
