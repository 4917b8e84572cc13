"""A real OTLP/HTTP metrics receiver on loopback for the tests, decoding with opentelemetry-proto."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)


@dataclass
class Received:
    at: float
    path: str
    headers: dict[str, str]
    request: ExportMetricsServiceRequest


class Receiver:
    """Collects every export POSTed to ``http://127.0.0.1:<port>/v1/metrics``."""

    def __init__(self, port: int = 0) -> None:
        self.received: list[Received] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                request = ExportMetricsServiceRequest.FromString(body)
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver.lock:
                    receiver.received.append(Received(time.time(), self.path, headers, request))
                answer = ExportMetricsServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def count(self) -> int:
        with self.lock:
            return len(self.received)

    def latest(self) -> Received | None:
        with self.lock:
            return self.received[-1] if self.received else None

    def wait_for(self, check: Callable[[Received], bool], timeout: float) -> Received:
        """The first export (from now on, or the latest) for which ``check`` holds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            latest = self.latest()
            if latest is not None and check(latest):
                return latest
            time.sleep(0.05)
        raise AssertionError(f"no matching export within {timeout}s; latest: {self.latest() and points(self.latest())}")


def resource_of(received: Received) -> dict[str, str]:
    return {kv.key: kv.value.string_value for kv in received.request.resource_metrics[0].resource.attributes}


def metrics_of(received: Received) -> dict[str, Any]:
    """Every metric of an export by name."""
    return {m.name: m for rm in received.request.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}


def points(received: Received | None, name: str = "http_requests_total") -> dict[tuple[tuple[str, str], ...], float]:
    """The number data points of a Sum or Gauge metric as {sorted attributes: value}."""
    if received is None:
        return {}
    metric = metrics_of(received).get(name)
    if metric is None:
        return {}
    data = metric.sum.data_points if metric.HasField("sum") else metric.gauge.data_points
    return {tuple(sorted((a.key, a.value.string_value) for a in p.attributes)): p.as_double for p in data}
