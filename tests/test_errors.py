"""The package's exceptions: one module, exported, and still importable from their old homes."""

from __future__ import annotations

import ast
import pathlib

import pytest

import flask_gatewayz_metrics
from flask_gatewayz_metrics import collector, errors, storage
from flask_gatewayz_metrics.storage import access, directory

PACKAGE = pathlib.Path(flask_gatewayz_metrics.__file__).parent


def test_every_public_exception_is_defined_in_errors() -> None:
    """No module but errors.py defines a public exception class (private control-flow ones aside)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                bases = {ast.unparse(base) for base in node.bases}
                if any(base.endswith(("Error", "Exception")) or base in errors.__all__ for base in bases):
                    found[node.name] = path.relative_to(PACKAGE).as_posix()
    assert found == dict.fromkeys(errors.__all__, "errors.py")


@pytest.mark.parametrize(
    ("name", "old_home"),
    [
        ("InvalidMetric", collector),
        ("StorageUnavailable", access),
        ("StorageUnavailable", storage),
        ("MetricsDirectoryError", directory),
    ],
)
def test_old_import_paths_give_the_same_class(name: str, old_home: object) -> None:
    """Code importing an exception from where it used to live gets the very same class."""
    assert getattr(old_home, name) is getattr(errors, name)


def test_exceptions_are_exported_from_the_package() -> None:
    """Every exception is in the package's __all__ and keeps the base class callers catch it by."""
    for name in errors.__all__:
        assert name in flask_gatewayz_metrics.__all__
        assert getattr(flask_gatewayz_metrics, name) is getattr(errors, name)
        assert getattr(errors, name).__doc__
    assert issubclass(errors.InvalidMetric, ValueError)
    assert issubclass(errors.MetricsDirectoryError, RuntimeError)
    assert issubclass(errors.StorageUnavailable, Exception)


def test_strict_mode_raises_the_exported_class(tmp_path: pathlib.Path) -> None:
    """A strict collector raises errors.InvalidMetric for input it would otherwise drop."""
    metrics = flask_gatewayz_metrics.MetricsCollector(directory=str(tmp_path), strict=True)
    with pytest.raises(errors.InvalidMetric):
        metrics.record_request("/x", "GET", 200, -1.0)


def test_unsafe_directory_raises_the_exported_class(tmp_path: pathlib.Path) -> None:
    """A world-writable metrics directory is refused with errors.MetricsDirectoryError."""
    unsafe = tmp_path / "shared"
    unsafe.mkdir()
    unsafe.chmod(0o777)
    with pytest.raises(errors.MetricsDirectoryError, match="writable"):
        flask_gatewayz_metrics.MetricsCollector(directory=str(unsafe))
