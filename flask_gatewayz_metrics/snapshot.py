"""A merged, read-only view of every worker's metrics at one instant.

Exposition (Prometheus text, OpenMetrics) and the JSON view both read from a
``Snapshot``, so they always agree. Counters and histograms are since start (or since
the last reset); gauges (averages, percentiles, rates) cover the sliding window and are
``None`` (omitted from the exposition) when the window saw nothing.

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

from .custom_families import CustomFamily, CustomSeries, Definition, custom_families
from .storage import Merged, StorageProblem, WindowStats, layout

Labels = tuple[str, ...]
K = TypeVar("K")


@dataclass
class Totals:
    """Since-start totals of a group of requests: count, errors, latency histogram."""

    count: float = 0.0
    errors: float = 0.0
    latency_sum: float = 0.0
    buckets: list[float] = field(default_factory=lambda: [0.0] * (len(layout.HISTOGRAM_BOUNDS) + 1))

    def add(self, payload: list[float], error: bool) -> None:
        """Add a request/provider record's payload (count, latency sum, buckets)."""
        count = payload[layout.REQ_COUNT]
        self.count += count
        if error:
            self.errors += count
        self.latency_sum += payload[layout.REQ_SUM]
        buckets = payload[layout.REQ_BUCKETS :]
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
    histogram_bounds: tuple[float, ...] = layout.HISTOGRAM_BOUNDS
    """Finite upper bounds of the since-start latency histograms (the collector's)."""
    """Why the server is known to run several processes (None: no sign of it), see
    ``default_registry``."""
    otlp: dict[str, Any] | None = None
    """The OTLP export's report when export is configured (see ``otlp``)."""

    @cached_property
    def custom(self) -> list[CustomFamily]:
        """The application's custom metrics, merged (see ``custom``)."""
        return custom_families(self.merged, self.custom_definitions)
    location: dict[str, object] | None = None
    """The metrics directory and how it was chosen (``storage.location.Location.report``)."""

    @property
    def uptime_seconds(self) -> float:
        return max(0.0, self.taken_at - self.start_time)

    @cached_property
    def requests(self) -> RequestTotals:
        out = RequestTotals()
        totals = self.merged.totals
        for (endpoint, method, status, failed), payload in totals.get("request", {}).items():
            error = self._is_error(status, failed)
            _group(out.by_endpoint_method, (endpoint, method)).add(payload, error)
            key = (endpoint, status)
            out.by_endpoint_status[key] = out.by_endpoint_status.get(key, 0.0) + payload[layout.REQ_COUNT]
        for (provider, status, failed), payload in totals.get("provider", {}).items():
            _group(out.by_provider, provider).add(payload, self._is_error(status, failed))
        for (model, status, failed), payload in totals.get("model", {}).items():
            group = _group(out.by_model, model)
            group.count += payload[0]
            if self._is_error(status, failed):
                group.errors += payload[0]
        return out

    def _is_error(self, status: str, failed: str) -> bool:
        return failed == "1" or int(status) >= self.error_status

    def series(self, kind: str) -> Iterator[tuple[Labels, list[float]]]:
        """Since-start payloads of ``kind``, sorted by labels."""
        yield from sorted(self.merged.totals.get(kind, {}).items())

    def window(self, kind: str, labels: Labels = ()) -> WindowStats:
        return self.merged.window(kind, labels)

    def total(self, kind: str, labels: Labels = ()) -> list[float]:
        found = self.merged.total(kind, labels)
        return found if found is not None else [0.0] * layout.KINDS[kind].size

    def dropped(self) -> dict[str, float]:
        counts = {str(labels[0]): payload[0] for labels, payload in self.series("dropped")}
        for reason, count in self.unrecorded.items():
            counts[reason] = counts.get(reason, 0.0) + count
        return counts

    def endpoints(self) -> list[str]:
        return sorted({endpoint for endpoint, _ in self.requests.by_endpoint_method})

    @property
    def total_requests(self) -> float:
        return sum(t.count for t in self.requests.by_endpoint_method.values())

    @property
    def total_errors(self) -> float:
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
        return max(0.0, self.total("in_flight")[0])

    def cache_hit_rate(self) -> float | None:
        """Hits / lookups in the window (the cache window counts misses as its errors)."""
        stats = self.window("cache_window")
        if stats.count <= 0:
            return None
        return 1.0 - stats.errors / stats.count

    # ------------------------------------------------------------------ JSON
    def _llm_dict(self) -> dict[str, Any]:
        """Tokens, cost, upstream health and streams, keyed provider -> model -> ..."""
        streams: dict[str, Any] = _nested(self.series("stream"))
        for (provider, model), payload in self.series("first_chunk"):
            entry = streams.setdefault(provider, {}).setdefault(model, {})
            entry["first_chunk_avg_seconds"] = payload[layout.REQ_SUM] / payload[layout.REQ_COUNT]
        return {
            "tokens": _nested(self.series("tokens")),
            "cost_usd": _nested(self.series("cost")),
            "errors_by_type": _nested(self.series("provider_error_type")),
            "fallbacks": _nested(self.series("fallback")),
            "rate_limit_remaining": _nested(self.series("rate_limit")),
            "streams": streams,
            "label_overflow": _nested(self.series("label_overflow")),
        }

    def to_dict(self) -> dict[str, object]:
        """The JSON document served by ``/metrics/json``."""
        endpoints: dict[str, dict[str, object]] = {}
        for (endpoint, method), totals in sorted(self.requests.by_endpoint_method.items()):
            entry = endpoints.get(endpoint)
            if entry is None:
                entry = endpoints[endpoint] = _endpoint_entry(self.window("endpoint_window", (endpoint,)))
            entry["requests"] += int(totals.count)  # type: ignore[operator]
            entry["errors"] += int(totals.errors)  # type: ignore[operator]
            entry["methods"][method] = {"requests": int(totals.count), "errors": int(totals.errors)}  # type: ignore[index]
        for (endpoint, status), count in sorted(self.requests.by_endpoint_status.items()):
            endpoints[endpoint]["status"][status] = int(count)  # type: ignore[index]
        providers = {}
        for provider, totals in sorted(self.requests.by_provider.items()):
            stats = self.window("provider_window", (provider,))
            providers[provider] = {
                "requests": int(totals.count),
                "errors": int(totals.errors),
                "error_rate": stats.error_rate,
                "latency_seconds": _latency(stats),
            }
        models = {}
        for model, totals in sorted(self.requests.by_model.items()):
            stats = self.window("model_window", (model,))
            models[model] = {
                "requests": int(totals.count),
                "errors": int(totals.errors),
                "error_rate": stats.error_rate,
                "latency_seconds": _latency(stats),
            }
        hits, misses = self.total("cache")
        queries, _ = self.total("db")
        return {
            "uptime_seconds": self.uptime_seconds,
            "window_seconds": self.window_seconds,
            "endpoints": endpoints,
            "providers": providers,
            "models": models,
            "cache": {"hits": int(hits), "misses": int(misses), "hit_rate": self.cache_hit_rate()},
            "database": {
                "queries": int(queries),
                "latency_avg_seconds": self.window("db_window").average,
                "latency_min_seconds": self.window("db_window").minimum,
                "latency_max_seconds": self.window("db_window").maximum,
            },
            "external_apis": {
                str(service): {"calls": int(payload[0]), "errors": int(payload[1])}
                for (service,), payload in self.series("external")
            },
            "in_flight": int(self.in_flight),
            "llm": self._llm_dict(),
            "custom": self._custom_dict(),
            **({"otlp": self.otlp} if self.otlp is not None else {}),
            "metrics_directory": self.location,
            "storage": {
                "worker_files": self.worker_files,
                "live_worker_files": self.live_files,
                "dropped": {reason: int(n) for reason, n in sorted(self.dropped().items())},
                "problems": [{"file": p.path, "reason": p.reason} for p in self.problems],
                "error": self.storage_error,
                "compaction_error": self.compaction_error,
                "errors": {str(labels[0]): int(p[0]) for labels, p in self.series("storage_errors")},
            },
        }

    def _custom_dict(self) -> dict[str, Any]:
        """Custom metrics: ``{name: {"type", "documentation", "series": [...]}}``."""
        out: dict[str, Any] = {}
        for family in self.custom:
            definition = family.definition
            rows: list[dict[str, Any]] = []
            for series in family.series:
                row: dict[str, Any] = {"labels": dict(zip(definition.labelnames, series.labels, strict=True))}
                if definition.type == "histogram":
                    row.update(count=series.count, sum=series.value, buckets=_bucket_dict(series))
                else:
                    row["value"] = series.value
                rows.append(row)
            entry: dict[str, Any] = {"type": definition.type, "documentation": definition.documentation}
            if definition.mode:
                entry["mode"] = definition.mode
            entry["series"] = rows
            out[definition.name] = entry
        return out


