"""Native histograms (``native_histograms``, ``storage.native``): the sketch-to-native bucket
mapping, recording, merging over live and dead workers, the archive, reset, crash safety
and hostile chains.

Bucket indexes are checked against a reference computed without floating-point
logarithms: Prometheus's schema-5 bucket ``k`` holds ``(b(k-1), b(k)]`` where ``b(k)`` is
``2**(k/32)`` correctly rounded to a float64 (its bound tables are Go float literals,
and scaling by a power of two is exact); ``b(k)`` is computed here with 60-digit
decimals and rounded once.
"""

from __future__ import annotations

import decimal
import functools
import math
import multiprocessing
import os
import random
import struct
from typing import Any

import pytest
from conftest import FakeClock
from google.protobuf.internal.decoder import _DecodeVarint32
from hypothesis import given, settings
from hypothesis import strategies as st

from flask_gatewayz_metrics import MetricsCollector, PrometheusExporter, exposition_protobuf, sketch
from flask_gatewayz_metrics.native_histograms import ZERO_THRESHOLD, NativeIndex, native_index
from flask_gatewayz_metrics.storage import kinds, layout
from flask_gatewayz_metrics.storage.reader import DirectoryReader
from flask_gatewayz_metrics.storage.sparse import chain_buckets
from flask_gatewayz_metrics.testing import worker_file

PROTOBUF = exposition_protobuf.CONTENT_TYPE


@functools.cache
def native_bound(k: int) -> float:
    """``2**(k/32)`` correctly rounded to a float64."""
    with decimal.localcontext() as context:
        context.prec = 60
        return float(decimal.Decimal(2) ** (decimal.Decimal(k) / 32))


def exact_native_index(value: float) -> int:
    """The schema-5 bucket of ``value`` > 0: the least k with ``value <= native_bound(k)``."""
    k = math.floor(32 * math.log2(value))  # an estimate, corrected below
    while value > native_bound(k):
        k += 1
    while value <= native_bound(k - 1):
        k -= 1
    return k


def expected_buckets(values: list[float]) -> tuple[int, dict[int, int]]:
    """(zero count, native bucket -> count) of ``values``, computed exactly."""
    zero = 0
    buckets: dict[int, int] = {}
    for value in values:
        if value <= ZERO_THRESHOLD:
            zero += 1
        else:
            k = exact_native_index(value)
            buckets[k] = buckets.get(k, 0) + 1
    return zero, buckets


def decoded_histograms(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], Any]:
    """(family, sorted labels) -> Histogram message of a protobuf scrape."""
    classes = exposition_protobuf._classes()
    out = {}
    position = 0
    while position < len(body):
        length, position = _DecodeVarint32(body, position)
        family = classes["MetricFamily"]()
        family.ParseFromString(body[position : position + length])
        position += length
        for metric in family.metric:
            if metric.HasField("histogram"):
                out[(family.name, tuple(sorted((p.name, p.value) for p in metric.label)))] = metric.histogram
    return out


def native_of(histogram: Any) -> dict[int, int]:
    """A decoded histogram's native buckets (spans and deltas expanded), empty ones left out."""
    out: dict[int, int] = {}
    index = count = at = 0
    for number, span in enumerate(histogram.positive_span):
        index = span.offset if number == 0 else index + span.offset
        for _ in range(span.length):
            count += histogram.positive_delta[at]
            at += 1
            if count:
                out[index] = count
            index += 1
    return out


# ------------------------------------------------------------------------------ mapping


def _boundary_values() -> list[float]:
    """Every schema-5 bound the sketch tracks, with its float neighbours."""
    out = []
    for key in range(sketch.MIN_KEY, sketch.MAX_KEY + 1):
        bound = 2.0 ** (key / 32)
        out += [math.nextafter(bound, 0.0), bound, math.nextafter(bound, math.inf)]
    return out


def test_every_sketch_bucket_is_the_native_bucket_of_the_same_values() -> None:
    """At every bound and its float neighbours, sketch index + MIN_KEY is the exact native bucket."""
    for value in _boundary_values():
        index = sketch.bucket_index(value)
        if value <= sketch.LOWEST:
            assert index == sketch.UNDERFLOW_INDEX
        elif value <= sketch.HIGHEST:
            assert native_index(index) == exact_native_index(value), value
    assert sketch.bucket_index(0.0) == sketch.UNDERFLOW_INDEX and ZERO_THRESHOLD == sketch.LOWEST


