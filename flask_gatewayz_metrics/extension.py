"""GatewayzMetrics: times every request of a Flask app and serves the metrics routes.

The hooks are built to be cheap: ``before_request`` reads the request once (route
template and method are known there, since Flask matches the URL when the request
context is pushed) and keeps its state in a ``ContextVar``; ``after_request`` reads only
the response status. Streamed responses are recorded when the server closes the body.
"""

from __future__ import annotations

from time import perf_counter
from typing import Any

from flask import Flask, Response, request

from .collector import KNOWN_METHODS, MetricsCollector, get_metrics_collector
from .exposition import PrometheusExporter
from .request_state import RequestState, current_request
from .settings import Settings
from .views import BLUEPRINT_NAME, create_blueprint

EXTENSION_KEY = "gatewayz_metrics"


class AppMetrics:
    """Per-app state, stored in ``app.extensions["gatewayz_metrics"]``."""

    def __init__(self, settings: Settings, collector: MetricsCollector) -> None:
        self.settings = settings
        self.collector = collector
        self.exporter = PrometheusExporter(collector)
        self._unmatched = settings.unmatched_endpoint
        self._skip_prefix = None if settings.record_own_routes else BLUEPRINT_NAME + "."

    def before_request(self) -> None:
        req = request._get_current_object()  # type: ignore[attr-defined]
        rule = req.url_rule
        if rule is None:
            endpoint = self._unmatched
        elif self._skip_prefix is not None and rule.endpoint.startswith(self._skip_prefix):
            return
        else:
            endpoint = rule.rule
        method = req.method
        if method not in KNOWN_METHODS:
            method = "OTHER"
        current_request.set(RequestState(self.collector, perf_counter(), endpoint, method))

    def after_request(self, response: Response) -> Response:
        state = current_request.get()
        if state is None or state.finished:
            return response
        state.finished = True
        if _streams_after_return(response):
            status = response.status_code
            response.call_on_close(lambda: self._record(state, status, False))
        else:
            self._record(state, response.status_code, False)
        return response

    def teardown_request(self, exc: BaseException | None) -> None:
        state = current_request.get()
        current_request.set(None)
        if state is not None and not state.finished:
            # after_request did not run: the view raised and the exception propagates.
            state.finished = True
            self._record(state, 500, exc is not None)

    def _record(self, state: RequestState, status: int, failed: bool) -> None:
        latency = perf_counter() - state.start
        if state.provider_recorded:
            provider = model = None
        else:
            provider, model = state.provider, state.model
        state.collector.observe_request(state.endpoint, state.method, latency, status, provider, model, failed)


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
    README); ``collector`` supplies a ready ``MetricsCollector``. Without storage
    options the app uses the process-wide ``get_metrics_collector()``.
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
        collector = self._collector
        if collector is None:
            if custom_storage:
                collector = MetricsCollector(
                    settings.dir,
                    window_seconds=settings.window_seconds,
                    window_slots=settings.window_slots,
                    error_status=settings.error_status,
                    strict=settings.strict,
                )
            else:
                collector = get_metrics_collector()
        state = AppMetrics(settings, collector)
        app.extensions[EXTENSION_KEY] = state
        # First in line, so time spent in other before_request hooks is measured too.
        app.before_request_funcs.setdefault(None, []).insert(0, state.before_request)
        app.after_request(state.after_request)
        app.teardown_request(state.teardown_request)
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
