"""Merging the records of many worker files into one set of totals and windows.

Fixed payloads (counters, since-start histograms) are summed value by value. Windowed
payloads contribute only the slots whose clock-aligned interval lies in the current
window; their counts and sketch buckets add, their min / max combine. Sketch buckets
are stored sparsely (``sparse``): only the touched buckets of each slot are read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from operator import add

from . import kinds, layout
from .reader import Record, WorkerView
from .window_stats import WindowStats

Labels = tuple[str, ...]


@dataclass
class Merged:
    """Totals and window statistics of every series, all workers combined."""

    totals: dict[str, dict[Labels, list[float]]] = field(default_factory=dict)
    windows: dict[str, dict[Labels, WindowStats]] = field(default_factory=dict)
    bounds_mismatched: int = 0
    """Latency histogram series skipped because they were recorded with other bucket
    bounds than the reader's (``select_bounds``)."""

    def total(self, kind: str, labels: Labels = ()) -> list[float] | None:
        """The merged payload of a fixed-size series, or None when no file has it."""
        return self.totals.get(kind, {}).get(labels)

    def window(self, kind: str, labels: Labels = ()) -> WindowStats:
        """The merged window of a windowed series (empty when no file has it)."""
        return self.windows.get(kind, {}).get(labels) or WindowStats()


SEAL_GRACE_SECONDS = 1.0
"""A live writer's slot counts as sealed (its interval over, never written again) once
its interval ended this long ago: a writer that read the clock just before the slot
ended may still be adding to it."""

_SealedKey = tuple[object, ...]


class MergeCache:
    """The sealed part of the last merge (see ``merge``) and what it was made from.

    One entry, replaced as a whole (one attribute store), so scrapes in several threads
    may share it: each either reuses an entry made from exactly its own inputs or makes
    its own.
    """

    def __init__(self) -> None:
        self.entry: tuple[_SealedKey, Merged] | None = None
        self.rebuilt = 0
        """How often the sealed part was merged from the files (for tests)."""


def merge(
    views: list[WorkerView],
    epoch: int,
    now: float,
    cache: MergeCache | None = None,
    leave_out: frozenset[str] = frozenset(),
    bounds: tuple[float, ...] = kinds.HISTOGRAM_BOUNDS,
) -> Merged:
    """Combine ``views`` (files of older reset epochs are ignored) as seen at ``now``;
    the latency histograms are those recorded with bucket ``bounds`` (``select_bounds``).

    In two parts. The *sealed* part holds what cannot change any more: all of the
    archive and of dead workers' files, and the slots of live workers' files whose
    interval is over. It is merged from the files only when its inputs changed
    (``_sealed_key``: a reset, another file set, an archive or dead file replaced or
    grown, a live file that died, the window moving on) and otherwise taken from
    ``cache``. The *live* part, read at every call, is the totals and the current
    slots of live workers. Without a cache both parts are merged from the files, in the
    same order, so the result is the same to the last bit.

    Record kinds in ``leave_out`` are absent from the result (a scrape that serves none
    of their families does not merge them); the sealed part holds every kind, so
    scrapes with and without them share it.
    """
    key = _sealed_key(views, epoch, now)
    entry = cache.entry if cache is not None else None
    if entry is None or entry[0] != key:
        entry = (key, _merge_sealed(views, epoch, now))
        if cache is not None:
            cache.entry = entry
            cache.rebuilt += 1
    merged = _merge_live(entry[1], views, epoch, now, leave_out)
    _drop_impossible(merged)
    select_bounds(merged, bounds, leave_out)
    return merged


_BOUNDED_BASE = {
    name: base
    for base in kinds.BOUNDED_KINDS
    for name in kinds.KINDS
    if name == base or (name.startswith(f"{base}_le") and name[len(base) + 3 :].isdigit())
}
"""Every kind of ``kinds.BOUNDED_KINDS``, under any bound count -> the kind."""


