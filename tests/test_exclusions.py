"""Excluded paths (GATEWAYZ_METRICS_EXCLUDED_PATHS) and views (@metrics.exclude) are not recorded."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import configured_app
from flask import Flask, Response

from flask_gatewayz_metrics import GatewayzMetrics


def make(tmp_path: Path, **config: object) -> tuple[Flask, GatewayzMetrics]:
    app, metrics = configured_app(tmp_path, "exclusions", **config)

    @app.get("/api/chat")
    def chat() -> str:
        return "ok"

    @app.get("/internal/ping")
    def ping() -> str:
        return "pong"

    @app.get("/items/<int:item>")
    def item(item: int) -> str:
        return str(item)

    return app, metrics


def recorded(app: Flask) -> dict[str, int]:
    doc = GatewayzMetrics.of(app).collector.to_dict()
    return {endpoint: entry["requests"] for endpoint, entry in doc["endpoints"].items()}  # type: ignore[attr-defined]


def test_excluded_paths_are_not_recorded(tmp_path: Path) -> None:
    """Paths matching an EXCLUDED_PATHS pattern (at their start) are neither recorded nor in flight."""
    app, _ = make(tmp_path, excluded_paths=[r"/internal/", r"/items/\d*7$"])
    client = app.test_client()
    for path in ("/api/chat", "/internal/ping", "/items/7", "/items/8", "/items/17", "/nothing"):
        client.get(path)
    assert recorded(app) == {"/api/chat": 1, "/items/<int:item>": 1, "unmatched": 1}
    assert GatewayzMetrics.of(app).collector.snapshot().in_flight == 0


def test_excluded_view_is_not_recorded_and_leaves_flight(tmp_path: Path) -> None:
    """@metrics.exclude: the view's requests, streamed or not, are not recorded; in flight returns to 0."""
    app, metrics = make(tmp_path)

    @app.get("/probe")
    @metrics.exclude
    def probe() -> str:
        return "alive"

    @metrics.exclude
    @app.get("/stream")
    def stream() -> Response:
        return Response(iter(["a", "b"]))

    client = app.test_client()
    client.get("/probe")
    streamed = client.get("/stream")
    assert GatewayzMetrics.of(app).collector.snapshot().in_flight == 0  # out once its response started
    assert streamed.get_data() == b"ab"
    streamed.close()
    client.get("/api/chat")
    assert recorded(app) == {"/api/chat": 1}
    assert GatewayzMetrics.of(app).collector.snapshot().in_flight == 0


def test_bad_excluded_paths_name_the_key(tmp_path: Path) -> None:
    """A pattern that is not a regular expression, or a bare string, fails init_app naming the key."""
    with pytest.raises(ValueError, match=r"GATEWAYZ_METRICS_EXCLUDED_PATHS .*unterminated"):
        make(tmp_path / "a", excluded_paths=["/internal/("])
    with pytest.raises(TypeError, match="GATEWAYZ_METRICS_EXCLUDED_PATHS"):
        make(tmp_path / "b", excluded_paths="/internal/")


def test_excluded_paths_keep_their_inline_flags(tmp_path: Path) -> None:
    """A pattern with global inline flags (``(?i)``, verbose ``(?x)`` with a comment)
    compiles alone and means the same beside other patterns; it used to pass the check
    and then fail init_app with a bare re.error (Python 3.11 refuses global flags inside
    the alternation the request path tries)."""
    patterns = ["/static/", "(?i)/INTERNAL/", r"(?x) /items/ \d*7 $  # ids ending in 7"]
    app, _ = make(tmp_path, excluded_paths=patterns)
    client = app.test_client()
    for path in ("/internal/ping", "/Internal/x", "/items/17", "/items/8", "/api/chat", "/static/a.css"):
        client.get(path)
    assert recorded(app) == {"/items/<int:item>": 1, "/api/chat": 1}


def test_excluded_path_back_references_keep_their_meaning_or_are_refused(tmp_path: Path) -> None:
    """The patterns are tried as one alternation: a numbered back-reference after a pattern
    with groups would mean that pattern's group (``/(b)\1`` stopped excluding "/bb"), so it
    is refused naming the key; one with no groups before it, or a named group, keeps its
    meaning. Group names used twice are refused naming the key, not a bare re.error."""
    with pytest.raises(ValueError, match=r"GATEWAYZ_METRICS_EXCLUDED_PATHS .*numbered group reference \\1 "):
        make(tmp_path / "a", excluded_paths=["/(a)", r"/(b)\1"])
    with pytest.raises(ValueError, match=r"GATEWAYZ_METRICS_EXCLUDED_PATHS .*redefinition of group name"):
        make(tmp_path / "b", excluded_paths=["/(?P<x>a)", "/(?P<x>b)"])
    for patterns in ([r"/(b)\1", "/(a)"], ["/(?P<a>a)", r"/(?P<b>b)(?P=b)"], [r"/(b)\1"]):
        app, _ = make(tmp_path / str(len(str(patterns))), excluded_paths=patterns)

        @app.get("/<name>")
        def any_name(name: str) -> str:
            return name

        client = app.test_client()
        for path in ("/bb", "/bc"):
            client.get(path)
        assert recorded(app) == {"/<name>": 1}, patterns  # "/bb" excluded, "/bc" recorded


def test_an_excluded_view_whose_exception_propagates_is_not_recorded(metrics_dir: str) -> None:
    """With ``PROPAGATE_EXCEPTIONS`` (also ``TESTING`` and debug) the exception of a view
    marked with ``exclude`` escapes Flask before any response starts: the request is
    still not recorded, and leaves the in-flight gauge."""
    app = Flask(__name__)
    app.config["GATEWAYZ_METRICS_DIR"] = metrics_dir
    app.config["PROPAGATE_EXCEPTIONS"] = True
    metrics = GatewayzMetrics(app)

    @app.get("/healthz")
    @metrics.exclude
    def healthz() -> str:
        raise RuntimeError("dependency down")

    with pytest.raises(RuntimeError):
        app.test_client().get("/healthz")
    document = app.extensions["gatewayz_metrics"].collector.to_dict()
    assert "/healthz" not in document["endpoints"]
    assert document["in_flight"] == 0