@settings(max_examples=2000, deadline=None)
@given(st.floats(min_value=sketch.LOWEST, max_value=sketch.HIGHEST, exclude_min=True))
def test_any_value_maps_to_its_exact_native_bucket(value: float) -> None:
    """For any value in the tracked range the mapping equals the exact schema-5 bucket."""
    assert native_index(sketch.bucket_index(value)) == exact_native_index(value)


# ---------------------------------------------------------------------------- recording


def _latencies(rng: random.Random, n: int) -> list[float]:
    values = [min(120.0, rng.lognormvariate(-2.0, 1.5)) for _ in range(n)]
    return [*values, 0.0, 1e-7, sketch.LOWEST, 2.0 ** (-5 / 32)]  # zero bucket and an exact bound


def test_scrape_carries_exact_native_buckets_with_the_classic_count_and_sum(metrics_dir: str) -> None:
    """One worker: native buckets, zero bucket and count are exact; count and sum equal the classic histogram's."""
    values = _latencies(random.Random(3), 3000)
    collector = MetricsCollector(metrics_dir, native_histograms=True)
    for i, value in enumerate(values):
        collector.record_request("/chat", "POST", value, (200, 500)[i % 7 == 0], provider="openai", model="gpt")
    exporter = PrometheusExporter(collector)
    body, content_type = exporter.render(PROTOBUF)
    assert content_type == PROTOBUF
    histograms = decoded_histograms(body)
    zero, buckets = expected_buckets(values)
    for key in (
        ("http_request_duration_seconds", (("endpoint", "/chat"), ("method", "POST"))),
        ("provider_request_duration_seconds", (("provider", "openai"),)),
    ):
        histogram = histograms[key]
        assert histogram.schema == 5 and histogram.zero_threshold == ZERO_THRESHOLD
        assert histogram.zero_count == zero == 3
        assert native_of(histogram) == buckets
        assert histogram.sample_count == len(values)
        assert len(histogram.bucket) > 1 and histogram.bucket[-1].cumulative_count == len(values)  # classic too
    text = exporter.export()
    assert f'http_request_duration_seconds_count{{endpoint="/chat",method="POST"}} {float(len(values))}' in text
    snap = collector.snapshot()
    (totals,) = snap.requests.by_endpoint_method.values()
    assert histograms[("http_request_duration_seconds", (("endpoint", "/chat"), ("method", "POST")))].sample_sum == (
        totals.latency_sum
    )
    assert "schema" not in text and "native" not in text  # the text format is unchanged
    collector.close()


def test_configured_classic_buckets_keep_native_buckets_exact(metrics_dir: str) -> None:
    """With ``buckets=`` the classic records are "<kind>_le<n>" kinds; the native buckets of the
    same series are still exact and the classic ones use the configured bounds."""
    values = _latencies(random.Random(5), 500)
    collector = MetricsCollector(metrics_dir, native_histograms=True, buckets=[0.1, 1.0])
    for value in values:
        collector.record_request("/chat", "POST", value, 200, provider="openai", model="gpt")
    histograms = decoded_histograms(PrometheusExporter(collector).render(PROTOBUF)[0])
    zero, buckets = expected_buckets(values)
    for key in (
        ("http_request_duration_seconds", (("endpoint", "/chat"), ("method", "POST"))),
        ("provider_request_duration_seconds", (("provider", "openai"),)),
    ):
        histogram = histograms[key]
        assert histogram.zero_count == zero and native_of(histogram) == buckets
        assert histogram.sample_count == len(values)
        assert [b.upper_bound for b in histogram.bucket] == [0.1, 1.0, math.inf]
    assert collector.snapshot().dropped().get("internal_error", 0) == 0
    collector.close()


def test_streams_carry_native_buckets(metrics_dir: str) -> None:
    """Time to first chunk and stream duration get native buckets per provider and model."""
    collector = MetricsCollector(metrics_dir, native_histograms=True)
    firsts = [0.05 * (i + 1) for i in range(30)]
    for first in firsts:
        collector.record_stream("openai", "gpt-4o", "completed", first * 10, first)
    collector.record_stream("openai", "gpt-4o", "client_disconnect", 2.0)  # no first chunk
    histograms = decoded_histograms(PrometheusExporter(collector).render(PROTOBUF)[0])
    labels = (("model", "gpt-4o"), ("provider", "openai"))
    assert native_of(histograms[("llm_time_to_first_chunk_seconds", labels)]) == expected_buckets(firsts)[1]
    durations = [first * 10 for first in firsts] + [2.0]
    assert native_of(histograms[("llm_stream_duration_seconds", labels)]) == expected_buckets(durations)[1]
    assert histograms[("llm_stream_duration_seconds", labels)].sample_count == 31
    collector.close()


