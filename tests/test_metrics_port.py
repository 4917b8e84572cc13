"""The separate metrics port (GATEWAYZ_METRICS_PORT): one listener per server, merged numbers, takeover."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import configured_app
from flask import Flask
from servers import free_port, http, scrape, send_concurrently, start_gateway, stop

from flask_gatewayz_metrics import GatewayzMetrics
from flask_gatewayz_metrics.metrics_port import (
    REQUEST_DEADLINE_SECONDS,
    RETRY_SECONDS,
    pre_fork_master,
    read_status,
)
from flask_gatewayz_metrics.settings import Settings

TAKEOVER_BOUND = 5 * RETRY_SECONDS + 10
"""Seconds within which another process must serve the port after its server died (a
loose bound: the machine is shared; the retry period itself is RETRY_SECONDS)."""


@pytest.fixture
def port_app(tmp_path: Path) -> Iterator[tuple[Flask, int]]:
    port = free_port()
    app, _ = configured_app(tmp_path, "port", port=port, auth_token="s3cret")

    @app.post("/api/chat")
    def chat() -> str:
        return "ok"

    yield app, port
    metrics_port = GatewayzMetrics.of(app).port
    assert metrics_port is not None
    metrics_port.close()


def wait_serving(url: str, timeout: float, headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if http("GET", url, timeout=2, headers=headers)[0] in (200, 401):
                return
        except OSError:
            pass
        time.sleep(0.05)
    pytest.fail(f"{url} not served within {timeout}s")


def test_port_serves_metrics_routes_with_the_same_auth(port_app: tuple[Flask, int]) -> None:
    """/metrics, /metrics/json and /metrics/health on the port, bearer token required; other paths 404."""
    app, port = port_app
    client = app.test_client()
    client.post("/api/chat")
    client.post("/api/chat")
    url = f"http://127.0.0.1:{port}"
    auth = {"Authorization": "Bearer s3cret"}
    wait_serving(url + "/metrics", 10 * RETRY_SECONDS, auth)
    assert http("GET", url + "/metrics")[0] == 401
    status, body = http("GET", url + "/metrics", headers=auth)
    assert status == 200
    assert b'http_requests_total{endpoint="/api/chat",method="POST"} 2.0' in body
    status, body = http("GET", url + "/metrics/json", headers=auth)
    assert status == 200 and json.loads(body)["endpoints"]["/api/chat"]["requests"] == 2
    status, body = http("GET", url + "/metrics/health", headers=auth)
    assert status == 200 and json.loads(body)["status"] == "healthy", body
    assert http("GET", url + "/api/chat", headers=auth)[0] == 404  # the app's own routes are not on this port
    assert http("GET", url + "/metricsfoo", headers=auth)[0] == 404
    # Scrapes on the port are not requests of the app.
    assert b'endpoint="/metrics"' not in http("GET", url + "/metrics", headers=auth)[1]


NOT_OURS = b"not found: this port serves the metrics routes only\n"
"""The port's own 404 body: the request reached no view of the app."""


