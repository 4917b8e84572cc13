"""The request path's slow path: a label combination it has not seen lately, validated
and resolved to its records once per part (route, provider, model), then kept in the
bounded caches of ``label_cache`` (a mixin of ``MetricsCollector``, like ``request_path``).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING

from .label_cache import BoundedCache
from .labels import method_label
from .record_writer import _InvalidLabel

if TYPE_CHECKING:
    from .storage import DirectoryAccess
    from .storage.layout import Doubles

_RequestTargets = tuple[int, int, int, int, int, int]
"""Payload offsets one (endpoint, method, status, provider, model, failed) combination
writes: request record, endpoint window, provider record and window, model record and
window (-1 = none)."""

_NO_PART = (-1, -1)
"""Offsets of a part a request does not have (e.g. no provider)."""


class LabelResolution:
    """Label resolution of ``MetricsCollector`` (which holds the state declared here)."""

    if TYPE_CHECKING:
        strict: bool
        _storage: DirectoryAccess
        _doubles: Doubles
        _histogram_kinds: dict[str, tuple[str, tuple[str, ...]]]
        _front_cache: BoundedCache
        _route_cache: BoundedCache
        _provider_cache: BoundedCache
        _model_cache: BoundedCache
        _request_targets: dict[Hashable, tuple[int, ...]]

        def _fixed(self, kind: str, labels: tuple[str, ...] = ()) -> int: ...
        def _map_file(self) -> Doubles: ...
        def _admit(self, name: str, raw: object) -> str: ...

    def _resolve_parts(self, key: tuple[object, ...]) -> _RequestTargets:
        """Validate a new label combination and find or allocate its records (slow path).

        A label that cannot be one (empty, not a string, unhashable) drops only its own
        part (the HTTP request, the provider or the model), counted as ``invalid_label``;
        such parts and combinations are not cached, so each occurrence is counted. Strict
        mode raises ``_InvalidLabel`` instead.
        """
        endpoint, method, status, provider, model, failed = key
        invalid = 0
        route = self._cached_part(self._route_cache, (endpoint, method, status, failed))
        upstream = self._cached_part(self._provider_cache, (provider, status, failed))
        used_model = self._cached_part(self._model_cache, (model, status, failed))
        parts: list[int] = []
        for part in (route, upstream, used_model):
            invalid += part is None
            parts.extend(_NO_PART if part is None else part)
        request, endpoint_window, provider_off, provider_window, model_off, model_window = parts
        targets = (request, endpoint_window, provider_off, provider_window, model_off, model_window)
        if invalid:
            if self.strict:
                raise _InvalidLabel
            self._map_file()
            self._doubles[self._fixed("dropped", ("invalid_label",))] += float(invalid)
        else:
            self._front_cache.put(key, targets)
        self._map_file()
        return targets

    def _cached_part(self, cache: BoundedCache, part: tuple[object, ...]) -> tuple[int, ...] | None:
        """The offsets of one part of a request (None: its label is invalid), cached."""
        try:
            found = cache.entries.get(part)
        except TypeError:  # an unhashable label value: resolved, not cached
            return self._resolve_part(cache, part)
        if found is None:
            found = self._resolve_part(cache, part)
            if found is not None:
                cache.put(part, found)
        return found

    def _resolve_part(self, cache: BoundedCache, part: tuple[object, ...]) -> tuple[int, int] | None:
        """Admit one part's label and find or allocate its record and window."""
        storage = self._storage
        if part[0] is None and (cache is not self._route_cache or part[1] is None):
            return _NO_PART  # no provider, no model, or a provider call (no HTTP request)
        outcome = (str(part[-2]), "1" if part[-1] else "0")
        if cache is self._route_cache:
            endpoint_label = self._admit_part("endpoint", part[0])
            method_value = method_label(part[1])
            if endpoint_label is None or method_value is None:
                return None
            kind, bounds = self._histogram_kinds["request"]
            return (
                storage.offset(kind, (*bounds, endpoint_label, method_value, *outcome)),
                storage.offset("endpoint_window", (endpoint_label,)),
            )
        name = "provider" if cache is self._provider_cache else "model"
        label = self._admit_part(name, part[0])
        if label is None:
            return None
        if name == "provider":
            kind, bounds = self._histogram_kinds["provider"]
            record = storage.offset(kind, (*bounds, label, *outcome))
        else:
            record = storage.offset(name, (label, *outcome))
        return record, storage.offset(f"{name}_window", (label,))

    def _clear_label_caches(self) -> None:
        """Forget every cached resolution (offsets change with a new file)."""
        for cache in (self._front_cache, self._route_cache, self._provider_cache, self._model_cache):
            cache.clear()

    def _admit_part(self, name: str, raw: object) -> str | None:
        """``_admit``, with None for a value that cannot be a label (call under the lock)."""
        try:
            return self._admit(name, raw)
        except _InvalidLabel:
            return None
