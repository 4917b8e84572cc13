"""The WSGI layer: one object per request that sees what the server and the client see.

``Exchange`` is at once the request's ``RequestState`` (what ``label_request`` finds),
the ``start_response`` handed to Flask (a bound method: it keeps the final status and
reads the route while Flask's request context is still pushed) and, when the body is produced after
the view returned, the iterable handed back to the server. The request is recorded
exactly once, when the body is over: exhausted, failed, or closed by the server
(PEP 3333 servers always call ``close()``), so no response shape (generator,
``stream_with_context``, file pass-through, range, 304) can escape. A body that is
already complete when Flask returns it (the common case) is recorded at once and
handed to the server untouched: nothing is left to time, and the test client, which
does not drain bodies, sees the count at once.

While the server iterates a body, the ``ContextVar`` of the request is set again around
each chunk, so ``label_request`` works inside generators and ``stream_with_context``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from time import perf_counter
from typing import TYPE_CHECKING, Any

from flask.globals import _cv_request
from werkzeug.exceptions import MethodNotAllowed
from werkzeug.wsgi import ClosingIterator

from .labels import KNOWN_METHODS
from .request_state import RequestState, current_request
from .tenants import tenant_from_headers
from .tracing import MODULE as _OTEL_TRACE
from .tracing import current_trace_id

if TYPE_CHECKING:
    from flask import Flask
    from flask.ctx import RequestContext
    from werkzeug.routing import MapAdapter, Rule

    from .extension import AppMetrics

_set_current = current_request.set
_reset_current = current_request.reset
_current_flask_request = _cv_request.get
_modules = sys.modules


class Exchange(RequestState):
    """One request between the WSGI server and Flask (see the module docstring)."""

    __slots__ = (
        "_close",
        "_next",
        "_start_response",
        "environ",
        "first_chunk",
        "headers",
        "metrics",
        "status",
        "streamed",
    )  # fmt: skip

    def __init__(self, metrics: AppMetrics, environ: dict[str, Any], start_response: Callable[..., Any]) -> None:
        # RequestState's fields are set here rather than through its __init__: this
        # runs on every request and one call less is measurable (benchmarks/).
        self.collector = metrics.collector
        self.start = perf_counter()
        self.endpoint = ""
        self.method = ""
        self.provider = None
        self.model = None
        self.provider_recorded = False
        self.finished = False
        self.trace_id = None
        self.output_tokens = 0.0
        # Read at the start, so tokens recorded by the view count for the tenant too.
        settings = metrics.settings
        self.tenant = tenant_from_headers(environ, settings, metrics.collector) if settings.tenant_headers else None
        self.metrics = metrics
        self.environ = environ
        self._start_response = start_response
        self.status: str | None = None
        """The status line of the last ``start_response`` call: what the client gets."""
        self.headers: list[tuple[str, str]] | None = None
        self.streamed: bool | None = None
        """Set after Flask's ``process_response`` (``AppMetrics.after_request``): False = the body is complete
        when the view returns, True = produced afterwards (generator, file), None = the
        hook did not run (an earlier hook raised): wait for the body to end."""
        self.first_chunk = 0.0
        """perf_counter() when the body yielded its first chunk (0.0 = not yet)."""
        # _next and _close are set by watch(), before anything can read them: a body
        # recorded at once (the common case) never needs them.

    # ------------------------------------------------------------ start_response
    def start_response(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        """``start_response`` as Flask sees it: note the status, read the route and method
        from Flask's request context (still pushed when Flask starts the response; else
        matched again from the environ), and pass on."""
        self.status = status
        self.headers = headers
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
                    rule = request.url_rule
                    if rule is None:
                        rule = _allowed_rule(ctx)
                    self.endpoint = self.metrics.unmatched if rule is None else rule.rule
                    excluded = self.metrics.excluded_views
                    if excluded and rule is not None and ctx.app.view_functions.get(rule.endpoint) in excluded:
                        # A view marked with GatewayzMetrics.exclude: never recorded, and
                        # out of the in-flight gauge as soon as its response starts.
                        self.finished = True
                        self.collector.add_in_flight(-1)
                    method = request.method
                    self.method = method if method in KNOWN_METHODS else "OTHER"
                except Exception:  # metrics never break the response
                    self._identify_from_environ()
        if exc_info is None:
            return self._start_response(status, headers)
        return self._start_response(status, headers, exc_info)

    def _identify_from_environ(self) -> None:
        """The route Flask would match, found again from the environ (slow; error path only:
        the exception escaped Flask, which has dropped its request context by now)."""
        app = self.metrics.app
        rule = None if app is None else _rule_from_environ(app, self.environ)
        self.endpoint = self.metrics.unmatched if rule is None else rule.rule
        method = str(self.environ.get("REQUEST_METHOD", "GET")).upper()
        self.method = method if method in KNOWN_METHODS else "OTHER"

    # ------------------------------------------------------------------- body
    def watch(self, body: Any) -> Any:
        """What to hand the server for a ``body`` still to be produced: this object,
        or the server's own file wrapper (kept, so that it can still use sendfile)
        with its ``close`` chained to ours."""
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
        the server nothing sent, so the client got the server's 500."""
        if self.finished:
            return
        self.finished = True
        latency = perf_counter() - self.start
        if not self.endpoint:
            self._identify_from_environ()
        if failed and not self.first_chunk:
            status = 500
        else:
            try:
                status = int(self.status[:3])  # type: ignore[index]
            except (TypeError, ValueError):  # never started (the server answers 500), or malformed
                status = 500 if self.status is None else 0
        if self.provider_recorded:
            provider = model = None
        else:
            provider, model = self.provider, self.model
        collector = self.collector
        collector.observe_request(self.endpoint, self.method, latency, status, provider, model, failed, True)
        if self.trace_id:
            collector.record_exemplar(self.endpoint, self.method, latency, self.trace_id)
        if self.tenant is not None:
            collector.record_tenant_request(self.tenant, status, failed)
        if outcome is not None and self.streamed and (self.provider or self.model):
            first_chunk = self.first_chunk
            collector.record_stream(
                self.provider or "unknown", self.model or "unknown", outcome, latency,
                first_chunk - self.start if first_chunk else None,
            )  # fmt: skip
        if self.provider_recorded or (self.streamed and outcome == "completed" and self.first_chunk):
            # The OpenTelemetry GenAI server histograms (semconv.py) that observe_request
            # cannot record: the labelled request's duration when the view recorded its
            # provider calls itself, a completed stream's time to first token / per token.
            collector._record_model_response(
                self.endpoint, self.provider, self.model, status, failed, latency, self.provider_recorded,
                self.first_chunk - self.start if self.first_chunk else None, self.output_tokens,
            )  # fmt: skip


