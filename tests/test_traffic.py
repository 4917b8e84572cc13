"""The traffic generator (the ``openai`` SDK) drives every kind of metric through a real gunicorn gateway."""

from __future__ import annotations

import time
import urllib.request
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from servers import scrape

from example_app import traffic

pytestmark = pytest.mark.slow


def test_traffic_generator_exercises_every_family(start_gunicorn: Any) -> None:
    """300 mixed requests: tokens, cost, every stream outcome, fallbacks, error types, rate limits, exemplars."""
    server = start_gunicorn(GATEWAY_UPSTREAM_ERROR_RATE="0.1")  # the simulated providers' 5xx share
    tally = traffic.run(server.url, total=300, concurrency=6, max_seconds=90, seed=3, progress=False)
    assert tally.done == 300
    assert not [outcome for outcome in tally.statuses if outcome.startswith("error:")], tally.statuses
    assert {"200", "404", "429", "500", "hung_up", "broken_stream"} <= set(tally.statuses), tally.statuses

    # Streams whose client hung up are still being written until the server notices
    # (its next write fails): wait, bounded, for them to end.
    deadline = time.monotonic() + 15
    samples = scrape(server.url)
    while samples[("http_requests_in_flight", ())] > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
        samples = scrape(server.url)

    def names(metric: str, label: str) -> set[str]:
        return {dict(labels)[label] for (name, labels), value in samples.items() if name == metric and value > 0}

    assert names("llm_tokens_total", "direction") == {"input", "output"}
    # The SDK's usage is counted; /api/chat's tokens come on top.
    input_tokens = sum(
        v for (name, labels), v in samples.items() if name == "llm_tokens_total" and ("direction", "input") in labels
    )
    assert tally.input_tokens > 0 and input_tokens >= tally.input_tokens
    chat = samples[("http_requests_total", (("endpoint", "/v1/chat/completions"), ("method", "POST")))]
    assert chat > 150
    assert names("llm_cost_usd_total", "provider") == {"openai", "anthropic", "google"}
    assert names("llm_streams_total", "outcome") == {"completed", "client_disconnect", "error"}
    assert names("llm_provider_fallbacks_total", "from_provider")
    assert "5xx" in names("provider_errors_by_type_total", "error_type")
    assert names("llm_time_to_first_chunk_seconds_count", "provider")
    limits = {dict(labels)["provider"] for (name, labels) in samples if name == "llm_rate_limit_remaining"}
    assert limits == {"openai", "anthropic", "google"}
    assert samples[("http_requests_in_flight", ())] == 0
    assert samples[("cache_hits_total", ())] > 0 and samples[("db_queries_total", ())] > 0

    accept = {"Accept": "application/openmetrics-text; version=1.0.0"}
    request = urllib.request.Request(server.url + "/metrics", headers=accept)
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    duration = {f.name: f for f in parse_openmetrics(text)}["http_request_duration_seconds"]
    traced = [s.exemplar for s in duration.samples if s.exemplar is not None]
    assert traced and all(len(e.labels["trace_id"]) == 32 for e in traced)
