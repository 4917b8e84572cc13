"""GatewayzMetrics: the Flask extension. ``init_app`` resolves the settings, picks the
app's collector, registers the metrics routes, installs request timing (every request
timed and recorded exactly once, see ``request_timing``), and starts the metrics port
and the OTLP export when configured.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any, TypeVar

from flask import Flask
from prometheus_client import REGISTRY, CollectorRegistry, multiprocess
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from .collector import MetricsCollector, collector_for_app
from .default_registry import DefaultRegistry
from .exposition import PrometheusExporter
from .metrics_port import MetricsPort
from .otlp import OtlpExporter, families_of, otlp_config
from .request_timing import OwnRoutes, install
from .settings import Settings
from .static_labels import check_no_clash
from .views import create_blueprint

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
        self.own_routes: OwnRoutes | None = None
        """The one rule for our own routes (``request_timing.OwnRoutes``), set by ``init_app``."""


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
        """Install the metrics on ``app`` (the Flask application-factory pattern).

        Resolves the settings (app config, then this object's keyword arguments, then the
        environment), opens the app's collector, times every request, registers the
        metrics routes under the URL prefix and starts what the settings ask for (OTLP
        export, the separate metrics port). Raises ``RuntimeError`` if ``app`` already has
        one; a bad setting raises ``TypeError`` / ``ValueError`` naming it.

        .. versionadded:: 0.1.0
        """
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(
                "GatewayzMetrics is already initialised on this app; call init_app once per "
                "app (use one GatewayzMetrics object with init_app for several apps)."
            )
        settings, custom_storage = Settings.resolve(app.config, self._options)
        otlp = otlp_config(settings.otlp_endpoint)  # before anything is installed: may refuse the setting

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
        collector = collector_for_app(
            app.import_name, collector, make if custom_storage else None, settings.app_name
        )
        if settings.prices is not None:
            collector.set_prices(settings.prices)
        state = AppMetrics(settings, collector, self._excluded_views)
        app.extensions[EXTENSION_KEY] = state
        app.register_blueprint(create_blueprint(state), url_prefix=settings.url_prefix)
        own_routes = state.own_routes = OwnRoutes(app, settings.url_prefix)
        install(app, state, own_routes)
        if settings.port is not None:
            port = MetricsPort(app, own_routes, settings.port_address, settings.port, collector.directory)
            state.port = port
            port.start_at_boot()
            if port.deferred:  # a worker forked without at-fork hooks (uWSGI) starts it on its first request
                app.before_request(port.before_request)
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
