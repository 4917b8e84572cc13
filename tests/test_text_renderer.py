"""The fast text renderer (exposition_text) writes exactly prometheus_client's bytes."""

from __future__ import annotations

import math
import tempfile

from conftest import FakeClock
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PromCounter
from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.samples import Exemplar, Timestamp

from flask_gatewayz_metrics import MetricsCollector, PrometheusExporter
from flask_gatewayz_metrics.exposition_text import OPENMETRICS, TEXT, SeriesHistogram, TextRenderer, fast_format

HOSTILE = st.text(alphabet=st.sampled_from(['a', 'Z', '0', '_', ':', '.', '-', ' ', '"', '\\', '\n', '{', '}', ',',
                                            '=', 'é', '\u2028', '#']), max_size=8)  # fmt: skip
NAMES = st.sampled_from(["a", "b_c", "x:y", "l.dotted", "ünï", "0lead", "le", "quantile"])
VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1.0, 1e6, 1234567.0, 1e-7, 2.0**53, 0.1]),
    st.integers(-(10**12), 10**12),
)
TYPES = st.sampled_from(["counter", "gauge", "histogram", "summary", "info", "stateset", "gaugehistogram", "unknown"])


class Listed:
    """A collector over a fixed list of families."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


@st.composite
def families(draw: st.DrawFn) -> list[Metric]:
    """Random families of every type, with hostile label values, exemplars, timestamps,
    ``_created`` / ``_gsum`` samples and units."""
    out = []
    for number in range(draw(st.integers(0, 4))):
        mtype = draw(TYPES)
        name = draw(st.sampled_from(["fam", "fam_two", "fam:colon", "fam.dot", "fäm"])) + str(number)
        unit = draw(st.sampled_from(["", "seconds"])) if mtype in ("gauge", "counter", "histogram") else ""
        if unit:
            name += "_" + unit
        metric = Metric(name, draw(HOSTILE), mtype, unit)
        for _ in range(draw(st.integers(0, 5))):
            suffix = draw(st.sampled_from(["", "_total", "_bucket", "_count", "_sum", "_created", "_gsum", "_info"]))
            labels = draw(st.dictionaries(NAMES, HOSTILE, max_size=3))
            exemplar = None
            if draw(st.booleans()) and (
                (mtype == "counter" and suffix == "_total") or (mtype in ("histogram", "gaugehistogram")
                                                                and suffix == "_bucket")
            ):  # fmt: skip
                exemplar = Exemplar(
                    draw(st.dictionaries(st.sampled_from(["trace_id", "span_id"]), HOSTILE, max_size=2)),
                    draw(st.floats(0, 100)), draw(st.one_of(st.none(), st.floats(1e9, 2e9))),
                )  # fmt: skip
            timestamp = draw(st.one_of(st.none(), st.floats(0, 2e9), st.builds(Timestamp, st.integers(0, 2**31),
                                                                                 st.integers(0, 10**9 - 1))))
            metric.add_sample(name + suffix, labels, draw(VALUES), timestamp, exemplar)
        out.append(metric)
    return out


def both(renderer: TextRenderer, fams: list[Metric]) -> None:
    """The fast path itself (``_render``: no fallback to prometheus_client) gives its bytes."""
    assert renderer._render(fams, TEXT) == generate_latest(Listed(fams))  # type: ignore[arg-type]
    assert renderer._render(fams, OPENMETRICS) == openmetrics_latest(Listed(fams))


@given(st.lists(families(), min_size=1, max_size=3))
@settings(max_examples=300, deadline=None)
def test_random_families_render_as_prometheus_client(rounds: list[list[Metric]]) -> None:
    """Random families (every type, hostile labels, exemplars, timestamps) render byte for byte,
    also when the renderer's memos come from earlier, different scrapes."""
    renderer = TextRenderer()
    for fams in rounds:
        both(renderer, fams)
        both(renderer, fams)  # every series memoised now


ROWS = st.lists(
    st.tuples(
        st.lists(HOSTILE, max_size=3),
        st.lists(st.tuples(st.sampled_from(["-1.0", "0.005", "0.1", "1.0", "NaN", "+Inf"]), VALUES), min_size=0,
                 max_size=4),
        st.one_of(st.none(), VALUES),
        st.booleans(),
        st.one_of(st.none(), st.floats(0, 2e9)),
    ),
    max_size=6,
)  # fmt: skip


@given(st.lists(ROWS, min_size=1, max_size=3), st.sampled_from([[], ["a"], ["b", "le"], ["z", "a", "m"]]),
       st.booleans())  # fmt: skip