def test_disabled_native_recording_serves_classic_histograms_only(metrics_dir: str) -> None:
    """native_histograms=False: no native records, the protobuf scrape has classic buckets only."""
    collector = MetricsCollector(metrics_dir, native_histograms=False)
    collector.record_request("/chat", "POST", 0.2, 200, provider="openai")
    collector.record_stream("openai", "m", "completed", 1.0, 0.1)
    histograms = decoded_histograms(PrometheusExporter(collector).render(PROTOBUF)[0])
    assert histograms and all(not h.HasField("schema") and h.sample_count == 1 for h in histograms.values())
    (view,) = DirectoryReader(metrics_dir).read()[0]
    assert not [r for r in view.records if r.kind in kinds.NATIVE_KINDS]
    collector.close()


def test_static_labels_do_not_hide_the_native_buckets(metrics_dir: str) -> None:
    """Families wrapped with static labels still find their native buckets."""
    collector = MetricsCollector(metrics_dir, native_histograms=True)
    collector.record_request("/chat", "POST", 0.2, 200)
    body, _ = PrometheusExporter(collector, static_labels={"region": "eu"}).render(PROTOBUF)
    key = ("http_request_duration_seconds", (("endpoint", "/chat"), ("method", "POST"), ("region", "eu")))
    assert native_of(decoded_histograms(body)[key]) == {exact_native_index(0.2): 1}
    collector.close()


# ------------------------------------------------------------- workers, archive, reset


def _worker(directory: str, values: list[float], provider: str) -> None:
    collector = MetricsCollector(directory, auto_compact=False, native_histograms=True)
    for value in values:
        collector.record_request("/chat", "POST", value, 200, provider=provider)
    collector.record_stream(provider, "m", "completed", values[0], values[1])
    os._exit(0)  # dies without closing: its file stays, like a killed worker's


def _native(collector: MetricsCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], dict[int, int]]:
    index: NativeIndex = collector.native_lookup()
    return {key: {**dict(buckets.positive), **({0: buckets.zero_count} if buckets.zero_count else {})}
            for key, buckets in index.items()}  # fmt: skip


def test_live_and_dead_workers_merge_and_the_archive_carries_them_until_a_reset(metrics_dir: str) -> None:
    """Forked workers' native buckets add up; compaction keeps them exactly; a reset clears them."""
    rng = random.Random(5)
    per_worker = [[rng.uniform(0.001, 3.0) for _ in range(400)] for _ in range(3)]
    context = multiprocessing.get_context("fork")
    for values in per_worker:
        child = context.Process(target=_worker, args=(metrics_dir, values, "openai"))
        child.start()
        child.join(60)
        assert child.exitcode == 0
    live = MetricsCollector(metrics_dir, auto_compact=False, native_histograms=True)
    own = [0.5, 0.25, 7.0]
    for value in own:
        live.record_request("/chat", "POST", value, 200, provider="openai")
    everything = [v for values in per_worker for v in values] + own
    http = ("http_request_duration_seconds", (("endpoint", "/chat"), ("method", "POST")))
    before = _native(live)
    assert before[http] == expected_buckets(everything)[1]
    assert before[("provider_request_duration_seconds", (("provider", "openai"),))] == before[http]
    result = live.compact()
    assert result.absorbed == 3
    views = DirectoryReader(metrics_dir).read()[0]
    assert [v.name for v in views if not v.is_archive] == [os.path.basename(worker_file(live) or "")]
    archive = next(v for v in views if v.is_archive)
    assert {r.kind for r in archive.records} >= set(kinds.NATIVE_KINDS)
    assert _native(live) == before  # carried exactly
    live.record_request("/chat", "POST", 0.5, 200)
    assert sum(_native(live)[http].values()) == len(everything) + 1
    live.compact()  # an archive folded again (nothing dead): unchanged
    body = PrometheusExporter(live).render(PROTOBUF)[0]
    assert decoded_histograms(body)[http].sample_count == len(everything) + 1
    live.reset()
    live.record_request("/chat", "POST", 0.5, 200)
    assert _native(live) == {
        http: {exact_native_index(0.5): 1},
    }
    live.close()


def test_label_overflow_in_the_archive_folds_native_series_like_classic_ones(metrics_dir: str) -> None:
    """Past the endpoint limit, the archive folds native series into 'other' and adds their buckets."""
    context = multiprocessing.get_context("fork")
    for endpoint in ("/a", "/b", "/c"):
        child = context.Process(target=_endpoint_worker, args=(metrics_dir, endpoint))
        child.start()
        child.join(60)
        assert child.exitcode == 0
    collector = MetricsCollector(metrics_dir, auto_compact=False, label_limits={"endpoint": 2}, native_histograms=True)
    collector.compact()
    native = _native(collector)
    endpoints = {dict(labels)["endpoint"]: sum(b.values()) for (name, labels), b in native.items()
                 if name == "http_request_duration_seconds"}  # fmt: skip
    assert endpoints == {"/a": 10, "/b": 10, "other": 10}
    collector.close()