def select_bounds(merged: Merged, bounds: tuple[float, ...], leave_out: frozenset[str] = frozenset()) -> None:
    """Keep, of the latency histograms (``kinds.BOUNDED_KINDS``), only the series
    recorded with ``bounds``, under the kind's own name and labels; the others (another
    bound set: a worker of an older configuration, the archive's data from before a
    change) are removed and counted in ``merged.bounds_mismatched``. Never reads one
    bound set's counts under another's bounds. Then ``_unfold_server_kinds`` (the
    ``kinds.HTTP_SERVER_BUCKETS`` series unless ``leave_out`` holds them). Replaces the
    kinds' series dicts, never changes them (they may be shared with the merge cache)."""
    skipped = 0
    for name in [name for name in merged.totals if name in _BOUNDED_BASE]:
        base = _BOUNDED_BASE[name]
        own, prefix = kinds.histogram_kind(base, bounds)
        if name == own and not prefix:
            continue  # the default bounds: stored under the kind's own name
        series = merged.totals.pop(name)
        if name != own:
            skipped += len(series)
            continue
        kept = {labels[1:]: payload for labels, payload in series.items() if labels[:1] == prefix}
        skipped += len(series) - len(kept)
        merged.totals[base] = kept
    merged.bounds_mismatched = skipped
    _unfold_server_kinds(merged, bounds, kinds.HTTP_SERVER_BUCKETS not in leave_out)


def _unfold_server_kinds(merged: Merged, bounds: tuple[float, ...], with_http: bool) -> None:
    """Turn the ``kinds.SERVER_KINDS`` series, whose buckets are over
    ``kinds.stored_bounds``, into count, sum and buckets over ``bounds``, and derive
    from the "request" series the ``kinds.HTTP_SERVER_BUCKETS`` series (bucket counts
    over ``HTTP_SERVER_BOUNDS``; ``with_http``, and only when there are requests).
    Exact: both bound sets are among the stored ones, so each stored bucket lies inside
    one bucket of each. New dicts and lists: the series may be shared with the merge
    cache."""
    stored = kinds.stored_bounds("request", bounds)
    to_latency = _bucket_groups(stored, bounds)
    to_http = _bucket_groups(stored, kinds.HTTP_SERVER_BOUNDS)
    requests = merged.totals.get("request")
    if requests and with_http:
        merged.totals[kinds.HTTP_SERVER_BUCKETS] = {
            labels: _regroup(payload, to_http) for labels, payload in requests.items()
        }
    for kind in kinds.SERVER_KINDS:
        series = merged.totals.get(kind)
        if series:
            merged.totals[kind] = {labels: _counted(payload, to_latency) for labels, payload in series.items()}


def _counted(payload: list[float], groups: tuple[tuple[int, int], ...]) -> list[float]:
    """Count, sum and buckets (``_regroup``) of a request-like payload, the count being
    the buckets' total rather than the stored count: the request path does not write the
    count of these records (``kinds.UNCOUNTED_KINDS``: one write less per request), and
    the total can never be ahead of or behind the histogram's ``_count`` and ``+Inf``
    bucket, as a stored count written apart from the bucket could be for a scrape that
    copies a file between the two writes. (Integer-valued floats below 2**53: the sum is
    exact.)"""
    buckets = _regroup(payload, groups)
    return [sum(buckets), payload[kinds.REQ_SUM], *buckets]


def _bucket_groups(stored: tuple[float, ...], bounds: tuple[float, ...]) -> tuple[tuple[int, int], ...]:
    """For each bucket of ``bounds`` (a subset of ``stored``; +Inf last): the payload
    slice of the stored buckets it sums."""
    ends = [kinds.REQ_BUCKETS + stored.index(bound) + 1 for bound in bounds]
    ends.append(kinds.REQ_BUCKETS + len(stored) + 1)
    return tuple(zip([kinds.REQ_BUCKETS, *ends[:-1]], ends, strict=True))


def _regroup(payload: list[float], groups: tuple[tuple[int, int], ...]) -> list[float]:
    """The bucket counts of a stored payload summed into ``groups`` (``_bucket_groups``)."""
    return [payload[start] if end - start == 1 else sum(payload[start:end]) for start, end in groups]


