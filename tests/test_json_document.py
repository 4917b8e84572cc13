"""The JSON document (``json_document``): byte-identical to the document of before the
move out of ``Snapshot`` for a fixed directory, and every object typed by its shape."""

from __future__ import annotations

import pathlib
import types
import typing
from typing import Any

from fixed_directory import START, document_text, record_everything

from flask_gatewayz_metrics import MetricsCollector
from flask_gatewayz_metrics.json_document import Document, document
from flask_gatewayz_metrics.snapshot import Snapshot
from flask_gatewayz_metrics.storage import Merged
from flask_gatewayz_metrics.testing import ManualClock

GOLDEN = pathlib.Path(__file__).with_name("json_document_golden.json")


def test_document_is_byte_identical_to_before(tmp_path: pathlib.Path) -> None:
    """For a fixed directory the document is the text the code before the move produced."""
    assert document_text(tmp_path) == GOLDEN.read_text(encoding="utf-8")


def conforms(value: Any, shape: Any, where: str = "document") -> list[str]:
    """Where ``value`` departs from the type ``shape`` (a TypedDict, dict[...], list[...],
    a union, a scalar type): every key of a TypedDict declared, its required keys there."""
    if shape is Any or shape is object:
        return []
    if typing.is_typeddict(shape):
        return _typed_dict(value, shape, where)
    origin, args = typing.get_origin(shape), typing.get_args(shape)
    if origin in (typing.Union, types.UnionType):
        failures = [conforms(value, arm, where) for arm in args]
        return [] if any(not failure for failure in failures) else min(failures, key=len)
    if origin in (dict, list):
        return _container(value, origin, args[-1], where)
    if shape is type(None):
        ok = value is None
    elif shape is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, shape) and not (shape is int and isinstance(value, bool))
    return [] if ok else [f"{where}: {value!r} is not {getattr(shape, '__name__', shape)}"]


def _typed_dict(value: Any, shape: Any, where: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{where}: {type(value).__name__}, not an object"]
    hints = typing.get_type_hints(shape)
    problems = [f"{where}.{key}: not declared in {shape.__name__}" for key in value if key not in hints]
    problems += [f"{where}.{key}: missing" for key in shape.__required_keys__ if key not in value]
    for key, item in value.items():
        if key in hints:
            problems += conforms(item, hints[key], f"{where}.{key}")
    return problems


def _container(value: Any, origin: type, item_shape: Any, where: str) -> list[str]:
    if not isinstance(value, origin):
        return [f"{where}: {type(value).__name__}, not {origin.__name__}"]
    items = value.items() if isinstance(value, dict) else enumerate(value)
    return [p for key, item in items for p in conforms(item, item_shape, f"{where}[{key!r}]")]


def test_every_object_of_a_full_document_has_its_shape(tmp_path: pathlib.Path) -> None:
    """A document with every kind of record conforms to ``Document``, nested objects included."""
    clock = ManualClock(START)
    collector = MetricsCollector(str(tmp_path), clock=clock)
    try:
        record_everything(collector, clock)
        found = collector.to_dict()
    finally:
        collector.close()
    assert conforms(found, Document) == []
    assert found["custom"]["size_bytes"]["series"][0]["buckets"] == {"10.0": 0.0, "100.0": 1.0, "+Inf": 1.0}
    assert found["custom"]["depth"]["mode"] == "max"


def test_the_checker_finds_an_undeclared_or_mistyped_key() -> None:
    """``conforms`` fails on a key the shapes do not declare and on a value of another type."""
    snap = Snapshot(Merged(), 10.0, 0.0, 300.0, 500, 0, 0)
    bad: Any = document(snap)
    bad["cache"]["surprise"] = 1
    bad["in_flight"] = "3"
    assert conforms(bad, Document) == [
        "document.cache.surprise: not declared in Cache", "document.in_flight: '3' is not int",
    ]  # fmt: skip


def test_optional_keys_keep_their_place() -> None:
    """``otlp`` is there only when export is configured, between ``custom`` and ``metrics_directory``."""
    empty = Snapshot(Merged(), 10.0, 0.0, 300.0, 500, 0, 0)
    assert "otlp" not in document(empty)
    exporting = Snapshot(Merged(), 10.0, 0.0, 300.0, 500, 0, 0, otlp={"endpoint": "http://127.0.0.1:4318"})
    keys = list(document(exporting))
    assert keys[keys.index("custom") + 1 : keys.index("custom") + 3] == ["otlp", "metrics_directory"]
    assert conforms(document(exporting), Document) == []
    assert exporting.to_dict() == document(exporting)