def raw_get(port: int, path: bytes, headers: bytes = b"", method: bytes = b"GET") -> tuple[int, bytes]:
    """One HTTP/1.0 request on a real socket, ``path`` sent as is (no client normalises it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(method + b" " + path + b" HTTP/1.0\r\nHost: x\r\n" + headers + b"\r\n")
        data = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (chunk := s.recv(65536)):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def test_port_never_serves_an_application_view(tmp_path: Path) -> None:
    """A path under the URL prefix that an application view matches (a catch-all
    ``/<path:p>``) is 404 on the port and the view never runs; it was served there, with
    no metrics credentials. The metrics routes still answer, with their auth."""
    port = free_port()
    app, _ = configured_app(tmp_path, "catchall", port=port, auth_token="s3cret")
    ran: list[str] = []

    @app.get("/admin/secret")
    def secret() -> str:
        ran.append("secret")
        return "APP SECRET"

    @app.route("/<path:rest>", methods=["GET", "POST"])
    def catchall(rest: str) -> str:
        ran.append(rest)
        return f"APP CATCHALL {rest}"

    metrics_port = GatewayzMetrics.of(app).port
    assert metrics_port is not None
    auth = b"Authorization: Bearer s3cret\r\n"
    try:
        wait_serving(f"http://127.0.0.1:{port}/metrics", 10 * RETRY_SECONDS)
        for path in (b"/metrics/anything", b"/metrics/%2e%2e/admin/secret", b"/metrics/../admin/secret",
                     b"/metrics/", b"/metrics//json", b"/admin/secret", b"/metricsx"):  # fmt: skip
            for headers in (b"", auth):
                status, body = raw_get(port, path, headers)
                assert (status, body) == (404, NOT_OURS), (path, headers, body)
        # Flask routes a POST of /metrics/json to the catch-all (ours is GET only): not ours.
        assert raw_get(port, b"/metrics/json", auth, method=b"POST") == (404, NOT_OURS)
        assert raw_get(port, b"/metrics")[0] == 401
        assert raw_get(port, b"/metrics", auth)[0] == 200
        assert raw_get(port, b"/metrics/json", auth)[0] == 200
        assert ran == []
        assert app.test_client().get("/metrics/anything").get_data() == b"APP CATCHALL metrics/anything"  # main port
    finally:
        metrics_port.close()


class MethodOverride:
    """Flask's documented ``X-HTTP-Method-Override`` middleware."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        method = environ.get("HTTP_X_HTTP_METHOD_OVERRIDE", "").upper()
        if method in ("GET", "POST", "PUT", "DELETE"):
            environ["REQUEST_METHOD"] = method
        return self.app(environ, start_response)


@pytest.mark.parametrize("before_init", [True, False], ids=["middleware inside ours", "middleware outside ours"])
def test_port_requests_skip_the_apps_middleware(tmp_path: Path, before_init: bool) -> None:
    """The port matches a request to our routes, then hands it to Flask's own dispatch:
    an app's WSGI middleware (here a method override) cannot turn it into a request for
    an application view (``POST /metrics``) after the check. It did (found by a review
    of the port fix)."""
    port = free_port()
    app = Flask("override")
    app.config.update(GATEWAYZ_METRICS_DIR=str(tmp_path / "metrics"), GATEWAYZ_METRICS_PORT=port)
    ran: list[str] = []

    @app.post("/metrics")
    def ingest() -> str:
        ran.append("ingest")
        return "APP VIEW"

    if before_init:
        app.wsgi_app = MethodOverride(app.wsgi_app)  # type: ignore[method-assign]
    GatewayzMetrics(app)
    if not before_init:
        app.wsgi_app = MethodOverride(app.wsgi_app)  # type: ignore[method-assign]
    metrics_port = GatewayzMetrics.of(app).port
    assert metrics_port is not None
    try:
        wait_serving(f"http://127.0.0.1:{port}/metrics", 10 * RETRY_SECONDS)
        assert raw_get(port, b"/metrics", method=b"POST") == (404, NOT_OURS)
        status, body = raw_get(port, b"/metrics", b"X-HTTP-Method-Override: POST\r\n")
        assert status == 200 and body.startswith(b"# HELP"), body[:80]
        assert ran == []
        override = {"X-HTTP-Method-Override": "POST"}
        assert app.test_client().get("/metrics", headers=override).get_data() == b"APP VIEW"  # main port
    finally:
        metrics_port.close()


