"""Every Flask response is recorded exactly once, whatever its shape, hooks and middleware.

Each test drives the app through Flask's test client and reads the merged numbers back
from ``/metrics``: the requests recorded (count, route, method), their status, whether
they were errors, and ``http_requests_in_flight``. Streamed bodies, labels and own routes:
test_responses_streams.py; real servers: test_responses_servers.py.
"""

from __future__ import annotations

import asyncio
import uuid
from http import HTTPStatus
from typing import Any

import pytest
from flask import Blueprint, Flask, abort, make_response, redirect
from recorded import in_flight, make, recorded, same, scrape
from responses_app import FILE_BODY, Boom, create_app
from werkzeug.exceptions import NotFound
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.test import Client

from flask_gatewayz_metrics import GatewayzMetrics, label_request


# --------------------------------------------------------------- file responses
def test_send_file_recorded_once_and_leaves(metrics_dir: str) -> None:
    """send_file (pass-through body): in flight until the body is read, then one 200."""
    app = create_app(GATEWAYZ_METRICS_DIR=metrics_dir)
    client = app.test_client()
    response = client.get("/file")
    assert in_flight(scrape(client)) == 1
    assert response.get_data() == FILE_BODY
    response.close()
    got = scrape(client)
    assert same(recorded(got), [("/file", "GET", "200", False)])
    assert in_flight(got) == 0


def test_static_200_206_304_404_each_recorded(metrics_dir: str) -> None:
    """The static route's 200, Range 206, If-None-Match 304 and 404 are four requests."""
    client = make(metrics_dir).test_client()
    full = client.get("/static/data.bin")
    assert full.get_data() == FILE_BODY
    part = client.get("/static/data.bin", headers={"Range": "bytes=10-19"})
    assert (part.status_code, part.get_data()) == (206, FILE_BODY[10:20])
    etag = full.headers["ETag"]
    assert client.get("/static/data.bin", headers={"If-None-Match": etag}).status_code == 304
    assert client.get("/static/missing.bin").status_code == 404
    got = scrape(client)
    route = "/static/<path:filename>"
    assert same(recorded(got), sorted((route, "GET", s, False) for s in ("200", "206", "304", "404")))
    assert in_flight(got) == 0


def test_file_body_closed_early_is_recorded(metrics_dir: str) -> None:
    """A file response whose body the server closes unread is still recorded once."""
    client = create_app(GATEWAYZ_METRICS_DIR=metrics_dir).test_client()
    client.get("/file").close()
    got = scrape(client)
    assert same(recorded(got), [("/file", "GET", "200", False)])
    assert in_flight(got) == 0


# -------------------------------------------------------------------- hooks
@pytest.mark.parametrize("position", ["before", "after"])
@pytest.mark.parametrize("propagate", [False, True])
def test_after_request_hook_that_raises(metrics_dir: str, position: str, propagate: bool) -> None:
    """An app after_request hook that raises, registered before or after us: one 500 error."""
    app = create_app(position, GATEWAYZ_METRICS_DIR=metrics_dir, PROPAGATE_EXCEPTIONS=propagate)
    client = app.test_client()
    if propagate:
        with pytest.raises(Boom):
            client.get("/hooked")
    else:
        assert client.get("/hooked").status_code == 500
    got = scrape(client)
    assert same(recorded(got), [("/hooked", "GET", "500", True)])
    assert in_flight(got) == 0


def test_before_request_short_circuits(metrics_dir: str) -> None:
    """A before_request returning a response or aborting: recorded under the route."""
    app = make(metrics_dir)

    @app.before_request
    def guard() -> Any:
        from flask import request

        if request.args.get("deny"):
            return "denied", 403
        if request.args.get("abort"):
            abort(401)
        return None

    app.add_url_rule("/guarded", "guarded", lambda: "ok")
    client = app.test_client()
    assert client.get("/guarded?deny=1").status_code == 403
    assert client.get("/guarded?abort=1").status_code == 401
    assert client.get("/guarded?x=1&y=2").status_code == 200
    got = scrape(client)
    assert same(recorded(got), [("/guarded", "GET", s, False) for s in ("200", "401", "403")])
    assert in_flight(got) == 0