def _endpoint_worker(directory: str, endpoint: str) -> None:
    collector = MetricsCollector(directory, auto_compact=False, native_histograms=True)
    for k in range(10):
        collector.record_request(endpoint, "GET", 0.01 * (k + 1), 200)
    os._exit(0)


# ----------------------------------------------------------------- crash safety, hostility


def _native_chain(metrics_dir: str, distinct: int) -> tuple[bytes, int]:
    """A dead file whose request_native chain holds ``distinct`` buckets; its bytes and the record's payload index."""
    collector = MetricsCollector(metrics_dir, auto_compact=False, native_histograms=True)
    for k in range(distinct):
        collector.record_request("/x", "GET", 0.01 * 1.1**k, 200)
    path = worker_file(collector) or ""
    view = next(v for v in DirectoryReader(metrics_dir).read()[0] if v.path == path)
    (record,) = [r for r in view.records if r.kind == "request_native"]
    collector.close()
    with open(path, "rb") as f:
        data = f.read()
    os.unlink(path)
    return data, record.offset


def _read_chain(data: bytes, offset: int) -> dict[int, float] | None:
    doubles = memoryview(bytearray(data)).cast("d")
    blocks: dict[float, int] = {}
    position = layout.HEADER_SIZE
    used = struct.unpack_from("<Q", data, 8)[0]
    while position < used:  # the reader's block index, rebuilt for a bare chain read
        length, key_length = layout.RECORD_HEADER.unpack_from(data, position)
        if key_length == 0:
            blocks[float((position + 8) // 8)] = layout.block_capacity_of_length(length)
        position += length
    return chain_buckets(doubles, blocks, doubles[offset + kinds.NATIVE_FIRST])


def test_a_half_written_entry_or_block_is_invisible(metrics_dir: str) -> None:
    """An entry filled but not published (BLOCK_USED), or a block appended but not linked, is never read."""
    data, offset = _native_chain(metrics_dir, 5)  # first block: 4 entries, second: 1 of 8
    complete = _read_chain(data, offset)
    assert complete is not None and len(complete) == 5
    out = bytearray(data)
    d = memoryview(out).cast("d")
    words = memoryview(out).cast("I")
    second = int(d[int(d[offset]) + layout.BLOCK_NEXT])
    words[layout.first_entry(second) + 1] = layout.pack_entry(3, 1)  # the writer filled entry 1 ...
    words[layout.first_entry(second) + 2] = layout.pack_entry(4, 1)  # ... and 2, not yet published
    assert _read_chain(bytes(out), offset) == complete
    d[int(d[offset]) + layout.BLOCK_NEXT] = 0.0  # the second block written, not linked yet
    partial = _read_chain(bytes(out), offset)
    assert partial is not None and len(partial) == 4 and partial.items() <= complete.items()


def _damage(data: bytes, offset: int, how: str) -> bytes:
    out = bytearray(data)
    d = memoryview(out).cast("d")
    first = int(d[offset])
    second = int(d[first + layout.BLOCK_NEXT])
    entries = {
        # One u32 per entry (format 6): count << 11 | bucket index.
        "index_range": (layout.first_entry(first), layout.pack_entry(sketch.BUCKET_COUNT, 1)),
        "index_top": (layout.first_entry(first) + 1, layout.pack_entry(layout.ENTRY_INDEX_MASK, 1)),
        "all_ones": (layout.first_entry(first) + 1, 2**32 - 1),
    }
    if how in entries:
        at, word = entries[how]
        memoryview(out).cast("I")[at] = word
        return bytes(out)
    changes = {
        "loop": (second + layout.BLOCK_NEXT, float(first)),
        "self": (first + layout.BLOCK_NEXT, float(first)),
        "used_over_capacity": (first + layout.BLOCK_USED, 5.0),
        "pointer_into_record": (offset, float(offset)),
        "pointer_past_end": (offset, float(len(d) + 10)),
        "pointer_nan": (offset, math.nan),
        "pointer_negative": (offset, -8.0),
    }
    at, value = changes[how]
    d[at] = value
    return bytes(out)


DAMAGES = [
    "loop", "self", "index_range", "index_top", "all_ones",
    "used_over_capacity", "pointer_into_record", "pointer_past_end", "pointer_nan", "pointer_negative",
]


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_native_chains_are_never_believed(metrics_dir: str, clock: FakeClock, how: str) -> None:
    """Loops, bad indexes, counts and pointers in a native chain: series dropped or chain cut, scrapes never fail."""
    data, offset = _native_chain(metrics_dir, 20)
    with open(os.path.join(metrics_dir, "worker-1-00000000000000aa.gwzm"), "wb") as f:
        f.write(_damage(data, offset, how))
    scraper = MetricsCollector(metrics_dir, auto_compact=False, native_histograms=True)
    exporter = PrometheusExporter(scraper)
    histograms = decoded_histograms(exporter.render(PROTOBUF)[0])
    native = scraper.native_lookup()
    for buckets in native.values():
        assert 0 <= buckets.count <= 20  # type: ignore[operator]
        assert all(sketch.MIN_KEY < i <= sketch.MAX_KEY + 1 and c > 0 for i, c in buckets.positive)
    histogram = histograms.get(("http_request_duration_seconds", (("endpoint", "/x"), ("method", "GET"))))
    assert histogram is not None and histogram.sample_count <= 20
    scraper.compact()  # the compactor reads chains the same way, and counts the ones it dropped
    errors = dict(scraper.snapshot().series("storage_errors"))
    if how in ("loop", "self", "index_range", "index_top", "all_ones", "used_over_capacity"):
        assert errors[("corrupt_record",)] == [1.0]
    after = scraper.native_lookup()
    assert all(0 <= b.count <= 20 for b in after.values())  # type: ignore[operator]
    exporter.render(PROTOBUF)
    scraper.close()


def test_native_recording_is_off_unless_asked_for(metrics_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Off by default; on with the environment variable or the extension's setting."""
    from flask import Flask

    from flask_gatewayz_metrics import GatewayzMetrics
    from flask_gatewayz_metrics.native_histograms import ENV

    monkeypatch.delenv(ENV, raising=False)
    assert MetricsCollector(metrics_dir)._native_state is None
    monkeypatch.setenv(ENV, "true")
    assert MetricsCollector(metrics_dir)._native_state is not None
    assert MetricsCollector(metrics_dir, native_histograms=False)._native_state is None
    monkeypatch.delenv(ENV)
    app = Flask("native")
    app.config.update(GATEWAYZ_METRICS_DIR=metrics_dir, GATEWAYZ_METRICS_NATIVE_HISTOGRAMS=True)
    GatewayzMetrics(app)

    @app.get("/hello")
    def hello() -> str:
        return "hi"

    client = app.test_client()
    assert client.get("/hello").status_code == 200
    body = client.get("/metrics", headers={"Accept": PROTOBUF}).data
    (histogram,) = [h for (name, _), h in decoded_histograms(body).items() if name == "http_request_duration_seconds"]
    assert histogram.schema == 5 and histogram.sample_count == 1 and sum(native_of(histogram).values()) == 1
    with pytest.raises(TypeError, match="NATIVE_HISTOGRAMS"):
        GatewayzMetrics(Flask("bad"), dir=metrics_dir, native_histograms="yes")


def _record_growing(directory: str, count: int) -> None:
    collector = MetricsCollector(directory, auto_compact=False, native_histograms=True)
    for k in range(count):
        collector.record_request("/grow", "GET", 1e-5 * 1.03**k, 200)  # a new bucket every request or two
    os._exit(0)


def test_readers_never_see_a_half_written_native_chain(metrics_dir: str) -> None:
    """While a writer appends entries and blocks (and re-maps its file), every read is a consistent, growing prefix."""
    reader = MetricsCollector(metrics_dir, native_histograms=True)
    total = 600  # ~300 distinct buckets: a chain of 8 blocks, several file growths
    child = multiprocessing.get_context("fork").Process(target=_record_growing, args=(metrics_dir, total))
    child.start()
    seen: list[int] = []
    key = ("http_request_duration_seconds", (("endpoint", "/grow"), ("method", "GET")))
    while child.is_alive() or not seen or seen[-1] < total:
        buckets = reader.native_lookup().get(key)
        count = 0 if buckets is None else buckets.count
        if buckets is not None:
            assert count == buckets.zero_count + sum(c for _, c in buckets.positive)
            assert all(1 <= c <= 2 for _, c in buckets.positive)
        seen.append(count)  # type: ignore[arg-type]
        if len(seen) > 20_000:
            break
    child.join(60)
    assert child.exitcode == 0
    assert seen == sorted(seen) and seen[-1] == total, seen[-5:]
    reader.close()
