"""Native histograms: recording the latency histograms' since-start schema-5 buckets,
and reading them back for the protobuf exposition.

The sketch (``sketch``) already uses the bucket boundaries of Prometheus native
histograms of schema 5, so a native histogram is the sketch's bucket counts since start:
sketch index ``i >= 1`` is native bucket ``i + sketch.MIN_KEY``, index 0 (values up to
``sketch.LOWEST``) the zero bucket. The request path already computes the sketch index
for the window; ``NativeRecording._native_add`` (one call from
``MetricsCollector.observe_request``) adds 1 to that bucket of the request's
``request_native`` and ``provider_native`` records through a cached position, like
the window's mirror. Storage: ``layout`` (native records) and ``storage.native``.

Off by default (``native_histograms`` setting, ``$GATEWAYZ_METRICS_NATIVE_HISTOGRAMS``):
it costs ~1,700-2,400 CPU instructions per request, ~5,000 with a provider (callgrind,
3-8 % of the extension's overhead), and ~16 bytes per touched bucket per series in the
worker files, which only a Prometheus with native histograms enabled makes worth paying.

A MetricsCollector mixin: it uses the collector's lock, storage and label admission.
Recording never raises into the request (a full disk loses native counts only: the
classic histogram beside it is written first).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import sketch
from .storage import StorageUnavailable, kinds, layout, slots
from .storage.layout import Doubles, EntryWords
from .storage.native import NativeBuckets, NativeTotals, merge_native

if TYPE_CHECKING:
    import threading

    from .storage import DirectoryAccess

SCHEMA = sketch.SCHEMA
ZERO_THRESHOLD = sketch.LOWEST
"""The zero bucket's threshold: the sketch's underflow bucket holds values up to it."""
_ENTRY_ONE = layout.ENTRY_ONE


def native_index(index: int) -> int:
    """The schema-5 native bucket of sketch bucket ``index`` (>= 1; 0 is the zero bucket)."""
    return index + sketch.MIN_KEY


def native_buckets(buckets: Mapping[int, float]) -> NativeBuckets:
    """Merged sketch bucket counts (``storage.native``) as a native histogram's buckets."""
    offset = sketch.MIN_KEY  # native_index, inlined: a scrape converts every bucket
    positive = [(i + offset, int(c)) for i, c in sorted(buckets.items()) if i >= 1 and c >= 1]
    zero = int(buckets.get(sketch.UNDERFLOW_INDEX, 0.0))
    return NativeBuckets(
        schema=SCHEMA,
        positive=positive,
        zero_threshold=ZERO_THRESHOLD,
        zero_count=zero,
        count=zero + sum(c for _, c in positive),
    )


@dataclass
class NativeIndex(Mapping[tuple[str, tuple[tuple[str, str], ...]], NativeBuckets]):
    """The exposition's ``NativeLookup``: (family name, label pairs) -> native buckets.

    A lookup ignores label pairs the family's own labels do not name (the static labels
    the exporter adds to every family), so the buckets are found whatever wraps the
    families."""

    families: dict[str, tuple[tuple[str, ...], dict[tuple[str, ...], NativeBuckets]]] = field(default_factory=dict)

    @classmethod
    def of(cls, totals: NativeTotals) -> NativeIndex:
        """The index of merged native ``totals``, by family name and label values."""
        index = cls()
        for kind, series in totals.items():
            family = kinds.NATIVE_KINDS[kind]
            index.families[family] = (
                kinds.KINDS[kind].labels,
                {labels: native_buckets(buckets) for labels, buckets in series.items()},
            )
        return index

    def __getitem__(self, key: tuple[str, tuple[tuple[str, str], ...]]) -> NativeBuckets:
        name, pairs = key
        names, series = self.families[name]
        given = dict(pairs)
        return series[tuple(given.get(label, "") for label in names)]

    def __iter__(self) -> Iterator[tuple[str, tuple[tuple[str, str], ...]]]:
        for name, (names, series) in self.families.items():
            for labels in series:
                yield name, tuple(sorted(zip(names, labels, strict=True)))

    def __len__(self) -> int:
        return sum(len(series) for _, series in self.families.values())


@dataclass
class _NativeState:
    """This process's positions in its file's native chains (valid for one file)."""

    generation: int
    requests: dict[int, list[Any]] = field(default_factory=dict)
    """Classic record offset ("request" / "provider") -> the mirror of its native record."""
    mirrors: dict[int, list[Any]] = field(default_factory=dict)
    """Native record offset -> [{slot index: count position}, block entries go to, its
    capacity, where the next block is linked, its place in the chain]."""


ENV = "GATEWAYZ_METRICS_NATIVE_HISTOGRAMS"
"""Environment variable turning native recording on ("1", "true", "yes", "on") for
collectors not told otherwise (the process-wide one, gunicorn workers)."""


def native_state(enabled: bool | None) -> _NativeState | None:
    """The initial ``NativeRecording._native_state`` (None: native buckets not recorded);
    ``enabled`` None: as ``$GATEWAYZ_METRICS_NATIVE_HISTOGRAMS`` says (default off)."""
    if enabled is None:
        enabled = os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes", "on")
    return _NativeState(-1) if enabled else None


