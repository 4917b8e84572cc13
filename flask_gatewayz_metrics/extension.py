"""GatewayzMetrics: times every request of a Flask app and serves the metrics routes.

The request path is built to be cheap (see benchmarks/) and to record every request
exactly once whatever the response's shape: a thin wrapper around ``app.wsgi_app``
starts the clock, publishes the request's state in a ``ContextVar`` (where
``label_request`` finds it) and hands Flask a ``start_response`` that keeps the final
status and reads the route; the request is recorded when its body is over (see
``_wsgi``). One check after Flask's ``process_response`` (which runs the app's
``after_request`` hooks) only tells whether the body is already complete.
A request to the metrics routes (the URL prefix and everything under it) is passed
straight to Flask: neither recorded nor in flight, unless ``RECORD_OWN_ROUTES``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any, TypeVar

from flask import Flask, Response
from prometheus_client import REGISTRY, CollectorRegistry, multiprocess
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from werkzeug.wsgi import ClosingIterator

from ._wsgi import Exchange
from .collector import MetricsCollector, collector_for_app
from .default_registry import DefaultRegistry
from .exposition import PrometheusExporter
from .llm import trace_id_of
from .metrics_port import MetricsPort
from .otlp import OtlpExporter, families_of, otlp_config
from .request_state import current_request
from .settings import Settings
from .static_labels import check_no_clash
from .views import BLUEPRINT_NAME, create_blueprint

EXTENSION_KEY = "gatewayz_metrics"
View = TypeVar("View", bound=Callable[..., Any])
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class AppMetrics:
    """Per-app state, stored in ``app.extensions["gatewayz_metrics"]``."""

    def __init__(
        self, settings: Settings, collector: MetricsCollector, excluded_views: set[Callable[..., Any]] | None = None
    ) -> None:
        self.settings = settings
        self.collector = collector
        self.excluded_views = excluded_views if excluded_views is not None else set()
        """View functions marked with ``GatewayzMetrics.exclude`` (shared by its apps)."""
        self.exporter = PrometheusExporter(
            collector, app_metrics_source() if settings.include_app_metrics else None, settings.static_labels,
            settings.semconv,
        )
        if settings.static_labels:
            check_no_clash(settings.static_labels, startup_families(self.exporter))
        self.unmatched = settings.unmatched_endpoint
        self.app: Flask | None = None
        self.port: MetricsPort | None = None
        """The separate metrics port (``GATEWAYZ_METRICS_PORT``), if configured."""

    def own_route_rule(self, app: Flask) -> tuple[str | tuple[()], frozenset[str], tuple[str, ...]]:
        """The one rule for "a request to our own routes", used for recording and in-flight
        alike: its path is under the URL prefix, or (with prefix "/", which is every path)
        one of the metrics blueprint's routes. As ``(root, paths, children)``:
        ``path.startswith(root) and (path in paths or path.startswith(children))``
        (``startswith(())`` is always False: with ``RECORD_OWN_ROUTES`` nothing is ours).
        """
        if self.settings.record_own_routes:
            return (), frozenset(), ()
        prefix = self.settings.url_prefix.rstrip("/")
        if prefix:
            return prefix, frozenset({prefix, prefix + "/"}), (prefix + "/",)
        ours = [r.rule for r in app.url_map.iter_rules() if r.endpoint.startswith(BLUEPRINT_NAME + ".")]
        # Static rules match exactly; a rule with a converter by its static head.
        return "/", frozenset(r for r in ours if "<" not in r), tuple(r.split("<", 1)[0] for r in ours if "<" in r)

    def wrap(self, wsgi_app: WSGIApp, app: Flask) -> WSGIApp:
        """``wsgi_app`` timed from the moment the server hands it the request."""
        self.app = app
        collector = self.collector
        own_root, own_paths, own_children = self.own_route_rule(app)
        reset_path = self.settings.url_prefix.rstrip("/") + "/reset"

        patterns = self.settings.excluded_paths
        excluded = re.compile("|".join(f"(?:{p})" for p in patterns)).match if patterns else None

        def timed_wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "")
            if excluded is not None and excluded(path):  # EXCLUDED_PATHS: not ours to record
                return wsgi_app(environ, start_response)
            if path.startswith(own_root) and (path in own_paths or path.startswith(own_children)):
                body = wsgi_app(environ, start_response)
                if path == reset_path:
                    # A reset starts new files: write this process's live in-flight count
                    # into its new one now, not at its next request.
                    collector.add_in_flight(0)
                return body
            exchange = Exchange(self, environ, start_response)
            traceparent = environ.get("HTTP_TRACEPARENT")
            if traceparent:
                exchange.trace_id = trace_id_of(traceparent)
            token = current_request.set(exchange)
            collector.add_in_flight(1)
            try:
                body = wsgi_app(environ, exchange.start_response)
            except BaseException:
                # The exception escapes Flask (PROPAGATE_EXCEPTIONS, testing, debug):
                # the server answers 500.
                exchange.finish(True, None)
                raise
            finally:
                current_request.reset(token)
            if exchange.streamed is False and exchange.status is not None:
                exchange.finish(False, None)  # complete already: nothing left to time
                return body
            return exchange.watch(body)  # type: ignore[no-any-return]

        return timed_wsgi_app

    def wrap_process_response(self, process_response: Callable[[Response], Response]) -> Callable[[Response], Response]:
        """Flask's ``process_response`` (the app's ``after_request`` hooks, the session),
        then ``after_request`` on the response it returns. Not an ``after_request`` hook:
        Flask passes each hook through ``ensure_sync`` (an ``inspect.iscoroutinefunction``
        check, five Python calls) on every request, and this sees the final response,
        whatever hooks registered after the extension return."""
        after_request = self.after_request

        def processed(response: Response) -> Response:
            return after_request(process_response(response))

        return processed

    def after_request(self, response: Response) -> Response:
        """Note whether the body is complete now (recorded at once) or still to come."""
        state = current_request.get()
        if isinstance(state, Exchange) and state.metrics is self:
            body = response.response
            # A list is Flask's usual complete body: skip the is_streamed property call.
            state.streamed = body.__class__ is not list and response.is_streamed and (
                response.direct_passthrough
                or response.content_length is None
                # An HTTP error page is a finished WSGI response (force_type ran it);
                # any other iterator is produced as the server reads it.
                or body.__class__ is not ClosingIterator
            )
        return response


def app_metrics_source() -> Collector:
    """The application's own ``prometheus_client`` metrics: merged across workers when
    ``PROMETHEUS_MULTIPROC_DIR`` puts prometheus_client in multiprocess mode (exact; then
    per-process collectors are meaningless and left out), else the default registry,
    served whole only while the server is single-process (see ``default_registry``)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry(auto_describe=False)
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return DefaultRegistry(REGISTRY)


