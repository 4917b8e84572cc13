"""labels on its own: label value cleaning, numbers, methods, and LabelGuard's limits and allowlists."""

from __future__ import annotations

import math

import pytest

from flask_gatewayz_metrics.labels import (
    DEFAULT_LIMITS,
    MAX_LABEL_LENGTH,
    MAX_REMEMBERED_OVERFLOWS,
    OVERFLOW_VALUE,
    LabelGuard,
    as_number,
    clean_label,
    method_label,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(3, 3.0), (2.5, 2.5), (True, math.nan), ("3", math.nan), (None, math.nan), (10**400, math.inf)],
)
def test_as_number(raw: object, expected: float) -> None:
    """Only real numbers are numbers (not bools or strings); a huge int is infinity, not an error."""
    got = as_number(raw)
    assert got == expected or (math.isnan(got) and math.isnan(expected))


def test_clean_label() -> None:
    """Non-strings and empty strings are unusable; long values are cut; lone surrogates are replaced."""
    assert clean_label(None) is None and clean_label(5) is None and clean_label("") is None
    assert clean_label("x" * 500) == "x" * MAX_LABEL_LENGTH
    assert clean_label("caf\udce9") == "caf?"
    assert clean_label("modèle") == "modèle"


def test_method_label() -> None:
    """Known methods are upper-cased, unknown ones become OTHER, non-strings are unusable."""
    assert method_label("get") == "GET"
    assert method_label("PROPFIND") == "OTHER"
    assert method_label(None) is None


def test_limit_admits_the_first_values_then_other() -> None:
    """Past the per-label limit new values become 'other'; known values stay admitted."""
    guard = LabelGuard({"model": 2})
    assert guard.admit("model", "a") == ("a", False)
    assert guard.admit("model", "b") == ("b", False)
    assert guard.admit("model", "c") == (OVERFLOW_VALUE, True)
    assert guard.admit("model", "a") == ("a", False)


def test_each_refused_value_is_counted_once() -> None:
    """The overflow flag is set the first time a value is refused, not on its repeats."""
    guard = LabelGuard({"provider": 0})
    assert guard.admit("provider", "x") == (OVERFLOW_VALUE, True)
    assert guard.admit("provider", "x") == (OVERFLOW_VALUE, False)
    assert guard.admit("provider", "y") == (OVERFLOW_VALUE, True)


def test_remembered_overflows_are_bounded() -> None:
    """Past MAX_REMEMBERED_OVERFLOWS refused values, repeats count again instead of growing memory."""
    guard = LabelGuard({"user": 0})
    for i in range(MAX_REMEMBERED_OVERFLOWS):
        guard.admit("user", f"u{i}")
    late = f"u{MAX_REMEMBERED_OVERFLOWS}"
    assert guard.admit("user", late) == (OVERFLOW_VALUE, True)
    assert guard.admit("user", late) == (OVERFLOW_VALUE, True)  # not remembered: counted again
    assert guard.admit("user", "u0") == (OVERFLOW_VALUE, False)  # remembered


def test_allowlist_wins_over_the_limit() -> None:
    """With an allowlist only its values pass, whatever the limit."""
    guard = LabelGuard({"model": 1000}, {"model": ["gpt-4", "claude-3"]})
    assert guard.admit("model", "gpt-4") == ("gpt-4", False)
    assert guard.admit("model", "llama") == (OVERFLOW_VALUE, True)
    assert guard.admit("model", "claude-3") == ("claude-3", False)


def test_defaults_and_unknown_labels() -> None:
    """Without limits the defaults apply; a label without a default gets the endpoint limit."""
    guard = LabelGuard()
    assert guard.limits == DEFAULT_LIMITS
    for i in range(DEFAULT_LIMITS["endpoint"]):
        assert guard.admit("route_group", f"g{i}")[0] == f"g{i}"
    assert guard.admit("route_group", "one-more") == (OVERFLOW_VALUE, True)


def test_unusable_value_is_neither_admitted_nor_counted() -> None:
    """A non-string value gives None without using a slot of the limit."""
    guard = LabelGuard({"team": 1})
    assert guard.admit("team", 42) == (None, False)
    assert guard.admit("team", "a") == ("a", False)
