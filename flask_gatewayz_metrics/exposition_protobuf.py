"""The Prometheus protobuf exposition format, for scrapers that ask for it.

Prometheus asks for ``application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily;
encoding=delimited`` when native histograms are enabled: the only format that carries
them (Prometheus 2.x reads native histograms from nothing else). Every family of the text
output is encoded, from the same ``prometheus_client`` families, so the two formats
always hold the same series; histograms for which the collector has native buckets carry
them beside their classic buckets.

The messages are those of ``proto/metrics.proto`` (our own writing of the documented
format). Their descriptor is built here in code, in a private descriptor pool, so no
``protoc`` is needed at run time, no generated module ties us to one protobuf release,
and another library registering the same message names cannot clash with us. Encoding
needs the ``protobuf`` package (``pip install flask_gatewayz_metrics[protobuf]``);
without it a scraper that asks for protobuf gets the text format, which every
Prometheus accepts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import lru_cache
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

from .storage.native import NativeBuckets  # re-exported: the shape encode() takes

CONTENT_TYPE = "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
PACKAGE = "io.prometheus.client"

# FieldDescriptorProto types and labels (numbers fixed by protobuf's descriptor.proto).
_DOUBLE, _INT64, _UINT64, _STRING, _MESSAGE, _UINT32, _ENUM, _SINT32, _SINT64 = 1, 3, 4, 9, 11, 13, 14, 17, 18
_OPTIONAL, _REPEATED = 1, 3

MESSAGES: dict[str, tuple[tuple[str, int, int, int, str], ...]] = {
    # message: (field name, number, type, label, message/enum type name or "")
    "LabelPair": (("name", 1, _STRING, _OPTIONAL, ""), ("value", 2, _STRING, _OPTIONAL, "")),
    "Gauge": (("value", 1, _DOUBLE, _OPTIONAL, ""),),
    "Counter": (("value", 1, _DOUBLE, _OPTIONAL, ""), ("exemplar", 2, _MESSAGE, _OPTIONAL, "Exemplar")),
    "Quantile": (("quantile", 1, _DOUBLE, _OPTIONAL, ""), ("value", 2, _DOUBLE, _OPTIONAL, "")),
    "Summary": (
        ("sample_count", 1, _UINT64, _OPTIONAL, ""),
        ("sample_sum", 2, _DOUBLE, _OPTIONAL, ""),
        ("quantile", 3, _MESSAGE, _REPEATED, "Quantile"),
    ),
    "Untyped": (("value", 1, _DOUBLE, _OPTIONAL, ""),),
    "Histogram": (
        ("sample_count", 1, _UINT64, _OPTIONAL, ""),
        ("sample_sum", 2, _DOUBLE, _OPTIONAL, ""),
        ("bucket", 3, _MESSAGE, _REPEATED, "Bucket"),
        ("sample_count_float", 4, _DOUBLE, _OPTIONAL, ""),
        ("schema", 5, _SINT32, _OPTIONAL, ""),
        ("zero_threshold", 6, _DOUBLE, _OPTIONAL, ""),
        ("zero_count", 7, _UINT64, _OPTIONAL, ""),
        ("zero_count_float", 8, _DOUBLE, _OPTIONAL, ""),
        ("negative_span", 9, _MESSAGE, _REPEATED, "BucketSpan"),
        ("negative_delta", 10, _SINT64, _REPEATED, ""),
        ("negative_count", 11, _DOUBLE, _REPEATED, ""),
        ("positive_span", 12, _MESSAGE, _REPEATED, "BucketSpan"),
        ("positive_delta", 13, _SINT64, _REPEATED, ""),
        ("positive_count", 14, _DOUBLE, _REPEATED, ""),
        ("exemplars", 16, _MESSAGE, _REPEATED, "Exemplar"),
    ),
    "Bucket": (
        ("cumulative_count", 1, _UINT64, _OPTIONAL, ""),
        ("upper_bound", 2, _DOUBLE, _OPTIONAL, ""),
        ("exemplar", 3, _MESSAGE, _OPTIONAL, "Exemplar"),
        ("cumulative_count_float", 4, _DOUBLE, _OPTIONAL, ""),
    ),
    "BucketSpan": (("offset", 1, _SINT32, _OPTIONAL, ""), ("length", 2, _UINT32, _OPTIONAL, "")),
    "Exemplar": (
        ("label", 1, _MESSAGE, _REPEATED, "LabelPair"),
        ("value", 2, _DOUBLE, _OPTIONAL, ""),
        ("timestamp", 3, _MESSAGE, _OPTIONAL, ".google.protobuf.Timestamp"),
    ),
    "Metric": (
        ("label", 1, _MESSAGE, _REPEATED, "LabelPair"),
        ("gauge", 2, _MESSAGE, _OPTIONAL, "Gauge"),
        ("counter", 3, _MESSAGE, _OPTIONAL, "Counter"),
        ("summary", 4, _MESSAGE, _OPTIONAL, "Summary"),
        ("untyped", 5, _MESSAGE, _OPTIONAL, "Untyped"),
        ("timestamp_ms", 6, _INT64, _OPTIONAL, ""),
        ("histogram", 7, _MESSAGE, _OPTIONAL, "Histogram"),
    ),
    "MetricFamily": (
        ("name", 1, _STRING, _OPTIONAL, ""),
        ("help", 2, _STRING, _OPTIONAL, ""),
        ("type", 3, _ENUM, _OPTIONAL, "MetricType"),
        ("metric", 4, _MESSAGE, _REPEATED, "Metric"),
        ("unit", 5, _STRING, _OPTIONAL, ""),
    ),
}
"""Every message of ``proto/metrics.proto``, field by field (checked against it by a test)."""
METRIC_TYPES = ("COUNTER", "GAUGE", "SUMMARY", "UNTYPED", "HISTOGRAM", "GAUGE_HISTOGRAM")
"""The ``MetricType`` enum, in number order."""
_COUNTER, _GAUGE, _SUMMARY, _UNTYPED, _HISTOGRAM, _GAUGE_HISTOGRAM = range(6)


NativeLookup = Mapping[tuple[str, tuple[tuple[str, str], ...]], NativeBuckets]
"""Native buckets by (family name, sorted label pairs without ``le``)."""


def available() -> bool:
    """Whether the ``protobuf`` package is installed (protobuf scrapes need it)."""
    try:
        _classes()
    except ImportError:
        return False
    return True


def wants_protobuf(accept_header: str) -> bool:
    """Whether a scraper's ``Accept`` header prefers the delimited MetricFamily protobuf
    format over every other type it lists (ties go to protobuf, as Prometheus ranks it
    first when it asks for it)."""
    best_other = 0.0
    protobuf = 0.0
    for entry in accept_header.split(",")[:32]:  # bounded: the header is untrusted
        media, _, rest = entry.partition(";")
        params: dict[str, str] = {}
        for param in rest.split(";")[:8]:
            key, _, value = param.partition("=")
            params[key.strip().lower()] = value.strip().strip('"')
        try:
            quality = float(params.get("q", "1"))
        except ValueError:
            quality = 0.0
        if not 0.0 < quality <= 1.0:
            continue
        if (
            media.strip().lower() == "application/vnd.google.protobuf"
            and params.get("proto") == f"{PACKAGE}.MetricFamily"
            and params.get("encoding") == "delimited"
        ):
            protobuf = max(protobuf, quality)
        else:
            best_other = max(best_other, quality)
    return protobuf > 0.0 and protobuf >= best_other


def encode(families: Iterable[Metric], native: NativeLookup | None = None) -> bytes:
    """The delimited protobuf exposition of ``families`` (each MetricFamily message
    preceded by its length as a varint), with ``native`` buckets on histograms."""
    classes = _classes()
    out = bytearray()
    for family in families:
        message = _family_message(classes, family, native or {})
        if message is None:
            continue
        body = message.SerializeToString()
        out += _varint(len(body))
        out += body
    return bytes(out)


def spans_and_deltas(buckets: Sequence[tuple[int, int]]) -> tuple[list[tuple[int, int]], list[int]]:
    """Native-histogram spans (offset, length) and count deltas for populated buckets.

    A span's offset is the gap to the previous span's end (the first one's, the index of
    its first bucket); counts are sent as differences from the previous bucket's. Gaps of
    one or two empty buckets are filled with zero counts, as Prometheus's own clients do:
    a zero delta is cheaper than a new span.
    """
    spans: list[tuple[int, int]] = []
    deltas: list[int] = []
    previous_count = 0
    next_index = 0
    for index, count in buckets:
        if spans and 0 <= index - next_index <= 2:
            for _ in range(index - next_index):  # fill a short gap with empty buckets
                deltas.append(-previous_count)
                previous_count = 0
            offset, length = spans[-1]
            spans[-1] = (offset, length + index - next_index + 1)
        else:
            spans.append((index - next_index if spans else index, 1))
        deltas.append(count - previous_count)
        previous_count = count
        next_index = index + 1
    return spans, deltas


@lru_cache(maxsize=1)
def _classes() -> dict[str, Any]:
    """The message classes, built once from ``MESSAGES`` in a private descriptor pool."""
    # The protobuf extra is optional: imported when a scraper first asks for protobuf.
    from google.protobuf import descriptor_pb2, descriptor_pool, timestamp_pb2  # noqa: PLC0415
    from google.protobuf.message_factory import GetMessageClass  # noqa: PLC0415

    pool = descriptor_pool.DescriptorPool()
    timestamp_file = descriptor_pb2.FileDescriptorProto()
    timestamp_pb2.DESCRIPTOR.CopyToProto(timestamp_file)
    pool.Add(timestamp_file)
    pool.Add(file_descriptor())
    return {name: GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{name}")) for name in MESSAGES}


def file_descriptor() -> Any:
    """``proto/metrics.proto`` as a ``FileDescriptorProto`` (built from ``MESSAGES``)."""
    from google.protobuf import descriptor_pb2  # noqa: PLC0415

    proto = descriptor_pb2.FileDescriptorProto(
        name="flask_gatewayz_metrics/metrics.proto",
        package=PACKAGE,
        syntax="proto2",
        dependency=["google/protobuf/timestamp.proto"],
    )
    enum = proto.enum_type.add(name="MetricType")
    for number, name in enumerate(METRIC_TYPES):
        enum.value.add(name=name, number=number)
    for message_name, fields in MESSAGES.items():
        message = proto.message_type.add(name=message_name)
        for name, number, kind, label, type_name in fields:
            field = message.field.add(name=name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = type_name if type_name.startswith(".") else f".{PACKAGE}.{type_name}"
    return proto


def _family_message(classes: dict[str, Any], family: Metric, native: NativeLookup) -> Any:
    kind = family.type
    if kind in ("histogram", "gaugehistogram"):
        metric_type = _HISTOGRAM if kind == "histogram" else _GAUGE_HISTOGRAM
        name = family.name
    elif kind == "summary":
        metric_type, name = _SUMMARY, family.name
    elif kind == "counter":
        metric_type, name = _COUNTER, family.name + "_total"
    elif kind == "info":
        metric_type, name = _GAUGE, family.name + "_info"
    elif kind in ("gauge", "stateset"):
        metric_type, name = _GAUGE, family.name
    else:
        metric_type, name = _UNTYPED, family.name
    message = classes["MetricFamily"](name=name, help=family.documentation, type=metric_type)
    if metric_type in (_HISTOGRAM, _GAUGE_HISTOGRAM):
        for labels, samples in _by_labels(family.samples, "le"):
            _histogram(classes, message.metric.add(), family, labels, samples, native.get((family.name, labels)))
    elif metric_type == _SUMMARY:
        for labels, samples in _by_labels(family.samples, "quantile"):
            _summary(message.metric.add(), family.name, labels, samples)
    else:
        for sample in family.samples:
            if sample.name != name:  # _created, and anything else a text scrape shows beside
                continue
            metric = message.metric.add()
            _labels(metric.label, sample.labels.items())
            if sample.timestamp is not None:
                metric.timestamp_ms = int(float(sample.timestamp) * 1000)
            if metric_type == _COUNTER:
                metric.counter.value = sample.value
                if sample.exemplar is not None:
                    _exemplar(metric.counter.exemplar, sample.exemplar)
            elif metric_type == _GAUGE:
                metric.gauge.value = sample.value
            else:
                metric.untyped.value = sample.value
    return message


def _by_labels(samples: Sequence[Sample], special: str) -> Iterator[tuple[tuple[tuple[str, str], ...], list[Sample]]]:
    """Samples grouped by their labels other than ``special`` (``le``/``quantile``), in order."""
    groups: dict[tuple[tuple[str, str], ...], list[Sample]] = {}
    for sample in samples:
        key = tuple(sorted((k, v) for k, v in sample.labels.items() if k != special))
        groups.setdefault(key, []).append(sample)
    yield from groups.items()


def _histogram(
    classes: dict[str, Any],
    metric: Any,
    family: Metric,
    labels: tuple[tuple[str, str], ...],
    samples: list[Sample],
    native: NativeBuckets | None,
) -> None:
    _labels(metric.label, labels)
    histogram = metric.histogram
    gauge = family.type == "gaugehistogram"
    count_name, sum_name = (f"{family.name}_gcount", f"{family.name}_gsum") if gauge else (
        f"{family.name}_count", f"{family.name}_sum"
    )  # fmt: skip
    for sample in samples:
        if sample.name == count_name:
            histogram.sample_count = _whole(sample.value)
        elif sample.name == sum_name:
            histogram.sample_sum = sample.value
        elif sample.name == f"{family.name}_bucket":
            bucket = histogram.bucket.add(
                cumulative_count=_whole(sample.value), upper_bound=float(sample.labels.get("le", "+Inf"))
            )
            if sample.exemplar is not None:
                _exemplar(bucket.exemplar, sample.exemplar)
    if native is not None:
        if native.count is not None:
            histogram.sample_count = native.count
        histogram.schema = native.schema
        histogram.zero_threshold = native.zero_threshold
        histogram.zero_count = native.zero_count
        spans, deltas = spans_and_deltas(native.positive)
        if not spans:  # a no-op span marks a native histogram without observations yet
            spans = [(0, 0)]
        for offset, length in spans:
            histogram.positive_span.add(offset=offset, length=length)
        histogram.positive_delta.extend(deltas)


def _summary(metric: Any, name: str, labels: tuple[tuple[str, str], ...], samples: list[Sample]) -> None:
    _labels(metric.label, labels)
    summary = metric.summary
    for sample in samples:
        if sample.name == f"{name}_count":
            summary.sample_count = _whole(sample.value)
        elif sample.name == f"{name}_sum":
            summary.sample_sum = sample.value
        elif sample.name == name and "quantile" in sample.labels:
            summary.quantile.add(quantile=float(sample.labels["quantile"]), value=sample.value)


def _labels(field: Any, pairs: Iterable[tuple[str, str]]) -> None:
    for name, value in pairs:
        field.add(name=name, value=value)


def _exemplar(field: Any, exemplar: Any) -> None:
    _labels(field.label, exemplar.labels.items())
    field.value = exemplar.value
    if exemplar.timestamp is not None:
        seconds = float(exemplar.timestamp)
        field.timestamp.seconds = int(seconds)
        field.timestamp.nanos = int((seconds - int(seconds)) * 1e9)


def _whole(value: float) -> int:
    """A count as the format's unsigned integer (our counts are whole; never negative)."""
    return int(value) if math.isfinite(value) and value > 0 else 0


def _varint(value: int) -> bytes:
    """``value`` as a protobuf base-128 varint (the length prefix of delimited messages)."""
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