def metrics_path_rule(app: Flask, url_prefix: str) -> Callable[[str], bool]:
    """Whether a path is one of the metrics routes: under the URL prefix, or (prefix "/")
    one of the metrics blueprint's routes."""
    prefix = url_prefix.rstrip("/")
    if prefix:
        return lambda path: path == prefix or path.startswith(prefix + "/")
    ours = [r.rule for r in app.url_map.iter_rules() if r.endpoint.startswith(BLUEPRINT_NAME + ".")]
    exact = frozenset(r for r in ours if "<" not in r)
    heads = tuple(r.split("<", 1)[0] for r in ours if "<" in r)
    return lambda path: path in exact or path.startswith(heads)


def startup_families(exporter: PrometheusExporter) -> list[Metric]:
    """Every family a scrape serves now (ours are served, with their label names, even
    before they have data), for the static-label clash check."""
    try:
        return list(exporter.collect())
    except Exception:  # an unreadable directory now must not stop the app from starting
        return []


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
        self._excluded_views: set[Callable[..., Any]] = set()
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
                trusted_uids=settings.trusted_uids,
                namespace=namespace,
                buckets=settings.buckets,
                native_histograms=settings.native_histograms,
            )

        # One set of numbers per app: a passed collector or an app's own directory is
        # used as is; otherwise the first app takes the base directory and later ones a
        # subdirectory each (see collector_for_app).
        collector = self._collector
        if collector is None and settings.dir:
            collector = make(None)
        collector = collector_for_app(app.import_name, collector, make if custom_storage else None)
        if settings.prices is not None:
            collector.set_prices(settings.prices)
        state = AppMetrics(settings, collector, self._excluded_views)
        app.extensions[EXTENSION_KEY] = state
        app.register_blueprint(create_blueprint(state), url_prefix=settings.url_prefix)
        app.wsgi_app = state.wrap(app.wsgi_app, app)  # type: ignore[method-assign,assignment]
        app.process_response = state.wrap_process_response(app.process_response)  # type: ignore[method-assign,assignment]
        if settings.port is not None:
            port = MetricsPort(app, metrics_path_rule(app, settings.url_prefix), settings.port_address, settings.port,
                               collector.directory)  # fmt: skip
            state.port = port
            port.start_at_boot()
            if port.deferred:  # a worker forked without at-fork hooks (uWSGI) starts it on its first request
                app.before_request(port.before_request)
        otlp = otlp_config(settings.otlp_endpoint)
        if otlp is not None and settings.static_labels:  # the same pairs as resource attributes
            otlp = replace(otlp, resource={**otlp.resource, **settings.static_labels})
        if otlp is not None:  # each worker starts its export thread on its first request
            app.before_request(OtlpExporter(otlp, families_of(state.exporter), collector.directory).ensure_running)

    def exclude(self, view: View) -> View:
        """Decorator: requests routed to ``view`` are not recorded, in every app this object
        is initialised on; like ``EXCLUDED_PATHS``, but by view. Such a request counts in
        ``http_requests_in_flight`` until its response starts (it is known once routed).
        Returns ``view`` itself, so it may sit above or below ``@app.route``."""
        self._excluded_views.add(view)
        return view

    @staticmethod
    def of(app: Flask) -> AppMetrics:
        """The metrics state of ``app`` (raises a helpful error if not initialised)."""
        try:
            return app.extensions[EXTENSION_KEY]  # type: ignore[no-any-return]
        except KeyError:
            raise RuntimeError(
                "GatewayzMetrics is not initialised on this app. Did you forget to call init_app(app)?"
            ) from None
