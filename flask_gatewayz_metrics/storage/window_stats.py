"""The statistics of one windowed series: its slots merged over workers.

``WindowStats`` adds the slots (count, sum, errors, min / max, sparse sketch buckets) that
``merge`` selects, and answers quantiles from the merged sketch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from itertools import accumulate
from operator import add

from .. import sketch
from . import layout
from .reader import WorkerView
from .sparse import slot_entries


@dataclass
class WindowStats:
    """Observations of one series inside the window, merged over workers and slots."""

    count: float = 0.0
    total: float = 0.0
    low: float = math.inf
    high: float = -math.inf
    errors: float = 0.0
    buckets: list[float] | None = None
    lo: int = sketch.BUCKET_COUNT
    hi: int = -1
    """Touched range of ``buckets``: quantiles only walk this part."""
    _ranks: tuple[float, list[float]] | None = field(default=None, init=False, repr=False, compare=False)
    """(exact total, running sums) of the touched buckets, made by the first quantile
    asked and dropped whenever buckets are added: a scrape asks for several."""

    def add_slot(self, view: WorkerView, base: int, with_sketch: bool) -> None:
        """Add the slot at ``base`` of ``view`` (a windowed record's slot)."""
        doubles = view.doubles
        self.total += doubles[base + layout.SLOT_SUM]
        self.errors += doubles[base + layout.SLOT_ERRORS]
        self.low = min(self.low, doubles[base + layout.SLOT_MIN])
        self.high = max(self.high, doubles[base + layout.SLOT_MAX])
        if not with_sketch:
            self.count += doubles[base + layout.SLOT_COUNT]
            return
        entries = slot_entries(doubles, view.blocks, doubles[base + layout.SLOT_BLOCK])
        if entries is None:  # damaged bucket blocks: the slot is unusable
            self.count = math.nan  # dropped with its series at the end of the merge
            return
        indexes, counts = entries
        if not indexes:
            return
        self.add_buckets(indexes, counts)

    def add_buckets(self, indexes: Sequence[float], counts: Sequence[float]) -> None:
        """Add sketch counts (validated: integral indexes in range, finite counts >= 0)."""
        self.count += math.fsum(counts)
        self._ranks = None
        buckets = self.buckets
        if buckets is None:
            buckets = self.buckets = [0.0] * sketch.BUCKET_COUNT
        if len(indexes) != len(counts):
            raise ValueError("indexes and counts differ in length")
        at = list(map(int, indexes))
        # buckets[i] += c for each entry in order, as one C-level loop: the maps are lazy,
        # so each entry reads its bucket after the previous one wrote (a repeated index
        # adds up exactly as the plain loop would).
        any(map(buckets.__setitem__, at, map(add, map(buckets.__getitem__, at), counts)))
        low, high = min(at), max(at)
        self.lo, self.hi = min(self.lo, low), max(self.hi, high)

    def copy(self) -> WindowStats:
        """An independent copy (its own bucket list)."""
        return replace(self, buckets=None if self.buckets is None else self.buckets[:])

    @property
    def average(self) -> float | None:
        """Mean value in the window (None without observations)."""
        return self.total / self.count if self.count > 0 else None

    @property
    def error_rate(self) -> float | None:
        """Share of the window's observations that were errors (None without any)."""
        return self.errors / self.count if self.count > 0 else None

    @property
    def minimum(self) -> float | None:
        """Exact smallest value observed in the window (None when it saw nothing)."""
        return self.low if self.count > 0 and self.low <= self.high else None

    @property
    def maximum(self) -> float | None:
        """Exact largest value observed in the window (None when it saw nothing)."""
        return self.high if self.count > 0 and self.low <= self.high else None

    def quantile(self, q: float) -> float | None:
        """Quantile ``q`` from the sketch, clamped to the exact min / max (which also
        answer ranks in the underflow / overflow buckets)."""
        if self.buckets is None or self.count <= 0:
            return None
        if self.low <= self.high:
            low, high = self.low, self.high
        else:  # no min / max in the slots (a damaged file): the sketch's range
            low, high = 0.0, sketch.HIGHEST
        if self._ranks is None:
            counts = self.buckets[self.lo : self.hi + 1]
            self._ranks = (math.fsum(counts), list(accumulate(counts)))
        total, running = self._ranks
        return sketch.quantile_of_running_sums(total, running, q, low, high, self.lo)