def test_port_with_the_root_prefix_never_serves_the_apps_own_root(tmp_path: Path) -> None:
    """With URL prefix ``/`` the app's own ``/`` (registered first, so Flask routes ``/``
    to it) is 404 on the port, not the app's page; ``/json`` and ``/health`` are served."""
    port = free_port()
    app = Flask("root_prefix")
    app.config.update(GATEWAYZ_METRICS_DIR=str(tmp_path / "metrics"), GATEWAYZ_METRICS_URL_PREFIX="/",
                      GATEWAYZ_METRICS_PORT=port)  # fmt: skip

    @app.get("/")
    def index() -> str:
        return "APP INDEX"

    GatewayzMetrics(app)
    metrics_port = GatewayzMetrics.of(app).port
    assert metrics_port is not None
    try:
        wait_serving(f"http://127.0.0.1:{port}/json", 10 * RETRY_SECONDS)
        assert app.test_client().get("/").get_data() == b"APP INDEX"  # the app's view wins "/"
        assert raw_get(port, b"/") == (404, NOT_OURS)
        assert raw_get(port, b"/json")[0] == 200
        assert raw_get(port, b"/health")[0] == 200
        assert raw_get(port, b"/json", method=b"POST")[0] == 405  # one of our routes: Flask's 405
    finally:
        metrics_port.close()


@pytest.mark.parametrize("sent_at_once", [b"", b"GET /metrics HTTP/1.0\r\n"], ids=["request_line", "headers"])
def test_a_slow_client_holds_the_port_at_most_the_request_deadline(
    port_app: tuple[Flask, int], sent_at_once: bytes
) -> None:
    """A client that sends a byte a second (each read well within the per-read timeout) is
    cut off REQUEST_DEADLINE_SECONDS after it was accepted, whether it dribbles the request
    line or the headers; a scrape sent meanwhile is answered then, and the next at once.
    It used to hold the single-threaded port for as long as it kept sending."""
    _, port = port_app
    auth = b"Authorization: Bearer s3cret\r\n"
    wait_serving(f"http://127.0.0.1:{port}/metrics", 10 * RETRY_SECONDS)
    slack = 2.0  # a shared machine
    with socket.create_connection(("127.0.0.1", port), timeout=1.0) as slow, ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        slow.sendall(sent_at_once)
        time.sleep(0.3)  # accepted by now: the port is idle and the connection is the first

        def scrape_meanwhile() -> tuple[int, float]:
            begun = time.monotonic()
            status, _ = raw_get(port, b"/metrics", auth)
            return status, time.monotonic() - begun

        meanwhile = pool.submit(scrape_meanwhile)
        closed_after = None
        for _ in range(int(3 * REQUEST_DEADLINE_SECONDS)):  # a byte a second, until the port hangs up
            try:
                slow.send(b"X")
                if slow.recv(1) == b"":  # waits up to 1 s: b"" once the port closed the connection
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                continue
            except OSError:  # reset: closed with our last byte unread
                closed_after = time.monotonic() - started
                break
        assert closed_after is not None, "the slow client was never cut off"
        assert REQUEST_DEADLINE_SECONDS - 0.5 <= closed_after <= REQUEST_DEADLINE_SECONDS + slack
        status, waited = meanwhile.result(timeout=REQUEST_DEADLINE_SECONDS + 10)
        assert status == 200 and waited <= REQUEST_DEADLINE_SECONDS + slack
    begun = time.monotonic()
    assert raw_get(port, b"/metrics", auth)[0] == 200
    assert time.monotonic() - begun < slack


def test_port_taken_by_another_program_is_reported_then_taken(tmp_path: Path) -> None:
    """A port held by another program: the app works, health says why (degraded); freed, it is served."""
    port = free_port()
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", port))
    blocker.listen(1)
    app, _ = configured_app(tmp_path, "taken", port=port)
    metrics_port = GatewayzMetrics.of(app).port
    assert metrics_port is not None
    try:
        client = app.test_client()
        deadline = time.monotonic() + 10 * RETRY_SECONDS
        report: dict[str, object] = {}
        while time.monotonic() < deadline:
            report = client.get("/metrics/health").get_json()
            if report["reasons"]:
                break
            time.sleep(0.05)
        assert report["status"] == "degraded", report
        assert any(f"metrics port not served: cannot listen on 127.0.0.1:{port}" in r for r in report["reasons"])  # type: ignore[attr-defined]
        assert client.get("/metrics").status_code == 200
        blocker.close()
        wait_serving(f"http://127.0.0.1:{port}/metrics", 5 * RETRY_SECONDS)
        assert client.get("/metrics/health").get_json()["reasons"] == []
        status = read_status(GatewayzMetrics.of(app).collector.directory)
        assert status == {"pid": os.getpid(), "address": f"127.0.0.1:{port}", "serving": True}
    finally:
        blocker.close()
        metrics_port.close()


