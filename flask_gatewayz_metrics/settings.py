"""Configuration of the Flask extension: ``GATEWAYZ_METRICS_*`` keys, their defaults and types.

Precedence, highest first:

1. the app's config (``app.config["GATEWAYZ_METRICS_WINDOW_SECONDS"] = 60``);
2. keyword arguments of ``GatewayzMetrics`` (the lower-case key without the prefix,
   e.g. ``window_seconds=60``);
3. for secrets (``SECRET_KEYS``) and per-deployment keys (``ENV_KEYS``), environment
   variables of the same prefixed name, so credentials stay out of code, config files
   and the process list;
4. the defaults of ``Settings``.

Every value is type-checked when it is read (``init_app`` time), and a wrong one raises
``TypeError`` / ``ValueError`` naming the key and what it expects, never a bare error
from deep inside the collector. The table is this module: defaults (``Settings``), the
checker of each key's type (``_CHECKS``, built from ``setting_values``) and what it
expects (``_EXPECTED``), and the precedence (``Settings.resolve``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from . import setting_values
from .prices import PriceTable
from .setting_values import SEMCONV_CHOICES
from .storage.kinds import MAX_HISTOGRAM_BUCKETS
from .storage.layout import DEFAULT_WINDOW_SECONDS, DEFAULT_WINDOW_SLOTS

PREFIX = "GATEWAYZ_METRICS_"
STORAGE_KEYS = (
    "dir", "window_seconds", "window_slots", "error_status", "strict",
    "label_limits", "allowed_providers", "allowed_models", "trusted_uids",
    "allowed_teams", "buckets", "native_histograms",
)
"""Settings that shape the collector: if any is given, the app gets its own collector."""
SECRET_KEYS = (
    "reset_token", "reset_token_file", "auth_token", "auth_token_file",
    "auth_username", "auth_password", "auth_password_file",
)
"""Settings that may also come from environment variables of the same (prefixed) name."""
__all__ = [
    "ENV_KEYS", "PREFIX", "SECRET_KEYS", "SEMCONV_CHOICES", "STORAGE_KEYS", "Settings", "check",
    "collector_options_from_env",
]  # fmt: skip
ENV_KEYS = ("static_labels", "port", "port_address", "semconv", "buckets")
"""Non-secret settings that may also come from environment variables (a deployment sets
them per server): ``GATEWAYZ_METRICS_STATIC_LABELS=region=eu-west-1,cluster=c1``,
``GATEWAYZ_METRICS_PORT=9100``, ``GATEWAYZ_METRICS_PORT_ADDRESS=0.0.0.0``,
``GATEWAYZ_METRICS_SEMCONV=otlp``, ``GATEWAYZ_METRICS_BUCKETS=0.1,0.5,1,5,30``."""


@dataclass(frozen=True)
class Settings:
    """Every setting of the extension, with its default (the one place defaults live)."""

    dir: str | None = None
    window_seconds: float = DEFAULT_WINDOW_SECONDS
    window_slots: int = DEFAULT_WINDOW_SLOTS
    error_status: int = 500
    strict: bool = False
    label_limits: Mapping[str, int] | None = None
    allowed_providers: str | Sequence[str] | None = None
    allowed_models: str | Sequence[str] | None = None
    trusted_uids: tuple[int, ...] | None = None
    url_prefix: str = "/metrics"
    record_own_routes: bool = False
    excluded_paths: tuple[str, ...] = ()
    include_app_metrics: bool = True
    unmatched_endpoint: str = "unmatched"
    dashboard: bool = True
    reset_token: str | None = None
    reset_token_file: str | None = None
    auth_token: str | None = None
    auth_token_file: str | None = None
    auth_username: str | None = None
    auth_password: str | None = None
    auth_password_file: str | None = None
    auth_check: Callable[[Any], bool] | None = None
    health_degraded_error_rate: float = 0.05
    health_unhealthy_error_rate: float = 0.5
    prices: PriceTable | None = None
    otlp_endpoint: str | None = None
    allowed_teams: str | Sequence[str] | None = None
    tenant_headers: Mapping[str, str] | None = None
    tenant_hash_key: str | None = None
    static_labels: Mapping[str, str] | None = None
    port: int | None = None
    port_address: str = "127.0.0.1"
    semconv: str = "both"
    buckets: tuple[float, ...] | None = None
    """Finite upper bounds of the since-start latency histograms (None: ``kinds.HISTOGRAM_BOUNDS``)."""
    native_histograms: bool | None = None
    """Record native-histogram buckets for protobuf scrapes (None: the environment
    variable GATEWAYZ_METRICS_NATIVE_HISTOGRAMS, else off)."""
    app_name: str | None = None
    """This app's own numbers in ``apps/named-<app_name>`` of the metrics directory,
    whatever order the apps of a process are created in (None: automatic, by order)."""

    @classmethod
    def resolve(cls, config: Mapping[str, Any], options: Mapping[str, Any]) -> tuple[Settings, bool]:
        """Settings from ``config`` over ``options`` over secret env variables over defaults,
        each value checked; and whether any storage key was given."""
        known = {f.name for f in fields(cls)}
        unknown = set(options) - known
        if unknown:
            raise TypeError(
                f"unknown GatewayzMetrics option(s): {', '.join(sorted(unknown))}; "
                f"known: {', '.join(sorted(known))}"
            )
        values: dict[str, Any] = {}
        for name in known:
            key = PREFIX + name.upper()
            if key in config:
                values[name] = check(name, config[key], key)
            elif name in options:
                values[name] = check(name, options[name], f"GatewayzMetrics({name}=...)")
            elif name in SECRET_KEYS and os.environ.get(key):
                values[name] = os.environ[key]
            elif name in ENV_KEYS and os.environ.get(key, "").strip():
                values[name] = check(name, os.environ[key].strip(), f"environment variable {key}")
        custom_storage = any(values.get(name) is not None for name in STORAGE_KEYS)
        settings = cls(**values)
        if settings.health_degraded_error_rate > settings.health_unhealthy_error_rate:
            raise ValueError(
                f"{PREFIX}HEALTH_DEGRADED_ERROR_RATE ({settings.health_degraded_error_rate}) must not be above "
                f"{PREFIX}HEALTH_UNHEALTHY_ERROR_RATE ({settings.health_unhealthy_error_rate})"
            )
        return settings, custom_storage

    def allowed_labels(self) -> dict[str, list[str]]:
        """Allowlists by label name; a string is read as comma-separated values."""
        out = {}
        for name, values in (
            ("provider", self.allowed_providers), ("model", self.allowed_models), ("team", self.allowed_teams),
        ):  # fmt: skip
            if values is not None:
                items = values.split(",") if isinstance(values, str) else list(values)
                out[name] = [item.strip() for item in items if item.strip()]
        return out


def collector_options_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Keyword arguments for the process-wide ``MetricsCollector`` from environment variables.

    ``GATEWAYZ_METRICS_WINDOW_SECONDS``, ``_WINDOW_SLOTS``, ``_ERROR_STATUS`` and
    ``_BUCKETS`` are parsed and checked like config values (a malformed one raises an
    error naming it); unset ones are left to the defaults of ``Settings``.
    """
    env = os.environ if environ is None else environ
    parsers: dict[str, Callable[[str], float]] = {"window_seconds": float, "window_slots": int, "error_status": int}
    options: dict[str, Any] = {}
    for name, parse in parsers.items():
        key = PREFIX + name.upper()
        raw = env.get(key, "").strip()
        if not raw:
            continue
        try:
            value = parse(raw)
        except ValueError:
            raise ValueError(f"environment variable {key}={raw!r} is not {_EXPECTED[name]}") from None
        options[name] = check(name, value, f"environment variable {key}")
    raw = env.get(PREFIX + "BUCKETS", "").strip()
    if raw:
        options["buckets"] = check("buckets", raw, f"environment variable {PREFIX}BUCKETS")
    return options


