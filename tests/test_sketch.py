"""The mergeable log-bucket sketch: bucket boundaries, range limits, quantiles."""

from __future__ import annotations

import math

import pytest

from flask_gatewayz_metrics import sketch

TRACKED_KEYS = range(sketch.MIN_KEY + 1, sketch.MAX_KEY + 1)


def _key_index(key: int) -> int:
    return key - sketch.MIN_KEY


BOUND = sketch.MAX_RELATIVE_ERROR * (1 + 1e-9)
"""The error bound plus float noise (GAMMA**k accumulates ~1e-14 relative error)."""


def _close(got: float | None, expected: float) -> bool:
    return got is not None and abs(got - expected) / expected <= BOUND


def _counts(values: list[float]) -> list[float]:
    counts = [0.0] * sketch.BUCKET_COUNT
    for value in values:
        counts[sketch.bucket_index(value)] += 1.0
    return counts


def test_bucket_layout_constants() -> None:
    """The sketch is schema 5 over [2**-20, 2**15] with one underflow and one overflow slot."""
    assert sketch.SCHEMA == 5
    assert sketch.SCALE == 32
    assert sketch.GAMMA == 2.0 ** (1 / 32)
    assert sketch.MIN_KEY == -20 * 32
    assert sketch.MAX_KEY == 15 * 32
    assert sketch.LOWEST == 2.0**-20 < 1e-6  # 1 us is tracked
    assert sketch.HIGHEST == 2.0**15 > 6 * 3600  # 6 hours are tracked
    assert sketch.UNDERFLOW_INDEX == 0
    assert sketch.OVERFLOW_INDEX == sketch.MAX_KEY - sketch.MIN_KEY + 1
    assert sketch.BUCKET_COUNT == sketch.OVERFLOW_INDEX + 1
    assert pytest.approx(0.01083, abs=1e-5) == sketch.MAX_RELATIVE_ERROR


def test_value_exactly_at_upper_bound_goes_to_its_key() -> None:
    """A value exactly at 2**(k/32) (the float bound) falls into bucket k (upper-inclusive)."""
    wrong = [key for key in TRACKED_KEYS if sketch.bucket_index(2.0 ** (key / 32)) != _key_index(key)]
    assert wrong == []


def test_value_just_below_upper_bound_stays_in_bucket() -> None:
    """The largest float below 2**(k/32) still belongs to bucket k."""
    for key in TRACKED_KEYS:
        below = math.nextafter(2.0 ** (key / 32), 0.0)
        assert sketch.bucket_index(below) == _key_index(key), key


def test_value_just_above_upper_bound_moves_to_next_bucket() -> None:
    """The smallest float above 2**(k/32) belongs to bucket k+1."""
    for key in range(sketch.MIN_KEY, sketch.MAX_KEY):
        above = math.nextafter(2.0 ** (key / 32), math.inf)
        assert sketch.bucket_index(above) == _key_index(key + 1), key


def test_known_bucket_indices() -> None:
    """Powers of two map to the key 32*exponent."""
    assert sketch.bucket_index(1.0) == _key_index(0)
    assert sketch.bucket_index(0.5) == _key_index(-32)
    assert sketch.bucket_index(2.0) == _key_index(32)
    assert sketch.bucket_index(1.01) == _key_index(1)  # 1 < 1.01 <= 2**(1/32) ~ 1.0219


def test_underflow() -> None:
    """Zero and values up to 2**-20 fall into the underflow bucket; 1 us does not."""
    for value in (0.0, 1e-12, 2.0**-21, 2.0**-20):
        assert sketch.bucket_index(value) == sketch.UNDERFLOW_INDEX
    assert sketch.bucket_index(math.nextafter(2.0**-20, 1.0)) == 1
    assert sketch.bucket_index(1e-6) > sketch.UNDERFLOW_INDEX


def test_overflow() -> None:
    """Values above 2**15 fall into the overflow bucket; 2**15 itself is the last tracked one."""
    assert sketch.bucket_index(2.0**15) == sketch.OVERFLOW_INDEX - 1
    assert sketch.bucket_index(6 * 3600.0) < sketch.OVERFLOW_INDEX
    for value in (math.nextafter(2.0**15, math.inf), 32769.0, 1e9):
        assert sketch.bucket_index(value) == sketch.OVERFLOW_INDEX


def test_representative_within_error_bound_of_every_value_in_bucket() -> None:
    """The representative of a bucket is within MAX_RELATIVE_ERROR of both its bounds and midpoint."""
    for key in TRACKED_KEYS:
        index = _key_index(key)
        rep = sketch.representative(index)
        lower = 2.0 ** ((key - 1) / 32)
        upper = 2.0 ** (key / 32)
        assert lower < rep < upper
        for value in (lower, math.sqrt(lower * upper), upper):
            assert _close(rep, value), (key, value)


def test_quantile_of_empty_sketch_is_none() -> None:
    """No observations: every quantile is None."""
    empty = [0.0] * sketch.BUCKET_COUNT
    for q in (0.0, 0.5, 0.99, 1.0):
        assert sketch.quantile(empty, q, 0.0, 1.0) is None


def test_quantile_nearest_rank_on_known_data() -> None:
    """Quantiles pick the nearest-rank observation (within the error bound)."""
    values = [0.001 * i for i in range(1, 101)]  # 1 ms .. 100 ms
    counts = _counts(values)
    for q, expected in ((0.5, 0.050), (0.95, 0.095), (0.99, 0.099), (0.01, 0.001), (1.0, 0.100)):
        got = sketch.quantile(counts, q, min(values), max(values))
        assert _close(got, expected), (q, got)
    # Ranks are discrete: p50 of [1, 2, 3, 100] is 2, p75 is 3, p76 is 100.
    small = _counts([1.0, 2.0, 3.0, 100.0])
    assert _close(sketch.quantile(small, 0.5, 1.0, 100.0), 2.0)
    assert _close(sketch.quantile(small, 0.75, 1.0, 100.0), 3.0)
    assert _close(sketch.quantile(small, 0.76, 1.0, 100.0), 100.0)


def test_quantile_single_value_clamped_exact() -> None:
    """With one observation the min/max clamp makes every quantile exact."""
    counts = _counts([0.3])
    for q in (0.0, 0.5, 1.0):
        assert sketch.quantile(counts, q, 0.3, 0.3) == 0.3


def test_quantile_underflow_and_overflow_answer_min_and_max() -> None:
    """Quantiles in the underflow/overflow buckets return the observed min/max exactly."""
    counts = _counts([1e-7, 50000.0])
    assert sketch.quantile(counts, 0.5, 1e-7, 50000.0) == 1e-7
    assert sketch.quantile(counts, 1.0, 1e-7, 50000.0) == 50000.0


def test_counts_merge_by_addition() -> None:
    """Adding two sketches' counts gives the sketch of the union of observations."""
    a = [0.01, 0.02, 0.5]
    b = [0.2, 3.0]
    merged = [x + y for x, y in zip(_counts(a), _counts(b), strict=True)]
    assert merged == _counts(a + b)
    assert _close(sketch.quantile(merged, 0.6, 0.01, 3.0), 0.2)
