"""Named payload fields (``storage.layout``, the block after ``KINDS``): each lies inside its
kind's payload, and no module above ``storage/`` reads a record's payload by a bare number."""

from __future__ import annotations

import ast
import pathlib
from collections.abc import Callable

import pytest

import flask_gatewayz_metrics
from flask_gatewayz_metrics.storage import kinds, layout

PACKAGE = pathlib.Path(flask_gatewayz_metrics.__file__).parent

FIELDS: dict[str, tuple[int, ...]] = {
    "cache": (kinds.CACHE_HITS, kinds.CACHE_MISSES),
    "db": (kinds.DB_QUERIES, kinds.DB_LATENCY_SUM),
    "external": (kinds.EXTERNAL_CALLS, kinds.EXTERNAL_ERRORS),
    "tenant_request": (kinds.TENANT_REQUESTS, kinds.TENANT_ERRORS),
    "rate_limit": (kinds.RATE_LIMIT_REMAINING, kinds.RATE_LIMIT_SET),
    "budget": (kinds.BUDGET_REMAINING, kinds.BUDGET_SET),
    "tokens": (kinds.TOKENS_SUM, kinds.TOKENS_BUCKETS),
    "exemplar": (*range(kinds.EXEMPLAR_TRACE_PARTS), kinds.EXEMPLAR_VALUE, kinds.EXEMPLAR_SET),
    "gen_ai_client_duration": (kinds.HISTOGRAM_SUM, kinds.HISTOGRAM_BUCKETS),
    "custom_histogram_3": (kinds.HISTOGRAM_SUM, kinds.HISTOGRAM_BUCKETS),
    "request": (kinds.REQ_COUNT, kinds.REQ_SUM, kinds.REQ_BUCKETS),
}
"""Kind -> its named fields, in payload order (the last may start a run of buckets)."""
PAYLOAD_NAMES = frozenset({"payload", "p"})
"""Names the read side gives a record's payload."""


def test_named_fields_lie_inside_their_kind_in_order() -> None:
    """Each kind's named fields are distinct, increasing positions inside its payload."""
    for kind, fields in FIELDS.items():
        size = kinds.KINDS[kind].size
        assert list(fields) == sorted(set(fields)), kind
        assert fields[0] >= 0 and fields[-1] < size, kind


def test_latest_kinds_end_with_their_set_field() -> None:
    """``SET`` (the last value) is the time set of "latest" kinds and the set flag of max / min."""
    assert kinds.SET == -1
    for kind, set_field in (("rate_limit", kinds.RATE_LIMIT_SET), ("budget", kinds.BUDGET_SET),
                            ("exemplar", kinds.EXEMPLAR_SET)):  # fmt: skip
        assert kinds.KINDS[kind].merge == "latest"
        assert set_field == kinds.KINDS[kind].size + kinds.SET
    for kind in ("custom_gauge_max", "custom_gauge_min", "custom_gauge_latest", "custom_meta"):
        assert kinds.KINDS[kind].merge in ("max", "min", "latest")
    assert kinds.VALUE == 0
    assert kinds.TOKENS_BUCKETS + len(kinds.TOKEN_BOUNDS) + 1 == kinds.TOKENS_SIZE


def _is_number(node: ast.expr | None) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        node = node.operand
    return isinstance(node, ast.Constant) and type(node.value) is int


def numbered_payload_reads(source: str) -> list[int]:
    """Lines where a payload (a name in ``PAYLOAD_NAMES``, or ``.total(...)``) is indexed or
    sliced by an int literal."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Subscript):
            continue
        target = node.value
        is_payload = (isinstance(target, ast.Name) and target.id in PAYLOAD_NAMES) or (
            isinstance(target, ast.Call) and isinstance(target.func, ast.Attribute) and target.func.attr == "total"
        )
        index = node.slice
        numbered = _is_number(index) or (
            isinstance(index, ast.Slice) and (_is_number(index.lower) or _is_number(index.upper))
        )
        if is_payload and numbered:
            lines.append(node.lineno)
    return lines


def offenders_above_storage(check: Callable[[str], list[int]]) -> list[str]:
    """``file:line`` of every line ``check`` finds in the package's modules outside ``storage/``."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).parts[0] == "storage":
            continue
        offenders += [f"{path.name}:{line}" for line in check(path.read_text(encoding="utf-8"))]
    return offenders


def test_no_module_above_storage_reads_a_payload_by_number() -> None:
    """The read side (snapshot, JSON document, exposition, health, custom metrics) names each field."""
    assert offenders_above_storage(numbered_payload_reads) == []


def numbered_payload_writes(source: str) -> list[int]:
    """Lines where a record is written by number: ``d[o + 1]`` (a file's doubles indexed by an
    offset plus an int literal) or ``(0, value)`` increments given to ``_add`` / ``_add_tenant``."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id in ("d", "doubles"):
            index = node.slice
            if isinstance(index, ast.BinOp) and (_is_number(index.left) or _is_number(index.right)):
                lines.append(node.lineno)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in WRITERS:
            for argument in node.args:
                if isinstance(argument, ast.Tuple) and any(
                    isinstance(item, ast.Tuple) and item.elts and _is_number(item.elts[0]) for item in argument.elts
                ):
                    lines.append(node.lineno)
    return lines


WRITERS = ("_add", "_add_tenant", "_write_record")


def test_no_module_above_storage_writes_a_record_by_number() -> None:
    """The write side (collector, request path, LLM, tenants, custom metrics, conventions) names each field."""
    assert offenders_above_storage(numbered_payload_writes) == []


def test_the_checker_sees_numbered_writes() -> None:
    """``numbered_payload_writes`` finds ``d[o + 1]``, ``d[2 + o]`` and ``_add(kind, labels, ((0, 1.0),))``."""
    source = (
        "d[o + 1] += 1.0\nd[2 + o] = x\nself._add('cost', labels, ((0, cost),))\n"
        "d[o + layout.SLOT_SUM] += x\nself._add('cost', labels, ((kinds.VALUE, cost),))\nd[o] = 1.0\n"
    )
    assert numbered_payload_writes(source) == [1, 2, 3]


def test_the_checker_sees_numbered_reads() -> None:
    """``numbered_payload_reads`` finds ``payload[0]``, ``p[-1]``, ``payload[1:]`` and ``x.total(k)[0]``."""
    source = "a = payload[0]\nb = p[-1]\nc = payload[1:]\nd = snap.total('db')[0]\ne = payload[kinds.VALUE]\n"
    assert numbered_payload_reads(source) == [1, 2, 3, 4]


def test_a_record_key_is_strict_utf8() -> None:
    """Every reader decodes keys strictly, so a key with a lone surrogate (written with
    "surrogatepass" before) made the writer's whole file unreadable to them: now writing
    that one record fails instead."""
    with pytest.raises(UnicodeEncodeError):
        layout.encode_key("counter", ("bytes \udcff",))
    assert layout.encode_key("counter", ("é",)) == '["counter","é"]'.encode()