def check(name: str, value: Any, where: str) -> Any:
    """``value`` for setting ``name`` if it has the right type and range, else a
    ``TypeError`` / ``ValueError`` naming ``where`` it came from and what is expected.
    Returns the normalised value."""
    try:
        return _CHECKS[name](value)
    except (TypeError, ValueError) as exc:
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        detail = f" ({exc})" if str(exc) else ""  # e.g. which model of a price table is wrong
        raise type(exc)(f"{where} must be {_EXPECTED[name]}, got {type(value).__name__} {shown}{detail}") from None


_CHECKS: dict[str, Callable[[Any], Any]] = {
    "dir": setting_values.path,
    "window_seconds": setting_values.window_seconds,
    "window_slots": setting_values.integer(1, 1024),
    "error_status": setting_values.integer(100, 600),
    "strict": setting_values.flag,
    "label_limits": setting_values.limits,
    "allowed_providers": setting_values.label_values,
    "allowed_models": setting_values.label_values,
    "trusted_uids": setting_values.uids,
    "url_prefix": setting_values.url_prefix,
    "record_own_routes": setting_values.flag,
    "excluded_paths": setting_values.patterns,
    "auth_check": setting_values.function,
    "include_app_metrics": setting_values.flag,
    "unmatched_endpoint": setting_values.text(required=True),
    "dashboard": setting_values.flag,
    "health_degraded_error_rate": setting_values.number(0.0, 1.0),
    "health_unhealthy_error_rate": setting_values.number(0.0, 1.0),
    "prices": setting_values.prices,
    "otlp_endpoint": setting_values.http_url,
    "allowed_teams": setting_values.label_values,
    "tenant_headers": setting_values.tenant_headers,
    "tenant_hash_key": setting_values.text(required=False),
    "static_labels": setting_values.static_labels,
    "port": setting_values.port,
    "port_address": setting_values.address,
    "semconv": setting_values.semconv,
    "buckets": setting_values.buckets,
    "native_histograms": lambda value: None if value is None else setting_values.flag(value),
    "app_name": setting_values.app_name,
    **{name: setting_values.text(required=False) for name in SECRET_KEYS},
}
_EXPECTED: dict[str, str] = {
    "dir": "a path (str or os.PathLike) to a directory",
    "window_seconds": "a number of seconds: 0 (since start), or from 0.001 to one year",
    "window_slots": "an int between 1 and 1024",
    "error_status": "an int HTTP status between 100 and 600",
    "strict": "a bool",
    "label_limits": 'a dict of label name to a non-negative int, e.g. {"model": 500}',
    "allowed_providers": "a list of str or a comma-separated str",
    "allowed_models": "a list of str or a comma-separated str",
    "trusted_uids": "a list of int uids (besides this process's own)",
    "url_prefix": "a str path starting with '/' (e.g. '/metrics')",
    "record_own_routes": "a bool",
    "auth_check": "a callable taking the request and returning True to allow it",
    "excluded_paths": "a list of regular expressions (str) matched at the start of the path",
    "include_app_metrics": "a bool",
    "unmatched_endpoint": "a non-empty str",
    "dashboard": "a bool",
    "health_degraded_error_rate": "a number between 0 and 1",
    "health_unhealthy_error_rate": "a number between 0 and 1",
    "prices": 'a dict (or the path of a JSON file) of model to USD per million tokens, '
    'e.g. {"gpt-4o": {"input": 2.5, "output": 10, "cached_input": 1.25}}',
    "otlp_endpoint": "an http:// or https:// URL of an OTLP/HTTP metrics receiver (e.g. http://localhost:4318/v1/metrics)",
    "allowed_teams": "a list of str or a comma-separated str",
    "tenant_headers": 'a dict of tenant label (team, api_key, user) to a request header name, '
    'e.g. {"team": "X-Team", "api_key": "Authorization"}',
    "tenant_hash_key": "a str (the key API keys are hashed with; or None)",
    "static_labels": 'a dict of label name to value, or "name=value,name=value" (percent-encoded values), '
    "with Prometheus label names (not le, quantile, job, instance) and values of 1-256 characters",
    "port": "an int TCP port (1-65535) for a separate metrics listener, or None",
    "port_address": "a host name or IP address (no brackets) for the metrics port to bind, e.g. '127.0.0.1' or '::'",
    "semconv": "where the OpenTelemetry conventions' families go: 'both' (/metrics and OTLP), 'otlp', 'metrics' "
    "or 'off'",
    "buckets": f"1 to {MAX_HISTOGRAM_BUCKETS} finite, strictly increasing upper bounds > 0 in seconds "
    "(a list of numbers, or a comma-separated str; a last +Inf is implied), e.g. [0.1, 0.5, 1, 5, 30]",
    "native_histograms": "a bool (or None: the GATEWAYZ_METRICS_NATIVE_HISTOGRAMS environment variable)",
    "app_name": "a name of 1-64 letters, digits, '_' and '.', starting with a letter (or None)",
    **dict.fromkeys(SECRET_KEYS, "a str (or None)"),
}