def _seal_limit(view: WorkerView, now: float) -> float:
    """Slot ids below this are sealed in ``view`` (every id, for a file nobody writes)."""
    if not view.live:
        return math.inf
    if view.slot_seconds <= 0:
        return 0.0  # one slot since start: never sealed while its writer lives
    return float(math.floor((now - SEAL_GRACE_SECONDS) / view.slot_seconds))


def _sealed_key(views: list[WorkerView], epoch: int, now: float) -> _SealedKey:
    """Everything the sealed part depends on.

    A file nobody writes is identified by name, inode and ``used`` (replaced or grown:
    another key). A live writer's file by name, inode and epoch: while it lives, its
    growth adds records (whose slots start empty) and bucket blocks (linked from its
    current slot only), neither of which can change a sealed slot; when it dies, its
    key changes.
    """
    parts: list[object] = [epoch]
    for view in views:
        if view.epoch < epoch:
            continue
        parts.append((
            view.name, view.inode, view.epoch, view.live, -1 if view.live else view.used,
            oldest_slot_in_window(view, now), _seal_limit(view, now),
        ))
    return tuple(parts)


def _merge_sealed(views: list[WorkerView], epoch: int, now: float) -> Merged:
    merged = Merged()
    for view in views:
        if view.epoch < epoch:
            continue
        if not view.live:  # dead workers have no requests in flight ("live" kinds)
            for record in view.records:
                kind = kinds.KINDS[record.kind]
                if not kind.windowed and kind.merge != "live":
                    _add_total(merged, view, record)
        _add_windows(merged, view, oldest_slot_in_window(view, now), _seal_limit(view, now), None)
    return merged


def _merge_live(
    sealed: Merged, views: list[WorkerView], epoch: int, now: float, leave_out: frozenset[str]
) -> Merged:
    """``sealed`` (left untouched: series it holds are copied before they change) plus
    the totals and current slots of live workers; kinds in ``leave_out`` left out."""
    merged = Merged(
        {kind: dict(series) for kind, series in sealed.totals.items() if kind not in leave_out},
        {kind: dict(series) for kind, series in sealed.windows.items() if kind not in leave_out},
    )
    copied: set[tuple[str, Labels]] = set()
    moved = {v.writer_pid for v in views if v.epoch >= epoch and not v.is_archive}
    for view in views:
        if view.epoch < epoch:
            # A live writer that has not yet moved to the new epoch (it does at its next
            # write) still serves its requests: its "live" values (requests in flight)
            # count; everything else in the file was reset.
            if view.live and not view.is_archive and view.writer_pid not in moved:
                for record in view.records:
                    if kinds.KINDS[record.kind].merge == "live" and record.kind not in leave_out:
                        _add_total(merged, view, record)
            continue
        if not view.live:
            continue  # entirely in the sealed part
        _add_totals(merged, view, leave_out)
        oldest = max(oldest_slot_in_window(view, now), _seal_limit(view, now))
        _add_windows(merged, view, oldest, math.inf, copied, leave_out)
    return merged


def _add_windows(
    merged: Merged, view: WorkerView, oldest: float, limit: float, copied: set[tuple[str, Labels]] | None,
    leave_out: frozenset[str] = frozenset(),
) -> None:  # fmt: skip
    """Add the slots of ``view`` with ``oldest <= id < limit`` to ``merged``'s windows.

    ``copied``: series of ``merged`` it owns (the others are shared with the cache and
    copied before their first change); ``None`` when it owns all of them.
    """
    doubles = view.doubles
    for record in view.records:
        kind = kinds.KINDS[record.kind]
        if not kind.windowed or record.kind in leave_out:
            continue
        series = merged.windows.setdefault(record.kind, {})
        stats = series.get(record.labels)
        if stats is None:
            stats = series[record.labels] = WindowStats()
            if copied is not None:
                copied.add((record.kind, record.labels))
        stride = layout.slot_stride(kind.with_sketch)
        for slot in range(view.slots):
            base = record.offset + slot * stride
            if oldest <= doubles[base + layout.SLOT_ID] < limit:
                if copied is not None and (record.kind, record.labels) not in copied:
                    stats = series[record.labels] = stats.copy()
                    copied.add((record.kind, record.labels))
                stats.add_slot(view, base, kind.with_sketch)


