"""A merged, read-only view of every worker's metrics at one instant.

Exposition (Prometheus text, OpenMetrics) and the JSON document (``json_document``)
both read from a ``Snapshot``, so they always agree. Counters and histograms are since
start (or since the last reset); gauges (averages, percentiles, rates) cover the sliding
window and are ``None`` (omitted from the exposition) when the window saw nothing.

Workers store request, provider and model records per status code and "failed" flag;
the spec's per-endpoint, per-status, per-provider and per-model totals, and the error
counts, are sums of those records, computed here once per snapshot.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from operator import add
from typing import Any, TypeVar

from .custom_families import CustomFamily, Definition, custom_families
from .json_document import Document, document
from .storage import Merged, StorageProblem, WindowStats, kinds

Labels = tuple[str, ...]
K = TypeVar("K")


@dataclass
class Totals:
    """Since-start totals of a group of requests: count, errors, latency histogram."""

    count: float = 0.0
    errors: float = 0.0
    latency_sum: float = 0.0
    buckets: list[float] = field(default_factory=lambda: [0.0] * (len(kinds.HISTOGRAM_BOUNDS) + 1))

    def add(self, payload: list[float], error: bool) -> None:
        """Add a request/provider record's payload (count, latency sum, buckets)."""
        count = payload[kinds.REQ_COUNT]
        self.count += count
        if error:
            self.errors += count
        self.latency_sum += payload[kinds.REQ_SUM]
        buckets = payload[kinds.REQ_BUCKETS :]
        if len(buckets) != len(self.buckets):  # configured bounds (all records have the same)
            self.buckets = [0.0] * len(buckets)
        self.buckets = list(map(add, self.buckets, buckets))


@dataclass
class RequestTotals:
    """The request records summed along each grouping the spec exposes."""

    by_endpoint_method: dict[tuple[str, str], Totals] = field(default_factory=dict)
    by_endpoint_status: dict[tuple[str, str], float] = field(default_factory=dict)
    by_provider: dict[str, Totals] = field(default_factory=dict)
    by_model: dict[str, Totals] = field(default_factory=dict)


def _group(groups: dict[K, Totals], key: K) -> Totals:
    found = groups.get(key)
    if found is None:
        found = groups[key] = Totals()
    return found


@dataclass
class Snapshot:
    """Every worker's records merged at ``taken_at``, with what the scrape needs besides them.

    .. versionadded:: 0.1.0
    """

    merged: Merged
    taken_at: float
    start_time: float
    window_seconds: float
    error_status: int
    live_files: int
    worker_files: int
    problems: list[StorageProblem] = field(default_factory=list)
    unrecorded: dict[str, int] = field(default_factory=dict)
    """Drops this process could not write to storage (storage unavailable)."""
    storage_error: str | None = None
    compaction_error: str | None = None
    custom_definitions: tuple[Definition, ...] = ()
    """The custom metrics this process defined (others are described by their files)."""
    multi_process: str | None = None
    """Why the server is known to run several processes (None: no sign of it), see
    ``default_registry``."""
    histogram_bounds: tuple[float, ...] = kinds.HISTOGRAM_BOUNDS
    """Finite upper bounds of the since-start latency histograms (the collector's)."""
    otlp: dict[str, Any] | None = None
    """The OTLP export's report when export is configured (see ``otlp``)."""
    location: dict[str, object] | None = None
    """The metrics directory and how it was chosen (``storage.location.Location.report``)."""

    @cached_property
    def custom(self) -> list[CustomFamily]:
        """The application's custom metrics, merged (see ``custom``)."""
        return custom_families(self.merged, self.custom_definitions)

    @property
    def uptime_seconds(self) -> float:
        """Seconds since the metrics directory's start time (never negative)."""
        return max(0.0, self.taken_at - self.start_time)

    @cached_property
    def requests(self) -> RequestTotals:
        """The request, provider and model records summed along each grouping the spec exposes."""
        out = RequestTotals()
        totals = self.merged.totals
        for (endpoint, method, status, failed), payload in totals.get("request", {}).items():
            error = self._is_error(status, failed)
            _group(out.by_endpoint_method, (endpoint, method)).add(payload, error)
            key = (endpoint, status)
            out.by_endpoint_status[key] = out.by_endpoint_status.get(key, 0.0) + payload[kinds.REQ_COUNT]
        for (provider, status, failed), payload in totals.get("provider", {}).items():
            _group(out.by_provider, provider).add(payload, self._is_error(status, failed))
        for (model, status, failed), payload in totals.get("model", {}).items():
            group = _group(out.by_model, model)
            group.count += payload[kinds.VALUE]
            if self._is_error(status, failed):
                group.errors += payload[kinds.VALUE]
        return out

    def _is_error(self, status: str, failed: str) -> bool:
        return failed == "1" or int(status) >= self.error_status

    def series(self, kind: str) -> Iterator[tuple[Labels, list[float]]]:
        """Since-start payloads of ``kind``, sorted by labels."""
        yield from sorted(self.merged.totals.get(kind, {}).items())

    def window(self, kind: str, labels: Labels = ()) -> WindowStats:
        """Window statistics of one series of a windowed ``kind`` (empty when it has none)."""
        return self.merged.window(kind, labels)

    def total(self, kind: str, labels: Labels = ()) -> list[float]:
        """Since-start payload of one series of ``kind`` (zeros when it has none)."""
        found = self.merged.total(kind, labels)
        if found is not None:
            return found
        if kind == kinds.HTTP_SERVER_BUCKETS:
            return [0.0] * (len(kinds.HTTP_SERVER_BOUNDS) + 1)
        if kind in kinds.BOUNDED_KINDS:  # as merged: over the reader's bounds
            return [0.0] * (kinds.REQ_BUCKETS + len(self.histogram_bounds) + 1)
        return [0.0] * kinds.KINDS[kind].size

    def dropped(self) -> dict[str, float]:
        """Dropped inputs by reason: the files' counts and this process's unwritten ones."""
        counts = {str(labels[0]): payload[kinds.VALUE] for labels, payload in self.series("dropped")}
        for reason, count in self.unrecorded.items():
            counts[reason] = counts.get(reason, 0.0) + count
        return counts

    def endpoints(self) -> list[str]:
        """Every endpoint with requests, sorted."""
        return sorted({endpoint for endpoint, _ in self.requests.by_endpoint_method})

    @property
    def total_requests(self) -> float:
        """HTTP requests since start, all endpoints."""
        return sum(t.count for t in self.requests.by_endpoint_method.values())

    @property
    def total_errors(self) -> float:
        """Failed HTTP requests since start, all endpoints."""
        return sum(t.errors for t in self.requests.by_endpoint_method.values())

    def request_window(self) -> WindowStats:
        """All endpoints' window statistics combined (without the sketch)."""
        combined = WindowStats()
        for stats in self.merged.windows.get("endpoint_window", {}).values():
            combined.count += stats.count
            combined.total += stats.total
            combined.errors += stats.errors
        return combined

    @property
    def in_flight(self) -> float:
        """Requests being served by live workers (never negative, even mid-reset)."""
        return max(0.0, self.total("in_flight")[kinds.VALUE])

    def cache_hit_rate(self) -> float | None:
        """Hits / lookups in the window (the cache window counts misses as its errors)."""
        stats = self.window("cache_window")
        if stats.count <= 0:
            return None
        return 1.0 - stats.errors / stats.count

    def to_dict(self) -> Document:
        """The JSON document served by ``/metrics/json`` (built by ``json_document``)."""
        return document(self)
