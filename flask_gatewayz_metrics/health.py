"""The ``/metrics/health`` report and the rule that decides its status.

- ``unhealthy`` (HTTP 503): this process cannot write its metrics file, or the error
  rate over the window is at least ``health_unhealthy_error_rate`` (default 0.5).
- ``degraded`` (HTTP 200): some files in the metrics directory were skipped as
  unreadable or untrusted (another user's, a FIFO, a link), the directory was deleted or
  replaced while serving (the requests recorded into it are lost), or the window's
  error rate is at least ``health_degraded_error_rate`` (default 0.05), or the
  application's ``prometheus_client`` default-registry metrics are not served because
  the server is multi-process (see ``default_registry``), or the configured OTLP export
  fails, is stalled or lacks its extra (see ``otlp``),
  or the server looks multi-process but the metrics directory is private to one
  process (each scrape would show one process's numbers), or the separate metrics port
  (``GATEWAYZ_METRICS_PORT``) cannot be listened on (see ``metrics_port``), or latency
  histogram series recorded with other bucket bounds are skipped (``storage.layout``),
  or this process records API keys without their hash because the directory's
  ``tenant.key`` is unusable (``tenants``).
- ``healthy`` (HTTP 200) otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .default_registry import withheld_reason
from .otlp_status import health_reasons
from .settings import Settings
from .snapshot import Snapshot
from .storage import kinds

_UNTRUSTED = ("untrusted_owner", "not_regular_file", "symlink")


def health_report(snap: Snapshot, settings: Settings, extra: Sequence[str] = ()) -> tuple[dict[str, Any], int]:
    """The report and its HTTP status; ``extra`` are further reasons to be ``degraded``
    (e.g. the metrics port cannot be served)."""
    window = snap.request_window()
    error_rate = window.error_rate
    reasons = []
    if snap.storage_error:
        reasons.append(f"metrics storage unavailable: {snap.storage_error}")
    if error_rate is not None and error_rate >= settings.health_unhealthy_error_rate:
        reasons.append(f"error rate {error_rate:.3f} >= {settings.health_unhealthy_error_rate}")
    status = "unhealthy" if reasons else "healthy"
    if status == "healthy":
        untrusted = sum(1 for p in snap.problems if p.reason in _UNTRUSTED)
        if len(snap.problems) > untrusted:
            reasons.append(f"{len(snap.problems) - untrusted} unreadable file(s) in the metrics directory")
        if untrusted:
            reasons.append(f"{untrusted} file(s) in the metrics directory ignored: not regular files of a trusted user")
        lost = snap.unrecorded.get("directory_lost", 0)
        if lost:
            reasons.append(f"metrics directory was deleted or replaced: {int(lost)} recorded request(s) lost")
        if error_rate is not None and error_rate >= settings.health_degraded_error_rate:
            reasons.append(f"error rate {error_rate:.3f} >= {settings.health_degraded_error_rate}")
        withheld = withheld_reason(snap) if settings.include_app_metrics else None
        if withheld:
            reasons.append(withheld)
        reasons += health_reasons(snap.otlp, snap.taken_at)
        reasons += extra
        if snap.merged.bounds_mismatched:
            reasons.append(
                f"{snap.merged.bounds_mismatched} latency histogram series recorded with other bucket bounds "
                "(GATEWAYZ_METRICS_BUCKETS changed) are not served; POST /metrics/reset clears them"
            )
        if snap.location and snap.location.get("warning"):
            reasons.append(str(snap.location["warning"]))
        if reasons:
            status = "degraded"
    report = {
        "status": status,
        "reasons": reasons,
        "uptime_seconds": snap.uptime_seconds,
        "window_seconds": snap.window_seconds,
        "total_requests": int(snap.total_requests),
        "total_errors": int(snap.total_errors),
        "error_rate": error_rate,
        "avg_latency_seconds": window.average,
        "in_flight": int(snap.in_flight),
        "worker_files": {"live": snap.live_files, "total": snap.worker_files},
        "storage_problems": [{"file": p.path, "reason": p.reason} for p in snap.problems],
        "storage_error": snap.storage_error,
        "dropped": {reason: int(n) for reason, n in sorted(snap.dropped().items())},
        # Counted by compactions: files quarantined, window slots of another geometry lost.
        "storage_errors": {
            str(labels[0]): int(payload[kinds.VALUE]) for labels, payload in snap.series("storage_errors")
        },
        "metrics_directory": snap.location,
        "histogram_bounds_mismatched_series": snap.merged.bounds_mismatched,
    }
    return report, 503 if status == "unhealthy" else 200
