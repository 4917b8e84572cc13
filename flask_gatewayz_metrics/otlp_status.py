"""What every process knows of the OTLP export: the holder's status file and this
process's exporter, for ``/metrics/json`` (``otlp``) and ``/metrics/health``.

The exporter that writes the file lives in ``otlp.py``; this module only reads, so the
collector and health can report on the export without importing the export machinery
(``otlp.py`` re-exports these names).
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Mapping
from typing import Any, Protocol

from . import election

LOCK_NAME = "otlp.lock"
STATUS_NAME = "otlp.status.json"
MAX_STATUS_BYTES = 16_384
EXTRA_HINT = "pip install 'flask_gatewayz_metrics[otlp]'"
_STATUS_TYPES: dict[str, tuple[type, ...]] = {
    "pid": (int,), "endpoint": (str,), "interval_seconds": (float,), "last_attempt": (float,),
    "last_success": (float,), "last_error": (str,), "consecutive_failures": (int,), "data_points": (int,),
    "start_time": (float,), "epoch": (int,), "period_start": (float,),
}  # fmt: skip


class Reporter(Protocol):
    """An exporter as far as reporting goes (``otlp.OtlpExporter``)."""

    def report(self) -> dict[str, Any]:
        """What ``/metrics/json`` shows under ``otlp``."""
        ...


_exporters: weakref.WeakValueDictionary[str, Reporter] = weakref.WeakValueDictionary()
"""This process's exporter per metrics directory (registered by ``otlp.OtlpExporter``)."""


def register(directory: str, exporter: Reporter) -> None:
    """Make ``exporter`` the one ``otlp_report(directory)`` asks."""
    _exporters[directory] = exporter


def unregister(directory: str) -> None:
    """Forget the exporter of ``directory`` (it was closed)."""
    _exporters.pop(directory, None)


def otlp_report(directory: str) -> dict[str, Any] | None:
    """The export report for the metrics directory ``directory`` (None: no export configured)."""
    exporter = _exporters.get(directory)
    return None if exporter is None else exporter.report()


def health_reasons(report: Mapping[str, Any] | None, now: float) -> list[str]:
    """Why OTLP export makes health ``degraded`` (empty when it is fine or not configured)."""
    if report is None:
        return []
    endpoint = report.get("endpoint")
    if not report.get("extra_installed"):
        return [f"OTLP export to {endpoint} configured but the otlp extra is not installed ({EXTRA_HINT})"]
    failures = report.get("consecutive_failures")
    if isinstance(failures, int) and failures > 0:
        return [f"OTLP export to {endpoint} failing ({failures} attempt(s) in a row): {report.get('last_error')}"]
    last = report.get("last_attempt")
    interval = report.get("interval_seconds")
    if isinstance(last, float) and isinstance(interval, float) and now - last > 3 * interval + 60:
        return [f"OTLP export to {endpoint} stalled: last attempt {now - last:.0f}s ago"]
    return []


def read_status(directory: str) -> dict[str, Any] | None:
    """The holder's last status (bounded, type-checked), or None."""
    return election.read_status(directory, STATUS_NAME, MAX_STATUS_BYTES, _STATUS_TYPES)


def holder_pid(directory: str) -> int | None:
    """The pid written to ``otlp.lock`` by the process that last took the export role."""
    try:
        with open(os.path.join(directory, LOCK_NAME), "rb") as f:
            return int(f.read(32).strip() or b"x")
    except (OSError, ValueError):
        return None
