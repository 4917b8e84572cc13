"""Shared fixtures: every test gets its own metrics directory and a controllable clock."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from servers import Server, running_simulator, start_gateway, stop

from flask_gatewayz_metrics import GatewayzMetrics, MetricsCollector
from flask_gatewayz_metrics.testing import ManualClock

# A suite started in the background by a non-interactive shell (``pytest ... &``) inherits
# SIGINT ignored, and Python keeps an ignored SIGINT ignored: the servers the tests stop
# with SIGINT (waitress) would inherit it too and never exit. A handled signal starts
# with its default action in a child.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

FakeClock = ManualClock
"""Wall clock the test moves by hand, so windows can be tested without sleeping (the
public ``testing.ManualClock``; this name is what the tests import)."""


def configured_app(tmp_path: Path, name: str = "configured", **settings: Any) -> tuple[Flask, GatewayzMetrics]:
    """A Flask app with the extension, its metrics directory under ``tmp_path`` and
    ``GATEWAYZ_METRICS_<KEY>`` config from lower-case keyword arguments."""
    app = Flask(name)
    app.config["GATEWAYZ_METRICS_DIR"] = str(tmp_path / "metrics")
    app.config.update({f"GATEWAYZ_METRICS_{key.upper()}": value for key, value in settings.items()})
    return app, GatewayzMetrics(app)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def metrics_dir(tmp_path) -> str:  # type: ignore[no-untyped-def]
    path = tmp_path / "metrics"
    path.mkdir(mode=0o700)
    return str(path)


@pytest.fixture
def collector(metrics_dir: str, clock: FakeClock) -> Iterator[MetricsCollector]:
    c = MetricsCollector(metrics_dir, clock=clock, strict=False)
    yield c
    c.close()


@pytest.fixture
def start_gunicorn(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start the example gateway under gunicorn with extra options; always stopped afterwards."""
    started: list[Server] = []

    def start(*extra: str, workers: int = 4, **env: str) -> Server:
        server = start_gateway(tmp_path, str(len(started)), *extra, workers=workers, **env)
        started.append(server)
        return server

    yield start
    for server in started:
        stop(server.process)


@pytest.fixture(scope="module")
def example_upstreams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A provider simulator for the example app (fast, no random failures): the app settings that point at it."""
    fast = ("--latency-scale", "0.01", "--error-rate", "0", "--billing-error-rate", "0")
    with running_simulator(tmp_path_factory.mktemp("upstreams"), *fast) as simulator:
        yield simulator.config
