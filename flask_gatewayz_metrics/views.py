"""The metrics blueprint: ``/metrics``, ``/metrics/json``, ``/metrics/health``, ``/metrics/reset``."""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

from flask import Blueprint, Response, jsonify, request

from .health import health_report

if TYPE_CHECKING:
    from .extension import AppMetrics

BLUEPRINT_NAME = "gatewayz_metrics"


def create_blueprint(metrics: AppMetrics) -> Blueprint:
    bp = Blueprint(BLUEPRINT_NAME, __name__)

    @bp.get("")
    def scrape() -> Response:
        body, content_type = metrics.exporter.render(request.headers.get("Accept"))
        return Response(body, content_type=content_type)

    @bp.get("/json")
    def as_json() -> Response:
        return jsonify(metrics.collector.to_dict())

    @bp.get("/health")
    def health() -> tuple[Response, int]:
        report, status = health_report(metrics.collector.snapshot(), metrics.settings)
        return jsonify(report), status

    @bp.post("/reset")
    def reset() -> tuple[Response, int]:
        token = metrics.settings.reset_token
        if not token:
            return jsonify(error="reset is disabled: set GATEWAYZ_METRICS_RESET_TOKEN to enable it"), 403
        offered = request.headers.get("Authorization", "")
        scheme, _, credentials = offered.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            credentials.strip().encode("utf-8"), token.encode("utf-8")
        ):
            response = jsonify(error="a valid 'Authorization: Bearer <token>' header is required")
            response.headers["WWW-Authenticate"] = 'Bearer realm="gatewayz-metrics"'
            return response, 401
        metrics.collector.reset()
        return jsonify(status="reset"), 200

    return bp
