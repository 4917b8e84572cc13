"""Recording for the OpenTelemetry semantic conventions' histograms (HTTP and GenAI).

Beside the spec's families, the package serves the conventions' metrics (see
``exposition_semconv``): ``http.server.request.duration`` and the GenAI client and server
histograms, each with the bucket bounds the conventions recommend (``storage.layout``).
Their data comes from the calls that already feed the spec's families, so nothing new
is asked of the application:

- every request timed by the extension (or ``record_request`` / ``track_request``):
  ``http.server.request.duration``, in the same locked write as the request itself;
- a request labelled with a provider or model (``label_request``): also
  ``gen_ai.server.request.duration``; a streamed one that completed successfully:
  ``gen_ai.server.time_to_first_token`` (the first chunk) and, when the request's
  ``record_tokens`` calls reported more than one output token,
  ``gen_ai.server.time_per_output_token``;
- ``record_provider_call``: ``gen_ai.client.operation.duration`` (upstream calls; a
  successful one in the same locked write as its provider records, a failed one by a
  second write that knows its error type);
- ``record_tokens``: ``gen_ai.client.token.usage``, read from the tokens records at
  scrape time (their bounds are the conventions' own): nothing more is written.

The recording API has no GenAI operation argument: client-side metrics say ``chat``,
and the server-side ones derive the operation from the route (``operation_name``).
A mixin of ``MetricsCollector``, like ``llm.GatewayRecording``: nothing here raises into
the caller, and offsets are cached per label combination like the request's own.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Hashable
from typing import TYPE_CHECKING

from .label_cache import CONVENTIONS_BUDGET_BYTES, BoundedCache, front_entry_cost
from .labels import as_number, method_label, plain_str
from .llm import ERROR_TYPES
from .storage import StorageUnavailable, kinds

if TYPE_CHECKING:
    import threading

    from .storage import DirectoryAccess
    from .storage.layout import Doubles

DEFAULT_OPERATION = "chat"
OTHER = "_OTHER"
"""The conventions' value for an unknown HTTP method and for an error of no known type."""
HTTP_SERVER_ERROR_STATUS = 500
"""HTTP server conventions: a response is an error from 500 on (4xx are the client's)."""
_ROUTE_OPERATIONS = (
    ("chat/completions", "chat"),
    ("embeddings", "embeddings"),
    ("completions", "text_completion"),
    ("generatecontent", "generate_content"),
    ("responses", "chat"),
    ("messages", "chat"),
)
"""Route endings (lower case) of well-known LLM APIs and their gen_ai.operation.name."""


_FIRST_TOKEN_BOUNDS = kinds.GEN_AI_FIRST_TOKEN_BOUNDS
_PER_TOKEN_BOUNDS = kinds.GEN_AI_PER_TOKEN_BOUNDS
_DURATION_BOUNDS = kinds.GEN_AI_DURATION_BOUNDS


LatencyTables = tuple[tuple[float, ...], tuple[int, ...], tuple[int, ...]]


def latency_bucket_tables(bounds: tuple[float, ...]) -> LatencyTables:
    """One search for every latency histogram of a request: the union ``U`` of ``bounds``
    (the latency histograms', possibly configured) and the conventions' bounds of
    http.server.request.duration and gen_ai.*.duration, and for
    ``u = bisect_left(U, latency)``: the payload index of the latency's bucket in a
    "request" or "provider" record (``REQ_BUCKETS`` + the ``kinds.stored_bounds`` below
    it: http.server.request.duration's bounds are among them) and its
    ``gen_ai_*_duration`` payload index (1 + the conventions' bounds below it). Exact
    for any bound sets: the latency lies in ``(U[u-1], U[u]]``, and the bounds of each
    set below it are those among ``U[:u]``."""
    union = tuple(sorted({*bounds, *kinds.HTTP_SERVER_BOUNDS, *_DURATION_BOUNDS}))
    highs = (*union, math.inf)
    stored = kinds.stored_bounds("request", bounds)
    request = tuple(kinds.REQ_BUCKETS + sum(1 for b in stored if b < high) for high in highs)
    gen_ai = tuple(1 + sum(1 for b in _DURATION_BOUNDS if b < high) for high in highs)
    return union, request, gen_ai



def operation_name(route: str | None) -> str:
    """The gen_ai.operation.name of a request to ``route``: from the route's end for the
    OpenAI / Gemini style APIs (``/v1/embeddings`` -> embeddings, ``/v1/completions``
    -> text_completion, ``...:generateContent`` -> generate_content), else ``chat``."""
    if route:
        end = route.rstrip("/").lower()
        for suffix, operation in _ROUTE_OPERATIONS:
            if end.endswith(suffix):
                return operation
    return DEFAULT_OPERATION


