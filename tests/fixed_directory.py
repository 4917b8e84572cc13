"""A fixed metrics directory: every kind of record, at fixed instants, for the tests that
compare our output byte for byte with the output of the code before a refactoring
(``test_json_document``, ``test_exposition_topics``)."""

from __future__ import annotations

import json
import pathlib
import platform
import re

from flask_gatewayz_metrics import MetricsCollector, PrometheusExporter
from flask_gatewayz_metrics._version import VERSION
from flask_gatewayz_metrics.testing import ManualClock

START = 1_800_000_000.0


def record_everything(collector: MetricsCollector, clock: ManualClock) -> None:
    """Every kind of record the document shows, at fixed instants (deterministic)."""
    for i in range(40):
        clock.now = START + i
        status = (200, 200, 404, 500, 503)[i % 5]
        collector.record_request(f"/v1/e{i % 3}", ("GET", "POST")[i % 2], 0.01 * (i + 1), status,
                                 provider=f"p{i % 2}", model=f"m{i % 4}")  # fmt: skip
        collector.record_provider_call(f"p{i % 2}", f"m{i % 4}", 0.02 * (i + 1), 200 if i % 3 else 429)
    collector.record_cache_hit()
    collector.record_cache_hit()
    collector.record_cache_miss()
    collector.record_db_query(0.004)
    collector.record_db_query(0.016)
    collector.record_external_api_call("billing")
    collector.record_external_api_call("billing", error=True)
    collector.record_external_api_call("search")
    collector.add_in_flight(2)
    collector.add_in_flight(-1)
    collector.record_tokens("p0", "m0", 120, 30, cached_input_tokens=5, cost_usd=0.25)
    collector.record_tokens("p1", "m1", 7, 3)
    collector.record_provider_error("p0", 500)
    collector.record_provider_error("p1", error_type="timeout")
    collector.record_fallback("p0", "p1")
    collector.set_rate_limit_remaining("p0", "tokens", 900.0)
    collector.record_exemplar("/v1/e0", "GET", 0.02, "0af7651916cd43dd8448eb211c80319c")
    collector.record_stream("p0", "m0", "completed", 1.5, first_chunk_seconds=0.25)
    collector.record_stream("p1", "m1", "client_disconnect", 0.5)
    tenant = collector.tenant(team="blue", api_key_alias="k1", user="u")
    assert tenant is not None
    collector.record_tenant_request(tenant, 200)
    collector.record_tenant_usage(tenant, [10.0, 2.0, 0.0], 0.5)
    collector.set_budget_remaining("blue", 12.5)
    collector.counter("jobs", "Jobs run.", ["queue"]).labels("a").inc(3)
    collector.gauge("depth", "Queue depth.", mode="max").set(4)
    collector.histogram("size_bytes", "Sizes.", buckets=(10.0, 100.0)).observe(42)
    collector.record_request("/v1/e0", "GET", -1.0, 200)  # dropped: invalid_latency
    clock.now = START + 45


def document_text(directory: pathlib.Path) -> str:
    """The document of a freshly recorded directory as served (json.dumps), the directory's
    path and the uptime replaced so the text does not depend on where and when the test runs."""
    clock = ManualClock(START)
    collector = MetricsCollector(str(directory), clock=clock)
    try:
        record_everything(collector, clock)
        text = json.dumps(collector.to_dict(), indent=1)
    finally:
        collector.close()
    # The directory's start time is the real time it was created: uptime is not fixed.
    text = re.sub(r'"uptime_seconds": [0-9.e+-]+', '"uptime_seconds": <uptime>', text)
    return text.replace(str(directory), "<dir>")




def exposition_texts(directory: pathlib.Path) -> dict[str, str]:
    """Text 0.0.4 and OpenMetrics (with exemplars) of a freshly recorded directory, with what
    depends on time and platform replaced (``_fixed``) so the text is fixed."""
    clock = ManualClock(START)
    collector = MetricsCollector(str(directory), clock=clock)
    try:
        record_everything(collector, clock)
        exporter = PrometheusExporter(collector)
        texts = {
            "text": exporter.export(),
            "openmetrics": exporter.render("application/openmetrics-text; version=1.0.0")[0].decode("utf-8"),
        }
    finally:
        collector.close()
    return {name: _fixed(text) for name, text in texts.items()}


def _fixed(text: str) -> str:
    """The text without what depends on when and where it runs: the wall-clock samples, and
    the Python and package versions of ``gatewayz_build_info``."""
    text = re.sub(r"^(gatewayz_(?:uptime|start_time)_seconds) .*$", r"\1 <wall clock>", text, flags=re.M)
    build = f'python_version="{platform.python_version()}",version="{VERSION}"'
    return text.replace(build, 'python_version="<python>",version="<version>"')