def _bucket_dict(series: CustomSeries) -> dict[str, float]:
    """Cumulative histogram counts keyed by upper bound (``"+Inf"`` last)."""
    out: dict[str, float] = {}
    running = 0.0
    for bound, count in zip((*series.bounds, float("inf")), series.buckets, strict=True):
        running += count
        out["+Inf" if bound == float("inf") else repr(bound)] = running
    return out


def _nested(rows: Iterator[tuple[Labels, list[float]]], index: int = 0) -> dict[str, Any]:
    """``{label1: {label2: ... value}}`` from labelled payloads (value at ``index``)."""
    out: dict[str, Any] = {}
    for labels, payload in rows:
        node = out
        for label in labels[:-1]:
            node = node.setdefault(label, {})
        node[labels[-1]] = payload[index]
    return out


def _endpoint_entry(stats: WindowStats) -> dict[str, object]:
    return {
        "requests": 0,
        "errors": 0,
        "methods": {},
        "status": {},
        "latency_seconds": _latency(stats),
        "window": {"requests": int(stats.count), "errors": int(stats.errors), "error_rate": stats.error_rate},
    }


def _latency(stats: WindowStats) -> dict[str, float | None]:
    """Window latency of one endpoint, provider or model: average, exact min / max and
    sketch percentiles (all None when the window saw nothing)."""
    return {
        "avg": stats.average,
        "min": stats.minimum,
        "max": stats.maximum,
        "p50": stats.quantile(0.50),
        "p95": stats.quantile(0.95),
        "p99": stats.quantile(0.99),
    }
