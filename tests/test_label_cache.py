"""Label-resolution caches: bounded memory, eviction one entry at a time, transparent."""

from __future__ import annotations

import gc
import random
import tracemalloc
from itertools import islice, product

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flask_gatewayz_metrics import MetricsCollector, label_cache
from flask_gatewayz_metrics.label_cache import BoundedCache, part_entry_cost
from flask_gatewayz_metrics.storage import kinds
from flask_gatewayz_metrics.testing import scrape_samples

MEMORY_LIMIT = 8 * 1024 * 1024
"""What the project allows the label caches of one worker (issue 12)."""


def caches(c: MetricsCollector) -> list[BoundedCache]:
    """The collector's four label caches."""
    return [c._front_cache, c._route_cache, c._provider_cache, c._model_cache]


def records(c: MetricsCollector) -> dict[tuple[str, tuple[str, ...]], list[float]]:
    """Every record of the collector's worker file and its payload (what was written)."""
    storage = c._storage
    if not storage._offsets:
        return {}
    d = storage.doubles
    out = {}
    for (kind, labels), offset in storage._offsets.items():
        size = kinds.KINDS[kind].payload_size(storage.slots)
        out[(kind, labels)] = list(d[offset : offset + size])
    return out


def cache_bytes(c: MetricsCollector) -> int:
    """Memory the caches alone keep alive: traced memory minus traced memory once they are
    cleared (tracemalloc must be tracing since before they were filled)."""
    gc.collect()
    filled = tracemalloc.get_traced_memory()[0]
    for cache in caches(c):
        cache.clear()
    gc.collect()
    return filled - tracemalloc.get_traced_memory()[0]


def test_bounded_cache_evicts_oldest_one_at_a_time() -> None:
    """Past its budget the cache drops its oldest entries, one per new entry, never all."""
    cache = BoundedCache(10 * part_entry_cost(("k",)), part_entry_cost)
    keys = [(f"{i:01d}",) for i in range(10)]
    for i, key in enumerate(keys):
        cache.put(key, (i, i))
    assert len(cache) == 10 and not cache.full
    cache.put(("x",), (99, 99))
    assert len(cache) == 10 and cache.full and cache.evictions == 1
    assert ("0",) not in cache.entries and cache.entries[("x",)] == (99, 99)
    for i in range(1000):
        cache.put((f"y{i % 10}",), (i, i))  # a churn of new keys
        assert 9 <= len(cache) <= 10 and cache.used <= cache.budget
    assert cache.used == sum(part_entry_cost(k) for k in cache.entries)


def test_a_discarded_entry_is_evicted_later_without_error() -> None:
    """An entry discarded (semconv: its conventions' records could not be resolved) keeps
    its place in the eviction queue: evicting it later, or after it was put again, raises
    nothing and keeps the byte count exact."""
    cache = BoundedCache(4 * part_entry_cost(("k",)), part_entry_cost)
    for i in range(4):
        cache.put((f"{i}",), (i, i))
    cache.discard(("0",))
    cache.discard(([],))  # unhashable: nothing to forget
    assert ("0",) not in cache.entries and len(cache) == 3
    cache.put(("0",), (7, 7))  # put again: queued twice, charged twice
    for i in range(20):
        cache.put((f"n{i}",), (i, i))  # evicts the discarded place, then everything
        assert cache.used <= cache.budget
    assert cache.used == sum(part_entry_cost(k) for k in cache.entries) and list(cache.entries)[-1] == ("n19",)


def test_bounded_cache_refuses_long_and_subclassed_strings() -> None:
    """Strings past the label length, or of a str subclass, are never kept."""

    class Name(str):
        pass

    cache = BoundedCache(1 << 20, part_entry_cost)
    cache.put(("x" * (label_cache.MAX_CACHED_LABEL_LENGTH + 1), 200), (1, 2))
    cache.put((Name("gpt"), 200), (1, 2))
    cache.put(("y" * label_cache.MAX_CACHED_LABEL_LENGTH, 200), (1, 2))
    assert list(cache.entries) == [("y" * label_cache.MAX_CACHED_LABEL_LENGTH, 200)]


