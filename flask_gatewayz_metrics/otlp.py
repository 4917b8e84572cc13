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
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import random
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.metrics_core import Metric

from ._version import VERSION
from .otlp_encode import encode_request
from .storage.control import ControlFile

log = logging.getLogger("flask_gatewayz_metrics")
LOCK_NAME = "otlp.lock"
STATUS_NAME = "otlp.status.json"
MAX_STATUS_BYTES = 16_384
MAX_RESPONSE_BYTES = 1 << 20
MAX_PAIRS = 64
DEFAULT_INTERVAL_MS = 60_000
DEFAULT_TIMEOUT_MS = 10_000
EXTRA_HINT = "pip install 'flask_gatewayz_metrics[otlp]'"


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
        parts = urllib.parse.urlsplit(self.endpoint)
        return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"


def otlp_config(setting: str | None, environ: Mapping[str, str] | None = None) -> OtlpConfig | None:
    """The export configuration, or None when no endpoint is set (or ``OTEL_SDK_DISABLED``).

    Malformed environment values are logged and replaced by their defaults: metrics
    never keep an application from starting.
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
    if not endpoint.startswith(("http://", "https://")) or any(c.isspace() for c in endpoint):
        log.warning("OTLP export disabled: endpoint %r is not an http(s) URL", endpoint[:200])
        return None
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
        _exporters[directory] = self
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
        _exporters.pop(self.directory, None)

    def _after_fork_in_child(self) -> None:
        self._start_lock = threading.Lock()
        self._forget_parent()

    def _forget_parent(self) -> None:
        """In a forked child: close the inherited lock descriptor without unlocking (the
        lock belongs to the parent's open file description, still held by the parent)."""
        if self._lock_fd >= 0 and self._lock_pid != os.getpid():
            try:
                os.close(self._lock_fd)
            except OSError:
                pass
            self._lock_fd = -1
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
        path = os.path.join(self.directory, LOCK_NAME)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            self._last_error = f"cannot open {LOCK_NAME}: {exc.strerror or exc}"
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # another process exports
            os.close(fd)
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
            with urllib.request.urlopen(request, timeout=self.config.timeout) as response:
                answer = response.read(MAX_RESPONSE_BYTES)
        except urllib.error.HTTPError as exc:
            with exc:
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
        path = os.path.join(self.directory, STATUS_NAME)
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, json.dumps(status).encode())
            finally:
                os.close(fd)
            os.replace(tmp, path)  # readers see a whole file, old or new
        except OSError:
            pass

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


_exporters: weakref.WeakValueDictionary[str, OtlpExporter] = weakref.WeakValueDictionary()


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
    try:
        fd = os.open(os.path.join(directory, STATUS_NAME), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        raw = os.read(fd, MAX_STATUS_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        data = json.loads(raw) if len(raw) <= MAX_STATUS_BYTES else None
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    types: dict[str, tuple[type, ...]] = {
        "pid": (int,), "endpoint": (str,), "interval_seconds": (float,), "last_attempt": (float,),
        "last_success": (float,), "last_error": (str,), "consecutive_failures": (int,), "data_points": (int,),
        "start_time": (float,), "epoch": (int,), "period_start": (float,),
    }  # fmt: skip
    return {k: v for k, v in data.items() if k in types and isinstance(v, types[k]) and not isinstance(v, bool)}


def holder_pid(directory: str) -> int | None:
    """The pid written to ``otlp.lock`` by the process that last took the export role."""
    try:
        with open(os.path.join(directory, LOCK_NAME), "rb") as f:
            return int(f.read(32).strip() or b"x")
    except (OSError, ValueError):
        return None


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