def test_hooks_in_any_order_record_once(metrics_dir: str) -> None:
    """before/after/teardown hooks registered before and after us change nothing."""
    app = Flask(__name__)
    calls: list[str] = []
    app.before_request(lambda: calls.append("before-1") and None)
    app.after_request(lambda r: (calls.append("after-1"), r)[1])
    app.teardown_request(lambda e: calls.append("teardown-1"))
    app.config["GATEWAYZ_METRICS_DIR"] = metrics_dir
    GatewayzMetrics(app)
    app.before_request(lambda: calls.append("before-2") and None)
    app.after_request(lambda r: (calls.append("after-2"), r.headers.set("X-Hook", "2"), r)[2])
    app.teardown_request(lambda e: calls.append("teardown-2"))
    app.add_url_rule("/x", "x", lambda: "x")
    client = app.test_client()
    assert client.get("/x").headers["X-Hook"] == "2"
    assert {"before-1", "before-2", "after-1", "after-2", "teardown-1", "teardown-2"} <= set(calls)
    got = scrape(client)
    assert same(recorded(got), [("/x", "GET", "200", False)])
    assert in_flight(got) == 0


def test_user_errorhandlers(metrics_dir: str) -> None:
    """Error handlers decide the status: 422 for a ValueError, a JSON 404, a 500 handler."""
    app = make(metrics_dir, PROPAGATE_EXCEPTIONS=False)
    app.register_error_handler(ValueError, lambda e: ({"error": str(e)}, 422))
    app.register_error_handler(404, lambda e: ({"error": "nope"}, 404))
    app.register_error_handler(500, lambda e: ("handled", 500))

    def bad() -> str:
        raise ValueError("bad input")

    def crash() -> str:
        raise KeyError("x")

    app.add_url_rule("/bad", "bad", bad)
    app.add_url_rule("/crash", "crash", crash)
    client = app.test_client()
    assert client.get("/bad").status_code == 422
    assert client.get("/missing").get_json() == {"error": "nope"}
    assert client.get("/crash").get_data() == b"handled"
    got = scrape(client)
    assert same(recorded(got), [("/bad", "GET", "422", False), ("/crash", "GET", "500", True),
                             ("unmatched", "GET", "404", False)])  # fmt: skip
    assert in_flight(got) == 0


def test_view_exception_propagated_is_one_500(metrics_dir: str) -> None:
    """With PROPAGATE_EXCEPTIONS the exception reaches the caller; one 500 error recorded."""
    app = make(metrics_dir, TESTING=True)

    def boom(n: int) -> str:
        raise Boom("view failed")

    app.add_url_rule("/items/<int:n>", "boom", boom)
    client = app.test_client()
    with pytest.raises(Boom):
        client.get("/items/3")
    got = scrape(client)
    assert same(recorded(got), [("/items/<int:n>", "GET", "500", True)])
    assert in_flight(got) == 0


# --------------------------------------------------------- return value shapes
def test_make_response_httpstatus_and_exception_instances(metrics_dir: str) -> None:
    """make_response, HTTPStatus, a returned HTTPException and redirect() keep their status."""
    app = make(metrics_dir)
    app.add_url_rule("/made", "made", lambda: make_response("made", 201))
    app.add_url_rule("/status", "status", lambda: ("", HTTPStatus.ACCEPTED))
    app.add_url_rule("/exc", "exc", NotFound)
    app.add_url_rule("/moved", "moved", lambda: redirect("/made"))
    client = app.test_client()
    assert [client.get(p).status_code for p in ("/made", "/status", "/exc", "/moved")] == [201, 202, 404, 302]
    got = scrape(client)
    assert same(recorded(got), [("/exc", "GET", "404", False), ("/made", "GET", "201", False),
                             ("/moved", "GET", "302", False), ("/status", "GET", "202", False)])  # fmt: skip
    assert in_flight(got) == 0


