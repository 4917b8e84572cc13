"""PrometheusExporter: a merged snapshot as Prometheus metric families.

The exporter is a ``prometheus_client`` custom collector, so the text formats (0.0.4,
1.0.0, OpenMetrics) and content negotiation are ``prometheus_client``'s own; we never
use its multiprocess mode for our metrics, since our storage already merges workers.
Served in this order, a family whose name is taken by an earlier one left out: ours,
the application's custom metrics (``custom``), the application's ``prometheus_client``
metrics (filtered by ``default_registry`` when the server is multi-process).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import cache
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from . import exposition_protobuf
from .custom_families import CustomFamily
from .default_registry import DefaultRegistry
from .exposition_common import ENDPOINT_QUANTILES, WINDOW_LATENCY_GAUGES, cumulative
from .exposition_http import http_families
from .exposition_resources import cache_db_families, in_flight_family
from .exposition_self import (
    DROP_REASONS,
    STORAGE_ERROR_REASONS,
    identity_families,
    label_overflow_family,
    self_families,
)
from .exposition_semconv import ONLY_CONVENTIONS_KINDS, semconv_families
from .exposition_tenants import tenant_families
from .exposition_text import TEXT, SeriesHistogram, TextRenderer, fast_format
from .exposition_upstream import (
    external_api_families,
    model_families,
    provider_families,
    stream_families,
    token_families,
    upstream_error_families,
)
from .settings import SEMCONV_CHOICES
from .snapshot import Snapshot
from .static_labels import StaticLabels
from .storage import Merged

if TYPE_CHECKING:
    from .collector import MetricsCollector

__all__ = [
    "DROP_REASONS", "ENDPOINT_QUANTILES", "STORAGE_ERROR_REASONS", "WINDOW_LATENCY_GAUGES", "PrometheusExporter",
    "custom_family", "families", "our_sample_names",
]  # fmt: skip
# The reason lists and gauge names live in the topic modules; benchmarks and tests import
# them from here, where they have always been.


class PrometheusExporter(Collector):
    """Turns a collector's merged snapshot into Prometheus exposition formats.

    ``app_metrics`` (e.g. ``prometheus_client.REGISTRY``, or a ``MultiProcessCollector``
    under gunicorn) adds the application's own ``prometheus_client`` metrics to the same
    output; a family whose name is one of ours is left out, so nothing appears twice.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        collector: MetricsCollector,
        app_metrics: Collector | None = None,
        static_labels: Mapping[str, str] | None = None,
        semconv: str = "both",
    ) -> None:
        self.collector = collector
        self.app_metrics = app_metrics
        if semconv not in SEMCONV_CHOICES:
            raise ValueError(f"semconv must be one of {', '.join(SEMCONV_CHOICES)}, not {semconv!r}")
        self.semconv = semconv
        """Where the OpenTelemetry conventions' families are served (``SEMCONV_CHOICES``)."""
        self.renderer = TextRenderer()
        self.registry = CollectorRegistry(auto_describe=False)
        # Static labels wrap the whole of collect(): every family served gets them.
        self.registry.register(StaticLabels(self, static_labels) if static_labels else self)

    def collect(self) -> Iterator[Metric]:
        """What ``/metrics`` serves (every format)."""
        return self._collect(self.semconv in ("both", "metrics"))

    def otlp_families(self) -> Iterator[Metric]:
        """What OTLP export sends: the same, the conventions' families as ``semconv`` says."""
        return self._collect(self.semconv in ("both", "otlp"))

    def _collect(self, conventions: bool) -> Iterator[Metric]:
        snap = self.collector.snapshot() if conventions else self.collector.snapshot(ONLY_CONVENTIONS_KINDS)
        ours = families(snap, conventions)
        yield from ours
        taken = {family.name for family in ours} | our_sample_names()
        for custom in snap.custom:
            names = custom.definition.sample_names()
            if taken.isdisjoint(names):  # a clash can only come from a foreign file
                taken.update(names)
                yield custom_family(custom)
        if self.app_metrics is None:
            return
        source = self.app_metrics
        app_families = source.collect_for(snap) if isinstance(source, DefaultRegistry) else source.collect()
        for family in app_families:
            if family.name not in taken:
                taken.add(family.name)
                yield family

    def export(self) -> str:
        """All metrics in the Prometheus text format 0.0.4."""
        return self.renderer.render(list(self.registry.collect()), TEXT).decode("utf-8")

    def render(self, accept_header: str | None = None) -> tuple[bytes, str]:
        """Body and content type for a scrape with this ``Accept`` header.

        Text 0.0.4 unless the scraper asks for OpenMetrics (or text 1.0.0), or prefers
        the protobuf format (Prometheus with native histograms enabled) and the
        ``protobuf`` package is installed.
        """
        if accept_header and exposition_protobuf.wants_protobuf(accept_header) and exposition_protobuf.available():
            native = self.collector.native_lookup()  # read only for protobuf: text never pays
            return exposition_protobuf.encode(self.registry.collect(), native), exposition_protobuf.CONTENT_TYPE
        try:
            encoder, content_type = choose_encoder(accept_header or "")
        except Exception:  # e.g. "version=x": prometheus_client compares it as numbers
            encoder, content_type = choose_encoder("")  # a hostile header gets text 0.0.4, never a 500
        fmt = fast_format(encoder)
        if fmt is None:  # another escaping or version: prometheus_client's own encoder
            return encoder(self.registry), content_type
        return self.renderer.render(list(self.registry.collect()), fmt), content_type


def families(snap: Snapshot, conventions: bool = True) -> list[Metric]:
    """Every metric family of the spec (and ours), built from one snapshot; the
    conventions' families (``exposition_semconv``) unless ``conventions`` is false.

    Built by topic (http, upstream, resources, self, tenants, conventions) and served in
    the order they have always been served in: a scraper never sees the split."""
    return [
        *http_families(snap), *provider_families(snap), *model_families(snap), *cache_db_families(snap),
        *external_api_families(snap), *token_families(snap), *upstream_error_families(snap),
        *stream_families(snap), in_flight_family(snap), *identity_families(snap), label_overflow_family(snap),
        *tenant_families(snap), *self_families(snap), *(semconv_families(snap) if conventions else ()),
    ]  # fmt: skip


def custom_family(custom: CustomFamily) -> Metric:
    """One custom metric of the application as a Prometheus family."""
    definition = custom.definition
    labels = list(definition.labelnames)
    family: CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily
    if definition.type == "histogram":
        family = SeriesHistogram(definition.name, definition.documentation, labels=labels)
        for series in custom.series:
            family.add_metric(list(series.labels), cumulative(series.bounds, series.buckets), series.value)
        return family
    if definition.type == "counter":
        family = CounterMetricFamily(definition.name, definition.documentation, labels=labels)
    else:
        family = GaugeMetricFamily(definition.name, definition.documentation, labels=labels)
    for series in custom.series:
        family.add_metric(list(series.labels), series.value)
    return family


@cache
def our_sample_names() -> frozenset[str]:
    """Every family and sample name we serve (custom metrics may not take them)."""
    empty = Snapshot(Merged(), 0.0, 0.0, 0.0, 500, 0, 0)
    names: set[str] = set()
    for family in [*families(empty), *tenant_families(empty, empty_too=True)]:
        names.add(family.name)
        suffixes = {
            "counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
        }.get(family.type, ())
        names.update(family.name + suffix for suffix in suffixes)
    return frozenset(names)
