"""Mergeable log-bucket latency sketch.

Bucket boundaries are those of Prometheus native histograms, schema 5: bucket ``k``
covers ``(2**((k-1)/32), 2**(k/32)]``, so each bucket is ``GAMMA = 2**(1/32)`` times
wider than the one before. A quantile is answered with the bucket's harmonic
representative ``2 * GAMMA**k / (GAMMA + 1)``, whose relative error is at most
``(GAMMA - 1) / (GAMMA + 1)`` ~= 1.08 % for any value inside the tracked range.

Counts simply add across workers and time slots, which is what makes the sketch
mergeable. The tracked range is ``2**-20`` s (0.95 us, below any timer's resolution
for a request) to ``2**15`` s (9.1 hours, past any LLM stream or batch call), so every
value from 1 us to 6 h is answered within the bound. Smaller values fall into an
underflow bucket, larger ones into an overflow bucket; a quantile landing in one of
those is answered with the exact min / max of the window, which every windowed series
tracks.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence

SCHEMA = 5
SCALE = 1 << SCHEMA
"""Buckets per doubling: a value's key is ``ceil(log2(value) * SCALE)``."""
GAMMA: float = 2.0 ** (1.0 / SCALE)
MAX_RELATIVE_ERROR = (GAMMA - 1.0) / (GAMMA + 1.0)

MIN_KEY_EXPONENT = -20
MAX_KEY_EXPONENT = 15
MIN_KEY = MIN_KEY_EXPONENT * SCALE
"""Native-histogram key of the lowest tracked bucket; anything <= 2**-20 s underflows."""
MAX_KEY = MAX_KEY_EXPONENT * SCALE
"""Native-histogram key of the highest tracked bucket (upper bound 32768 s)."""

UNDERFLOW_INDEX = 0
OVERFLOW_INDEX = MAX_KEY - MIN_KEY + 1
BUCKET_COUNT = OVERFLOW_INDEX + 1
"""Slots in a sketch array: underflow, one per tracked key, overflow."""

LOWEST = 2.0**MIN_KEY_EXPONENT
"""Values up to this (included) fall into the underflow bucket."""
HIGHEST = 2.0**MAX_KEY_EXPONENT
"""Values above this fall into the overflow bucket: the largest value the sketch resolves
(answers past it come from the exact max)."""
UPPER_BOUNDS: tuple[float, ...] = tuple(2.0 ** (key / SCALE) for key in range(MIN_KEY, MAX_KEY + 1))
"""Float upper bound of the bucket at each array index (index 0: the underflow bucket).

``ceil(log2(value) * 32)`` can be off by one next to a boundary (``log2`` rounds), so
the estimate is corrected against these exact bounds: a value equal to a bound belongs
to that bucket, like in Prometheus native histograms. The collector's hot path inlines
``bucket_index`` from these same constants (``LOWEST``, ``HIGHEST``, ``SCALE``,
``MIN_KEY``, ``KEY_BIAS``, ``UPPER_BOUNDS``)."""
KEY_BIAS = 1e-9
"""Subtracted from ``log2(value) * SCALE`` before rounding up, so the estimate is never one
too high (``log2``'s error, ~1e-13 here, is far smaller), only one too low next to a
boundary: one comparison corrects it. (Checked against the two-sided correction at every
bound +-4 ulps and 2,000,000 random values: the same bucket for each.)"""
_log2 = math.log2
_ceil = math.ceil


def bucket_index(value: float) -> int:
    """Array index of the bucket holding ``value`` (a finite, non-negative float)."""
    if value <= LOWEST:
        return UNDERFLOW_INDEX
    if value > HIGHEST:
        return OVERFLOW_INDEX
    index = _ceil(_log2(value) * SCALE - KEY_BIAS) - MIN_KEY
    if value > UPPER_BOUNDS[index]:
        return index + 1
    return index


def representative(index: int) -> float:
    """Value reported for a quantile that falls into bucket ``index``."""
    key = index + MIN_KEY
    return 2.0 * GAMMA**key / (GAMMA + 1.0)


def quantile(
    counts: Sequence[float], q: float, lowest: float, highest: float, offset: int = 0
) -> float | None:
    """Nearest-rank quantile ``q`` of the observations counted in ``counts``.

    ``counts`` may be the touched slice of a sketch array starting at index
    ``offset``. ``lowest`` and ``highest`` are the exact min and max of the same
    observations; the answer is clamped to them, which only ever moves it closer to
    the truth, and a rank in the underflow (overflow) bucket is answered with the min
    (max) itself: exact when that rank is the smallest (largest) observation, and
    otherwise the closest value known. ``None`` when empty.
    """
    total = math.fsum(counts)
    if total <= 0:
        return None
    rank = max(1.0, _ceil(q * total))
    running = 0.0
    index = offset + len(counts) - 1
    for i, count in enumerate(counts, offset):
        running += count
        if running >= rank:
            index = i
            break
    if index == UNDERFLOW_INDEX:
        return lowest
    if index == OVERFLOW_INDEX:
        return highest
    return min(max(representative(index), lowest), highest)


def quantile_of_running_sums(
    total: float, running: Sequence[float], q: float, lowest: float, highest: float, offset: int = 0
) -> float | None:
    """``quantile`` from precomputed sums, for asking several quantiles of the same counts.

    ``total`` is ``math.fsum(counts)`` and ``running`` is ``itertools.accumulate(counts)``
    (the very additions ``quantile`` makes, in the same order, so the answer is the same
    to the last bit); counts must be non-negative, which makes ``running``
    non-decreasing and a bisection find the first bucket reaching the rank.
    """
    if total <= 0:
        return None
    rank = max(1.0, _ceil(q * total))
    index = offset + min(bisect_left(running, rank), len(running) - 1)
    if index == UNDERFLOW_INDEX:
        return lowest
    if index == OVERFLOW_INDEX:
        return highest
    return min(max(representative(index), lowest), highest)