def test_redirects_followed_and_strict_slashes(metrics_dir: str) -> None:
    """A followed redirect is two requests; the automatic trailing-slash 308 is unmatched."""
    app = make(metrics_dir)
    app.add_url_rule("/target", "target", lambda: "here")
    app.add_url_rule("/moved", "moved", lambda: redirect("/target"))
    app.add_url_rule("/dir/", "dir", lambda: "dir")
    client = app.test_client()
    assert client.get("/moved", follow_redirects=True).get_data() == b"here"
    assert client.get("/dir").status_code == 308
    got = scrape(client)
    assert same(recorded(got), [("/moved", "GET", "302", False), ("/target", "GET", "200", False),
                             ("unmatched", "GET", "308", False)])  # fmt: skip
    assert in_flight(got) == 0


def test_head_options_query_strings(metrics_dir: str) -> None:
    """HEAD and automatic OPTIONS are recorded under the route with their own method."""
    app = make(metrics_dir)
    app.add_url_rule("/r", "r", lambda: "body")
    client = app.test_client()
    assert client.head("/r?a=1").status_code == 200
    assert client.options("/r").status_code == 200
    assert client.get("/r?q=%C3%A9&x=").status_code == 200
    got = scrape(client)
    assert same(recorded(got), [("/r", "GET", "200", False), ("/r", "HEAD", "200", False),
                             ("/r", "OPTIONS", "200", False)])  # fmt: skip
    assert in_flight(got) == 0


# ------------------------------------------------------------- routing shapes
def test_blueprints_nested_and_prefixed_and_converters(metrics_dir: str) -> None:
    """Blueprint prefixes, nested blueprints and path/uuid converters give full templates."""
    app = make(metrics_dir)
    parent = Blueprint("parent", __name__, url_prefix="/v1")
    child = Blueprint("child", __name__, url_prefix="/models")
    child.add_url_rule("/<uuid:model_id>", "model", lambda model_id: model_id.hex)
    parent.add_url_rule("/files/<path:name>", "files", lambda name: name)
    parent.register_blueprint(child)
    app.register_blueprint(parent)
    client = app.test_client()
    assert client.get(f"/v1/models/{uuid.uuid4()}").status_code == 200
    assert client.get("/v1/files/a/b/c.txt").status_code == 200
    assert client.get("/v1/models/not-a-uuid").status_code == 404
    got = scrape(client)
    assert same(recorded(got), [("/v1/files/<path:name>", "GET", "200", False),
                             ("/v1/models/<uuid:model_id>", "GET", "200", False),
                             ("unmatched", "GET", "404", False)])  # fmt: skip
    assert in_flight(got) == 0


def test_non_ascii_route(metrics_dir: str) -> None:
    """A route with non-ASCII characters is recorded under its template."""
    app = make(metrics_dir)
    app.add_url_rule("/café/<name>", "cafe", lambda name: name)
    client = app.test_client()
    assert client.get("/caf%C3%A9/cr%C3%A8me").status_code == 200
    assert same(recorded(scrape(client)), [("/café/<name>", "GET", "200", False)])
    assert in_flight(scrape(client)) == 0