class NativeRecording:
    """Native-histogram recording for ``MetricsCollector`` (see the module docstring)."""

    _native_state: _NativeState | None = None
    """None: native histograms are not recorded (``native_histograms=False``)."""

    if TYPE_CHECKING:
        _storage: DirectoryAccess
        _lock: threading.Lock
        _read_lock: threading.Lock
        _doubles: Doubles
        _entry_words: EntryWords
        _histogram_kinds: dict[str, tuple[str, tuple[str, ...]]]

        def _writable(self) -> Doubles: ...
        def _map_file(self) -> Doubles: ...
        def _admit_part(self, name: str, raw: object) -> str | None: ...
        def _append_bucket_entry(self, mirror: list[Any], at: int, index: int) -> Doubles: ...
        def _internal_error(self, exc: Exception) -> None: ...

    def _native_add(self, request: int, provider: int, index: int) -> None:
        """Count one request in the native buckets of its request and provider records
        (payload offsets of their classic records, -1 = none) at slot index ``index``
        (``SLOT_HEADER`` + sketch index). Call under the lock, after the classic write."""
        state = self._native_state
        if state is None:
            return
        try:
            if state.generation != self._storage.generation:
                state = self._native_state = _NativeState(self._storage.generation)
            # An entry's count, as the request path's windows add it (a KeyError: the
            # bucket's first count; a ValueError: its entry is full, see layout).
            if request >= 0:
                try:
                    mirror = state.requests[request]
                except KeyError:
                    mirror = self._native_mirror(state, request, "request", "request_native")
                try:
                    self._entry_words[mirror[0][index]] += _ENTRY_ONE
                except (KeyError, ValueError):
                    self._append_bucket_entry(mirror, 0, index)
            if provider >= 0:
                try:
                    mirror = state.requests[provider]
                except KeyError:
                    mirror = self._native_mirror(state, provider, "provider", "provider_native")
                try:
                    self._entry_words[mirror[0][index]] += _ENTRY_ONE
                except (KeyError, ValueError):
                    self._append_bucket_entry(mirror, 0, index)
        except StorageUnavailable:
            pass  # the classic histogram has the request; only its native bucket is lost
        except Exception as exc:  # never break the request
            self._internal_error(exc)

    def _record_native(self, kind: str, labels: tuple[tuple[str, object], ...], value: float) -> None:
        """Count ``value`` (finite, >= 0) in the native record ``kind`` for ``labels``
        (name, raw value) pairs (the streams' histograms; not the request path)."""
        if self._native_state is None:
            return
        try:
            with self._lock:
                self._writable()
                values = tuple(self._admit_part(name, raw) for name, raw in labels)
                if None in values:
                    return  # counted by the classic record's write
                state = self._native_state
                if state.generation != self._storage.generation:
                    state = self._native_state = _NativeState(self._storage.generation)
                offset = self._storage.offset(kind, values)  # type: ignore[arg-type]
                self._map_file()
                mirror = state.mirrors.get(offset) or self._native_chain(state, offset)
                index = layout.SLOT_HEADER + sketch.bucket_index(value)
                try:
                    self._entry_words[mirror[0][index]] += _ENTRY_ONE
                except (KeyError, ValueError):  # the bucket's first count, or its entry is full
                    self._append_bucket_entry(mirror, 0, index)
        except StorageUnavailable:
            pass
        except Exception as exc:
            self._internal_error(exc)

    def _native_mirror(self, state: _NativeState, record: int, classic: str, kind: str) -> list[Any]:
        """The mirror of the native record of the classic ``classic`` record at ``record``
        (allocating it when new); cached for the request path."""
        storage = self._storage
        stored, prefix = self._histogram_kinds[classic]  # configured buckets: "<kind>_le<n>"
        labels = _labels_at(storage, stored, record)[len(prefix) :]
        offset = storage.offset(kind, labels[: len(kinds.KINDS[kind].labels)])
        self._map_file()
        mirror = state.mirrors.get(offset) or self._native_chain(state, offset)
        state.requests[record] = mirror
        return mirror

    def _native_chain(self, state: _NativeState, offset: int) -> list[Any]:
        """A mirror of the native record at ``offset``: the entries its chain already holds
        (a file this process opened has only its own), new ones going after them."""
        link = offset + kinds.NATIVE_FIRST
        first = int(self._doubles[link])
        entries = slots.chain_entries(self._doubles, self._entry_words, first)
        mirror = state.mirrors[offset] = [entries, first, layout.block_capacity(0), link, 0]
        return mirror

    def native_lookup(self) -> NativeIndex:
        """The native buckets of every latency histogram, merged over all files of the
        current epoch (live workers, dead ones, the archive): the protobuf scrape's
        ``NativeLookup``. Empty when nothing was recorded; never raises."""
        try:
            with self._read_lock:
                views, _ = self._storage.read()
                epoch = self._storage.control.epoch
            return NativeIndex.of(merge_native(views, epoch))
        except Exception as exc:  # a scrape still answers, with classic buckets only
            self._internal_error(exc)
            return NativeIndex()


def _labels_at(storage: DirectoryAccess, kind: str, offset: int) -> tuple[str, ...]:
    """The labels of this process's ``kind`` record at ``offset`` (once per record and file)."""
    for (found, labels), at in storage._offsets.items():  # the storage's own index
        if at == offset and found == kind:
            return labels
    raise LookupError(f"no {kind} record at {offset}")

