"""Window slots (``storage.slots``): which slot a moment falls in, and rotating a slot
position to a new interval; plus the collector's mixins carrying no run-time stubs."""

from __future__ import annotations

import ast
import inspect
import math
import textwrap

from flask_gatewayz_metrics import MetricsCollector
from flask_gatewayz_metrics.storage import layout
from flask_gatewayz_metrics.storage.slots import plain_window_add, rotate, slot_bounds


def _plain_slot(values: tuple[float, ...]) -> memoryview:
    """A slot of a windowed record without sketch, holding ``values``."""
    d = memoryview(bytearray(8 * len(values))).cast("d")
    for index, value in enumerate(values):
        d[index] = value
    return d


def test_slot_bounds_are_clock_aligned() -> None:
    """A moment falls in the slot ``now // width``, at position ``slot % slots``, with its bounds."""
    assert slot_bounds(125.0, 60.0, 5) == (2, 2, 120.0, 180.0)
    assert slot_bounds(60.0 * 7, 60.0, 5) == (7, 2, 420.0, 480.0)
    assert slot_bounds(1e9, 0.0, 1) == (0, 0, -math.inf, math.inf)  # since start: one slot forever


def test_plain_window_add_rotates_an_old_interval_away() -> None:
    """Adding to a slot that holds an older interval empties it first, then counts the value."""
    d = _plain_slot(layout.EMPTY_SLOT)
    plain_window_add(d, 0, 3, 2.0, True)
    plain_window_add(d, 0, 3, 5.0, False)
    assert list(d) == [3.0, 2.0, 7.0, 1.0, 2.0, 5.0]
    plain_window_add(d, 0, 4, 1.0, False)  # a new interval: the old values are gone
    assert list(d) == [4.0, 1.0, 1.0, 0.0, 1.0, 1.0]


def test_rotate_claims_the_slot_with_an_empty_header() -> None:
    """rotate() leaves the slot empty (layout.EMPTY_SLOT) under its new id."""
    d = _plain_slot((5.0, 9.0, 3.0, 1.0, 0.5, 2.0))
    rotate(d, 0, 11, False)
    assert list(d) == [11.0, *layout.EMPTY_SLOT[1:]]


def test_collector_mixins_have_no_runtime_stubs() -> None:
    """No class MetricsCollector is built from defines a method that only raises
    NotImplementedError: the MRO could pick it over the real one (declare under TYPE_CHECKING)."""
    stubs = []
    for cls in MetricsCollector.__mro__:
        if not cls.__module__.startswith("flask_gatewayz_metrics"):
            continue
        for name, member in vars(cls).items():
            if not inspect.isfunction(member):
                continue
            tree = ast.parse(textwrap.dedent(inspect.getsource(member)))
            body = tree.body[0].body  # type: ignore[attr-defined]
            statements = [s for s in body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
            if len(statements) == 1 and isinstance(statements[0], ast.Raise):
                raised = statements[0].exc
                target = raised.func if isinstance(raised, ast.Call) else raised
                if isinstance(target, ast.Name) and target.id == "NotImplementedError":
                    stubs.append(f"{cls.__name__}.{name}")
    assert stubs == []