def test_subdomain_blueprint_exception_keeps_route(metrics_dir: str) -> None:
    """A raising route of a subdomain blueprint (propagated) is recorded under its route."""
    app = make(metrics_dir, SERVER_NAME="example.test", TESTING=True)
    app.subdomain_matching = True
    api = Blueprint("api", __name__, subdomain="api")

    def fail(n: int) -> str:
        raise Boom("subdomain route failed")

    api.add_url_rule("/jobs/<int:n>", "fail", fail)
    api.add_url_rule("/ok", "ok", lambda: "ok")
    app.register_blueprint(api)
    client = app.test_client()
    with pytest.raises(Boom):
        client.get("/jobs/1", base_url="http://api.example.test")
    assert client.get("/ok", base_url="http://api.example.test").status_code == 200
    assert client.get("/ok", base_url="http://example.test").status_code == 404
    got = scrape(client, "http://example.test/metrics")
    assert same(recorded(got), [("/jobs/<int:n>", "GET", "500", True), ("/ok", "GET", "200", False),
                             ("unmatched", "GET", "404", False)])  # fmt: skip
    assert in_flight(got) == 0


def test_405_keeps_route_template(metrics_dir: str) -> None:
    """A method a real route does not allow is a 405 under that route, also when propagated."""
    app = make(metrics_dir)
    app.add_url_rule("/only-get/<int:n>", "only_get", lambda n: "ok")
    client = app.test_client()
    assert client.post("/only-get/1").status_code == 405
    assert client.delete("/only-get/2").status_code == 405
    got = scrape(client)
    route = "/only-get/<int:n>"
    assert same(recorded(got), [(route, "DELETE", "405", False), (route, "POST", "405", False)])
    assert in_flight(got) == 0


# -------------------------------------------------------------- middleware etc.
def test_proxyfix_and_dispatcher_middleware(metrics_dir: str, tmp_path: Any) -> None:
    """Under ProxyFix and DispatcherMiddleware (mounted at /api) routes and counts hold."""
    app = make(metrics_dir)
    app.add_url_rule("/who", "who", lambda: __import__("flask").request.remote_addr or "")
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1)  # type: ignore[method-assign]
    other = Flask("other")
    other.add_url_rule("/elsewhere", "elsewhere", lambda: "other app")
    client = Client(DispatcherMiddleware(other, {"/api": app}))
    assert client.get("/api/who", headers={"X-Forwarded-For": "10.1.2.3"}).get_data() == b"10.1.2.3"
    assert client.get("/elsewhere").get_data() == b"other app"
    assert client.get("/api/nope").status_code == 404
    got = scrape(client, "/api/metrics")
    assert same(recorded(got), [("/who", "GET", "200", False), ("unmatched", "GET", "404", False)])
    assert in_flight(got) == 0


def test_inner_middleware_answering_itself(metrics_dir: str) -> None:
    """A middleware inside the extension that answers without Flask: recorded under the
    route Flask would have matched, with the middleware's status."""
    app = Flask(__name__)
    app.config["GATEWAYZ_METRICS_DIR"] = metrics_dir
    app.add_url_rule("/guarded/<int:n>", "guarded", lambda n: "ok")
    flask_app = app.wsgi_app

    def deny(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("HTTP_X_DENY"):
            start_response("403 FORBIDDEN", [("Content-Length", "0")])
            return [b""]
        return flask_app(environ, start_response)

    app.wsgi_app = deny  # type: ignore[method-assign]
    GatewayzMetrics(app)
    client = app.test_client()
    assert client.get("/guarded/1", headers={"X-Deny": "1"}).status_code == 403
    assert client.get("/guarded/2").status_code == 200
    got = scrape(client)
    assert same(recorded(got), [("/guarded/<int:n>", "GET", "403", False), ("/guarded/<int:n>", "GET", "200", False)])
    assert in_flight(got) == 0


def test_async_view(metrics_dir: str) -> None:
    """An async view (flask[async]) is recorded like a sync one, labels included."""
    app = make(metrics_dir)

    async def slow() -> str:
        await asyncio.sleep(0.01)
        label_request(provider="openai")
        return "done"

    app.add_url_rule("/async", "async", slow)
    client = app.test_client()
    assert client.get("/async").get_data() == b"done"
    got = scrape(client)
    assert same(recorded(got), [("/async", "GET", "200", False)])
    assert in_flight(got) == 0
    assert got[("provider_requests_total", (("provider", "openai"),))] == 1
