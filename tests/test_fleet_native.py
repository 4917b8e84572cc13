"""The fleet recording rules and alerts on real native histograms, before the gateway serves any.

The latency histograms do not carry native buckets yet, so the `_native` recording rules
and the native branch of FleetHighLatency cannot be checked against the gateway. Here a
loopback target serves native histograms (schema 5) built with the package's own
protobuf encoder, with known bucket counts that grow at every scrape, and a real
Prometheus 2.42 (`--enable-feature=native-histograms`) scrapes it every second with
conf/'s rule files: every native rule must answer inside the bucket that holds the true
quantile, and the classic series of such a histogram must be absent (2.42 stores only the
native form; see docs/FLEET.md).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from servers import free_port
from test_fleet import has_native_buckets, prometheus
from test_prometheus import Deadline, require_binary, wait_for

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

# Per scrape of the synthetic target, per histogram: 90 observations in schema-5 bucket
# -181 (~20 ms), 8 in bucket -45 ((0.3693, 0.3774] s) and 2 in bucket 10 ((1.2155, 1.2418] s).
NATIVE_BUCKETS = ((-181, 90), (-45, 8), (10, 2))
NATIVE_HISTOGRAMS = {
    "http_request_duration_seconds": {"endpoint": "/api/chat", "method": "POST"},
    "provider_request_duration_seconds": {"provider": "openai"},
    "llm_time_to_first_chunk_seconds": {"provider": "openai", "model": "gpt-4o"},
    "llm_stream_duration_seconds": {"provider": "openai", "model": "gpt-4o"},
}


def bucket_bounds(index: int) -> tuple[float, float]:
    """The (lower, upper] bounds of schema-5 bucket ``index``."""
    return 2 ** ((index - 1) / 32), 2 ** (index / 32)


def native_exposition(scrape: int) -> bytes:
    """The protobuf exposition of NATIVE_HISTOGRAMS after ``scrape`` scrapes' worth of observations."""
    from prometheus_client.core import HistogramMetricFamily

    from flask_gatewayz_metrics.exposition_protobuf import NativeBuckets, encode

    families = []
    native = {}
    count = sum(n for _, n in NATIVE_BUCKETS) * scrape
    total = sum(bucket_bounds(i)[1] * n for i, n in NATIVE_BUCKETS) * scrape
    for name, labels in NATIVE_HISTOGRAMS.items():
        family = HistogramMetricFamily(name, "Synthetic native histogram.", labels=list(labels))
        family.add_metric(list(labels.values()), [("0.5", 98.0 * scrape), ("+Inf", float(count))], total)
        families.append(family)
        key = (name, tuple(sorted(labels.items())))
        native[key] = NativeBuckets(schema=5, positive=[(i, n * scrape) for i, n in NATIVE_BUCKETS])
    return encode(families, native)


@contextmanager
def native_target() -> Iterator[str]:
    """A loopback HTTP server answering every GET with the next scrape's native exposition."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from flask_gatewayz_metrics.exposition_protobuf import CONTENT_TYPE

    scrapes = iter(range(1, 10_000))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = native_exposition(next(scrapes, 10_000))
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_native_recording_rules_and_fleet_alert_on_a_native_scrape(tmp_path: Path) -> None:
    """Prometheus 2.42 ingests native histograms: every `_native` rule answers inside the right bucket."""
    require_binary("prometheus")
    deadline = Deadline(time.monotonic() + 60)
    with native_target() as target, prometheus(tmp_path, [target]) as api:
        p95_low, p95_high = bucket_bounds(-45)
        p99_low, p99_high = bucket_bounds(10)
        expected = {
            'endpoint:http_request_duration_seconds:p95_5m_native{endpoint="/api/chat"}': (p95_low, p95_high),
            'endpoint:http_request_duration_seconds:p99_5m_native{endpoint="/api/chat"}': (p99_low, p99_high),
            'provider:provider_request_duration_seconds:p95_5m_native{provider="openai"}': (p95_low, p95_high),
            'model:llm_time_to_first_chunk_seconds:p95_5m_native{model="gpt-4o"}': (p95_low, p95_high),
            'model:llm_stream_duration_seconds:p99_5m_native{model="gpt-4o"}': (p99_low, p99_high),
            'endpoint:http_request_duration_seconds:p50_5m_native{endpoint="/api/chat"}': bucket_bounds(-181),
        }

        def answers() -> dict[str, float | None]:
            try:
                return {expr: api.value(expr) for expr in expected}
            except (OSError, AssertionError):
                return {}

        values = wait_for("every native rule to answer", answers, deadline, 40,
                          done=lambda v: bool(v) and None not in v.values())  # fmt: skip
        for expr, (low, high) in expected.items():
            assert low <= values[expr] <= high, (expr, values[expr], low, high)
        average = api.value('endpoint:http_request_duration_seconds:avg_5m_native{endpoint="/api/chat"}')
        assert average is not None and 0.0 < average < p99_high
        assert has_native_buckets(api)
        # Prometheus 2.42 keeps only the native form of a histogram that carries native
        # buckets: the classic series, and the classic rules, have nothing for it.
        for suffix in ("_bucket", "_count", "_sum"):
            assert api.query(f"http_request_duration_seconds{suffix}") == [], suffix
        assert api.query("endpoint:http_request_duration_seconds:p95_5m") == []
        # The fleet latency alert takes the native branch: p99 in (1.2155, 1.2418] s > 1 s.
        firing = wait_for(
            "FleetHighLatency to fire",
            lambda: [a for a in api.get("alerts")["alerts"] if a["labels"]["alertname"] == "FleetHighLatency"],
            deadline, 20, done=lambda alerts: any(a["state"] == "firing" for a in alerts),
        )  # fmt: skip
        assert [a["labels"]["endpoint"] for a in firing] == ["/api/chat"]
        assert p99_low <= float(firing[0]["value"]) <= p99_high
