"""Prometheus metric families as an OTLP ``ExportMetricsServiceRequest`` (cumulative).

Works on whatever ``/metrics`` serves (``prometheus_client`` ``Metric`` objects), so every
family, ours, custom or the application's, goes out without per-family code:

- counter: a monotonic cumulative Sum named like its Prometheus sample (``..._total``);
- gauge: a Gauge;
- histogram: a cumulative Histogram with the family's explicit bounds (``le``), bucket
  counts made per-bucket again;
- summary: a Summary (count, sum, quantiles);
- anything else (info, stateset, unknown): one Gauge per sample name.

The OpenTelemetry semantic conventions' histograms (``exposition_semconv``) go out under
their own names, units and attribute keys (``gen_ai.client.token.usage``, ...).

Messages are built with the ``opentelemetry-proto`` package (the ``otlp`` extra), imported
only when an export happens.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client.metrics_core import Metric

from ._version import VERSION
from .exposition_semconv import CONVENTIONS, Convention

SCOPE_NAME = "flask_gatewayz_metrics"


def encode_request(
    families: Iterable[Metric], resource: Mapping[str, str], start_seconds: float, now_seconds: float
) -> tuple[bytes, int]:
    """The serialized request and how many data points it carries."""
    # The otlp extra is optional: imported here, when an export actually happens.
    from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2  # noqa: PLC0415
    from opentelemetry.proto.common.v1 import common_pb2  # noqa: PLC0415
    from opentelemetry.proto.metrics.v1 import metrics_pb2 as pb  # noqa: PLC0415
    from opentelemetry.proto.resource.v1 import resource_pb2  # noqa: PLC0415

    start_ns = int(start_seconds * 1e9)
    now_ns = max(int(now_seconds * 1e9), start_ns)
    cumulative = pb.AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE

    def attributes(labels: Mapping[str, str], convention: Convention | None = None) -> list[common_pb2.KeyValue]:
        if convention is not None:  # the conventions' attribute keys and types, empty ones left out
            return _convention_attributes(labels, convention, common_pb2)
        return [
            common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(string_value=str(value)))
            for key, value in sorted(labels.items())
        ]

    def number(labels: Mapping[str, str], value: float) -> pb.NumberDataPoint:
        return pb.NumberDataPoint(
            attributes=attributes(labels), start_time_unix_nano=start_ns, time_unix_nano=now_ns, as_double=value
        )

    metrics: list[pb.Metric] = []
    points = 0
    for family in families:
        kind = family.type
        metric = pb.Metric(name=family.name, description=family.documentation, unit=family.unit or "")
        convention = CONVENTIONS.get(family.name)
        if convention is not None:  # an OpenTelemetry conventions' metric: its own name and unit
            metric.name, metric.unit = convention.name, convention.unit
        if kind == "counter":
            samples = [s for s in family.samples if not s.name.endswith("_created")]
            if not samples:
                continue
            metric.name = samples[0].name  # "..._total", as a Prometheus-scraping collector names it
            metric.sum.CopyFrom(pb.Sum(
                data_points=[number(s.labels, s.value) for s in samples],
                aggregation_temporality=cumulative, is_monotonic=True,
            ))  # fmt: skip
            points += len(samples)
        elif kind == "gauge":
            metric.gauge.CopyFrom(pb.Gauge(data_points=[number(s.labels, s.value) for s in family.samples]))
            points += len(family.samples)
        elif kind == "histogram":
            series = _histograms(family)
            metric.histogram.CopyFrom(pb.Histogram(aggregation_temporality=cumulative, data_points=[
                pb.HistogramDataPoint(
                    attributes=attributes(dict(labels), convention), start_time_unix_nano=start_ns,
                    time_unix_nano=now_ns, count=count, sum=total, bucket_counts=counts, explicit_bounds=bounds,
                )
                for labels, (count, total, bounds, counts) in series.items()
            ]))  # fmt: skip
            points += len(series)
        elif kind == "summary":
            summaries = _summaries(family)
            metric.summary.CopyFrom(pb.Summary(data_points=[
                pb.SummaryDataPoint(
                    attributes=attributes(dict(labels)), start_time_unix_nano=start_ns, time_unix_nano=now_ns,
                    count=count, sum=total,
                    quantile_values=[pb.SummaryDataPoint.ValueAtQuantile(quantile=q, value=v) for q, v in quantiles],
                )
                for labels, (count, total, quantiles) in summaries.items()
            ]))  # fmt: skip
            points += len(summaries)
        else:  # info, stateset, unknown: each sample name as a gauge
            by_name: dict[str, list[pb.NumberDataPoint]] = {}
            for s in family.samples:
                by_name.setdefault(s.name, []).append(number(s.labels, s.value))
            for name, named_points in by_name.items():
                other = pb.Metric(name=name, description=family.documentation, unit=family.unit or "")
                other.gauge.CopyFrom(pb.Gauge(data_points=named_points))
                metrics.append(other)
                points += len(named_points)
            continue
        metrics.append(metric)
    scope = common_pb2.InstrumentationScope(name=SCOPE_NAME, version=VERSION)
    request = metrics_service_pb2.ExportMetricsServiceRequest(resource_metrics=[
        pb.ResourceMetrics(
            resource=resource_pb2.Resource(attributes=attributes(resource)),
            scope_metrics=[pb.ScopeMetrics(scope=scope, metrics=metrics)],
        )
    ])  # fmt: skip
    return request.SerializeToString(), points


Key = tuple[tuple[str, str], ...]


def _convention_attributes(labels: Mapping[str, str], convention: Convention, common_pb2: Any) -> list[Any]:
    """A conventions' series' attributes: keys translated back from the Prometheus label
    names (other labels, e.g. static ones, kept as they are), empty values left out,
    integer attributes sent as integers."""
    out = []
    names = convention.attribute_of
    for label, value in sorted(labels.items()):
        if value == "":
            continue
        key = names.get(label, label)
        if key in convention.int_attributes and value.isdigit():
            any_value = common_pb2.AnyValue(int_value=int(value))
        else:
            any_value = common_pb2.AnyValue(string_value=str(value))
        out.append(common_pb2.KeyValue(key=key, value=any_value))
    return out


def _series_key(labels: Mapping[str, str], drop: str) -> Key:
    return tuple(sorted((k, v) for k, v in labels.items() if k != drop))


def _count(value: float) -> int:
    return round(value) if math.isfinite(value) and value > 0 else 0


def _histograms(family: Metric) -> dict[Key, tuple[int, float, list[float], list[int]]]:
    """Per series: count, sum, finite bounds and per-bucket (not cumulative) counts."""
    buckets: dict[Key, dict[float, float]] = {}
    counts: dict[Key, float] = {}
    sums: dict[Key, float] = {}
    for s in family.samples:
        if s.name.endswith("_bucket"):
            try:
                bound = float(s.labels.get("le", "nan"))
            except ValueError:
                continue
            if not math.isnan(bound):
                buckets.setdefault(_series_key(s.labels, "le"), {})[bound] = s.value
        elif s.name.endswith("_count"):
            counts[_series_key(s.labels, "")] = s.value
        elif s.name.endswith("_sum"):
            sums[_series_key(s.labels, "")] = s.value
    out = {}
    for key in buckets.keys() | counts.keys():
        by_bound = buckets.get(key, {})
        bounds = sorted(b for b in by_bound if math.isfinite(b))
        total_count = counts.get(key, by_bound.get(math.inf, by_bound[bounds[-1]] if bounds else 0.0))
        per_bucket, previous = [], 0.0
        for bound in bounds:
            per_bucket.append(_count(by_bound[bound] - previous))
            previous = max(previous, by_bound[bound])
        per_bucket.append(_count(total_count - previous))  # the +Inf bucket
        out[key] = (_count(total_count), sums.get(key, 0.0), bounds, per_bucket)
    return out


def _summaries(family: Metric) -> dict[Key, tuple[int, float, list[tuple[float, float]]]]:
    """Per series: count, sum and (quantile, value) pairs."""
    quantiles: dict[Key, list[tuple[float, float]]] = {}
    counts: dict[Key, float] = {}
    sums: dict[Key, float] = {}
    for s in family.samples:
        if s.name.endswith("_count"):
            counts[_series_key(s.labels, "")] = s.value
        elif s.name.endswith("_sum"):
            sums[_series_key(s.labels, "")] = s.value
        elif "quantile" in s.labels:
            try:
                quantile = float(s.labels["quantile"])
            except ValueError:
                continue
            quantiles.setdefault(_series_key(s.labels, "quantile"), []).append((quantile, s.value))
    return {
        key: (_count(counts.get(key, 0.0)), sums.get(key, 0.0), sorted(quantiles.get(key, [])))
        for key in counts.keys() | quantiles.keys()
    }
