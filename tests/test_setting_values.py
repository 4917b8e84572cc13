"""The checkers of setting values (``setting_values``): each normalises a good value and
raises a bare TypeError / ValueError for a bad one (``settings.check`` names the key)."""

from __future__ import annotations

import math
import pathlib
from typing import Any

import pytest

from flask_gatewayz_metrics import setting_values as values
from flask_gatewayz_metrics.settings import check


def test_numbers_and_integers_are_bounded() -> None:
    """``number`` and ``integer`` take finite values in range only; an integral float is an int."""
    assert values.number(0.0, 1.0)(1) == 1.0
    assert values.integer(1, 10)(3.0) == 3
    for checker, bad, error in (
        (values.number(0.0, 1.0), True, TypeError), (values.number(0.0, 1.0), math.nan, ValueError),
        (values.number(0.0, 1.0), 1.5, ValueError), (values.integer(1, 10), 2.5, TypeError),
        (values.integer(1, 10), 11, ValueError),
    ):  # fmt: skip
        with pytest.raises(error):
            checker(bad)


def test_text_values() -> None:
    """Paths, URL prefixes, addresses and URLs: str of the right form, NUL and white space refused."""
    assert values.path(pathlib.Path("/tmp/m")) == "/tmp/m"
    assert values.url_prefix("/metrics") == "/metrics"
    assert values.address("::") == "::"
    assert values.http_url("http://127.0.0.1:4318/v1/metrics") == "http://127.0.0.1:4318/v1/metrics"
    assert values.semconv(" OTLP ") == "otlp"
    for checker, bad in (
        (values.path, "a\0b"), (values.url_prefix, "metrics"), (values.address, "[::1]"),
        (values.http_url, "ftp://host/"), (values.semconv, "sometimes"), (values.text(required=True), ""),
    ):  # fmt: skip
        with pytest.raises(ValueError):
            checker(bad)


def test_collections() -> None:
    """Limits, patterns, uids, label values, tenant headers and buckets are checked item by item."""
    assert values.limits({"model": 5}) == {"model": 5}
    assert values.patterns(["/health"]) == ("/health",)
    assert values.uids([7, 3]) == (3, 7)
    assert values.label_values(["a", "b"]) == ("a", "b")
    assert values.tenant_headers({"team": "X-Team"}) == {"team": "X-Team"}
    assert values.buckets("0.1,0.5,+Inf") == (0.1, 0.5)
    bad: list[tuple[Any, Any, type[Exception]]] = [
        (values.limits, {"model": -1}, ValueError), (values.patterns, ["("], ValueError),
        (values.uids, [True], TypeError), (values.label_values, [1], TypeError),
        (values.tenant_headers, {"team": "X Team"}, ValueError), (values.buckets, [2.0, 1.0], ValueError),
        (values.port, 0, ValueError), (values.function, 3, TypeError),
    ]  # fmt: skip
    for checker, value, error in bad:
        with pytest.raises(error):
            checker(value)


def test_check_names_the_key_and_what_it_expects() -> None:
    """``settings.check`` turns a checker's bare error into one naming where the value came from."""
    with pytest.raises(ValueError, match=r"GATEWAYZ_METRICS_WINDOW_SLOTS must be an int between 1 and 1024, got int 0"):
        check("window_slots", 0, "GATEWAYZ_METRICS_WINDOW_SLOTS")


def test_every_accepted_window_gives_files_the_reader_accepts(tmp_path: pathlib.Path) -> None:
    """A window is 0 (since start) or 0.001 s to a year: a nanosecond window was accepted,
    and then every worker file of it was refused by the reader as corrupt."""
    from flask_gatewayz_metrics import MetricsCollector

    with pytest.raises(ValueError, match=r"from 0\.001"):
        check("window_seconds", 1e-9, "window_seconds=")
    assert values.window_seconds(0) == 0.0
    for seconds in (0.0, values.MIN_WINDOW_SECONDS):
        directory = tmp_path / str(seconds)
        collector = MetricsCollector(str(directory), window_seconds=seconds, window_slots=1024)
        collector.record_request("/a", "GET", 0.1, 200)
        snapshot = collector.snapshot()
        assert snapshot.total_requests == 1 and not snapshot.problems
        collector.close()
