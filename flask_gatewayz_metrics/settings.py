"""Configuration of the Flask extension: ``GATEWAYZ_METRICS_*`` keys and their defaults.

Constructor keyword arguments of ``GatewayzMetrics`` (the lower-case key without the
prefix, e.g. ``window_seconds=60``) are defaults; the app's config overrides them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

PREFIX = "GATEWAYZ_METRICS_"
STORAGE_KEYS = (
    "dir", "window_seconds", "window_slots", "error_status", "strict",
    "label_limits", "allowed_providers", "allowed_models",
)
"""Settings that shape the collector: if any is given, the app gets its own collector."""
SECRET_KEYS = (
    "reset_token", "reset_token_file", "auth_token", "auth_token_file",
    "auth_username", "auth_password", "auth_password_file",
)
"""Settings that may also come from environment variables of the same (prefixed) name,
so credentials stay out of code, config files and the process list."""


@dataclass(frozen=True)
class Settings:
    dir: str | None = None
    window_seconds: float = 300.0
    window_slots: int = 5
    error_status: int = 500
    strict: bool = False
    label_limits: Mapping[str, int] | None = None
    allowed_providers: str | Sequence[str] | None = None
    allowed_models: str | Sequence[str] | None = None
    url_prefix: str = "/metrics"
    record_own_routes: bool = False
    include_app_metrics: bool = True
    unmatched_endpoint: str = "unmatched"
    reset_token: str | None = None
    reset_token_file: str | None = None
    auth_token: str | None = None
    auth_token_file: str | None = None
    auth_username: str | None = None
    auth_password: str | None = None
    auth_password_file: str | None = None
    health_degraded_error_rate: float = 0.05
    health_unhealthy_error_rate: float = 0.5

    @classmethod
    def resolve(cls, config: Mapping[str, Any], options: Mapping[str, Any]) -> tuple[Settings, bool]:
        """Settings from ``options`` overridden by ``config``; and whether any storage key was given."""
        known = {f.name for f in fields(cls)}
        unknown = set(options) - known
        if unknown:
            raise TypeError(
                f"unknown GatewayzMetrics option(s): {', '.join(sorted(unknown))}; "
                f"known: {', '.join(sorted(known))}"
            )
        values = dict(options)
        for name in known:
            key = PREFIX + name.upper()
            if key in config:
                values[name] = config[key]
            elif name in SECRET_KEYS and os.environ.get(key):
                values[name] = os.environ[key]
        custom_storage = any(values.get(name) is not None for name in STORAGE_KEYS)
        return cls(**values), custom_storage

    def allowed_labels(self) -> dict[str, list[str]]:
        """Allowlists by label name; a string is read as comma-separated values."""
        out = {}
        for name, values in (("provider", self.allowed_providers), ("model", self.allowed_models)):
            if values is not None:
                items = values.split(",") if isinstance(values, str) else list(values)
                out[name] = [item.strip() for item in items if item.strip()]
        return out
