"""Prometheus metrics for Flask AI/LLM gateways, correct under gunicorn with many workers."""

from __future__ import annotations

from ._version import VERSION
from .collector import MetricsCollector, get_metrics_collector
from .custom import Counter, Gauge, Histogram
from .errors import InvalidMetric, MetricsDirectoryError, StorageUnavailable
from .exposition import PrometheusExporter
from .extension import GatewayzMetrics
from .request_state import label_request
from .snapshot import Snapshot
from .tracking import track_request

__version__ = VERSION

__all__ = [
    "Counter",
    "GatewayzMetrics",
    "Gauge",
    "Histogram",
    "InvalidMetric",
    "MetricsCollector",
    "MetricsDirectoryError",
    "PrometheusExporter",
    "Snapshot",
    "StorageUnavailable",
    "__version__",
    "get_metrics_collector",
    "label_request",
    "track_request",
]
