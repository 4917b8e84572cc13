"""Response shapes under real servers: werkzeug's (in a thread) and gunicorn (2 workers).

The same sequence of requests (plain, send_file, static 200/304/206/404, a failing
``after_request`` hook registered before or after the extension, a body failing
mid-stream, a label set inside a ``stream_with_context`` body) must be recorded exactly
once each, with the status the client got and the error flag, and leave nothing in flight.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http import client as http_client
from pathlib import Path

import pytest
from recorded import Row, View, recorded, same
from responses_app import FILE_BODY, create_app
from servers import Server, free_port, http, launch_gunicorn, scrape, stop
from werkzeug.serving import make_server

EXPECTED: list[Row] = [
    ("/plain", "GET", "200", False),
    ("/file", "GET", "200", False),
    ("/static/<path:filename>", "GET", "200", False),
    ("/static/<path:filename>", "GET", "304", False),
    ("/static/<path:filename>", "GET", "206", False),
    ("/static/<path:filename>", "GET", "404", False),
    ("/hooked", "GET", "500", True),
    ("/stream-fails", "GET", "200", True),
    ("/labelled-in-body", "GET", "200", False),
]
SETTLE_SECONDS = 15.0
"""Longest wait for the server to close the last body after the client has read it."""


def drive(url: str) -> None:
    """Send the sequence of EXPECTED, checking what the client receives."""
    assert http("GET", url + "/plain") == (200, b"plain")
    assert http("GET", url + "/file") == (200, FILE_BODY)
    with http_connection(url) as conn:
        conn.request("GET", "/static/data.bin")
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, FILE_BODY)
        etag = response.getheader("ETag")
    assert etag
    assert http("GET", url + "/static/data.bin", headers={"If-None-Match": etag})[0] == 304
    assert http("GET", url + "/static/data.bin", headers={"Range": "bytes=10-19"}) == (206, FILE_BODY[10:20])
    assert http("GET", url + "/static/missing.bin")[0] == 404
    assert http("GET", url + "/hooked")[0] == 500
    with http_connection(url) as conn:
        conn.request("GET", "/stream-fails")
        response = conn.getresponse()
        assert response.status == 200
        with pytest.raises((http_client.HTTPException, OSError)):
            response.read()
    assert http("GET", url + "/labelled-in-body") == (200, b"alabelled")


@contextmanager
def http_connection(url: str) -> Iterator[http_client.HTTPConnection]:
    """A plain http.client connection to ``url`` (for headers and broken bodies)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http_client.HTTPConnection(host, int(port), timeout=10)
    try:
        yield conn
    finally:
        conn.close()


def settled(url: str) -> tuple[View, float, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    """Scrape until every request of EXPECTED is recorded (bounded), then the last scrape."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        samples = scrape(url)
        by_method, by_status = recorded(samples)
        view = ([r for r in by_method if r[0] != "/healthz"], [r for r in by_status if r[0] != "/healthz"])
        in_flight = samples[("http_requests_in_flight", ())]
        if (same(view, EXPECTED) and in_flight == 0) or time.monotonic() > deadline:
            return view, in_flight, samples
        time.sleep(0.1)


def check(url: str) -> None:
    drive(url)
    view, in_flight, samples = settled(url)
    assert same(view, EXPECTED), view
    assert in_flight == 0
    assert samples[("provider_requests_total", (("provider", "openai"),))] == 1
    # Every request was recorded once: nothing more, even after the servers closed the bodies.
    time.sleep(0.3)
    assert same(settled(url)[0], EXPECTED)


@pytest.fixture
def werkzeug_server(metrics_dir: str) -> Iterator[Callable[[str], str]]:
    """Serve create_app(hook_position) with werkzeug's threaded server; yields a starter."""
    servers = []

    def start(position: str) -> str:
        app = create_app(position, GATEWAYZ_METRICS_DIR=f"{metrics_dir}/{position}")
        server = make_server("127.0.0.1", free_port(), app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        servers.append((server, thread))
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for server, thread in servers:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


@pytest.mark.parametrize("position", ["before", "after"])
def test_werkzeug_server_records_each_shape_once(werkzeug_server: Callable[[str], str], position: str) -> None:
    """werkzeug's server: every shape recorded once, with the status sent, in flight back to 0."""
    check(werkzeug_server(position))


def start_gunicorn(tmp_path: Path, position: str) -> Server:
    metrics_dir = tmp_path / f"metrics-{position}"
    log = tmp_path / f"gunicorn-{position}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAYZ_METRICS_")}
    env["GATEWAYZ_METRICS_DIR"] = str(metrics_dir)
    arguments = ["--workers", "2", "--pythonpath", "tests", f"responses_app:create_app({position!r})"]
    return launch_gunicorn(arguments, env, metrics_dir, log)


@pytest.mark.parametrize("position", ["before", "after"])
def test_gunicorn_records_each_shape_once(tmp_path: Path, position: str) -> None:
    """gunicorn (sendfile file wrapper, 2 workers): every shape recorded once, in flight 0."""
    server = start_gunicorn(tmp_path, position)
    try:
        check(server.url)
    finally:
        stop(server.process)
