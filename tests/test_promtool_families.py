"""promtool accepts the families beyond the spec (llm_*, in flight, build info, overflow)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from flask_gatewayz_metrics import MetricsCollector, PrometheusExporter

NEW_FAMILIES = (
    "llm_tokens_total",
    "llm_request_tokens",
    "llm_cost_usd_total",
    "provider_errors_by_type_total",
    "llm_provider_fallbacks_total",
    "llm_rate_limit_remaining",
    "llm_streams_total",
    "llm_time_to_first_chunk_seconds",
    "llm_stream_duration_seconds",
    "http_requests_in_flight",
    "gatewayz_build_info",
    "gatewayz_start_time_seconds",
    "gatewayz_metrics_label_overflow_total",
)


# --------------------------------------------------------------------------- promtool


def test_promtool_accepts_new_families(collector: MetricsCollector) -> None:
    """promtool check metrics passes (no lint problem) with every new family populated."""
    promtool = shutil.which("promtool") or ("/usr/bin/promtool" if os.path.exists("/usr/bin/promtool") else None)
    if promtool is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("promtool missing and CI=true")
        pytest.skip("promtool not installed")
    limited = MetricsCollector(collector.directory, label_limits={"model": 1})
    try:
        collector.record_tokens("openai", "gpt-4", 10, 20, cached_input_tokens=3, cost_usd=0.01)
        collector.record_provider_call("openai", "gpt-4", 0.2, status_code=503)
        collector.record_provider_error("anthropic", error_type="timeout")
        collector.record_fallback("openai", "anthropic")
        collector.set_rate_limit_remaining("openai", "requests", 0)
        collector.set_rate_limit_remaining("openai", "tokens", 1000)
        collector.record_stream("openai", "gpt-4", "completed", 1.5, 0.2)
        collector.record_stream("openai", "gpt-4", "client_disconnect", 0.5)
        collector.add_in_flight(1)
        limited.record_request("/x", "GET", 0.1, 200, model="a")
        limited.record_request("/x", "GET", 0.1, 200, model="b")
        body = PrometheusExporter(collector).export()
    finally:
        limited.close()
    present = {family.name for family in text_string_to_metric_families(body) if family.samples}
    missing = {name.removesuffix("_total") for name in NEW_FAMILIES} - present
    assert not missing
    result = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, text=True, timeout=30, check=False
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
