"""Exposition by topic (``exposition_http``, ``_upstream``, ``_resources``, ``_self``): the
served text is byte-identical to the text of the code before the split, family order included."""

from __future__ import annotations

import pathlib

from fixed_directory import exposition_texts
from prometheus_client.metrics_core import Metric

from flask_gatewayz_metrics import exposition, exposition_semconv
from flask_gatewayz_metrics.exposition import families
from flask_gatewayz_metrics.exposition_common import cumulative
from flask_gatewayz_metrics.exposition_http import http_families
from flask_gatewayz_metrics.exposition_resources import cache_db_families, in_flight_family
from flask_gatewayz_metrics.exposition_self import DROP_REASONS, STORAGE_ERROR_REASONS, self_families
from flask_gatewayz_metrics.exposition_upstream import external_api_families, token_families
from flask_gatewayz_metrics.snapshot import Snapshot
from flask_gatewayz_metrics.storage import Merged, kinds

GOLDEN = pathlib.Path(__file__).parent


def test_text_and_openmetrics_are_byte_identical_to_before(tmp_path: pathlib.Path) -> None:
    """Text 0.0.4 and OpenMetrics of a fixed directory are the texts the code before the split served."""
    texts = exposition_texts(tmp_path)
    assert texts["text"] == (GOLDEN / "exposition_golden.txt").read_text(encoding="utf-8")
    assert texts["openmetrics"] == (GOLDEN / "exposition_golden.openmetrics").read_text(encoding="utf-8")


def snapshot_of(totals: dict[str, dict[tuple[str, ...], list[float]]]) -> Snapshot:
    """A snapshot of hand-made merged totals (no files), at a fixed time."""
    return Snapshot(Merged(totals=totals), 100.0, 40.0, 300.0, 500, 1, 2)


def samples(families: list[Metric]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value of every sample of ``families``."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in families for s in family.samples}


def test_cumulative_buckets_have_one_home() -> None:
    """``cumulative`` turns per-bucket counts into (le, running count) pairs, +Inf last."""
    assert cumulative((1.0, 2.5), [1.0, 0.0, 2.0]) == [("1.0", 1.0), ("2.5", 1.0), ("+Inf", 3.0)]
    assert exposition_semconv.cumulative is cumulative  # the conventions use the same one


def test_resources_read_cache_and_db_by_field_name() -> None:
    """Cache hits / misses and database queries come from their named payload fields."""
    cache = [0.0, 0.0]
    cache[kinds.CACHE_HITS], cache[kinds.CACHE_MISSES] = 7.0, 3.0
    db = [0.0, 0.0]
    db[kinds.DB_QUERIES], db[kinds.DB_LATENCY_SUM] = 5.0, 1.25
    found = samples(cache_db_families(snapshot_of({"cache": {(): cache}, "db": {(): db}})))
    assert found[("cache_hits_total", ())] == 7.0
    assert found[("cache_misses_total", ())] == 3.0
    assert found[("db_queries_total", ())] == 5.0
    assert samples([in_flight_family(snapshot_of({"in_flight": {(): [-2.0]}}))]) == {
        ("http_requests_in_flight", ()): 0.0  # never negative, even mid-reset
    }


def test_upstream_reads_external_calls_and_tokens_by_field_name() -> None:
    """External calls / errors, token sums and per-call buckets come from their named fields."""
    external = [0.0, 0.0]
    external[kinds.EXTERNAL_CALLS], external[kinds.EXTERNAL_ERRORS] = 9.0, 2.0
    tokens = [0.0] * kinds.TOKENS_SIZE
    tokens[kinds.TOKENS_SUM] = 120.0
    tokens[kinds.TOKENS_BUCKETS + 4] = 1.0  # one call of 65..256 tokens
    snap = snapshot_of({"external": {("search",): external}, "tokens": {("p", "m", "input"): tokens}})
    found = samples([*external_api_families(snap), *token_families(snap)])
    assert found[("external_api_calls_total", (("service", "search"),))] == 9.0
    assert found[("external_api_errors_total", (("service", "search"),))] == 2.0
    labels = (("direction", "input"), ("model", "m"), ("provider", "p"))
    assert found[("llm_tokens_total", labels)] == 120.0
    assert found[("llm_request_tokens_sum", labels)] == 120.0
    assert found[("llm_request_tokens_bucket", (*labels[:1], ("le", "64.0"), *labels[1:]))] == 0.0
    assert found[("llm_request_tokens_bucket", (*labels[:1], ("le", "256.0"), *labels[1:]))] == 1.0


def test_self_serves_every_reason_from_the_start() -> None:
    """Every drop and storage-error reason is served at 0 before anything happened."""
    found = samples(self_families(snapshot_of({})))
    for reason in DROP_REASONS:
        assert found[("gatewayz_metrics_dropped_total", (("reason", reason),))] == 0.0
    for reason in STORAGE_ERROR_REASONS:
        assert found[("gatewayz_metrics_storage_errors_total", (("reason", reason),))] == 0.0
    assert found[("gatewayz_uptime_seconds", ())] == 60.0
    assert found[("gatewayz_metrics_worker_files", (("state", "dead"),))] == 1.0


def test_http_exemplar_fields_are_named() -> None:
    """An exemplar record's trace id parts, value and time are read through the named fields."""
    exemplar = [0.0] * kinds.KINDS["exemplar"].size
    parts = (0x0AF76519, 0x16CD43DD, 0x8448EB21, 0x1C80319C)
    exemplar[: kinds.EXEMPLAR_TRACE_PARTS] = [float(part) for part in parts]
    exemplar[kinds.EXEMPLAR_VALUE], exemplar[kinds.EXEMPLAR_SET] = 0.02, 1234.0
    request = [0.0] * kinds.REQUEST_SIZE
    request[kinds.REQ_COUNT], request[kinds.REQ_SUM], request[kinds.REQ_BUCKETS + 2] = 1.0, 0.02, 1.0
    snap = snapshot_of({"exemplar": {("/a", "GET", "2"): exemplar}, "request": {("/a", "GET", "200", "0"): request}})
    bucket = next(
        s for f in http_families(snap) for s in f.samples if s.name.endswith("_bucket") and s.labels["le"] == "0.025"
    )
    assert bucket.exemplar is not None
    assert bucket.exemplar.labels == {"trace_id": "0af7651916cd43dd8448eb211c80319c"}
    assert (bucket.exemplar.value, bucket.exemplar.timestamp) == (0.02, 1234.0)


def test_families_are_served_in_topic_order_of_before() -> None:
    """``families`` serves the topics' families in the historical order (http first, self last)."""
    names = [family.name for family in families(snapshot_of({}), conventions=False)]
    assert names[0] == "http_request_latency_avg_seconds"
    assert names.index("provider_requests") < names.index("cache_hits") < names.index("external_api_calls")
    assert names.index("external_api_calls") < names.index("llm_tokens") < names.index("http_requests_in_flight")
    assert names[-4:] == [
        "gatewayz_uptime_seconds", "gatewayz_metrics_dropped", "gatewayz_metrics_storage_errors",
        "gatewayz_metrics_worker_files",
    ]  # fmt: skip


def test_old_names_stay_importable_from_exposition() -> None:
    """The reason lists and window gauge names are still importable from ``exposition``."""
    assert exposition.DROP_REASONS is DROP_REASONS
    assert exposition.STORAGE_ERROR_REASONS is STORAGE_ERROR_REASONS
    assert exposition.WINDOW_LATENCY_GAUGES == ("avg", "min", "max", "p50", "p95", "p99")
