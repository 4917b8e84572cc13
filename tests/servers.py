"""Real servers for the tests: the example gateway under gunicorn, its provider simulator, loopback HTTP.

Shared by the gunicorn, soak, traffic, streaming and Prometheus tests so that each
starts, probes and stops processes the same way: loopback only, bounded waits, always
stopped (SIGTERM, then SIGKILL to the whole process group). ``start_gateway`` also
starts the provider simulator (``example_app/simulator.py``) on free ports and points
the gateway at it; ``stop`` of the gateway's process stops its simulator too.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from flask_gatewayz_metrics.testing import parse_samples

REPO_ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 30.0
UPSTREAMS = ("openai", "anthropic", "google", "stripe")
"""What the simulator serves for a test gateway: the three providers and the billing API."""


@dataclass(frozen=True)
class Server:
    url: str
    port: int
    process: subprocess.Popen[bytes]
    metrics_dir: Path
    log: Path


_handed_out: set[int] = set()
"""Ports ``free_port`` already returned in this test process: the kernel may offer a
closed port again, and two servers of one test (the gateway and its simulator) must
never be told the same one."""


def free_port() -> int:
    """A loopback port nothing listens on now and this test process has not handed out."""
    for _ in range(1000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no unused loopback port")


def http(
    method: str, url: str, body: Any = None, timeout: float = 10.0, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """One request (JSON body if given); the status and body, also for HTTP errors."""
    data = json.dumps(body).encode() if body is not None else None
    all_headers = {"Content-Type": "application/json"} if body is not None else {}
    all_headers.update(headers or {})
    request = urllib.request.Request(url, data=data, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


@dataclass(frozen=True)
class Simulator:
    """A running provider simulator: its process and the port of each simulated service."""

    process: subprocess.Popen[bytes]
    ports: dict[str, int]
    log: Path

    @property
    def config(self) -> dict[str, str]:
        """The gateway settings (config keys or environment) that point it at this simulator."""
        return {f"GATEWAY_{name.upper()}_URL": f"http://127.0.0.1:{port}" for name, port in self.ports.items()}


_simulators: dict[int, Simulator] = {}
"""The simulator started with each gateway process (by pid), stopped with it."""


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL (to the whole process group) if it does not exit in time.

    A gateway's simulator (see ``start_gateway``) is stopped after it.
    """
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    simulator = _simulators.pop(process.pid, None)
    if simulator is not None:
        stop(simulator.process)


def start_simulator(
    tmp_path: Path, *args: str, name: str = "sim", upstreams: Sequence[str] = UPSTREAMS,
    env: dict[str, str] | None = None,
) -> Simulator:  # fmt: skip
    """The provider simulator on free loopback ports, answering on each; no random 429s unless ``args`` ask.

    ``env`` (default: this process's) supplies the ``GATEWAY_*`` defaults it reads
    (latency scale, error rates, seed); ``args`` are its command-line options and win.
    """
    ports = {upstream: free_port() for upstream in upstreams}
    log = tmp_path / f"simulator-{name}.log"
    command = [
        sys.executable, "-m", "example_app.simulator",
        "--ports", ",".join(f"{upstream}={port}" for upstream, port in ports.items()),
        "--rate-limit-rate", "0", *args,
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    simulator = Simulator(process, ports, log)
    deadline = time.monotonic() + READY_TIMEOUT
    try:
        for port in ports.values():
            while True:
                if process.poll() is not None:
                    pytest.fail(f"simulator exited with {process.returncode}:\n{log.read_text()}")
                try:
                    if http("GET", f"http://127.0.0.1:{port}/health", timeout=2.0)[0] == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"simulator not ready after {READY_TIMEOUT}s:\n{log.read_text()}")
                time.sleep(0.05)
    except BaseException:
        stop(process)
        raise
    return simulator


@contextmanager
def running_simulator(tmp_path: Path, *args: str, **kwargs: Any) -> Iterator[Simulator]:
    """``start_simulator`` as a context: always stopped afterwards."""
    simulator = start_simulator(tmp_path, *args, **kwargs)
    try:
        yield simulator
    finally:
        stop(simulator.process)


