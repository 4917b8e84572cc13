"""OTLP export configuration: the OpenTelemetry SDK's environment variables, checked.

``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT``, else ``OTEL_EXPORTER_OTLP_ENDPOINT`` +
``/v1/metrics``; ``..._HEADERS``, ``..._TIMEOUT``, ``OTEL_METRIC_EXPORT_INTERVAL``,
``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``; or the
``GATEWAYZ_METRICS_OTLP_ENDPOINT`` setting, which wins over the environment. Split from
``otlp.py`` (the export thread), which re-exports these names.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field

from ._version import VERSION
from .setting_values import is_http_url

log = logging.getLogger("flask_gatewayz_metrics")
MAX_PAIRS = 64
DEFAULT_INTERVAL_MS = 60_000
DEFAULT_TIMEOUT_MS = 10_000


@dataclass(frozen=True)
class OtlpConfig:
    """Where and how to export (times in seconds)."""

    endpoint: str
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float = DEFAULT_TIMEOUT_MS / 1000
    interval: float = DEFAULT_INTERVAL_MS / 1000
    resource: dict[str, str] = field(default_factory=dict)

    @property
    def shown_endpoint(self) -> str:
        """The endpoint without credentials or query, safe for logs and health."""
        return shown_url(self.endpoint)


def shown_url(url: str) -> str:
    """``url`` without credentials, query or fragment (never raises: a port that is not
    one is left out)."""
    try:
        parts = urllib.parse.urlsplit(url)
        hostname = parts.hostname or ""
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return "(not a valid URL)"
    if ":" in hostname:
        hostname = f"[{hostname}]"  # an IPv6 literal keeps its brackets
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ":(not a port)"
    return f"{parts.scheme}://{hostname}{port}{parts.path}"


def endpoint_problem(url: str) -> str | None:
    """Why ``url`` cannot be an OTLP endpoint (None: it can): an http(s) URL with a host,
    a port in 1..65535 if any, and no credentials (``user:password@`` would be shown in
    errors; http.client does not send them anyway: give them as a header instead)."""
    if not is_http_url(url):
        return "it is not an http(s) URL"
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname  # (parsed here: raises for an unclosed IPv6 bracket)
    except ValueError:
        return "it is not a valid URL"
    try:
        port_usable = parts.port != 0
    except ValueError:  # not a number, or past 65535
        port_usable = False
    if not port_usable:
        return "its port is not a number in 1..65535"
    if not host:
        return "it has no host"
    if "@" in parts.netloc:
        return "it holds credentials (user:password@); give them in OTEL_EXPORTER_OTLP_HEADERS instead"
    return None


def otlp_config(setting: str | None, environ: Mapping[str, str] | None = None) -> OtlpConfig | None:
    """The export configuration, or None when no endpoint is set (or ``OTEL_SDK_DISABLED``).

    Malformed environment values are logged and replaced by their defaults: metrics
    never keep an application from starting. A malformed ``setting`` (the app's own
    configuration) raises ``ValueError`` naming it.
    """
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    endpoint = setting or env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "").strip()
    if not endpoint:
        base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
        if not base:
            return None
        endpoint = base.rstrip("/") + "/v1/metrics"  # the spec: the base URL gets the signal's path
    problem = endpoint_problem(endpoint)
    if problem is not None:
        if setting:
            raise ValueError(f"GATEWAYZ_METRICS_OTLP_ENDPOINT {shown_url(setting)!r} is refused: {problem}")
        log.warning("OTLP export disabled: endpoint %r is refused: %s", shown_url(endpoint)[:200], problem)
        return None
    # A scheme is case-insensitive (RFC 3986, 3.1): ``HTTP://`` is http, written the usual way.
    scheme, rest = endpoint.split(":", 1)
    endpoint = scheme.lower() + ":" + rest
    protocol = env.get("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol and protocol.strip() != "http/protobuf":
        log.warning("OTLP protocol %r is not supported; exporting with http/protobuf", protocol[:40])
    headers_raw = env.get("OTEL_EXPORTER_OTLP_METRICS_HEADERS") or env.get("OTEL_EXPORTER_OTLP_HEADERS", "")
    timeout_raw = env.get("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT") or env.get("OTEL_EXPORTER_OTLP_TIMEOUT")
    resource = {
        "telemetry.sdk.name": "flask_gatewayz_metrics",
        "telemetry.sdk.language": "python",
        "telemetry.sdk.version": VERSION,
        "host.name": socket.gethostname(),
        **parse_pairs(env.get("OTEL_RESOURCE_ATTRIBUTES", ""), "OTEL_RESOURCE_ATTRIBUTES"),
    }
    service = env.get("OTEL_SERVICE_NAME", "").strip()
    if service:
        resource["service.name"] = service
    resource.setdefault("service.name", f"unknown_service:{os.path.basename(sys.executable) or 'python'}")
    return OtlpConfig(
        endpoint=endpoint,
        headers=parse_pairs(headers_raw, "OTEL_EXPORTER_OTLP_HEADERS"),
        timeout=_milliseconds(timeout_raw, DEFAULT_TIMEOUT_MS, 1, 600_000, "OTEL_EXPORTER_OTLP_TIMEOUT") / 1000,
        interval=_milliseconds(
            env.get("OTEL_METRIC_EXPORT_INTERVAL"), DEFAULT_INTERVAL_MS, 100, 86_400_000, "OTEL_METRIC_EXPORT_INTERVAL"
        ) / 1000,
        resource=resource,
    )  # fmt: skip


def parse_pairs(raw: str, name: str) -> dict[str, str]:
    """``key1=value1,key2=value2`` (percent-encoded, the W3C baggage form the spec uses);
    malformed entries are skipped with a warning naming ``name``, never their values."""
    out: dict[str, str] = {}
    for item in raw.split(",")[:MAX_PAIRS] if raw.strip() else ():
        key, sep, value = item.partition("=")
        key, value = urllib.parse.unquote(key.strip()), urllib.parse.unquote(value.strip())
        if not sep or not key or any(ord(c) < 32 or ord(c) == 127 for c in key + value) or len(key + value) > 4096:
            log.warning("%s: skipped a malformed entry (expected key=value)", name)
            continue
        out[key] = value
    return out


def _milliseconds(raw: str | None, default: int, low: int, high: int, name: str) -> float:
    if raw is None or not raw.strip():
        return float(default)
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and low <= value <= high):
        log.warning("%s=%r is not a number of milliseconds in [%d, %d]; using %d", name, raw[:40], low, high, default)
        return float(default)
    return value