_COMBINED = frozenset({"latest", "max", "min"})
"""Merge modes ``combine`` decides; every other mode adds value by value."""


def _add_totals(merged: Merged, view: WorkerView, leave_out: frozenset[str]) -> None:
    """``_add_total`` of every fixed-size record of ``view`` (the live part's hot loop:
    the same combination, with the per-record lookups hoisted)."""
    kind_table = kinds.KINDS
    totals = merged.totals
    doubles = view.doubles
    for record in view.records:
        kind = kind_table[record.kind]
        size = kind.size
        if kind.windowed or not size or record.kind in leave_out:
            continue
        series = totals.get(record.kind)
        if series is None:
            series = totals[record.kind] = {}
        offset = record.offset
        values: list[float] = doubles[offset : offset + size].tolist()  # type: ignore[assignment]
        current = series.get(record.labels)
        if current is None:
            series[record.labels] = values
        elif kind.merge in _COMBINED:
            series[record.labels] = combine(kind, current, values)
        else:
            series[record.labels] = list(map(add, current, values))


def _add_total(merged: Merged, view: WorkerView, record: Record) -> None:
    """Combine a fixed-size record of ``view`` into the merged totals (``absorbed``
    markers carry no values and are skipped)."""
    kind = kinds.KINDS[record.kind]
    if kind.windowed or not kind.size or kind.merge == "native":  # natives: ``storage.native``
        return
    series = merged.totals.setdefault(record.kind, {})
    values: list[float] = view.doubles[record.offset : record.offset + kind.size].tolist()  # type: ignore[assignment]
    series[record.labels] = combine(kind, series.get(record.labels), values)


MAX_VALUE = layout.MAX_VALUE
"""Largest magnitude a merged value may have (beyond it a count is no longer exact)."""


def _plausible(values: list[float]) -> bool:
    """No NaN, no infinity, nothing beyond ``MAX_VALUE`` (three C-speed passes)."""
    if not values:
        return True
    total = sum(values)
    return math.isfinite(total) and min(values) >= -MAX_VALUE and max(values) <= MAX_VALUE


def _drop_impossible(merged: Merged) -> None:
    """Remove series whose merged values no file we write could hold (a damaged file).

    The file's structure was validated when it was read; its numbers are checked here,
    once per merged series, so that nothing downstream (``int()``, quantiles) can fail.
    """
    for series in merged.totals.values():
        bad = [labels for labels, payload in series.items() if not _plausible(payload)]
        for labels in bad:
            del series[labels]
    for windows in merged.windows.values():
        bad = [
            labels for labels, stats in windows.items()
            if not _plausible([stats.count, stats.total, stats.errors])
            or math.isnan(stats.low) or math.isnan(stats.high)
            or (stats.buckets is not None and not _plausible(stats.buckets[stats.lo : stats.hi + 1]))
        ]  # fmt: skip
        for labels in bad:
            del windows[labels]


def combine(kind: kinds.Kind, current: list[float] | None, incoming: list[float]) -> list[float]:
    """Two workers' payloads of one fixed-size series, combined as ``kind`` says."""
    if current is None:
        return incoming
    if kind.merge == "latest":
        return incoming if incoming[-1] > current[-1] else current
    if kind.merge in ("max", "min"):
        # (value, set): a payload never set (allocated, not yet written) has no say.
        if not incoming[-1]:
            return current
        if not current[-1]:
            return incoming
        pick = max if kind.merge == "max" else min
        return [pick(current[0], incoming[0]), 1.0]
    return list(map(add, current, incoming))


def oldest_slot_in_window(view: WorkerView, now: float) -> float:
    """Smallest slot id still inside the window of ``view``'s geometry."""
    if view.slot_seconds <= 0:
        return 0.0  # one slot since start
    return math.floor(now / view.slot_seconds) - view.slots + 1