@settings(max_examples=300, deadline=None)
def test_series_histogram_is_a_histogram_family(scrapes: list, labelnames: list[str], samples_first: bool) -> None:  # type: ignore[type-arg]
    """SeriesHistogram gives HistogramMetricFamily's samples and, through the renderer,
    generate_latest's bytes (exemplars, timestamps, NaN / negative first bounds, no sum)."""
    renderer = TextRenderer()
    for rows in scrapes:
        lazy = SeriesHistogram("lat_seconds", "Latency.", labelnames, unit="seconds")
        plain = HistogramMetricFamily("lat_seconds", "Latency.", labels=labelnames, unit="seconds")
        for labels, pairs, sum_value, exemplar, timestamp in rows:
            if not pairs:
                continue  # add_metric needs buckets (both raise IndexError)
            buckets: list[tuple[object, ...]] = list(pairs)
            if exemplar:
                buckets[-1] = (*buckets[-1], Exemplar({"trace_id": "t"}, 1.0))
            for family in (lazy, plain):
                try:
                    family.add_metric(labels, buckets, sum_value, timestamp)
                except ValueError:
                    pass  # a NaN first bound with exemplar tuples etc.: both refuse alike
        if samples_first:
            assert lazy.samples == plain.samples
        for fmt, slow in ((TEXT, generate_latest), (OPENMETRICS, openmetrics_latest)):
            try:
                expected = slow(Listed([plain]))  # type: ignore[operator]
            except ValueError:
                continue  # an exemplar OpenMetrics refuses: not renderable either way
            assert renderer._render([lazy], fmt) == expected  # the fast path itself, no fallback
        assert lazy.samples == plain.samples


def test_fast_format_only_for_the_default_escaping() -> None:
    """Only text 0.0.4 / OpenMetrics 1.0.0 with underscores escaping take the fast path."""
    assert fast_format(choose_encoder("")[0]) == TEXT
    assert fast_format(choose_encoder("application/openmetrics-text; version=1.0.0")[0]) == OPENMETRICS
    assert fast_format(choose_encoder("application/openmetrics-text")[0]) == OPENMETRICS
    assert fast_format(choose_encoder("text/plain; version=1.0.0; escaping=allow-utf-8")[0]) is None
    assert fast_format(choose_encoder("application/openmetrics-text; version=1.0.0; escaping=dots")[0]) is None


def test_a_broken_family_fails_as_prometheus_client_does() -> None:
    """A sample the fast path cannot render goes to prometheus_client, which raises as before."""
    bad = Metric("bad", "doc", "gauge")
    bad.add_sample("bad", {"a": 1}, 1.0)  # type: ignore[dict-item]  # not a string: no .replace
    errors = []
    for call in (lambda: TextRenderer().render([bad], TEXT), lambda: generate_latest(Listed([bad]))):  # type: ignore[arg-type]
        try:
            call()
        except Exception as exc:
            errors.append(type(exc))
    assert errors == [AttributeError, AttributeError]


LABEL = st.one_of(st.none(), HOSTILE)
REQUESTS = st.lists(
    st.tuples(HOSTILE, st.sampled_from(["GET", "POST", "BREW"]), st.floats(0.0, 100.0),
              st.sampled_from([200, 404, 500, 503]), LABEL, LABEL, st.booleans(), st.booleans()),
    min_size=0, max_size=12,
)  # fmt: skip


@given(REQUESTS, st.lists(st.sampled_from([0.0, 1.0, 20.0, 61.0]), max_size=3))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_exporter_output_unchanged(requests: list[tuple], moves: list[float]) -> None:  # type: ignore[type-arg]
    """The exporter's text and OpenMetrics (exemplars, custom metrics, the application's own
    prometheus_client metrics, static labels) equal prometheus_client's rendering of the same
    families, scrape after scrape."""
    clock = FakeClock()
    with tempfile.TemporaryDirectory() as directory:
        collector = MetricsCollector(directory, window_seconds=60, window_slots=4, clock=clock)
        hits = collector.counter("app_hits", "Hits \\ with\nnewline", ["where"])
        sizes = collector.histogram("app_size_bytes", "Sizes.", ["kind"], buckets=[1.0, 10.0])
        app = CollectorRegistry()
        PromCounter("app_native_events", "Events of the app's own registry.", ["src"], registry=app).labels('a"b').inc()
        exporters = [PrometheusExporter(collector, app), PrometheusExporter(collector, None, {"region": 'eu\\"1'})]
        for number, (endpoint, method, latency, status, provider, model, exemplar, tokens) in enumerate(requests):
            collector.record_request("/" + endpoint, method, latency, status, provider=provider, model=model)
            if exemplar:
                collector.record_exemplar("/" + endpoint, method, latency, f"{number + 1:032x}")
            if tokens and provider and model:
                collector.record_tokens(provider, model, input_tokens=number, output_tokens=3)
            hits.labels(endpoint).inc()
            sizes.labels(method).observe(latency)
            if moves:
                clock.advance(moves[number % len(moves)])
            for exporter in exporters:
                fams = list(exporter.registry.collect())
                fast = [exporter.renderer._render(fams, fmt) for fmt in (TEXT, OPENMETRICS)]
                assert fast == [generate_latest(Listed(fams)), openmetrics_latest(Listed(fams))]  # type: ignore[arg-type]
        for exporter in exporters:
            for accept in ("", "application/openmetrics-text; version=1.0.0"):
                body, _ = exporter.render(accept)
                slow, _ = choose_encoder(accept)
                assert body == slow(exporter.registry)
            assert exporter.export().encode() == generate_latest(exporter.registry)
        collector.close()
        assert not math.isnan(clock.now)
