"""What the gateway calls as metric families: AI providers and models (requests, errors,
window latency), LLM calls (tokens, cost, error types, fallbacks, rate limits, streams) and
external APIs."""

from __future__ import annotations

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from .exposition_common import (
    WINDOW,
    add_latency,
    add_windowed,
    cumulative,
    fill,
    gauge,
    latency_gauges,
    latency_histogram,
)
from .exposition_text import SeriesHistogram
from .snapshot import Snapshot
from .storage import kinds


def provider_families(snap: Snapshot) -> list[Metric]:
    """Per provider: requests, errors, the window's error rate and latency, the latency histogram."""
    requests = CounterMetricFamily("provider_requests_total", "Requests to the AI provider.", labels=["provider"])
    errors = CounterMetricFamily("provider_errors_total", "Failed requests to the AI provider.", labels=["provider"])
    rate = gauge("provider_error_rate", f"Share of the provider's requests that failed {WINDOW} (0-1).", ["provider"])
    gauges = latency_gauges("provider", "provider", {})
    duration = SeriesHistogram(
        "provider_request_duration_seconds", "AI provider request latency since start.", labels=["provider"]
    )
    for provider, totals in sorted(snap.requests.by_provider.items()):
        requests.add_metric([provider], totals.count)
        errors.add_metric([provider], totals.errors)
        latency_histogram(duration, [provider], totals, bounds=snap.histogram_bounds)
        stats = snap.window("provider_window", (provider,))
        add_windowed(rate, [provider], stats.error_rate)
        add_latency(gauges, [provider], stats)
    return [requests, errors, rate, *gauges.values(), duration]


def model_families(snap: Snapshot) -> list[Metric]:
    """Per model: requests, errors, the window's error rate and latency."""
    requests = CounterMetricFamily("model_requests_total", "Requests for the AI model.", labels=["model"])
    errors = CounterMetricFamily("model_errors_total", "Failed requests for the AI model.", labels=["model"])
    rate = gauge("model_error_rate", f"Share of the model's requests that failed {WINDOW} (0-1).", ["model"])
    gauges = latency_gauges("model", "model", {"avg": "Average", "min": "Smallest", "max": "Largest"})
    for model, totals in sorted(snap.requests.by_model.items()):
        requests.add_metric([model], totals.count)
        errors.add_metric([model], totals.errors)
        stats = snap.window("model_window", (model,))
        add_windowed(rate, [model], stats.error_rate)
        add_latency(gauges, [model], stats)
    return [requests, errors, rate, *gauges.values()]


def external_api_families(snap: Snapshot) -> list[Metric]:
    """Calls to external APIs and the failed ones, per service."""
    calls = CounterMetricFamily("external_api_calls_total", "Calls to external APIs.", labels=["service"])
    failures = CounterMetricFamily("external_api_errors_total", "Failed calls to external APIs.", labels=["service"])
    for (service,), payload in snap.series("external"):
        calls.add_metric([str(service)], payload[kinds.EXTERNAL_CALLS])
        failures.add_metric([str(service)], payload[kinds.EXTERNAL_ERRORS])
    return [calls, failures]


def token_families(snap: Snapshot) -> list[Metric]:
    """LLM tokens (total and per call) and cost."""
    names = ["provider", "model", "direction"]
    tokens = CounterMetricFamily(
        "llm_tokens_total", "LLM tokens, by direction (input, output, cached_input).", labels=names
    )
    per_call = SeriesHistogram(
        "llm_request_tokens", "Tokens per LLM call, by direction (buckets 1, 4, 16, ... 4^13).", labels=names
    )
    for key, payload in snap.series("tokens"):
        labels = list(key)
        tokens.add_metric(labels, payload[kinds.TOKENS_SUM])
        per_call.add_metric(
            labels, cumulative(kinds.TOKEN_BOUNDS, payload[kinds.TOKENS_BUCKETS :]), payload[kinds.TOKENS_SUM]
        )
    cost = CounterMetricFamily("llm_cost_usd_total", "Cost of LLM calls in US dollars.", labels=["provider", "model"])
    fill(cost, snap, "cost")
    return [tokens, per_call, cost]


def upstream_error_families(snap: Snapshot) -> list[Metric]:
    """Failed upstream calls by type, fallbacks between providers, the latest rate-limit headroom."""
    by_type = CounterMetricFamily(
        "provider_errors_by_type_total",
        "Failed upstream calls by type: timeout, rate_limited, 4xx, 5xx, connection, other.",
        labels=["provider", "error_type"],
    )
    fill(by_type, snap, "provider_error_type")
    fallbacks = CounterMetricFamily(
        "llm_provider_fallbacks_total",
        "Requests moved from one provider to another.",
        labels=["from_provider", "to_provider"],
    )
    fill(fallbacks, snap, "fallback")
    remaining = GaugeMetricFamily(
        "llm_rate_limit_remaining",
        "Latest remaining rate limit reported by the provider (requests or tokens).",
        labels=["provider", "limit"],
    )
    for key, payload in snap.series("rate_limit"):
        remaining.add_metric(list(key), payload[kinds.RATE_LIMIT_REMAINING])
    return [by_type, fallbacks, remaining]


def stream_families(snap: Snapshot) -> list[Metric]:
    """Streamed responses by outcome, time to first chunk and stream duration."""
    streams = CounterMetricFamily(
        "llm_streams_total",
        "Streamed responses by outcome: completed, client_disconnect, error.",
        labels=["provider", "model", "outcome"],
    )
    fill(streams, snap, "stream")
    out: list[Metric] = [streams]
    for kind, name, doc in (
        ("first_chunk", "llm_time_to_first_chunk_seconds", "Time from request start to the first streamed chunk."),
        ("stream_duration", "llm_stream_duration_seconds", "Time from request start to the end of the stream."),
    ):
        family = SeriesHistogram(name, doc, labels=["provider", "model"])
        for key, payload in snap.series(kind):
            family.add_metric(
                list(key), cumulative(snap.histogram_bounds, payload[kinds.REQ_BUCKETS :]), payload[kinds.REQ_SUM]
            )
        out.append(family)
    return out