def http_error_type(status: int, failed: bool) -> str:
    """error.type of an HTTP server request: the status code from 500 on, ``_OTHER`` for
    a request whose code raised after a successful status was sent, else none ("")."""
    if status >= HTTP_SERVER_ERROR_STATUS:
        return str(status)
    return OTHER if failed else ""


def gen_ai_error_type(status: int, failed: bool, threshold: int, given: object = None) -> str:
    """error.type of a GenAI operation: none ("") unless it failed (``failed``, or a
    status at or above the collector's error threshold); then the closed-list type the
    caller gave (``llm.ERROR_TYPES``), else the status code, else ``_OTHER``."""
    if not failed and status < threshold:
        return ""
    if given is not None:
        name = plain_str(given)  # a str subclass's own __hash__ / __eq__ never run
        return name if name in ERROR_TYPES else OTHER
    return str(status) if status >= threshold else OTHER


class ConventionsRecording:
    """The conventions' recording; ``MetricsCollector`` provides the storage plumbing."""

    # Provided by MetricsCollector.
    _lock: threading.Lock
    _storage: DirectoryAccess
    _doubles: Doubles
    _generation: int
    error_status: int

    if TYPE_CHECKING:

        def _writable(self) -> Doubles: ...
        def _map_file(self) -> Doubles: ...
        def _admit_part(self, name: str, raw: object) -> str | None: ...
        def _internal_error(self, exc: Exception) -> None: ...

    _request_targets: dict[Hashable, tuple[int, ...]]
    _front_cache: BoundedCache
    """The request path's label-combination cache (``_request_targets`` is its dict)."""
    _conventions: BoundedCache
    """(kind, labels as given) -> offset of a GenAI record written outside the request
    path's own cache; valid for storage generation ``_conventions_generation`` only (a
    new file has new offsets). Bounded like the request path's caches (``label_cache``):
    a byte budget, the oldest entry evicted first, and a key holding a string over
    ``MAX_CACHED_LABEL_LENGTH`` characters (or a ``str`` subclass) never kept, so the
    raw strings callers pass cannot grow it."""
    _conventions_generation = -2

    def _reset_conventions(self) -> None:
        """Forget every cached offset (call under the lock): the file changed."""
        self._conventions = BoundedCache(CONVENTIONS_BUDGET_BYTES, front_entry_cost)
        self._conventions_generation = self._generation

    def _with_conventions(self, key: tuple[object, ...], targets: tuple[int, ...]) -> tuple[int, ...]:
        """``targets`` of one ``observe_request`` label combination (just resolved) followed
        by the offsets of its conventions' records (-1 = none), replacing the cached entry,
        so that the request path finds them with its own: ``gen_ai_server_duration`` for
        a labelled request or ``gen_ai_client_duration`` for a successful provider call
        (a failed one is recorded by ``_record_client_operation``, which knows its error
        type); http.server.request.duration needs none (``kinds.SERVER_KINDS``). Call under the lock,
        after the request's own records were resolved: the labels were admitted and
        counted already, and unusable parts are -1 in ``targets``.
        """
        endpoint, method, status, provider, model, failed = key
        gen_ai_duration = -1
        request, provider_record, model_record = targets[0], targets[2], targets[4]
        given = (provider is not None, model is not None)
        gen_ai_usable = any(given) and given == (provider_record >= 0, model_record >= 0)
        try:
            if request >= 0 and isinstance(status, int) and gen_ai_usable:
                route = self._admit_part("endpoint", endpoint)
                if route is not None and method_label(method) is not None:
                    gen_ai = self._gen_ai_labels(route, provider, model)
                    if gen_ai is not None:
                        error = gen_ai_error_type(status, bool(failed), self.error_status)
                        gen_ai_duration = self._storage.offset("gen_ai_server_duration", (*gen_ai, error))
            elif endpoint is None and method is None and gen_ai_usable and isinstance(status, int):
                gen_ai = self._gen_ai_labels(None, provider, model)
                if gen_ai is not None and not failed and status < self.error_status:
                    gen_ai_duration = self._storage.offset("gen_ai_client_duration", (*gen_ai, ""))
        except StorageUnavailable:
            # The request itself is recorded; resolve these again next time (the cache
            # must not keep an entry without them).
            self._front_cache.discard(key)
            return (*targets, -1)
        finally:
            self._map_file()
        extended = (*targets, gen_ai_duration)
        try:
            if key in self._request_targets:  # cached by _resolve_request: all labels usable
                self._request_targets[key] = extended
        except TypeError:  # an unhashable label value: never cached
            pass
        return extended

    def _gen_ai_labels(self, route: str | None, provider: object, model: object) -> tuple[str, str, str] | None:
        """(operation, provider, model) of a GenAI record ("" for a part not given), or
        None when a given part is unusable as a label (call under the lock)."""
        provider_label = model_label = ""
        if provider is not None:
            admitted = self._admit_part("provider", provider)
            if admitted is None:
                return None
            provider_label = admitted
        if model is not None:
            admitted = self._admit_part("model", model)
            if admitted is None:
                return None
            model_label = admitted
        return operation_name(route), provider_label, model_label

    def _gen_ai_offset(
        self, kind: str, route: str | None, provider: object, model: object, error: str | None, key: tuple[object, ...]
    ) -> int:
        """Offset of the ``kind`` record for these GenAI labels (and ``error``, for kinds
        that have it), cached under ``key`` (call under the lock, after ``_writable``);
        -1 when a label is unusable (not cached: counted by the call's own records)."""
        if self._conventions_generation != self._generation:
            self._reset_conventions()
        try:
            return self._conventions.entries[key][0]
        except (KeyError, TypeError):
            pass
        labels = self._gen_ai_labels(route, provider, model)
        if labels is None:
            return -1
        offset = self._storage.offset(kind, labels if error is None else (*labels, error))
        self._map_file()  # allocating may have re-mapped the file
        self._conventions.put(key, (offset, -1))
        return offset

    def _record_client_operation(
        self,
        provider: object,
        model: object,
        latency: float,
        status: int,
        failed: bool,
        error_type: object,
    ) -> None:
        """gen_ai.client.operation.duration of one failed upstream call, by error type
        (successful ones are recorded by ``observe_request``; ``record_provider_call``
        already validated and counted bad input: such calls are skipped here)."""
        if latency.__class__ is not float:
            latency = as_number(latency)
        if (
            (provider is None and model is None) or not 0.0 <= latency < math.inf
            or status.__class__ is not int or not 100 <= status <= 599
        ):  # fmt: skip
            return
        try:
            with self._lock:
                self._writable()
                error = gen_ai_error_type(status, failed, self.error_status, error_type)
                key = ("client", provider, model, error)
                offset = self._gen_ai_offset("gen_ai_client_duration", None, provider, model, error, key)
                if offset >= 0:
                    _observe(self._doubles, offset, _DURATION_BOUNDS, latency)
        except StorageUnavailable:
            pass  # the call's own records count what storage loses
        except Exception as exc:
            self._internal_error(exc)

    def _record_model_response(
        self,
        route: str | None,
        provider: str | None,
        model: str | None,
        status: int,
        failed: bool,
        duration: float,
        record_duration: bool,
        first_token: float | None = None,
        output_tokens: float = 0.0,
    ) -> None:
        """Record the gateway's own response of a model (the GenAI *server* histograms).

        ``record_duration``: feed gen_ai.server.request.duration (False when
        ``observe_request`` did already). A successful response (no failure, status below
        the error threshold) with ``first_token`` (seconds from the request's start) also
        feeds gen_ai.server.time_to_first_token, and with more than one output token
        gen_ai.server.time_per_output_token: the time after the first token divided by
        the tokens after it. Bad values are skipped; nothing raises.
        """
        if (provider is None and model is None) or not 0.0 <= duration < math.inf:
            return
        try:
            with self._lock:
                self._writable()
                if record_duration:
                    error = gen_ai_error_type(status, failed, self.error_status)
                    key: tuple[object, ...] = ("server", route, provider, model, error)
                    o = self._gen_ai_offset("gen_ai_server_duration", route, provider, model, error, key)
                    if o >= 0:
                        _observe(self._doubles, o, _DURATION_BOUNDS, duration)
                ok = not failed and status < self.error_status
                if not ok or first_token is None or not 0.0 <= first_token <= duration:
                    return
                key = ("first_token", route, provider, model)
                o = self._gen_ai_offset("gen_ai_first_token", route, provider, model, None, key)
                if o >= 0:
                    _observe(self._doubles, o, _FIRST_TOKEN_BOUNDS, first_token)
                if 1 < output_tokens < math.inf:
                    key = ("per_output_token", route, provider, model)
                    o = self._gen_ai_offset("gen_ai_per_output_token", route, provider, model, None, key)
                    if o >= 0:
                        per_token = (duration - first_token) / (output_tokens - 1)
                        _observe(self._doubles, o, _PER_TOKEN_BOUNDS, per_token)
        except StorageUnavailable:
            pass  # the request's own records count what storage loses
        except Exception as exc:
            self._internal_error(exc)


def _observe(d: Doubles, offset: int, bounds: tuple[float, ...], value: float) -> None:
    """One observation into a sum-then-buckets payload."""
    d[offset + kinds.HISTOGRAM_SUM] += value
    d[offset + kinds.HISTOGRAM_BUCKETS + bisect_left(bounds, value)] += 1.0