def _complete(body: object, headers: list[tuple[str, str]] | None) -> bool:
    """Whether a body is complete already though our hook did not run (an earlier hook
    raised, or a middleware answered): a list or tuple, or a werkzeug ``ClosingIterator``
    with a Content-Length (Flask's error pages)."""
    if body.__class__ in (list, tuple):
        return True
    return (
        body.__class__ is ClosingIterator
        and headers is not None
        and any(name.lower() == "content-length" for name, _ in headers)
    )


def _allowed_rule(ctx: RequestContext) -> Rule | None:
    """For a 405 on a real route: that route, matched again with a method it allows."""
    exc = ctx.request.routing_exception
    if isinstance(exc, MethodNotAllowed) and exc.valid_methods and ctx.url_adapter is not None:
        return _match(ctx.url_adapter, next(iter(exc.valid_methods)))
    return None


def _rule_from_environ(app: Flask, environ: dict[str, Any]) -> Rule | None:
    """The rule Flask matches for ``environ``, bound as Flask binds it (server name,
    subdomain, host matching); a 405 gives the route it was refused on."""
    try:
        adapter = app.create_url_adapter(app.request_class(environ))
        if adapter is None:
            return None
        try:
            rule, _ = adapter.match(return_rule=True)
        except MethodNotAllowed as exc:
            return _match(adapter, next(iter(exc.valid_methods))) if exc.valid_methods else None
        return rule
    except Exception:  # no match, redirect, bad host: unmatched
        return None


def _match(adapter: MapAdapter, method: str) -> Rule | None:
    try:
        rule, _ = adapter.match(method=method, return_rule=True)
    except Exception:
        return None
    return rule
