"""Shared fixtures: every test gets its own metrics directory and a controllable clock."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from flask_gatewayz_metrics import MetricsCollector


class FakeClock:
    """Wall clock the test moves by hand, so windows can be tested without sleeping."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


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
