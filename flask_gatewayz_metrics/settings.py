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
from deep inside the collector.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from .prices import PriceTable, load_prices
from .static_labels import parse_static_labels
from .storage.layout import DEFAULT_WINDOW_SECONDS, DEFAULT_WINDOW_SLOTS, MAX_HISTOGRAM_BUCKETS

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
    """Finite upper bounds of the since-start latency histograms (None: ``layout.HISTOGRAM_BOUNDS``)."""
    native_histograms: bool | None = None
    """Record native-histogram buckets for protobuf scrapes (None: the environment
    variable GATEWAYZ_METRICS_NATIVE_HISTOGRAMS, else off)."""

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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(low: float, high: float) -> Callable[[Any], float]:
    def checked(value: Any) -> float:
        if not _is_number(value):
            raise TypeError
        number = float(value)
        if not (math.isfinite(number) and low <= number <= high):
            raise ValueError
        return number

    return checked


def _integer(low: int, high: int) -> Callable[[Any], int]:
    def checked(value: Any) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError
        if not low <= value <= high:
            raise ValueError
        return value

    return checked


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError
    return value


def _text(required: bool) -> Callable[[Any], str | None]:
    def checked(value: Any) -> str | None:
        if value is None and not required:
            return None
        if not isinstance(value, str):
            raise TypeError
        if required and not value:
            raise ValueError
        return value

    return checked


def _path(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise TypeError
    if not value or "\0" in value:
        raise ValueError
    return value


def _url_prefix(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError
    if not value.startswith("/") or any(c.isspace() for c in value):
        raise ValueError
    return value


def _limits(value: Any) -> Mapping[str, int] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise TypeError
    checked = {}
    for label, limit in value.items():
        if not isinstance(label, str) or not isinstance(limit, int) or isinstance(limit, bool):
            raise TypeError
        if limit < 0:
            raise ValueError
        checked[label] = limit
    return checked


def _patterns(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise TypeError
    if not all(isinstance(pattern, str) for pattern in value):
        raise TypeError
    for pattern in value:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"{pattern!r}: {exc}") from None
    return tuple(value)


def _callable(value: Any) -> Callable[[Any], bool] | None:
    if value is not None and not callable(value):
        raise TypeError
    return value  # type: ignore[no-any-return]


def _uids(value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple, set, frozenset)):
        raise TypeError
    if not all(isinstance(uid, int) and not isinstance(uid, bool) for uid in value):
        raise TypeError
    if any(uid < 0 for uid in value):
        raise ValueError
    return tuple(sorted(value))


def _label_values(value: Any) -> str | tuple[str, ...] | None:
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, (list, tuple, set, frozenset)):
        raise TypeError
    if not all(isinstance(item, str) for item in value):
        raise TypeError
    return tuple(value)


def _prices(value: Any) -> PriceTable | None:
    return None if value is None else load_prices(value)


def _static_labels(value: Any) -> Mapping[str, str] | None:
    return None if value is None else parse_static_labels(value) or None


def _port(value: Any) -> int | None:
    if isinstance(value, str) and value.isdigit() and len(value) <= 5:  # from the environment
        value = int(value)
    return None if value is None else _integer(1, 65535)(value)


def _address(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError
    if not value or len(value) > 255 or any(c.isspace() or c in "/[]" for c in value):
        raise ValueError
    return value


def _http_url(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError
    if not value.startswith(("http://", "https://")) or any(c.isspace() for c in value) or len(value) > 2048:
        raise ValueError
    return value


SEMCONV_CHOICES = ("both", "metrics", "otlp", "off")
"""Where the OpenTelemetry semantic conventions' families are served (as ``exposition``)."""


def _semconv(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError
    if value.strip().lower() not in SEMCONV_CHOICES:
        raise ValueError
    return value.strip().lower()


_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}")


def _tenant_headers(value: Any) -> Mapping[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise TypeError
    checked = {}
    for label, header in value.items():
        if not isinstance(label, str) or not isinstance(header, str):
            raise TypeError
        if label not in ("team", "api_key", "user") or not _HEADER_NAME.fullmatch(header):
            raise ValueError(f"{label!r}: {header!r}")
        checked[label] = header
    return checked


def _buckets(value: Any) -> tuple[float, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):  # from the environment: "0.1,0.5,1"
        try:
            value = [float(part) for part in value.split(",")] if len(value) <= 4096 else None
        except ValueError:
            raise ValueError("not a comma-separated list of numbers") from None
    if not isinstance(value, (list, tuple)) or not all(_is_number(b) for b in value):
        raise TypeError
    bounds = [float(b) for b in value]
    if bounds and bounds[-1] == math.inf:  # prometheus_client's style: +Inf is implied
        bounds.pop()
    if not 1 <= len(bounds) <= MAX_HISTOGRAM_BUCKETS:
        raise ValueError(f"{len(bounds)} finite bounds")
    if not all(math.isfinite(b) and b > 0 for b in bounds):
        raise ValueError("a bound is not a finite number > 0")
    if any(low >= high for low, high in itertools.pairwise(bounds)):
        raise ValueError("the bounds are not strictly increasing")
    return tuple(bounds)


_CHECKS: dict[str, Callable[[Any], Any]] = {
    "dir": _path,
    "window_seconds": _number(0.0, 366 * 86400.0),
    "window_slots": _integer(1, 1024),
    "error_status": _integer(100, 600),
    "strict": _flag,
    "label_limits": _limits,
    "allowed_providers": _label_values,
    "allowed_models": _label_values,
    "trusted_uids": _uids,
    "url_prefix": _url_prefix,
    "record_own_routes": _flag,
    "excluded_paths": _patterns,
    "auth_check": _callable,
    "include_app_metrics": _flag,
    "unmatched_endpoint": _text(required=True),
    "dashboard": _flag,
    "health_degraded_error_rate": _number(0.0, 1.0),
    "health_unhealthy_error_rate": _number(0.0, 1.0),
    "prices": _prices,
    "otlp_endpoint": _http_url,
    "allowed_teams": _label_values,
    "tenant_headers": _tenant_headers,
    "tenant_hash_key": _text(required=False),
    "static_labels": _static_labels,
    "port": _port,
    "port_address": _address,
    "semconv": _semconv,
    "buckets": _buckets,
    "native_histograms": lambda value: None if value is None else _flag(value),
    **{name: _text(required=False) for name in SECRET_KEYS},
}
_EXPECTED: dict[str, str] = {
    "dir": "a path (str or os.PathLike) to a directory",
    "window_seconds": "a number of seconds between 0 (since start) and one year",
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
    **dict.fromkeys(SECRET_KEYS, "a str (or None)"),
}
