"""A separate metrics port (``GATEWAYZ_METRICS_PORT``), served by one process per server.

Every process of the server runs a small daemon thread. Each few seconds
(``RETRY_SECONDS``) a thread that does not serve tries a non-blocking ``flock`` on
``port.lock`` in the metrics directory; the one that gets it binds
``GATEWAYZ_METRICS_PORT_ADDRESS:GATEWAYZ_METRICS_PORT`` and serves the metrics routes
(the metrics blueprint's views, with the same authentication; never an application
view, even one whose rule matches a path under the URL prefix) from its own thread,
reading the merged directory like any scrape, so the numbers are the server's, never one
worker's. When that process dies, even by SIGKILL, the kernel drops its lock and its
socket, and another process takes over within ``RETRY_SECONDS``. The lock, not the bind,
elects the server: so a port held by another program is told apart from one served by a
sibling, retried by the lock holder, and reported by ``/metrics/health`` of every
worker (``port.status.json``); the application itself is never affected.

Threads do not survive a fork, so the thread starts where the app is loaded, unless
that is a pre-fork master (gunicorn ``--preload``, uWSGI without ``lazy-apps``): there
it starts in each forked child (at-fork hook, which gunicorn runs) or at a worker's
first request (uWSGI forks without the hooks). The server is stdlib ``wsgiref``, one
request at a time, so a slow or hostile client holds at most this thread, never an
application request, and holds it for a bounded time: the whole request must arrive
within ``REQUEST_DEADLINE_SECONDS`` of its connection being accepted (a per-read
timeout alone let a client that sends a byte a second hold the port for ever), and each
write of the response waits at most ``CLIENT_TIMEOUT_SECONDS``. The election (lock,
fork, status file) is ``election.py``'s, shared with the OTLP export.
"""

from __future__ import annotations

import fcntl
import io
import logging
import os
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from types import FrameType
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from flask import Flask

from . import election
from .route_rules import rule_from_environ
from .views import BLUEPRINT_NAME

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

log = logging.getLogger("flask_gatewayz_metrics")
LOCK_NAME = "port.lock"
STATUS_NAME = "port.status.json"
RETRY_SECONDS = 2.0
"""How often a process that does not serve the port tries to take it over."""
CLIENT_TIMEOUT_SECONDS = 10.0
"""The longest one read or one write of a connection may wait."""
REQUEST_DEADLINE_SECONDS = 5.0
"""The whole request (request line, headers, and any body a view reads) must arrive
within this many seconds of its connection being accepted, however its bytes trickle
in; else the connection is closed, unanswered. A scraper sends its request at once (a
few hundred bytes), so this is generous; and since the port serves one request at a
time, it is the longest one client can keep the next scrape waiting."""
MAX_STATUS_BYTES = 4096


class _DeadlineReader(io.RawIOBase):
    """The reading side of a connection, with one deadline for all of its reads: each
    ``recv`` waits at most the time left (raising ``TimeoutError`` once none is left).

    A socket timeout alone bounds each ``recv``, not the request: ``readline`` of the
    request line or a header calls ``recv`` again after every byte that arrives.
    """

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        """Always: this is the reading side."""
        return True

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        """Read what has arrived into ``buffer``, waiting at most until the deadline."""
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"request not received within {REQUEST_DEADLINE_SECONDS:g}s")
        self._sock.settimeout(min(left, CLIENT_TIMEOUT_SECONDS))
        try:
            return self._sock.recv_into(buffer)
        finally:
            # The response's writes keep their own, per-write timeout.
            self._sock.settimeout(CLIENT_TIMEOUT_SECONDS)


class _Handler(WSGIRequestHandler):
    timeout = CLIENT_TIMEOUT_SECONDS  # a write the client does not take in time fails

    def setup(self) -> None:
        """The connection's files, the reading one bounded by ``REQUEST_DEADLINE_SECONDS``
        from now (the connection was just accepted)."""
        super().setup()
        self.rfile.close()  # the socket's own reader, replaced before anything read from it
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, time.monotonic() + REQUEST_DEADLINE_SECONDS))

    def handle(self) -> None:
        """One request; a client too slow to send it is dropped quietly (wsgiref would
        print a traceback for the ``TimeoutError``), and the server closes the socket."""
        try:
            super().handle()
        except TimeoutError:
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes are not worth a log line each


