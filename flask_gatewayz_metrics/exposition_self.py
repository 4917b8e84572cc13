"""The metrics system's own state as metric families: what it dropped and quarantined, its
worker files, label overflow, and its identity (version, start time, uptime)."""

from __future__ import annotations

import platform

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from ._version import VERSION
from .exposition_common import fill
from .snapshot import Snapshot
from .storage import kinds

DROP_REASONS = (
    "invalid_latency", "invalid_status", "invalid_label", "invalid_value", "storage_unavailable", "internal_error",
)
"""Every reason of ``gatewayz_metrics_dropped_total`` (served at 0 from the start)."""
STORAGE_ERROR_REASONS = (
    "empty", "truncated", "foreign", "wrong_version", "corrupt_header", "corrupt_record", "unreadable",
    "window_geometry",
)
"""Every reason of ``gatewayz_metrics_storage_errors_total`` (served at 0 from the start)."""


def identity_families(snap: Snapshot) -> list[Metric]:
    """Build information and the start time of the server (its metrics directory)."""
    build = GaugeMetricFamily(
        "gatewayz_build_info",
        "Version of flask_gatewayz_metrics and of Python (value 1).",
        labels=["version", "python_version"],
    )
    build.add_metric([VERSION, platform.python_version()], 1.0)
    start = GaugeMetricFamily("gatewayz_start_time_seconds", "Unix time the server (metrics directory) started.")
    start.add_metric([], snap.start_time)
    return [build, start]


def label_overflow_family(snap: Snapshot) -> Metric:
    """Label values recorded as "other" because their label was at its limit, per label."""
    overflow = CounterMetricFamily(
        "gatewayz_metrics_label_overflow_total",
        "Label values recorded as 'other' (the label was at its limit).",
        labels=["label"],
    )
    fill(overflow, snap, "label_overflow")
    return overflow


def self_families(snap: Snapshot) -> list[Metric]:
    """Uptime, dropped inputs and storage errors by reason, worker files by writer state."""
    uptime = GaugeMetricFamily("gatewayz_uptime_seconds", "Seconds since the server (metrics directory) started.")
    uptime.add_metric([], snap.uptime_seconds)
    dropped = CounterMetricFamily(
        "gatewayz_metrics_dropped_total",
        "Metric inputs dropped as invalid or unrecordable, by reason.",
        labels=["reason"],
    )
    # Every known reason from the start: rate() and increase() only see a counter's
    # first event if the series existed (at 0) before it.
    for reason, count in sorted({**dict.fromkeys(DROP_REASONS, 0.0), **snap.dropped()}.items()):
        dropped.add_metric([reason], count)
    storage_errors = CounterMetricFamily(
        "gatewayz_metrics_storage_errors_total",
        "Unreadable metrics files moved to quarantine/, by reason.",
        labels=["reason"],
    )
    errors = dict.fromkeys(STORAGE_ERROR_REASONS, 0.0)
    errors.update({str(labels[0]): payload[kinds.VALUE] for labels, payload in snap.series("storage_errors")})
    for error_reason, count in sorted(errors.items()):
        storage_errors.add_metric([error_reason], count)
    files = GaugeMetricFamily(
        "gatewayz_metrics_worker_files", "Worker files merged into this scrape, by writer state.", labels=["state"]
    )
    files.add_metric(["live"], snap.live_files)
    files.add_metric(["dead"], snap.worker_files - snap.live_files)
    return [uptime, dropped, storage_errors, files]
