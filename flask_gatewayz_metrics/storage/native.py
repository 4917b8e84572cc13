"""Merging the native-histogram records (``kinds.NATIVE_KINDS``) of every file.

Read only for a protobuf scrape, apart from the snapshot's merge (which skips these
records), so the text scrape never pays for them. Every file of the current reset
epoch counts, live workers, dead ones and the archive alike: the records hold counts
since start, which simply add. Chains are read by ``sparse.chain_buckets`` (bounded,
forward only, inside the mapping, valid entries only); a damaged chain drops its
series from that file, a merged series whose counts are not plausible is dropped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from . import kinds
from .reader import WorkerView
from .sparse import chain_buckets

Labels = tuple[str, ...]
NativeTotals = dict[str, dict[Labels, dict[int, float]]]
"""Native kind -> labels -> sketch bucket index -> count."""

MAX_COUNT = 2.0**53
"""Largest count a merged series may hold (beyond it counts are no longer exact)."""


def merge_native(views: list[WorkerView], epoch: int) -> NativeTotals:
    """The native records of ``views`` (files of older reset epochs are ignored), merged."""
    out: NativeTotals = {}
    for view in views:
        if view.epoch < epoch:
            continue
        doubles = view.doubles
        for record in view.records:
            if record.kind not in kinds.NATIVE_KINDS or record.offset >= len(doubles):
                continue
            buckets = chain_buckets(doubles, view.blocks, doubles[record.offset + kinds.NATIVE_FIRST])
            if not buckets:
                continue
            series = out.setdefault(record.kind, {})
            merged = series.get(record.labels)
            if merged is None:
                series[record.labels] = buckets  # a fresh dict of this read: ours to extend
                continue
            for index, count in buckets.items():
                merged[index] = merged.get(index, 0.0) + count
    for series in out.values():
        bad = [labels for labels, buckets in series.items() if not _plausible(buckets)]
        for labels in bad:
            del series[labels]
    return out


def _plausible(buckets: dict[int, float]) -> bool:
    total = sum(buckets.values())  # not math.fsum: it raises on an overflowing partial sum
    return math.isfinite(total) and total <= MAX_COUNT


@dataclass(frozen=True)
class NativeBuckets:
    """A native histogram's buckets: base-2 exponential ``schema``, populated buckets as
    (index, count) pairs in increasing index order (bucket ``i`` holds values in
    ``(2**((i-1)/2**schema), 2**(i/2**schema)]``), and the zero bucket."""

    schema: int
    positive: Sequence[tuple[int, int]]
    zero_threshold: float = 0.0
    zero_count: int = 0
    count: int | None = None
    """When set, the histogram's sample count: the native buckets' own total (zero
    bucket included), which a scrape racing a writer may see one request apart from
    the classic count; Prometheus requires a native histogram's count to match its
    buckets."""
