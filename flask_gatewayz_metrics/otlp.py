"""OTLP/HTTP push export of the merged metrics, by exactly one process of a server.

Configured like every OpenTelemetry SDK (``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT``, else
``OTEL_EXPORTER_OTLP_ENDPOINT`` + ``/v1/metrics``; ``..._HEADERS``, ``..._TIMEOUT``,
``OTEL_METRIC_EXPORT_INTERVAL``, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``) or
by the ``GATEWAYZ_METRICS_OTLP_ENDPOINT`` setting, which wins over the environment.

Every worker runs an export thread, started on its first request (a thread started
before a fork does not survive it, and uWSGI forks without at-fork hooks, so the thread
is (re)started whenever the pid changed). Each interval, a thread that does not export
tries a non-blocking ``flock`` on ``otlp.lock`` in the metrics directory; the one holding
it exports what ``/metrics`` serves (already merged across workers), so N workers never
multiply the numbers, and when the holder dies (even SIGKILL, the kernel drops its lock)
another worker takes over within one interval. The holder writes its pid to the lock
file and its last result to ``otlp.status.json``, which any worker's ``/metrics/health``
and ``/metrics/json`` report. Failures are retried with exponential backoff (capped at
the interval); a slow or dead collector only ever blocks the export thread.

Values are cumulative from the server's start (the control file's start time); after a
reset the holder starts a new cumulative period, recorded in the status file so that a
holder taking over continues the same period.

The configuration is read in ``otlp_config.py`` and the status file and report in
``otlp_status.py``; the election itself is ``election.py``, shared with the metrics
port. Their public names are re-exported here.
"""

from __future__ import annotations

import logging
import math
import os
import random
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client.metrics_core import Metric

from . import election, otlp_status
from ._version import VERSION
from .otlp_config import DEFAULT_INTERVAL_MS, DEFAULT_TIMEOUT_MS, MAX_PAIRS, OtlpConfig, otlp_config, parse_pairs
from .otlp_encode import encode_request
from .otlp_status import (
    EXTRA_HINT,
    LOCK_NAME,
    MAX_STATUS_BYTES,
    STATUS_NAME,
    _exporters,
    health_reasons,
    holder_pid,
    otlp_report,
    read_status,
)
from .storage.control import ControlFile

__all__ = [
    "DEFAULT_INTERVAL_MS",
    "DEFAULT_TIMEOUT_MS",
    "EXTRA_HINT",
    "LOCK_NAME",
    "MAX_PAIRS",
    "MAX_RESPONSE_BYTES",
    "MAX_STATUS_BYTES",
    "STATUS_NAME",
    "OtlpConfig",
    "OtlpExporter",
    "_exporters",
    "extra_installed",
    "families_of",
    "health_reasons",
    "holder_pid",
    "otlp_config",
    "otlp_report",
    "parse_pairs",
    "read_status",
    "retry_delay",
]

log = logging.getLogger("flask_gatewayz_metrics")
MAX_RESPONSE_BYTES = 1 << 20


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an error, never followed: urllib would re-send the POST as a GET
    without its body (the export lost, yet answered 200) to any host the ``Location``
    names, with the configured headers (API keys) attached."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects())
"""urllib's default handlers (proxies from the environment, http, https) without redirects."""


def retry_delay(failures: int, interval: float) -> float:
    """Seconds before the next attempt after ``failures`` failed ones in a row: doubling
    from 1 s (or an eighth of a short interval), never longer than the interval, with
    jitter so that many servers do not retry in step."""
    base = min(1.0, interval / 8)
    growth = float(2 ** min(max(failures, 1) - 1, 30))
    return min(interval, base * growth) * random.uniform(0.8, 1.0)


def extra_installed() -> bool:
    """Whether the ``otlp`` extra (opentelemetry-proto) can be imported."""
    try:
        import opentelemetry.proto.collector.metrics.v1.metrics_service_pb2  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