def gateway_env(tmp_path: Path, metrics_dir: Path, **overrides: str) -> dict[str, str]:
    """The environment of a test gateway and its simulator: fast upstreams, no random failures."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAYZ_METRICS_", "GATEWAY_"))}
    env.update(
        GATEWAYZ_METRICS_DIR=str(metrics_dir),
        GATEWAY_SIMULATED_LATENCY_SCALE="0.02",
        GATEWAY_UPSTREAM_ERROR_RATE="0",
        GATEWAY_BILLING_ERROR_RATE="0",
        GATEWAY_DB_PATH=str(tmp_path / f"models-{metrics_dir.name}.sqlite3"),
    )
    env.update(overrides)
    return env


def start_gateway(
    tmp_path: Path, name: str, *extra: str, workers: int = 4, simulator_args: Sequence[str] | None = (), **env: str
) -> Server:
    """The example gateway under gunicorn (``conf/gunicorn.conf.py``), ready to serve.

    Its providers are a provider simulator started for it (``simulator_args`` are the
    simulator's options; ``env`` is also the simulator's), stopped by ``stop(server.process)``.
    With ``simulator_args=None`` none is started: ``env`` gives the upstream URLs.
    """
    metrics_dir = tmp_path / f"metrics-{name}"
    log = tmp_path / f"gunicorn-{name}.log"
    port = free_port()
    environment = gateway_env(tmp_path, metrics_dir, **env)
    simulator = None
    if simulator_args is not None:
        simulator = start_simulator(tmp_path, *simulator_args, name=name, env=environment)
        environment.update(simulator.config)
        environment.update(env)

    def remember_simulator(pid: int) -> None:  # so that stop(server.process) stops it too
        if simulator is not None:
            _simulators[pid] = simulator

    try:
        return launch_gunicorn(
            ["--workers", str(workers), *extra, "example_app.app:app"], environment, metrics_dir, log,
            port=port, on_start=remember_simulator,
        )  # fmt: skip
    except BaseException:
        if simulator is not None:
            stop(simulator.process)
        raise


def launch_gunicorn(
    arguments: Sequence[str], env: dict[str, str], metrics_dir: Path, log: Path,
    port: int | None = None, on_start: Callable[[int], None] | None = None,
) -> Server:
    """gunicorn with ``conf/gunicorn.conf.py`` on a loopback port, logging to ``log``, in
    its own session; returned once it serves ``/healthz``, else stopped.
    ``on_start(pid)`` runs as soon as the process exists."""
    port = port or free_port()
    command = [
        sys.executable, "-m", "gunicorn", "-c", "conf/gunicorn.conf.py", "--bind", f"127.0.0.1:{port}", *arguments,
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(f"http://127.0.0.1:{port}", port, process, metrics_dir, log)
    try:
        if on_start is not None:
            on_start(process.pid)
        wait_ready(server)
    except BaseException:
        stop(process)
        raise
    return server


def wait_ready(server: Server) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"gunicorn exited with {server.process.returncode}:\n{server.log.read_text()}")
        try:
            if http("GET", server.url + "/healthz", timeout=2.0)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    pytest.fail(f"gunicorn not ready after {READY_TIMEOUT}s:\n{server.log.read_text()}")


def send_concurrently(
    url: str, requests: list[tuple[str, str, Any]], senders: int, timeout: float
) -> Counter[int]:
    """Send every (method, path, JSON body or None) from ``senders`` threads; the statuses."""
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    lock = threading.Lock()
    pending = iter(requests)
    deadline = time.monotonic() + timeout

    def sender() -> None:
        while time.monotonic() < deadline:
            with lock:
                item = next(pending, None)
            if item is None:
                return
            method, path, body = item
            try:
                status, _ = http(method, url + path, body, timeout=15.0)
            except OSError as exc:
                with lock:
                    failures.append(repr(exc))
                continue
            with lock:
                statuses[status] += 1

    threads = [threading.Thread(target=sender) for _ in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout + 15)
    assert not failures, failures[:5]
    assert sum(statuses.values()) == len(requests), "not every request was sent in time"
    return statuses


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """One /metrics scrape as {(sample name, sorted labels): value}."""
    status, body = http("GET", url + "/metrics")
    assert status == 200
    return parse_samples(body.decode("utf-8"))
