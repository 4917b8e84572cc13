"""Imports point one way: every module of the package sits in a layer and imports only its
own layer or those below (docs/DESIGN.md, "Layers and imports", draws the graph)."""

from __future__ import annotations

import ast
import pathlib

import flask_gatewayz_metrics

PACKAGE = pathlib.Path(flask_gatewayz_metrics.__file__).parent
NAME = "flask_gatewayz_metrics"

LAYERS: dict[str, tuple[str, ...]] = {
    # 0: no package imports beyond this layer; usable from anywhere.
    "foundation": (
        "_version", "errors", "sketch", "labels", "label_cache", "prices", "static_labels", "tracing",
        "election",
    ),
    # 1: the files: byte format, writer, reader, merge, compaction, directory choice.
    "storage": ("storage",),
    # 2: merged records read back into the spec's shapes and reports (the JSON document included).
    # settings checks values against the storage format's limits (MAX_HISTOGRAM_BUCKETS).
    "read model": (
        "custom_families", "snapshot", "json_document", "default_registry", "otlp_status", "settings",
        "setting_values",
    ),
    # 3: the recording API and its input policy.
    "recording": (
        "collector", "request_path", "label_resolution", "record_writer", "reading", "default_collector", "llm",
        "semconv", "custom", "custom_handles", "tenants", "request_state", "tracking", "native_histograms",
        "record_primitives",
    ),
    # 4: what leaves the process: exposition formats (every exposition* module), OTLP, health,
    # scrape credentials.
    "output": (
        "exposition*", "otlp", "otlp_config", "otlp_encode", "health", "auth",
    ),
    # 5: Flask, WSGI and server integration, and the public test helpers.
    "integration": (
        "extension", "request_timing", "route_rules", "views", "dashboard", "metrics_port", "gunicorn",
        "gunicorn_conf", "testing", "__init__",
    ),
}  # fmt: skip

ALLOWED_UPWARD: dict[tuple[str, str], str] = {
    ("custom", "exposition"): (
        "a custom metric may not take a name we serve, and only the exposition knows every name it "
        "serves (our_sample_names, built from the families of an empty snapshot): one source of truth "
        "rather than a second list kept in sync by hand"
    ),
}
"""Known upward imports, each with the reason it is kept. Adding one needs a reason here."""

WITHOUT_FLASK = ("foundation", "storage", "read model", "recording", "output")
"""Layers usable from any Python code (a Celery worker, a script): they never import Flask."""


def layer_of(module: str) -> str:
    """The layer of a module path relative to the package (``storage.reader``, ``otlp``)."""
    top = module.split(".", maxsplit=1)[0]
    for layer, members in LAYERS.items():
        if top in members or any(m.endswith("*") and top.startswith(m[:-1]) for m in members):
            return layer
    raise AssertionError(f"{module} is in no layer: add it to LAYERS (and to the graph in docs/DESIGN.md)")


def module_of(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def imports(path: pathlib.Path) -> list[tuple[str, int]]:
    """(imported module relative to the package, line) for every import of the package's own
    modules in ``path``: top-level, inside functions and under ``TYPE_CHECKING`` alike."""
    module = module_of(path)
    is_package = path.name == "__init__.py"
    package_parts = module.split(".") if is_package and module != "__init__" else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            elif (node.module or "").split(".")[0] == NAME:
                target = node.module.removeprefix(NAME).lstrip(".") if node.module else ""
            else:
                continue
            for alias in node.names:  # `from . import layout` imports the module storage.layout
                full = f"{target}.{alias.name}" if target else alias.name
                candidate = PACKAGE.joinpath(*full.split("."))
                is_module = candidate.with_suffix(".py").exists() or candidate.is_dir()
                found.append((full if is_module else target, node.lineno))
        elif isinstance(node, ast.Import):
            found += [
                (alias.name.removeprefix(NAME).lstrip("."), node.lineno)
                for alias in node.names
                if alias.name.split(".")[0] == NAME
            ]
    return [(target or "__init__", line) for target, line in found]


def package_files() -> list[pathlib.Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer() -> None:
    """Each module of the package is placed in exactly one layer."""
    placed = [member for members in LAYERS.values() for member in members]
    assert len(placed) == len(set(placed))
    for path in package_files():
        layer_of(module_of(path))


def test_imports_point_downward() -> None:
    """No module imports a module of a higher layer, except the listed ones with their reason."""
    order = list(LAYERS)
    upward, used = [], set()
    for path in package_files():
        source = module_of(path)
        for target, line in imports(path):
            if order.index(layer_of(target)) > order.index(layer_of(source)):
                pair = (source.split(".")[0], target.split(".")[0])
                if pair in ALLOWED_UPWARD:
                    used.add(pair)
                else:
                    upward.append(f"{path.relative_to(PACKAGE)}:{line}: {source} ({layer_of(source)}) imports "
                                  f"{target} ({layer_of(target)})")  # fmt: skip
    assert upward == []
    assert used == set(ALLOWED_UPWARD), "an allowed exception is gone: remove it from ALLOWED_UPWARD"


def test_lower_layers_never_import_flask() -> None:
    """Storage, recording and output code imports neither Flask nor Werkzeug."""
    offenders = []
    for path in package_files():
        if layer_of(module_of(path)) not in WITHOUT_FLASK:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            offenders += [f"{module_of(path)}: {n}" for n in names if n.split(".")[0] in ("flask", "werkzeug")]
    assert offenders == []


def test_the_checker_sees_every_kind_of_import() -> None:
    """The import parser finds `from . import x`, `from ..x import y` and TYPE_CHECKING imports."""
    source = PACKAGE / "storage" / "sparse.py"
    found = {target for target, _ in imports(source)}
    assert {"storage.layout", "sketch"} <= found
    collector_imports = {target for target, _ in imports(PACKAGE / "request_state.py")}
    assert "collector" in collector_imports  # under TYPE_CHECKING, still an edge of the graph
