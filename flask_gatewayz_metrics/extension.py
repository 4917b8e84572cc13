"""GatewayzMetrics: times every request of a Flask app and serves the metrics routes.

The request path is built to be cheap (see benchmarks/): instead of three Flask hooks,
a thin wrapper around ``app.wsgi_app`` starts the clock and publishes the request's
state in a ``ContextVar`` (where ``label_request`` finds it), and one ``after_request``
hook reads the route template, method and status once and records. A view exception
that escapes Flask (``PROPAGATE_EXCEPTIONS``) is caught by the wrapper and recorded as
a failed 500. Streamed responses are recorded when the server closes the body.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from time import perf_counter
from typing import Any

from flask import Flask, Response, request
from prometheus_client import REGISTRY, CollectorRegistry, multiprocess
from prometheus_client.registry import Collector
from werkzeug.routing import Map, Rule

from .collector import MetricsCollector, collector_for_app
from .exposition import PrometheusExporter
from .labels import KNOWN_METHODS
from .llm import trace_id_of
from .request_state import RequestState, current_request
from .settings import Settings
from .streaming import ObservedStream
from .views import BLUEPRINT_NAME, create_blueprint

EXTENSION_KEY = "gatewayz_metrics"
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class AppMetrics:
    """Per-app state, stored in ``app.extensions["gatewayz_metrics"]``."""

    def __init__(self, settings: Settings, collector: MetricsCollector) -> None:
        self.settings = settings
        self.collector = collector
        self.exporter = PrometheusExporter(collector, app_metrics_source() if settings.include_app_metrics else None)
        self._unmatched = settings.unmatched_endpoint
        self._skip_prefix = None if settings.record_own_routes else BLUEPRINT_NAME + "."

    def wrap(self, wsgi_app: WSGIApp, url_map: Map) -> WSGIApp:
        """``wsgi_app`` timed from the moment the server hands it the request."""
        collector = self.collector
        # Scrapes are not application traffic: they do not count as in flight either.
        own_prefix = None if self.settings.record_own_routes else self.settings.url_prefix.rstrip("/")
        own_children = f"{own_prefix}/"

        def timed_wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            state = RequestState(collector, perf_counter())
            traceparent = environ.get("HTTP_TRACEPARENT")
            if traceparent:
                state.trace_id = trace_id_of(traceparent)
            token = current_request.set(state)
            path = environ.get("PATH_INFO", "")
            if own_prefix is not None and (path == own_prefix or path.startswith(own_children)):
                state.in_flight = False
            else:
                collector.add_in_flight(1)
            try:
                return wsgi_app(environ, start_response)
            except BaseException:
                # The view raised and the exception propagates (testing, debug):
                # after_request never ran, and Flask has dropped its request object.
                if not state.finished and self._identify(state, *_route_of(url_map, environ)):
                    self._record(state, 500, True)
                raise
            finally:
                current_request.reset(token)
                if not state.finished:  # never reached after_request: nothing to time
                    _leave(state)

        return timed_wsgi_app

    def after_request(self, response: Response) -> Response:
        state = current_request.get()
        if state is None or state.finished or state.collector is not self.collector:
            return response
        state.finished = True
        req = request._get_current_object()  # type: ignore[attr-defined]
        if not self._identify(state, req.url_rule, req.method):
            _leave(state)
            return response
        status = response.status_code
        if not _streams_after_return(response):
            self._record(state, status, False)
        elif (state.provider or state.model) and not response.direct_passthrough:
            response.response = ObservedStream(
                response.response, lambda outcome, first: self._record_stream(state, status, outcome, first)
            )
        else:
            response.call_on_close(lambda: self._record(state, status, False))
        return response

    def _identify(self, state: RequestState, rule: Rule | None, method: str) -> bool:
        """Fill in the endpoint label and method; False for routes not to be recorded."""
        state.finished = True
        if rule is None:
            state.endpoint = self._unmatched
        elif self._skip_prefix is not None and rule.endpoint.startswith(self._skip_prefix):
            return False
        else:
            state.endpoint = rule.rule
        state.method = method if method in KNOWN_METHODS else "OTHER"
        return True

    def _record(self, state: RequestState, status: int, failed: bool) -> float:
        """Record the request; return its latency."""
        latency = perf_counter() - state.start
        leaving, state.in_flight = state.in_flight, False
        if state.provider_recorded:
            provider = model = None
        else:
            provider, model = state.provider, state.model
        state.collector.observe_request(
            state.endpoint, state.method, latency, status, provider, model, failed, leaving
        )
        if state.trace_id:
            state.collector.record_exemplar(state.endpoint, state.method, latency, state.trace_id)
        return latency

    def _record_stream(self, state: RequestState, status: int, outcome: str, first_chunk: float | None) -> None:
        """A labelled stream ended: the request (an error if the body failed) and the stream."""
        duration = self._record(state, status, outcome == "error")
        state.collector.record_stream(
            state.provider or "unknown", state.model or "unknown", outcome, duration,
            None if first_chunk is None else first_chunk - state.start,
        )


def _leave(state: RequestState) -> None:
    """The request no longer counts as in flight (once)."""
    if state.in_flight:
        state.in_flight = False
        state.collector.add_in_flight(-1)


def app_metrics_source() -> Collector:
    """The application's own ``prometheus_client`` metrics: merged across workers when
    ``PROMETHEUS_MULTIPROC_DIR`` puts prometheus_client in multiprocess mode (then
    per-process collectors are meaningless and left out), else the default registry."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry(auto_describe=False)
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


