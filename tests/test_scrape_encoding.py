"""Scrape responses are gzip-compressed when the scraper accepts it (Prometheus does)."""

from __future__ import annotations

import gzip
from pathlib import Path

from flask import Flask
from flask.testing import FlaskClient

from flask_gatewayz_metrics import GatewayzMetrics


def _client(tmp_path: Path) -> FlaskClient:
    app = Flask("encoding")
    app.config["GATEWAYZ_METRICS_DIR"] = str(tmp_path / "metrics")
    GatewayzMetrics(app)

    @app.get("/items/<int:item>")
    def item(item: int) -> str:
        return "ok"

    client = app.test_client()
    for i in range(20):
        client.get(f"/items/{i}")
    return client


def test_gzip_when_accepted_identical_content(tmp_path: Path) -> None:
    """With Accept-Encoding: gzip the body is gzip and decompresses to the plain exposition."""
    client = _client(tmp_path)
    plain = client.get("/metrics")
    assert "Content-Encoding" not in plain.headers and "Accept-Encoding" in plain.headers["Vary"]
    packed = client.get("/metrics", headers={"Accept-Encoding": "gzip, deflate"})
    assert packed.headers["Content-Encoding"] == "gzip"
    text = gzip.decompress(packed.data).decode()
    assert 'http_requests_total{endpoint="/items/<int:item>",method="GET"} 20.0' in text
    assert len(packed.data) < len(text) / 3


def test_gzip_refused_by_quality_zero(tmp_path: Path) -> None:
    """A scraper that says gzip;q=0 gets the plain body."""
    client = _client(tmp_path)
    response = client.get("/metrics", headers={"Accept-Encoding": "gzip;q=0, identity"})
    assert "Content-Encoding" not in response.headers
    assert b"http_requests_total" in response.data
