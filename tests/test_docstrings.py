"""Every public name of the package has a docstring (issue 13: the public API is documented)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "flask_gatewayz_metrics"


def undocumented(source: str) -> list[str]:
    """Public classes, functions and methods (names not starting with ``_``, outside private
    classes) of a module's ``source`` that have no docstring, as ``line name``."""
    found: list[str] = []

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            definition = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            if definition and not node.name.startswith("_"):
                if ast.get_docstring(node) is None:
                    found.append(f"{node.lineno} {prefix}{node.name}")
                if isinstance(node, ast.ClassDef):
                    visit(node.body, f"{prefix}{node.name}.")

    visit(ast.parse(source).body, "")
    return found


def test_every_public_name_has_a_docstring() -> None:
    """No public class, function or method in the package lacks a docstring."""
    missing = [
        f"{path.relative_to(PACKAGE)}:{entry}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for entry in undocumented(path.read_text(encoding="utf-8"))
    ]
    assert missing == []


def test_the_checker_sees_a_missing_docstring() -> None:
    """``undocumented`` reports a bare public function and method, not private ones."""
    source = (
        "def f():\n    pass\n"
        "class C:\n    '''Doc.'''\n    def m(self):\n        pass\n    def _p(self):\n        pass\n"
        "class _Private:\n    def m(self):\n        pass\n"
        "def g():\n    '''Doc.'''\n"
    )
    assert undocumented(source) == ["1 f", "5 C.m"]
