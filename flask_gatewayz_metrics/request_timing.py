"""Request timing: everything that times a Flask request, from the moment the server
hands it over to the moment its body is over (docs/DESIGN.md, "The request path").

``install`` wraps ``app.wsgi_app`` (``timed``) and ``app.process_response`` (``checked``).
Per request one object, ``Exchange``, is at once the request's ``RequestState`` (what
``label_request`` finds through the ``ContextVar`` of ``request_state``, set again around
each chunk of a streamed body), the ``start_response`` handed to Flask (it keeps the
final status and reads the route while Flask's request context is still pushed) and,
when the body is produced after the view returned, the iterable handed back to the
server. The request is recorded exactly once, when the body is over: complete when the
view returns (the common case: recorded at once, body handed over untouched), exhausted,
failed, or closed by the server (PEP 3333 servers always call ``close()``).
``Exchange.finish`` records; for the common case ``timed_wsgi_app`` does the same itself
(a Python call less per request).

``OwnRoutes`` is the one rule for "a request to our own routes": neither recorded nor in
flight (unless ``RECORD_OWN_ROUTES``), and what the metrics port serves.

This runs on every request: it is written for the fewest Python calls and attribute
writes (measured in instructions, ``benchmarks/bench_flask_instructions.py``).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable, Iterator
from time import perf_counter
from typing import TYPE_CHECKING, Any

from flask.globals import _cv_request
from werkzeug.wsgi import ClosingIterator

from .labels import KNOWN_METHODS
from .request_state import RequestState, current_request
from .route_rules import allowed_rule, rule_from_environ
from .tenants import tenant_from_headers
from .tracing import MODULE as _OTEL_TRACE
from .tracing import current_trace_id, trace_id_of
from .views import BLUEPRINT_NAME

if TYPE_CHECKING:
    from flask import Flask, Response

    from .extension import AppMetrics

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_set_current = current_request.set
_reset_current = current_request.reset
_get_current = current_request.get
_current_flask_request = _cv_request.get
_modules = sys.modules
_STATUS_CODES: dict[str, int] = {}
"""Status line -> code, for the lines this process has answered with (``int(line[:3])``
costs several times a lookup); bounded by ``_MAX_STATUS_LINES``."""
_MAX_STATUS_LINES = 512
_METHODS: dict[str, str] = {method: method for method in KNOWN_METHODS}
"""The methods recorded as themselves (any other is ``OTHER``)."""


class OwnRoutes:
    """The one rule for "a request to our own routes": its path is under the URL prefix,
    or (prefix "/", which is every path) one of the metrics blueprint's routes. Used for
    recording and in-flight alike (not with ``RECORD_OWN_ROUTES``) and by the metrics port.

    As data, so the request path can inline it: ``root in path and
    path.startswith(root) and (path in paths or path.startswith(children))``.
    """

    __slots__ = ("children", "paths", "root")

    def __init__(self, app: Flask, url_prefix: str) -> None:
        prefix = url_prefix.rstrip("/")
        if prefix:
            self.root = prefix
            self.paths = frozenset({prefix, prefix + "/"})
            self.children: tuple[str, ...] = (prefix + "/",)
        else:
            ours = [r.rule for r in app.url_map.iter_rules() if r.endpoint.startswith(BLUEPRINT_NAME + ".")]
            # Static rules match exactly; a rule with a converter by its static head.
            self.root = "/"
            self.paths = frozenset(r for r in ours if "<" not in r)
            self.children = tuple(r.split("<", 1)[0] for r in ours if "<" in r)

    def __call__(self, path: str) -> bool:
        """Whether ``path`` is one of our routes."""
        return self.root in path and path.startswith(self.root) and (
            path in self.paths or path.startswith(self.children)
        )


def install(app: Flask, metrics: AppMetrics, own_routes: OwnRoutes) -> None:
    """Time every request of ``app`` (``metrics``: its state; ``own_routes`` left alone
    unless ``RECORD_OWN_ROUTES``)."""
    metrics.app = app
    app.wsgi_app = timed(app.wsgi_app, metrics, own_routes)  # type: ignore[method-assign,assignment]
    app.process_response = checked(app.process_response, metrics)  # type: ignore[method-assign,assignment]


def timed(wsgi_app: WSGIApp, metrics: AppMetrics, own_routes: OwnRoutes) -> WSGIApp:
    """``wsgi_app`` timed from the moment the server hands it the request."""
    collector = metrics.collector
    add_in_flight = collector.add_in_flight
    # Bound once: the collector's many mixins leave its method lookups unspecialised.
    observe_request = collector.observe_request
    settings = metrics.settings
    tenant_headers = settings.tenant_headers
    check_own = not settings.record_own_routes
    own_root, own_paths, own_children = own_routes.root, own_routes.paths, own_routes.children
    reset_path = settings.url_prefix.rstrip("/") + "/reset"
    patterns = settings.excluded_paths
    excluded = re.compile("|".join(f"(?:{p})" for p in patterns)).match if patterns else None
    initial = (collector, metrics, "", None, None, None, None, None, False, False, 0.0, None)

    def timed_wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:  # (a subscript: a third of the cost of .get's call; the key is rarely missing)
            path = environ["PATH_INFO"]
        except KeyError:
            path = ""
        if excluded is not None and excluded(path):  # EXCLUDED_PATHS: not ours to record
            return wsgi_app(environ, start_response)
        # (``in`` first: an operator, a third of the cost of the call that rarely follows.)
        if check_own and own_root in path and path.startswith(own_root) and (
            path in own_paths or path.startswith(own_children)
        ):
            body = wsgi_app(environ, start_response)
            if path == reset_path:
                # A reset starts new files: write this process's live in-flight count
                # into its new one now, not at its next request.
                collector.add_in_flight(0)
            return body
        # The request's state, written here rather than in an __init__: a Python call
        # less per request (RequestState documents the fields). The fields every request
        # starts with come from one tuple: two opcodes a field, where a chained
        # assignment takes three. (``method``, ``headers`` and ``first_chunk`` are set
        # before anything reads them: see Exchange.)
        exchange = Exchange()
        exchange.start = perf_counter()
        (exchange.collector, exchange.metrics, exchange.endpoint, exchange.provider, exchange.model,
         exchange.trace_id, exchange.status, exchange.streamed, exchange.provider_recorded, exchange.finished,
         exchange.output_tokens, exchange.tenant) = initial  # fmt: skip
        exchange.environ = environ
        exchange.path = path
        exchange._start_response = start_response
        if tenant_headers:  # read at the start, so tokens recorded by the view count for the tenant too
            exchange.tenant = tenant_from_headers(environ, settings, collector)
        if "HTTP_TRACEPARENT" in environ:  # (an operator where .get is a call)
            exchange.trace_id = trace_id_of(environ["HTTP_TRACEPARENT"])
        token = _set_current(exchange)
        add_in_flight(1)
        try:
            body = wsgi_app(environ, exchange.start_response)
        except BaseException:
            # The exception escapes Flask (PROPAGATE_EXCEPTIONS, testing, debug):
            # the server answers 500.
            exchange.finish(True, None)
            raise
        finally:
            _reset_current(token)
        # (mypy still sees the None written above; start_response and processed have run.)
        if exchange.streamed is False and exchange.status is not None and body.__class__ is ClosingIterator:  # type: ignore[unreachable]
            # Complete already, nothing left to time: recorded now. Exchange.finish for a
            # body that did not fail, inlined (a Python call less per request), and
            # observe_request called directly unless a field needs Exchange.record.
            # (Flask hands back its response's body as a ClosingIterator: any other body
            # is a middleware's inside ours, whose own stream is timed by ``watch``.)
            if not exchange.finished:  # type: ignore[unreachable]
                exchange.finished = True
                latency = perf_counter() - exchange.start
                if not exchange.endpoint and exchange._identify_from_environ():
                    add_in_flight(-1)  # a view marked with GatewayzMetrics.exclude: never recorded
                    return body
                try:
                    status = _STATUS_CODES[exchange.status]
                except KeyError:
                    status = _status_code(exchange.status)
                if exchange.provider_recorded or exchange.trace_id or exchange.tenant is not None:
                    exchange.record(latency, status, False, None)
                else:
                    observe_request(
                        exchange.endpoint, exchange.method, latency, status, exchange.provider, exchange.model,
                        False, True,
                    )  # fmt: skip
            return body
        return exchange.watch(body)  # type: ignore[no-any-return]

    return timed_wsgi_app


def checked(process_response: Callable[[Response], Response], metrics: AppMetrics) -> Callable[[Response], Response]:
    """Flask's ``process_response`` (the app's ``after_request`` hooks, the session), then
    a note on the response it returns: is the body complete now or still to come. (Not a
    hook: Flask runs ``ensure_sync`` on each hook per request, and a hook registered
    earlier runs after ours and could swap the body.)"""

    def processed(response: Response) -> Response:
        response = process_response(response)
        state: Any = _get_current()
        # (Any RequestState has ``metrics``: None unless it is one of our Exchanges.)
        if state is not None and state.metrics is metrics:
            body = response.response
            # A list is Flask's usual complete body: skip the is_streamed property call.
            try:
                state.streamed = body.__class__ is not list and response.is_streamed and (
                    response.direct_passthrough
                    or response.content_length is None
                    # An HTTPException's page (an error, or a routing redirect such as
                    # strict slashes' 308) is a finished WSGI response (force_type ran it:
                    # a ClosingIterator with a length, status 3xx-5xx); any other iterator,
                    # a proxied 2xx stream's ClosingIterator with a length too, is produced
                    # as the server reads it.
                    or body.__class__ is not ClosingIterator
                    or response.status_code < 300
                )
            except Exception:  # a body whose len() raises: metrics never break the response
                state.streamed = None  # undecided: timed_wsgi_app watches the body
        return response

    return processed


class Exchange(RequestState):
    """One request between the WSGI server and Flask (see the module docstring); its
    fields are set by ``timed_wsgi_app``."""

    __slots__ = ("_close", "_next", "_start_response", "environ", "first_chunk", "headers", "metrics", "path",
                 "status", "streamed")  # fmt: skip

    metrics: AppMetrics
    environ: dict[str, Any]
    path: str
    """``PATH_INFO`` as the server handed it over (a middleware inside ours may rewrite
    the environ's: ``_identify_from_environ``)."""
    _start_response: Callable[..., Any]
    status: str | None
    """The status line of the last ``start_response`` call: what the client gets."""
    headers: list[tuple[str, str]]
    """The headers of that call (set with ``status``, read only once it is set)."""
    streamed: bool | None
    """Set by ``checked``: False = the body is complete when the view returns, True =
    produced afterwards, None = the check did not run (an earlier hook raised)."""
    first_chunk: float
    """perf_counter() when the body yielded its first chunk (0.0 = not yet); set by
    ``watch`` (``finish`` reads it only for a body watched: ``outcome`` given)."""
    # first_chunk, _next and _close are set by watch(): a body recorded at once never
    # needs them. ``method`` is set with (before) ``endpoint``: read once that is set.

    # ------------------------------------------------------------ start_response
    def start_response(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        """``start_response`` as Flask sees it: note the status, read the route and method
        from Flask's request context (still pushed when Flask starts the response; else
        matched again from the environ), and pass on."""
        self.headers = headers  # first: watch reads the headers once the status is set
        self.status = status
        if not self.endpoint:
            # An OpenTelemetry span active now (the request's, e.g. FlaskInstrumentor's, still
            # open while Flask starts the response) gives the exemplar's trace id; an
            # incoming traceparent header's stays the fallback.
            # (A dict lookup first: most apps do not trace, and a call costs more.)
            if _OTEL_TRACE in _modules:
                trace_id = current_trace_id()
                if trace_id is not None:
                    self.trace_id = trace_id
            ctx = _current_flask_request(None)
            if ctx is None or ctx.app is not self.metrics.app:  # a middleware answered
                self._identify_from_environ()
            else:
                try:
                    request = ctx.request
                    # The method before the endpoint: a request with an endpoint has its
                    # method (the field is not initialised). (A subscript: fewer opcodes
                    # than ``in`` and a choice; an unknown method is rare.)
                    try:
                        self.method = _METHODS[request.method]
                    except KeyError:
                        self.method = "OTHER"
                    rule = request.url_rule
                    if rule is None:
                        rule = allowed_rule(ctx)
                    self.endpoint = self.metrics.unmatched if rule is None else rule.rule
                    if (
                        self.metrics.excluded_views
                        and rule is not None
                        and ctx.app.view_functions.get(rule.endpoint) in self.metrics.excluded_views
                    ):
                        # A view marked with GatewayzMetrics.exclude: never recorded, and
                        # out of the in-flight gauge as soon as its response starts.
                        self.finished = True
                        self.collector.add_in_flight(-1)
                except Exception:  # metrics never break the response
                    self._identify_from_environ()
        # (Read, then called: a method call on a slot is not specialised.)
        start_response = self._start_response
        if exc_info is None:
            return start_response(status, headers)
        return start_response(status, headers, exc_info)

    def _identify_from_environ(self) -> bool:
        """The route Flask would match, found again from the environ (slow; error path only:
        the exception escaped Flask, which has dropped its request context by now).
        Returns whether its view is one marked with ``GatewayzMetrics.exclude``."""
        app = self.metrics.app
        method = str(self.environ.get("REQUEST_METHOD", "GET")).upper()
        self.method = method if method in KNOWN_METHODS else "OTHER"  # first: see start_response
        # A path rewritten since the server handed it over (a DispatcherMiddleware inside
        # ours handed the request to a mounted app): not a route of ours, whatever the
        # rewritten path matches here.
        rewritten = self.environ.get("PATH_INFO", "") != self.path
        rule = None if app is None or rewritten else rule_from_environ(app, self.environ)
        self.endpoint = self.metrics.unmatched if rule is None else rule.rule
        excluded = self.metrics.excluded_views
        if not excluded or rule is None or app is None:
            return False
        return app.view_functions.get(rule.endpoint) in excluded

    # ------------------------------------------------------------------- body
    def watch(self, body: Any) -> Any:
        """What to hand the server for a ``body`` still to be produced: this object,
        or the server's own file wrapper (kept, so that it can still use sendfile)
        with its ``close`` chained to ours."""
        self.first_chunk = 0.0
        if self.streamed is None and self.status is not None and _complete(body, self.headers):
            self.finish(False, None)
            return body
        self._close: Callable[[], object] | None = getattr(body, "close", None)
        self._next: Callable[[], bytes] | None = None
        file_wrapper = self.environ.get("wsgi.file_wrapper")
        if file_wrapper is not None and body.__class__ is file_wrapper:
            try:
                body.close = self.close
            except Exception:  # a wrapper that takes no attributes: iterate it ourselves
                pass
            else:
                return body
        self._next = iter(body).__next__
        return self

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        next_chunk = self._next
        if next_chunk is None:  # over, or closed
            raise StopIteration
        token = _set_current(self)
        try:
            chunk = next_chunk()
        except StopIteration:
            self._end("completed")
            raise
        except BaseException:
            self._next = None
            self.finish(True, "error")
            raise
        finally:
            _reset_current(token)
        if not self.first_chunk:
            self.first_chunk = perf_counter()
        return chunk

    def close(self) -> None:
        """Called by the server when it is done with the body: ``client_disconnect`` if
        the body was not over yet (a server file wrapper we do not iterate: ``completed``)."""
        token = _set_current(self)
        try:
            self._end("client_disconnect" if self._next is not None else "completed")
        finally:
            _reset_current(token)

    def _end(self, outcome: str) -> None:
        """Close the body once (its ``close`` runs Flask's ``call_on_close`` functions and
        the ``stream_with_context`` teardown, so labels set there count), then record."""
        close, self._close, self._next = self._close, None, None
        try:
            if close is not None:
                close()
        except BaseException:
            self.finish(True, "error")
            raise
        self.finish(False, outcome)

    # -------------------------------------------------------------- recording
    def finish(self, failed: bool, outcome: str | None) -> None:
        """Record the request once, and take it out of the in-flight gauge (one locked
        write). ``outcome``: how a streamed body ended (also recorded as the stream's,
        when the request is labelled). A body that failed before its first chunk left
        the server nothing sent, so the client got the server's 500. (A body complete
        when the view returned is recorded by ``timed_wsgi_app`` itself, the same way.)"""
        if self.finished:
            return
        self.finished = True
        latency = perf_counter() - self.start
        if not self.endpoint and self._identify_from_environ():
            self.collector.add_in_flight(-1)  # a view marked with GatewayzMetrics.exclude: never recorded
            return
        # (No outcome: the body was never iterated, and first_chunk may be unset.)
        if failed and (outcome is None or not self.first_chunk):
            status = 500
        else:
            try:
                status = _STATUS_CODES[self.status]  # type: ignore[index]
            except KeyError:
                status = _status_code(self.status)
        self.record(latency, status, failed, outcome)

    def record(self, latency: float, status: int, failed: bool, outcome: str | None) -> None:
        """Write the finished request: ``latency`` in seconds, the ``status`` code;
        ``failed`` and ``outcome`` as for ``finish`` (``outcome`` None: a body never
        iterated)."""
        if self.provider_recorded:
            provider = model = None
        else:
            provider, model = self.provider, self.model
        collector = self.collector
        collector.observe_request(self.endpoint, self.method, latency, status, provider, model, failed, True)
        if self.trace_id:
            collector.record_exemplar(self.endpoint, self.method, latency, self.trace_id)
        if self.tenant is not None and 100 <= status <= 599:  # else dropped (and counted) once, above
            collector.record_tenant_request(self.tenant, status, failed)
        first_chunk = 0.0 if outcome is None else self.first_chunk
        if outcome is not None and self.streamed and (self.provider or self.model):
            collector.record_stream(
                self.provider or "unknown", self.model or "unknown", outcome, latency,
                first_chunk - self.start if first_chunk else None,
            )  # fmt: skip
        if self.provider_recorded or (self.streamed and outcome == "completed" and first_chunk):
            # The OpenTelemetry GenAI server histograms (semconv.py) that observe_request
            # cannot record: the labelled request's duration when the view recorded its
            # provider calls itself, a completed stream's time to first token / per token.
            collector._record_model_response(
                self.endpoint, self.provider, self.model, status, failed, latency, self.provider_recorded,
                first_chunk - self.start if first_chunk else None, self.output_tokens,
            )  # fmt: skip


def _status_code(status: str | None) -> int:
    """The code of a status line (500: never started, the server answers 500; 0: malformed,
    dropped as invalid by the collector), kept in ``_STATUS_CODES`` while it has room."""
    try:
        code = int(status[:3])  # type: ignore[index]
    except (TypeError, ValueError):
        return 500 if status is None else 0
    if not status[:3].isdigit() or status[3:4] not in ("", " "):  # type: ignore[index]
        # Three digits, then the end or a space: "2000 OK" is not a 200 (WSGI status lines
        # are "<3 digits> <reason>"), nor is " 20" or "+20". Malformed: not cached.
        return 0
    if len(_STATUS_CODES) < _MAX_STATUS_LINES and status.__class__ is str:
        _STATUS_CODES[status] = code
    return code


def _complete(body: object, headers: list[tuple[str, str]] | None) -> bool:
    """Whether a body is complete already though our check did not run (an earlier hook
    raised, or a middleware answered): a list or tuple, or a werkzeug ``ClosingIterator``
    with a Content-Length (Flask's error pages)."""
    if body.__class__ in (list, tuple):
        return True
    return (
        body.__class__ is ClosingIterator
        and headers is not None
        and any(name.lower() == "content-length" for name, _ in headers)
    )
