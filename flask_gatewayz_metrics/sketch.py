"""Mergeable log-bucket latency sketch.

Bucket boundaries are those of Prometheus native histograms, schema 5: bucket ``k``
covers ``(2**((k-1)/32), 2**(k/32)]``, so each bucket is ``GAMMA = 2**(1/32)`` times
wider than the one before. A quantile is answered with the bucket's harmonic
representative ``2 * GAMMA**k / (GAMMA + 1)``, whose relative error is at most
``(GAMMA - 1) / (GAMMA + 1)`` ~= 1.08 % for any value inside the tracked range.

Counts simply add across workers and time slots, which is what makes the sketch
mergeable. The tracked range is ``2**-17`` s (7.6 us) to ``2**10`` s (1024 s, past
any LLM time-out); smaller values fall into an underflow bucket, larger ones into an
overflow bucket, and answers from those are clamped to the observed min / max.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

SCHEMA = 5
GAMMA = 2.0 ** (1.0 / 32)
MAX_RELATIVE_ERROR = (GAMMA - 1.0) / (GAMMA + 1.0)

MIN_KEY_EXPONENT = -17
MAX_KEY_EXPONENT = 10
MIN_KEY = MIN_KEY_EXPONENT * 32
"""Native-histogram key of the lowest tracked bucket; anything <= 2**-17 s underflows."""
MAX_KEY = MAX_KEY_EXPONENT * 32
"""Native-histogram key of the highest tracked bucket (upper bound 1024 s)."""

UNDERFLOW_INDEX = 0
OVERFLOW_INDEX = MAX_KEY - MIN_KEY + 1
BUCKET_COUNT = OVERFLOW_INDEX + 1
"""Slots in a sketch array: underflow, one per tracked key, overflow."""

UPPER_LIMIT = 2.0**MAX_KEY_EXPONENT
"""Largest value the sketch resolves; quantiles past it are reported as this (or max)."""
_LOWEST = 2.0**MIN_KEY_EXPONENT
_HIGHEST = 2.0**MAX_KEY_EXPONENT
UPPER_BOUNDS: tuple[float, ...] = tuple(2.0 ** (key / 32) for key in range(MIN_KEY, MAX_KEY + 1))
"""Float upper bound of the bucket at each array index (index 0: the underflow bucket).

``ceil(log2(value) * 32)`` can be off by one next to a boundary (``log2`` rounds), so
the estimate is corrected against these exact bounds: a value equal to a bound belongs
to that bucket, like in Prometheus native histograms."""
_log2 = math.log2
_ceil = math.ceil


def bucket_index(value: float) -> int:
    """Array index of the bucket holding ``value`` (a finite, non-negative float)."""
    if value <= _LOWEST:
        return UNDERFLOW_INDEX
    if value > _HIGHEST:
        return OVERFLOW_INDEX
    index = _ceil(_log2(value) * 32) - MIN_KEY
    if value > UPPER_BOUNDS[index]:
        return index + 1
    if value <= UPPER_BOUNDS[index - 1]:
        return index - 1
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
    observations (or the sketch's range when those are not tracked); the answer is
    clamped to them, which only ever moves it closer to the truth and gives exact
    answers for underflow and overflow buckets. ``None`` when empty.
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