def test_port_settings_from_config_option_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """GATEWAYZ_METRICS_PORT / _PORT_ADDRESS from the environment, option or config; bad values refused."""
    assert Settings.resolve({}, {})[0].port is None
    assert Settings.resolve({}, {})[0].port_address == "127.0.0.1"
    monkeypatch.setenv("GATEWAYZ_METRICS_PORT", "9100")
    monkeypatch.setenv("GATEWAYZ_METRICS_PORT_ADDRESS", "::")
    settings = Settings.resolve({}, {})[0]
    assert (settings.port, settings.port_address) == (9100, "::")
    assert Settings.resolve({"GATEWAYZ_METRICS_PORT": 9200}, {"port": 9300})[0].port == 9200
    for bad in ("0", "70000", "nine", "-1"):
        monkeypatch.setenv("GATEWAYZ_METRICS_PORT", bad)
        with pytest.raises((TypeError, ValueError), match="environment variable GATEWAYZ_METRICS_PORT must be"):
            Settings.resolve({}, {})
    monkeypatch.delenv("GATEWAYZ_METRICS_PORT")
    for address in ("", "[::1]", "a b", 7):
        with pytest.raises((TypeError, ValueError), match="GATEWAYZ_METRICS_PORT_ADDRESS must be"):
            Settings.resolve({"GATEWAYZ_METRICS_PORT_ADDRESS": address}, {})
    assert not pre_fork_master()  # pytest is no server master: ports start where the app is made


# ----------------------------------------------------------------------------- real gunicorn
def listeners(port: int) -> list[int]:
    """Pids of every process holding a listening TCP socket on ``port`` (IPv4 and IPv6)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    owners = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            links = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        except OSError:
            continue
        owners += [int(pid)] * len({f"socket:[{inode}]" for inode in inodes} & links)
    return owners


def worker_pids(master: int) -> set[int]:
    return {int(pid) for pid in Path(f"/proc/{master}/task/{master}/children").read_text().split()}


def wait_for_workers(master: int, count: int) -> set[int]:
    """The master's worker pids once it has ``count`` (the server is ready when the first one is)."""
    deadline = time.monotonic() + 60
    while len(worker_pids(master)) != count and time.monotonic() < deadline:
        time.sleep(0.1)
    workers = worker_pids(master)
    assert len(workers) == count, workers
    return workers