class _Server(WSGIServer):
    def __init__(self, address: tuple[str, int], family: socket.AddressFamily) -> None:
        self.address_family = family
        super().__init__(address, _Handler)


class MetricsPort:
    """The port thread of one process, elected through ``port.lock`` in ``directory``."""

    def __init__(self, app: Flask, is_metrics_path: Callable[[str], bool], address: str, port: int,
                 directory: str) -> None:  # fmt: skip
        self.app = app
        self.is_metrics_path = is_metrics_path
        """The cheap first test of a path (``request_timing.OwnRoutes``); the route the
        app matches decides (``_is_ours``)."""
        self.address = address
        self.port = port
        self.directory = directory
        self.deferred = False
        """Loaded in a pre-fork master: the thread starts in the forked workers instead."""
        self._pid = -1
        self._start_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock_fd = -1
        self._server: _Server | None = None
        self._error: str | None = None
        weak = weakref.ref(self)

        def after_fork_in_child() -> None:
            port = weak()
            if port is not None:
                port._after_fork_in_child()

        os.register_at_fork(after_in_child=after_fork_in_child)

    @property
    def shown(self) -> str:
        """The listening address as logs and health show it (``[v6]:port`` or ``host:port``)."""
        return f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"

    def start_at_boot(self) -> None:
        """Start now, or, in a pre-fork master, mark the thread for the forked workers."""
        if pre_fork_master():
            self.deferred = True
            return
        self.ensure_running()

    def ensure_running(self) -> None:
        """Start this process's thread if it has none (cheap: a pid comparison)."""
        if self._pid == os.getpid():
            return
        with self._start_lock:
            if self._pid == os.getpid():
                return
            self._forget_parent()
            self._pid = os.getpid()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, name="gatewayz-metrics-port", daemon=True)
            self._thread.start()

    def before_request(self) -> None:
        """Flask hook, registered when deferred: start in a worker forked without at-fork hooks."""
        if self._pid != os.getpid():
            self.ensure_running()

    def close(self) -> None:
        """Stop serving and give up the port (tests, shutdown)."""
        self._stop.set()
        server = self._server
        if server is not None and self._pid == os.getpid():
            server.shutdown()  # returns once serve_forever has left its loop
        if self._thread is not None and self._pid == os.getpid():
            self._thread.join(timeout=CLIENT_TIMEOUT_SECONDS + 5)
        self._release()
        self._pid = -1

    @property
    def serving(self) -> bool:
        """Whether this process serves the port now."""
        return self._server is not None and self._pid == os.getpid()

    # ------------------------------------------------------------------ fork
    def _after_fork_in_child(self) -> None:
        self._start_lock = threading.Lock()
        self._forget_parent()
        if self.deferred:  # gunicorn --preload: each worker runs its own thread at once
            self.ensure_running()

    def _forget_parent(self) -> None:
        """In a forked child: close the parent's socket and lock descriptors without
        unlocking or shutting down (both stay the parent's)."""
        if self._server is not None and self._pid != os.getpid():
            try:
                self._server.socket.close()
            except OSError:
                pass
            self._server = None
        if self._lock_fd >= 0 and self._pid != os.getpid():
            self._lock_fd = election.close_inherited(self._lock_fd)
        self._thread = None

    # ---------------------------------------------------------------- the thread
    def _run(self) -> None:
        stop = self._stop
        while not stop.is_set():
            try:
                if self._lock_fd >= 0 or self._try_lock():
                    server = self._bind()
                    if server is not None:
                        self._server = server
                        try:
                            server.serve_forever(poll_interval=0.5)  # until close()
                        finally:
                            server.server_close()
                            self._server = None
            except Exception:  # never let the thread die; try again later
                log.exception("metrics port thread error")
            stop.wait(RETRY_SECONDS)

    def _try_lock(self) -> bool:
        fd, error = election.try_lock(self.directory, LOCK_NAME)
        if fd < 0:  # another process serves (or tries to), or the lock file cannot be opened
            if error is not None:
                self._error = error
            return False
        self._lock_fd = fd
        return True

    def _bind(self) -> _Server | None:
        """The listening server, or None (reported) when the address cannot be bound."""
        try:
            infos = socket.getaddrinfo(self.address, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            family, _, _, _, sockaddr = infos[0]
            server = _Server((str(sockaddr[0]), self.port), family)
        except OSError as exc:
            error = f"cannot listen on {self.shown}: {exc.strerror or exc}"
            if error != self._error:
                log.warning("metrics port: %s; retrying every %.0fs", error, RETRY_SECONDS)
            self._error = error
            self._write_status(False)
            return None
        server.set_app(self._serve)
        self._error = None
        self._write_status(True)
        log.info("metrics port %s: served by this process (pid %d)", self.shown, os.getpid())
        return server

    def _serve(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """The metrics blueprint's routes of the app; anything else is 404, answered here
        without running any of the app's views."""
        if self.is_metrics_path(environ.get("PATH_INFO", "")) and self._is_ours(environ):
            # Flask's own dispatch, not ``app.wsgi_app``: a WSGI middleware of the app
            # (a method override, ProxyFix, a path rewrite) could otherwise send the
            # request matched here to another view; and a port reached directly has no
            # proxy whose headers to trust. (Requests here are never recorded.)
            return Flask.wsgi_app(self.app, environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: this port serves the metrics routes only\n"]

    def _is_ours(self, environ: dict[str, Any]) -> bool:
        """Whether the app routes this request to one of the metrics blueprint's views.

        A path under the URL prefix is not enough: an application view may match it too
        (a catch-all ``/<path:p>``, an SPA fallback, with prefix ``/`` the app's own
        ``/``), and the port must never serve one, since the metrics credentials do not
        guard it. The request is matched the way Flask will dispatch it (server name,
        subdomain, host matching: ``route_rules.rule_from_environ``); a 405 on one of
        our routes is ours (Flask answers it), a redirect or no match is not.
        """
        rule = rule_from_environ(self.app, environ)
        return rule is not None and rule.endpoint.startswith(BLUEPRINT_NAME + ".")

    def _release(self) -> None:
        if self._lock_fd >= 0 and self._pid == os.getpid():
            os.close(self._lock_fd)
            self._lock_fd = -1
        self._server = None

    def _write_status(self, serving: bool) -> None:
        status = {"pid": os.getpid(), "address": self.shown, "serving": serving, "error": self._error}
        election.write_status(self.directory, STATUS_NAME, status)

    # ------------------------------------------------------------------ reading
    def health_reasons(self) -> list[str]:
        """Why the port makes health ``degraded``: its lock holder cannot listen on it."""
        if self.serving:
            return []
        status = read_status(self.directory)
        if status is None or status.get("serving") is not False or status.get("address") != self.shown:
            return []
        if not self._held_by_someone():
            return []  # the process that wrote this is gone; another will try
        return [f"metrics port not served: {status.get('error') or 'cannot listen'} (retrying)"]

    def _held_by_someone(self) -> bool:
        if self._lock_fd >= 0 and self._pid == os.getpid():
            return True
        try:
            fd = os.open(os.path.join(self.directory, LOCK_NAME), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)  # drops our probe lock at once
        return False


def read_status(directory: str) -> dict[str, Any] | None:
    """The port lock holder's last status (bounded, type-checked), or None."""
    types: dict[str, tuple[type, ...]] = {"pid": (int,), "address": (str,), "serving": (bool,), "error": (str,)}
    return election.read_status(directory, STATUS_NAME, MAX_STATUS_BYTES, types)


def pre_fork_master() -> bool:
    """Whether this process is a server's master loading the app before forking its workers
    (gunicorn ``--preload``, uWSGI without ``lazy-apps``): a thread started here would not
    run in the workers, and a master is not where requests are served."""
    uwsgi = sys.modules.get("uwsgi")
    if uwsgi is not None:
        try:
            return int(uwsgi.worker_id()) == 0
        except Exception:  # not running under the uWSGI server after all
            return False
    modules = set()
    frame: FrameType | None = sys._getframe()
    while frame is not None:  # gunicorn's arbiter loading the app itself, not in a worker it forked
        modules.add(frame.f_globals.get("__name__"))
        frame = frame.f_back
    return "gunicorn.arbiter" in modules and "gunicorn.workers.base" not in modules
