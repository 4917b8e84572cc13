"""Metric families beyond the spec: tokens, cost, upstream health, streams, identity."""

from __future__ import annotations

import platform
from collections.abc import Sequence
from functools import lru_cache
from itertools import accumulate

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from ._version import VERSION
from .exposition_text import SeriesHistogram
from .snapshot import Snapshot
from .storage import layout


def gateway_families(snap: Snapshot) -> list[Metric]:
    return [*_token_families(snap), *_upstream_families(snap), *_stream_families(snap), *_process_families(snap)]


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


def _fill(family: CounterMetricFamily | GaugeMetricFamily, snap: Snapshot, kind: str) -> None:
    """One sample per series of ``kind``: its labels and the first payload value."""
    for key, payload in snap.series(kind):
        family.add_metric(list(key), payload[0])


def _token_families(snap: Snapshot) -> list[Metric]:
    labels = ["provider", "model", "direction"]
    tokens = CounterMetricFamily(
        "llm_tokens_total", "LLM tokens, by direction (input, output, cached_input).", labels=labels
    )
    per_call = SeriesHistogram(
        "llm_request_tokens", "Tokens per LLM call, by direction (buckets 1, 4, 16, ... 4^13).", labels=labels
    )
    _fill(tokens, snap, "tokens")
    for key, payload in snap.series("tokens"):
        per_call.add_metric(list(key), cumulative(layout.TOKEN_BOUNDS, payload[1:]), payload[0])
    cost = CounterMetricFamily("llm_cost_usd_total", "Cost of LLM calls in US dollars.", labels=["provider", "model"])
    _fill(cost, snap, "cost")
    return [tokens, per_call, cost]


def _upstream_families(snap: Snapshot) -> list[Metric]:
    by_type = CounterMetricFamily(
        "provider_errors_by_type_total",
        "Failed upstream calls by type: timeout, rate_limited, 4xx, 5xx, connection, other.",
        labels=["provider", "error_type"],
    )
    _fill(by_type, snap, "provider_error_type")
    fallbacks = CounterMetricFamily(
        "llm_provider_fallbacks_total",
        "Requests moved from one provider to another.",
        labels=["from_provider", "to_provider"],
    )
    _fill(fallbacks, snap, "fallback")
    remaining = GaugeMetricFamily(
        "llm_rate_limit_remaining",
        "Latest remaining rate limit reported by the provider (requests or tokens).",
        labels=["provider", "limit"],
    )
    _fill(remaining, snap, "rate_limit")
    return [by_type, fallbacks, remaining]


def _stream_families(snap: Snapshot) -> list[Metric]:
    streams = CounterMetricFamily(
        "llm_streams_total",
        "Streamed responses by outcome: completed, client_disconnect, error.",
        labels=["provider", "model", "outcome"],
    )
    _fill(streams, snap, "stream")
    out: list[Metric] = [streams]
    for kind, name, doc in (
        ("first_chunk", "llm_time_to_first_chunk_seconds", "Time from request start to the first streamed chunk."),
        ("stream_duration", "llm_stream_duration_seconds", "Time from request start to the end of the stream."),
    ):
        family = SeriesHistogram(name, doc, labels=["provider", "model"])
        for key, payload in snap.series(kind):
            family.add_metric(
                list(key), cumulative(snap.histogram_bounds, payload[layout.REQ_BUCKETS :]), payload[layout.REQ_SUM]
            )
        out.append(family)
    return out


def _process_families(snap: Snapshot) -> list[Metric]:
    in_flight = GaugeMetricFamily("http_requests_in_flight", "Requests being served now, summed over live workers.")
    in_flight.add_metric([], snap.in_flight)
    build = GaugeMetricFamily(
        "gatewayz_build_info",
        "Version of flask_gatewayz_metrics and of Python (value 1).",
        labels=["version", "python_version"],
    )
    build.add_metric([VERSION, platform.python_version()], 1.0)
    start = GaugeMetricFamily("gatewayz_start_time_seconds", "Unix time the server (metrics directory) started.")
    start.add_metric([], snap.start_time)
    overflow = CounterMetricFamily(
        "gatewayz_metrics_label_overflow_total",
        "Label values recorded as 'other' (the label was at its limit).",
        labels=["label"],
    )
    _fill(overflow, snap, "label_overflow")
    return [in_flight, build, start, overflow]