def totals(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The counters of one scrape (gauges such as uptime move between two scrapes)."""
    return {key: value for key, value in scrape(url).items() if key[0].endswith("_total")}


def wait_for_listener(port: int, not_pid: int | None, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        owners = listeners(port)
        if len(owners) == 1 and owners[0] != not_pid:
            return owners[0]
        time.sleep(0.05)
    pytest.fail(f"no single new listener on port {port} within {timeout}s: {listeners(port)}")


@pytest.mark.slow
def test_gunicorn_three_workers_one_listener_same_numbers_takeover_after_sigkill(tmp_path: Path) -> None:
    """3 gunicorn workers: exactly one process listens on the metrics port and serves the merged numbers;
    SIGKILLed, another worker takes over within the bound, numbers intact."""
    metrics_port = free_port()
    server = start_gateway(tmp_path, "port", workers=3, GATEWAYZ_METRICS_PORT=str(metrics_port))
    port_url = f"http://127.0.0.1:{metrics_port}"
    try:
        holder = wait_for_listener(metrics_port, None, 10 * RETRY_SECONDS)
        workers = wait_for_workers(server.process.pid, 3)
        assert holder in workers, (holder, workers, server.process.pid)
        sent = 30
        statuses = send_concurrently(server.url, [("POST", "/api/chat", {"message": "hi"})] * sent, 4, 120)
        assert statuses[200] == sent, statuses
        time.sleep(3 * RETRY_SECONDS)  # every worker has had time to try (and fail) to bind
        assert listeners(metrics_port) == [holder]
        main, on_port = totals(server.url), totals(port_url)
        chat = ("http_requests_total", (("endpoint", "/api/chat"), ("method", "POST")))
        assert main[chat] == sent and on_port == main
        assert read_status(str(server.metrics_dir))["pid"] == holder  # type: ignore[index]
        assert json.loads(http("GET", port_url + "/metrics/health")[1])["status"] == "healthy"

        os.kill(holder, signal.SIGKILL)
        killed = time.monotonic()
        new_holder = wait_for_listener(metrics_port, holder, TAKEOVER_BOUND)
        took = time.monotonic() - killed
        print(f"metrics port taken over {took * 1000:.0f} ms after SIGKILL (retry every {RETRY_SECONDS:.0f} s)")
        assert new_holder in worker_pids(server.process.pid) and new_holder != holder
        main, on_port = totals(server.url), totals(port_url)
        assert main[chat] == sent and on_port == main  # the killed worker's requests still count
    finally:
        stop(server.process)


@pytest.mark.slow
def test_gunicorn_preload_serves_from_a_worker_not_the_master(tmp_path: Path) -> None:
    """With --preload the app is made in the master: the port is served by one forked worker, never the master."""
    metrics_port = free_port()
    server = start_gateway(tmp_path, "preload", "--preload", workers=2, GATEWAYZ_METRICS_PORT=str(metrics_port))
    try:
        holder = wait_for_listener(metrics_port, None, 10 * RETRY_SECONDS)  # before any request
        assert holder in wait_for_workers(server.process.pid, 2) and holder != server.process.pid
        assert http("GET", f"http://127.0.0.1:{metrics_port}/metrics")[0] == 200
    finally:
        stop(server.process)


@pytest.mark.slow
@pytest.mark.parametrize("lazy", [False, True], ids=["default", "lazy-apps"])
def test_uwsgi_one_listener_and_takeover(tmp_path: Path, lazy: bool) -> None:
    """uWSGI (3 workers, --enable-threads): one worker serves the port (from its first request in the default
    mode, where the app is loaded in the master; at once with --lazy-apps), another after a SIGKILL."""
    tests = Path(__file__).resolve().parent
    uwsgi = Path(sys.executable).with_name("uwsgi")
    app_port, metrics_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAYZ_METRICS_", "DEPLOY_APP_"))}
    env.update(
        PYTHONPATH=os.pathsep.join([str(tests), str(tests.parent)]), GATEWAYZ_METRICS_DIR=str(tmp_path / "metrics"),
        GATEWAYZ_METRICS_PORT=str(metrics_port),
    )  # fmt: skip
    command = [
        str(uwsgi), "--master", "--processes", "3", "--enable-threads", "--http-socket", f"127.0.0.1:{app_port}",
        "--module", "deploy_app:app", "--home", sys.prefix, "--need-app", "--die-on-term", "--disable-logging",
        *(["--lazy-apps"] if lazy else []),
    ]  # fmt: skip
    log = tmp_path / "uwsgi.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{app_port}"
    try:
        wait_serving(url + "/metrics", 30)
        seen: set[int] = set()
        deadline = time.monotonic() + 30
        while len(seen) < 3 and time.monotonic() < deadline:  # every worker serves a request (and so runs its thread)
            with ThreadPoolExecutor(6) as pool:
                seen |= {int(body) for _, body in pool.map(lambda _: http("GET", url + "/pid"), range(6))}
        holder = wait_for_listener(metrics_port, None, 10 * RETRY_SECONDS)
        workers = worker_pids(process.pid)
        assert holder in workers and seen == workers, (holder, seen, workers, log.read_text()[-2000:])
        assert totals(url) == totals(f"http://127.0.0.1:{metrics_port}")
        os.kill(holder, signal.SIGKILL)
        new_holder = wait_for_listener(metrics_port, holder, TAKEOVER_BOUND)
        assert new_holder not in (holder, process.pid)
        assert totals(url) == totals(f"http://127.0.0.1:{metrics_port}")
    finally:
        stop(process)