def _route_of(url_map: Map, environ: dict[str, Any]) -> tuple[Rule | None, str]:
    """The rule a request matches, found again from its environ (slow; error path only)."""
    method = str(environ.get("REQUEST_METHOD", "GET")).upper()
    try:
        rule, _ = url_map.bind_to_environ(environ).match(return_rule=True)
    except Exception:  # no match, redirect, method not allowed
        return None, method
    return rule, method


def _streams_after_return(response: Response) -> bool:
    """Whether the body is produced after the view returned (generator, file).

    Error pages built from HTTP exceptions are wrapped as iterators too, but they carry a
    Content-Length and are already complete: they are recorded at once.
    """
    if not response.is_streamed:
        return False
    return response.direct_passthrough or response.content_length is None


class GatewayzMetrics:
    """Flask extension: ``GatewayzMetrics(app)`` or ``metrics.init_app(app)`` in a factory.

    Keyword options are defaults for the ``GATEWAYZ_METRICS_*`` config keys (see the
    README); ``collector`` supplies a ready ``MetricsCollector`` (pass the same one to
    several apps to share numbers). Otherwise each app gets its own collector: the first
    app of the process the process-wide ``get_metrics_collector()`` one (adopted when it
    has no storage options), later apps their own subdirectory.
    """

    def __init__(
        self, app: Flask | None = None, *, collector: MetricsCollector | None = None, **options: Any
    ) -> None:
        self._collector = collector
        self._options = options
        Settings.resolve({}, options)  # fail early on a misspelt option
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(
                "GatewayzMetrics is already initialised on this app; call init_app once per "
                "app (use one GatewayzMetrics object with init_app for several apps)."
            )
        settings, custom_storage = Settings.resolve(app.config, self._options)

        def make(namespace: str | None) -> MetricsCollector:
            return MetricsCollector(
                settings.dir,
                window_seconds=settings.window_seconds,
                window_slots=settings.window_slots,
                error_status=settings.error_status,
                strict=settings.strict,
                label_limits=settings.label_limits,
                allowed_labels=settings.allowed_labels(),
                namespace=namespace,
            )

        # One set of numbers per app: a passed collector or an app's own directory is
        # used as is; otherwise the first app takes the base directory and later ones a
        # subdirectory each (see collector_for_app).
        collector = self._collector
        if collector is None and settings.dir:
            collector = make(None)
        collector = collector_for_app(app.import_name, collector, make if custom_storage else None)
        state = AppMetrics(settings, collector)
        app.extensions[EXTENSION_KEY] = state
        app.wsgi_app = state.wrap(app.wsgi_app, app.url_map)  # type: ignore[method-assign,assignment]
        app.after_request(state.after_request)
        app.register_blueprint(create_blueprint(state), url_prefix=settings.url_prefix)

    @staticmethod
    def of(app: Flask) -> AppMetrics:
        """The metrics state of ``app`` (raises a helpful error if not initialised)."""
        try:
            return app.extensions[EXTENSION_KEY]  # type: ignore[no-any-return]
        except KeyError:
            raise RuntimeError(
                "GatewayzMetrics is not initialised on this app. Did you forget to call init_app(app)?"
            ) from None
