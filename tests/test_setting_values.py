"""The checkers of setting values (``setting_values``): each normalises a good value and
raises a bare TypeError / ValueError for a bad one (``settings.check`` names the key)."""

from __future__ import annotations

import math
import pathlib
import re
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


def joined(patterns: tuple[str, ...]) -> re.Pattern[str]:
    """The patterns as the request path tries them (request_timing.timed)."""
    return re.compile("|".join(f"(?:{p})" for p in patterns))


@pytest.mark.parametrize(
    "patterns",
    [
        ["(?i)/health"],
        ["/static", "(?i)/HEALTHZ"],
        ["(?s)/a.b", "(?m)/c$"],
        ["(?i)(?s)/x.", "/y"],
        ["(?x) /a  # comment", "/b"],
        ["(?a)/\\w+$", "/(z)"],
        ["/(a)", "/(?:b)"],
        [r"/(b)\1", "/(a)"],
        ["/(?P<a>a)", r"/(?P<b>b)(?P=b)"],
        [r"/[\1]x", "/(q)", r"/\101"],
        ["/a|/b", "/c"],
    ],
)
def test_excluded_patterns_mean_together_what_each_means_alone(patterns: list[str]) -> None:
    """What ``patterns`` returns, joined as the request path joins it, matches a path
    exactly when one of the given patterns matches it alone."""
    checked = values.patterns(patterns)
    paths = [
        "/health", "/HEALTH", "/healthz", "/HEALTHZ", "/a\nb", "/a-b", "/c", "/c\n", "/x\n", "/X?", "/y", "/a",
        "/b", "/é", "/ab", "/bb", "/aa", "/bc", "/z", "/q", "/1x", "/\x01x", "/A", "/static/x",
    ]  # fmt: skip
    for path in paths:
        assert bool(joined(checked).match(path)) == any(re.match(p, path) for p in patterns), (path, checked)


def test_excluded_patterns_that_cannot_be_tried_together_are_refused() -> None:
    """Refused with the reason: a numbered reference after a pattern with groups (it would
    mean the earlier group), group names used twice; alone or first, a reference is fine."""
    for bad, reason in (
        (["/(a)", r"/(b)\1"], r"numbered group reference \\1 "),
        (["/(a)", r"/(b)?(c)?(?(2)d|e)"], r"numbered group reference \(\?\(2\) "),
        (["/(?P<x>a)", "/(?P<x>b)"], "redefinition of group name"),
        (["/ok", "a(?i)"], "global flags not at the start"),
    ):
        with pytest.raises(ValueError, match=reason):
            values.patterns(bad)
    assert values.patterns([r"/(b)\1", "/(a)"]) == (r"/(b)\1", "/(a)")
    assert values.patterns(["(?i)/a", "(?x)/b # c"]) == ("(?i:/a)", "(?x:/b # c\n)")


@pytest.mark.parametrize(
    ("pattern", "verbose", "found"),
    [
        (r"/(b)\1", False, "\\1"),
        (r"/(b)\12", False, "\\12"),
        (r"/(b)\1a", False, "\\1"),
        (r"/(b)\18", False, "\\18"),
        (r"/\101", False, None),
        (r"/[\1]", False, None),
        (r"/[]\1]", False, None),
        (r"/[^]\1]", False, None),
        (r"/\\1", False, None),
        (r"/(a)(?(1)b|c)", False, "(?(1)"),
        (r"/(?P<n>a)(?(n)b|c)", False, None),
        ("/(a) # \\1\n", True, None),
        ("/(a) # x\n\\1", True, "\\1"),
        (r"/\0", False, None),
    ],
)
def test_numbered_references_are_found(pattern: str, verbose: bool, found: str | None) -> None:
    """Back-references by number outside classes, and conditions on a numbered group;
    not octal escapes, class members, escaped backslashes or verbose comments."""
    assert values._numbered_reference(pattern, verbose) == found
