"""Reading back what the extension recorded, for the response tests.

``recorded`` rebuilds the recorded requests from the three families that count them
(``http_requests_total``, ``http_request_errors_total``, ``http_response_status_total``),
so a test can state exactly which requests it expects: count, route, method, status
and error flag, nothing more.
"""

from __future__ import annotations

from typing import Any

from flask import Flask
from responses_app import STATIC

from flask_gatewayz_metrics import GatewayzMetrics
from flask_gatewayz_metrics.testing import Samples, parse_samples


def scrape(client: Any, path: str = "/metrics") -> Samples:
    """One scrape through a test client as {(sample name, sorted labels): value}."""
    return parse_samples(client.get(path).get_data(as_text=True))


Row = tuple[str, str, str, bool]
"""One recorded request: (endpoint, method, status, error)."""
View = tuple[list[tuple[str, str, bool]], list[tuple[str, str]]]


def recorded(samples: Samples) -> View:
    """What the families tell of the recorded requests: one (endpoint, method, error) per
    request, and one (endpoint, status) per request (statuses are counted per endpoint)."""
    by_method: list[tuple[str, str, bool]] = []
    by_status: list[tuple[str, str]] = []
    for (name, labels), value in samples.items():
        label = dict(labels)
        if name == "http_requests_total":
            errors = samples.get(("http_request_errors_total", labels), 0.0)
            by_method += [(label["endpoint"], label["method"], i < errors) for i in range(int(value))]
        elif name == "http_response_status_total":
            by_status += [(label["endpoint"], label["status"])] * int(value)
    return sorted(by_method), sorted(by_status)


def same(got: View, expected: list[Row]) -> bool:
    """``got`` tells exactly the requests of ``expected``."""
    return got == (sorted((r[0], r[1], r[3]) for r in expected), sorted((r[0], r[2]) for r in expected))


def in_flight(samples: Samples) -> float:
    """``http_requests_in_flight`` of a scrape."""
    return samples[("http_requests_in_flight", ())]


def dropped(samples: Samples, reason: str) -> float:
    """``gatewayz_metrics_dropped_total{reason}`` of a scrape."""
    return samples.get(("gatewayz_metrics_dropped_total", (("reason", reason),)), 0.0)


def make(metrics_dir: str, **config: Any) -> Flask:
    """A bare app with the extension (and the tests' static folder) on ``metrics_dir``."""
    app = Flask(__name__, static_folder=str(STATIC), static_url_path="/static")
    app.config.update(GATEWAYZ_METRICS_DIR=metrics_dir, **config)
    GatewayzMetrics(app)
    return app