class OtlpExporter:
    """The export thread of one process: elected through ``otlp.lock`` in ``directory``."""

    def __init__(self, config: OtlpConfig, families: Callable[[], Iterable[Metric]], directory: str) -> None:
        self.config = config
        self.families = families
        self.directory = directory
        self.installed = extra_installed()
        if not self.installed:
            log.warning(
                "OTLP export to %s is configured but the otlp extra is not installed (%s); not exporting",
                config.shown_endpoint, EXTRA_HINT,
            )  # fmt: skip
        self._pid = -1
        self._start_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock_fd = -1
        self._lock_pid = -1
        self._control: ControlFile | None = None
        self._period: tuple[float, int, float] | None = None
        self._failures = 0
        self._last_success: float | None = None
        self._last_error: str | None = None
        otlp_status.register(directory, self)
        weak = weakref.ref(self)

        def after_fork_in_child() -> None:
            exporter = weak()
            if exporter is not None:
                exporter._after_fork_in_child()

        os.register_at_fork(after_in_child=after_fork_in_child)

    @property
    def leading(self) -> bool:
        """Whether this process holds the export role."""
        return self._lock_fd >= 0 and self._lock_pid == os.getpid()

    def ensure_running(self) -> None:
        """Start this process's export thread if it has none (cheap: a pid comparison)."""
        if self._pid == os.getpid() or not self.installed:
            return
        with self._start_lock:
            pid = os.getpid()
            if self._pid == pid:
                return
            self._forget_parent()
            self._pid = pid
            self._failures, self._last_error = 0, None  # the parent's results are not ours
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, name="gatewayz-otlp-export", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the thread and give up the export role (tests, shutdown)."""
        self._stop.set()
        if self._thread is not None and self._pid == os.getpid():
            self._thread.join(timeout=self.config.timeout + 5)
        if self.leading:
            os.close(self._lock_fd)
            self._lock_fd = -1
        self._pid = -1
        otlp_status.unregister(self.directory)

    def _after_fork_in_child(self) -> None:
        self._start_lock = threading.Lock()
        self._forget_parent()

    def _forget_parent(self) -> None:
        """In a forked child: close the inherited lock descriptor without unlocking (the
        lock belongs to the parent's open file description, still held by the parent)."""
        if self._lock_fd >= 0 and self._lock_pid != os.getpid():
            self._lock_fd = election.close_inherited(self._lock_fd)
            self._control = None

    # ---------------------------------------------------------------- the thread
    def _run(self) -> None:
        stop = self._stop
        while not stop.is_set():
            delay = self.config.interval
            try:
                if self.leading or self._try_lead():
                    if self.export_once():
                        self._failures = 0
                    else:
                        self._failures += 1
                        delay = retry_delay(self._failures, self.config.interval)
            except Exception:  # never let the thread die; the next interval tries again
                log.exception("OTLP export thread error")
            stop.wait(delay)

    def _try_lead(self) -> bool:
        fd, error = election.try_lock(self.directory, LOCK_NAME)
        if fd < 0:  # another process exports, or the lock file cannot be opened
            if error is not None:
                self._last_error = error
            return False
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the pid is informational
        self._lock_fd, self._lock_pid = fd, os.getpid()
        log.info("OTLP export to %s: this process (pid %d) now exports", self.config.shown_endpoint, os.getpid())
        return True

    def export_once(self) -> bool:
        """Send one request now (the caller holds the export role); whether it succeeded."""
        attempt = time.time()
        ok, error, points = False, None, 0
        try:
            start = self._period_start(attempt)
            body, points = encode_request(self.families(), self.config.resource, start, time.time())
            ok, error = self._post(body)
        except Exception as exc:  # e.g. a broken metrics directory: report, never raise
            error = f"{type(exc).__name__}: {exc}"[:300]
        if ok:
            if self._last_error is not None and self._failures:
                log.warning("OTLP export to %s works again", self.config.shown_endpoint)
            self._last_success, self._last_error = attempt, None
        else:
            self._last_error = error
            if self._failures == 0 or math.log2(self._failures + 1).is_integer():  # 1st, 2nd, 4th... failure
                log.warning("OTLP export to %s failed: %s", self.config.shown_endpoint, error)
        self._write_status(attempt, points, ok)
        return ok

    def _post(self, body: bytes) -> tuple[bool, str | None]:
        request = urllib.request.Request(
            self.config.endpoint, data=body, method="POST",
            headers={**self.config.headers, "Content-Type": "application/x-protobuf",
                     "User-Agent": f"flask_gatewayz_metrics/{VERSION}"},
        )  # fmt: skip
        try:
            with _OPENER.open(request, timeout=self.config.timeout) as response:
                answer = response.read(MAX_RESPONSE_BYTES)
        except urllib.error.HTTPError as exc:
            with exc:
                if 300 <= exc.code < 400:
                    return False, f"HTTP {exc.code} {exc.reason} (redirects are not followed: configure the final URL)"
                return False, f"HTTP {exc.code} {exc.reason}"
        except (OSError, ValueError) as exc:  # refused, timed out, DNS, bad header
            reason = getattr(exc, "reason", None) or exc
            return False, f"{type(exc).__name__}: {reason}"[:300]
        return True, _partial_success(answer)

    def _period_start(self, now: float) -> float:
        """Start of the current cumulative period: the server's start, or the first export
        after the last reset (shared through the status file across holders)."""
        if self._control is None:
            self._control = ControlFile(self.directory)
        start, epoch = self._control.start_time, self._control.epoch
        if epoch == 0:
            return start
        if self._period is not None and self._period[:2] == (start, epoch):
            return self._period[2]
        previous = read_status(self.directory) or {}
        period = previous.get("period_start")
        if not (
            previous.get("start_time") == start and previous.get("epoch") == epoch
            and isinstance(period, float) and start <= period <= now
        ):  # fmt: skip
            period = now
        self._period = (start, epoch, period)
        return period

    def _write_status(self, attempt: float, points: int, ok: bool) -> None:
        period = self._period
        control = self._control
        status = {
            "pid": os.getpid(),
            "endpoint": self.config.shown_endpoint,
            "interval_seconds": self.config.interval,
            "last_attempt": attempt,
            "last_success": self._last_success,
            "last_error": self._last_error if not ok else None,
            "consecutive_failures": 0 if ok else self._failures + 1,
            "data_points": points,
            "start_time": control.start_time if control is not None else None,
            "epoch": control.epoch if control is not None else None,
            "period_start": period[2] if period is not None else None,
        }
        election.write_status(self.directory, STATUS_NAME, status)

    # ------------------------------------------------------------------ reading
    def report(self) -> dict[str, Any]:
        """What ``/metrics/json`` shows under ``otlp`` and health judges."""
        out: dict[str, Any] = {
            "endpoint": self.config.shown_endpoint,
            "interval_seconds": self.config.interval,
            "extra_installed": self.installed,
            "this_process_exports": self.leading,
        }
        status = read_status(self.directory)
        if status is not None and status.get("endpoint") == self.config.shown_endpoint:
            for key in ("pid", "last_attempt", "last_success", "last_error", "consecutive_failures", "data_points"):
                out[key] = status.get(key)
        return out


def _partial_success(answer: bytes) -> str | None:
    """A note when the receiver accepted only part of the request (OTLP partial success)."""
    if not answer:
        return None
    try:
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (  # noqa: PLC0415
            ExportMetricsServiceResponse,
        )

        response = ExportMetricsServiceResponse.FromString(answer)
    except Exception:  # a receiver answering JSON or text: nothing to learn
        return None
    rejected = response.partial_success.rejected_data_points
    if rejected:
        message = response.partial_success.error_message[:200]
        log.warning("OTLP receiver rejected %d data point(s): %s", rejected, message)
    return None


def families_of(exporter: Any) -> Callable[[], Iterable[Metric]]:
    """What ``/metrics`` serves, from a ``PrometheusExporter`` (the conventions' families
    as its ``semconv`` says: ``otlp_families``)."""
    return lambda: list(exporter.otlp_families())