def test_cache_memory_bounded_under_a_flood_of_unique_labels(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A flood of unique, long, non-ASCII labels: the caches keep <= 8 MiB (tracemalloc)."""
    c = MetricsCollector(str(tmp_path), window_seconds=300)
    tracemalloc.start()
    try:
        for i in range(30_000):
            # Fresh string objects only the collector keeps (150 chars, 4 bytes each).
            tail = f"{i:08d}\U0001f600" + "\u00e9" * 140
            c.record_request(f"/e/{tail}", "POST", 0.1, 200 + i % 3, provider=f"p{tail}", model=f"m{tail}")
        counted = [cache.used for cache in caches(c)]
        entries = [len(cache) for cache in caches(c)]
        held = cache_bytes(c)
    finally:
        tracemalloc.stop()
    budgets = [cache.budget for cache in caches(c)]
    assert all(used <= budget for used, budget in zip(counted, budgets, strict=True))
    assert all(cache.full for cache in caches(c)) or entries[0] > 0  # the flood filled them
    assert sum(budgets) == label_cache.TOTAL_BUDGET_BYTES
    assert label_cache.TOTAL_BUDGET_BYTES + label_cache.CONVENTIONS_BUDGET_BYTES <= MEMORY_LIMIT
    assert held <= sum(counted), (held, counted)  # the accounting is an upper bound
    assert held <= MEMORY_LIMIT
    assert min(entries) > 100  # filled, not cleared: every cache still holds the latest entries


def test_million_combinations_need_few_part_entries(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """200 x 20 x 50 combinations: part caches hold one entry per label value and
    outcome, the front cache stays within its budget, and every request is recorded."""
    c = MetricsCollector(str(tmp_path), window_seconds=300)
    dims = ([f"model-{k}" for k in range(50)], [f"provider-{j}" for j in range(20)], [f"/v1/e{i}" for i in range(200)])
    total = 0
    for model, provider, endpoint in islice(product(*dims), 200_000):
        c.record_request(endpoint, "POST", 0.05, 200, provider=provider, model=model)
        total += 1
    assert len(c._route_cache) == 200
    assert len(c._provider_cache) == 20
    assert len(c._model_cache) == 50
    assert c._front_cache.full and c._front_cache.used <= c._front_cache.budget
    assert c.snapshot().total_requests == total
    assert c.snapshot().dropped() == {} and not c._unrecorded


def test_recurring_combination_enters_a_full_front_cache(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Once the front cache is full, a combination that keeps coming back gets in."""
    c = MetricsCollector(str(tmp_path), window_seconds=300)
    rng = random.Random(3)
    hot = ("/hot", "GET", 200, "openai", "gpt-4", False)
    for i in range(20_000):
        c.record_request(f"/cold{rng.randrange(300)}", "GET", 0.1, 200, provider="p", model=f"m{i % 150}")
        if i > 15_000:
            c.record_request("/hot", "GET", 0.1, 200, provider="openai", model="gpt-4")
    assert c._front_cache.full
    assert hot in c._request_targets


def test_reset_and_fork_clear_every_cache(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A reset (new file, new offsets) empties all four caches; recording resumes."""
    c = MetricsCollector(str(tmp_path), window_seconds=300)
    c.record_request("/a", "GET", 0.1, 200, provider="p", model="m")
    assert all(len(cache) == 1 for cache in caches(c))
    c.reset()
    c.record_request("/b", "GET", 0.1, 200)
    assert len(c._route_cache) == 1 and ("/a", "GET", 200, False) not in c._route_cache.entries
    assert c.snapshot().total_requests == 1


LABEL = st.one_of(
    st.none(),
    st.sampled_from(["a", "b", "c", "d", "e", "f", "", "x" * 250]),
    st.just(["unhashable"]),
    st.integers(0, 3),
)
CALL = st.tuples(LABEL, st.sampled_from(["GET", "post", None, "BREW"]), st.sampled_from([200, 404, 500]), LABEL, LABEL)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(calls=st.lists(CALL, max_size=120))
def test_tiny_caches_record_exactly_what_large_ones_do(tmp_path_factory, calls) -> None:  # type: ignore[no-untyped-def]
    """With caches evicting on every insert, admission (caps, allowlists, overflow,
    invalid labels) and every written value are the same as with roomy caches."""
    written = []
    for budget in (None, 1):
        c = MetricsCollector(
            str(tmp_path_factory.mktemp("c")),
            window_seconds=300,
            clock=lambda: 1000.0,
            label_limits={"endpoint": 3, "provider": 2},
            allowed_labels={"model": ["a", "c", "3"]},
        )
        if budget is not None:
            for cache in caches(c):
                cache.budget = cache._cost(("a" * 8, "b" * 8, 200, "c" * 8, "d" * 8, False)) + budget
        for endpoint, method, status, provider, model in calls:
            c.record_request(endpoint, method, 0.1, status, provider=provider, model=model)  # type: ignore[arg-type]
            c.record_provider_call(provider, model, 0.2, status)  # type: ignore[arg-type]
        written.append((records(c), dict(c._unrecorded)))
        c.close()
    assert written[0] == written[1]


def test_strict_mode_still_raises_for_an_invalid_part(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Strict mode raises for an invalid label even when the other parts are cached."""
    from flask_gatewayz_metrics import InvalidMetric

    c = MetricsCollector(str(tmp_path), strict=True)
    c.record_request("/a", "GET", 0.1, 200, provider="p", model="m")
    with pytest.raises(InvalidMetric):
        c.record_request("/a", "GET", 0.1, 200, provider="p", model="")


def test_conventions_cache_never_keeps_long_model_names(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Failed upstream calls with fresh 20 KB model names (as parsed from hostile request
    bodies): the conventions' offset cache keeps none of them (over 200 characters), so
    the memory they take is freed, and every call is still recorded."""
    c = MetricsCollector(str(tmp_path), window_seconds=300)
    c.record_provider_call("openai", "warm", 0.1, 503)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(500):
            c.record_provider_call("openai", f"{i:08d}" + "x" * 20_000, 0.1, 503)
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert retained < 1024 * 1024, retained  # 500 x 20 KB = 10 MB were kept before
    assert all(
        len(item) <= label_cache.MAX_CACHED_LABEL_LENGTH
        for key in c._conventions.entries
        for item in key
        if isinstance(item, str)
    )
    family = "gen_ai_client_operation_duration_seconds_count"
    assert sum(v for (name, _), v in scrape_samples(c).items() if name == family) == 501


def test_conventions_cache_bounded_in_bytes_under_a_flood(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A flood of unique 150-character model names on failed calls: the conventions' cache
    stays within its byte budget (checked with tracemalloc), evicting its oldest entries."""
    c = MetricsCollector(str(tmp_path), window_seconds=300)
    c.record_provider_call("openai", "warm", 0.1, 503)
    tracemalloc.start()
    try:
        for i in range(4_000):
            c.record_provider_call("openai", f"{i:08d}\U0001f600" + "\u00e9" * 140, 0.1, 503)
        cache = c._conventions
        counted, entries, budget = cache.used, len(cache), cache.budget
        gc.collect()
        filled = tracemalloc.get_traced_memory()[0]
        cache.clear()
        gc.collect()
        held = filled - tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert budget == label_cache.CONVENTIONS_BUDGET_BYTES
    assert counted <= budget and 100 < entries < 4_000  # full, evicting one at a time, never cleared
    assert held <= counted, (held, counted)  # the charge per entry is an upper bound
