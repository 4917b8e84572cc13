"""The metrics blueprint: ``/metrics``, ``/metrics/json``, ``/metrics/health``, ``/metrics/reset``
and ``/metrics/dashboard``."""

from __future__ import annotations

import gzip
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from flask import Blueprint, Request, Response, jsonify, request

from .auth import Credentials, reset_credentials, scrape_credentials
from .dashboard import DashboardFiles
from .health import health_report

if TYPE_CHECKING:
    from .extension import AppMetrics

log = logging.getLogger("flask_gatewayz_metrics")
BLUEPRINT_NAME = "gatewayz_metrics"
GZIP_MIN_BYTES = 1024
"""Smaller scrapes are sent as they are: compressing them saves nothing worth the CPU."""
GZIP_LEVEL = 6
View = TypeVar("View", bound=Callable[..., "Response | tuple[Response, int]"])


def create_blueprint(metrics: AppMetrics) -> Blueprint:
    """The metrics blueprint of one app, its views guarded by the app's credentials."""
    bp = Blueprint(BLUEPRINT_NAME, __name__)
    scrape_auth = scrape_credentials(metrics.settings)
    reset_auth = reset_credentials(metrics.settings)

    @bp.get("")
    @guarded(scrape_auth, metrics.settings.auth_check)
    def scrape() -> Response:
        body, content_type = metrics.exporter.render(request.headers.get("Accept"))
        response = Response(body, content_type=content_type)
        response.vary.add("Accept")  # the format is negotiated: a cache must not mix them
        response.vary.add("Accept-Encoding")
        # Prometheus asks for gzip; an exposition of many series shrinks ~10x.
        if request.accept_encodings["gzip"] > 0 and len(body) >= GZIP_MIN_BYTES:
            response.set_data(gzip.compress(body, compresslevel=GZIP_LEVEL))
            response.headers["Content-Encoding"] = "gzip"
        return response

    @bp.get("/json")
    @guarded(scrape_auth, metrics.settings.auth_check)
    def as_json() -> Response:
        document = metrics.collector.to_dict()
        if metrics.settings.static_labels:
            document["static_labels"] = dict(metrics.settings.static_labels)
        if request.args.get("history", "0") not in ("", "0", "false"):
            document["history"] = metrics.collector.history().to_dict()
        return jsonify(document)

    if metrics.settings.dashboard:
        files = DashboardFiles()

        @bp.get("/dashboard")
        @guarded(scrape_auth, metrics.settings.auth_check)
        def dashboard() -> Response:
            return files.page()

        @bp.get("/dashboard/<name>")
        @guarded(scrape_auth, metrics.settings.auth_check)
        def dashboard_asset(name: str) -> Response | tuple[Response, int]:
            found = files.asset(name)
            return found if found is not None else (jsonify(error="no such file"), 404)

    @bp.get("/health")
    @guarded(scrape_auth, metrics.settings.auth_check)
    def health() -> tuple[Response, int]:
        reasons = metrics.port.health_reasons() if metrics.port is not None else []
        if metrics.collector.tenant_key_problem:
            reasons.append(metrics.collector.tenant_key_problem)
        report, status = health_report(metrics.collector.snapshot(), metrics.settings, reasons)
        return jsonify(report), status

    @bp.post("/reset")
    def reset() -> tuple[Response, int]:
        if not reset_auth.required:
            return jsonify(error="reset is disabled: set GATEWAYZ_METRICS_RESET_TOKEN to enable it"), 403
        if not reset_auth.allow(request.headers.get("Authorization")):
            return _unauthorized(reset_auth, "a valid 'Authorization: Bearer <reset token>' header is required")
        try:
            metrics.collector.reset()
        except OSError as exc:  # e.g. the control file was replaced: refuse, say why
            return jsonify(error=f"reset failed: {exc.strerror or exc}"), 503
        return jsonify(status="reset"), 200

    return bp


def guarded(credentials: Credentials, check: Callable[[Request], bool] | None = None) -> Callable[[View], View]:
    """Require ``credentials`` or a true ``check(request)`` (whichever is configured) before
    the view runs. A check that raises refuses the request (it is logged, never a 500)."""

    def decorate(view: View) -> View:
        if not credentials.required and check is None:
            return view

        def checked(**arguments: str) -> Response | tuple[Response, int]:
            if credentials.required and credentials.allow(request.headers.get("Authorization")):
                return view(**arguments)
            if check is not None and _passes(check):
                return view(**arguments)
            if credentials.required:
                return _unauthorized(credentials, "credentials required")
            return jsonify(error="forbidden by GATEWAYZ_METRICS_AUTH_CHECK"), 403

        checked.__name__ = view.__name__
        return checked  # type: ignore[return-value]

    return decorate


def _passes(check: Callable[[Request], bool]) -> bool:
    try:
        return check(request._get_current_object()) is True  # type: ignore[attr-defined]
    except Exception:
        log.exception("GATEWAYZ_METRICS_AUTH_CHECK raised: the request is refused")
        return False


def _unauthorized(credentials: Credentials, message: str) -> tuple[Response, int]:
    response = jsonify(error=message)
    response.headers["WWW-Authenticate"] = credentials.challenge
    return response, 401
