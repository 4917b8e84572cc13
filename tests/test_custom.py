"""Custom metrics: each merge mode across several collectors on one directory, through
compaction and reset; validation, label guards, exposition and JSON."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import FakeClock

from flask_gatewayz_metrics import Counter, Gauge, Histogram, InvalidMetric, MetricsCollector, custom_handles
from flask_gatewayz_metrics.storage import kinds
from flask_gatewayz_metrics.testing import Samples, scrape_samples


@pytest.fixture
def make(metrics_dir: str, clock: FakeClock) -> Iterator[Callable[..., MetricsCollector]]:
    """Collectors (one file each, like worker processes) on one directory; closed afterwards."""
    made: list[MetricsCollector] = []

    def make(**options: object) -> MetricsCollector:
        collector = MetricsCollector(metrics_dir, clock=clock, **options)  # type: ignore[arg-type]
        made.append(collector)
        return collector

    yield make
    for collector in made:
        collector.close()


def samples(collector: MetricsCollector, openmetrics: bool = False) -> Samples:
    """One scrape of ``collector``'s exposition as {(sample name, sorted labels): value}."""
    return scrape_samples(collector, openmetrics=openmetrics)


def value(collector: MetricsCollector, name: str, **labels: str) -> float | None:
    return samples(collector).get((name, tuple(sorted(labels.items()))))


def define_all(collector: MetricsCollector) -> dict[str, Counter | Gauge | Histogram]:
    """The same definitions in every 'worker', as an app's import would make them."""
    return {
        "counter": collector.counter("app_chats_total", "Chats by team.", ["team"]),
        "sum": collector.gauge("app_cache_entries", "Entries cached.", mode="sum"),
        "livesum": collector.gauge("app_connections", "Open connections.", mode="livesum"),
        "max": collector.gauge("app_peak_queue", "Deepest queue.", mode="max"),
        "min": collector.gauge("app_free_slots", "Fewest free slots.", mode="min"),
        "latest": collector.gauge("app_config_version", "Config version.", mode="latest"),
        "histogram": collector.histogram("app_prompt_words", "Words per prompt.", ["team"], buckets=[1, 10, 100]),
    }


def record(handles: dict[str, Counter | Gauge | Histogram], n: float, clock: FakeClock) -> None:
    """What one worker records: ``n`` chats, gauges at ``n``, one prompt of ``n`` words."""
    counter, histogram = handles["counter"], handles["histogram"]
    assert isinstance(counter, Counter) and isinstance(histogram, Histogram)
    counter.labels(team="a").inc(n)
    counter.labels("b").inc()
    for mode in ("sum", "livesum", "max", "min", "latest"):
        gauge = handles[mode]
        assert isinstance(gauge, Gauge)
        gauge.set(n)
    histogram.labels(team="a").observe(n)
    clock.advance(1.0)


EXPECTED_ALL_LIVE = {
    "app_chats_total": {"a": 2.0 + 7.0 + 5.0, "b": 3.0},
    "app_cache_entries": 14.0,
    "app_connections": 14.0,
    "app_peak_queue": 7.0,
    "app_free_slots": 2.0,
    "app_config_version": 5.0,  # set last
}


def assert_merged(collector: MetricsCollector, connections: float) -> None:
    got = samples(collector)
    for team, count in EXPECTED_ALL_LIVE["app_chats_total"].items():  # type: ignore[union-attr]
        assert got[("app_chats_total", (("team", team),))] == count
    assert got[("app_cache_entries", ())] == 14.0
    assert got[("app_connections", ())] == connections
    assert got[("app_peak_queue", ())] == 7.0
    assert got[("app_free_slots", ())] == 2.0
    assert got[("app_config_version", ())] == 5.0
    team_a = (("team", "a"),)
    assert got[("app_prompt_words_count", team_a)] == 3.0
    assert got[("app_prompt_words_sum", team_a)] == 14.0
    assert got[("app_prompt_words_bucket", (("le", "1.0"), ("team", "a")))] == 0.0
    assert got[("app_prompt_words_bucket", (("le", "10.0"), ("team", "a")))] == 3.0
    assert got[("app_prompt_words_bucket", (("le", "+Inf"), ("team", "a")))] == 3.0


def test_every_merge_mode_across_workers_and_compaction(
    make: Callable[..., MetricsCollector], clock: FakeClock
) -> None:
    """Counter and histogram sum, gauges merge by sum / livesum / max / min / latest, before and after compaction."""
    workers = [make(auto_compact=False) for _ in range(3)]  # compaction only when the test says
    for collector, n in zip(workers, (2.0, 7.0, 5.0), strict=True):
        record(define_all(collector), n, clock)
    assert_merged(workers[0], connections=14.0)
    # Two workers exit: their files are dead. Only "livesum" forgets them.
    workers[1].close()
    workers[2].close()
    assert_merged(workers[0], connections=2.0)
    result = workers[0].compact()
    assert result.absorbed == 2
    assert len(list(Path(workers[0].directory).glob("*.gwzm"))) == 1
    assert_merged(workers[0], connections=2.0)
    # A scraper that defined nothing itself serves the same (from the files' descriptions).
    assert_merged(make(), connections=2.0)


def test_max_min_latest_survive_compaction_against_live_values(
    make: Callable[..., MetricsCollector], clock: FakeClock
) -> None:
    """An archived max / min / latest is compared with live workers' values, not added to them."""
    dead = make()
    gauges = define_all(dead)
    for mode, n in (("max", 50.0), ("min", -3.0), ("latest", 1.0)):
        gauges[mode].set(n)  # type: ignore[union-attr]
    clock.advance(1.0)
    dead.close()
    live = make(auto_compact=False)
    live_gauges = define_all(live)
    assert live.compact().absorbed == 1
    for mode, n in (("max", 10.0), ("min", 4.0), ("latest", 2.0)):
        live_gauges[mode].set(n)  # type: ignore[union-attr]
    assert value(live, "app_peak_queue") == 50.0
    assert value(live, "app_free_slots") == -3.0
    assert value(live, "app_config_version") == 2.0  # newer than the archived 1.0
    live_gauges["max"].set(60.0)  # type: ignore[union-attr]
    assert value(live, "app_peak_queue") == 60.0


def test_reset_zeroes_custom_metrics_and_gauges_come_back(
    make: Callable[..., MetricsCollector], clock: FakeClock
) -> None:
    """After reset counters and histograms restart at 0; a gauge shows its process's value at its next change."""
    a, b = make(), make()
    handles_a, handles_b = define_all(a), define_all(b)
    record(handles_a, 2.0, clock)
    record(handles_b, 7.0, clock)
    b.close()
    a.compact()
    a.reset()
    got = samples(a)
    assert not [k for k in got if k[0].startswith("app_chats") or k[0] == "app_prompt_words_count"]
    assert got.get(("app_cache_entries", ())) == 0.0  # an unlabelled summed gauge exists at 0
    assert ("app_peak_queue", ()) not in got  # max / min / latest: no value until set
    connections = handles_a["livesum"]
    assert isinstance(connections, Gauge)
    connections.inc()  # this process's value was 2: after reset it is written whole again
    assert value(a, "app_connections") == 3.0
    counter = handles_a["counter"]
    assert isinstance(counter, Counter)
    counter.labels(team="a").inc()
    assert value(a, "app_chats_total", team="a") == 1.0


def test_gauge_inc_dec_per_process_sum(make: Callable[..., MetricsCollector]) -> None:
    """A summed gauge is each process's value (inc/dec/set) added up; labelled gauges too."""
    workers = [make() for _ in range(2)]
    gauges = [c.gauge("app_jobs", "Jobs running.", ["queue"], mode="sum") for c in workers]
    gauges[0].labels(queue="q").inc(3)
    gauges[0].labels(queue="q").dec()
    gauges[1].labels(queue="q").set(10)
    gauges[1].labels(queue="q").dec(4)
    assert value(workers[0], "app_jobs", queue="q") == 8.0


def test_definitions_are_validated_at_once(collector: MetricsCollector) -> None:
    """Bad names, clashes with our families, bad labels or buckets raise ValueError when defined."""
    bad: list[Callable[[], object]] = [
        lambda: collector.counter("bad-name", "x"),
        lambda: collector.counter("recording:rule", "x"),
        lambda: collector.counter("http_requests_total", "x"),
        lambda: collector.gauge("http_requests_total", "x"),
        lambda: collector.histogram("http_request_duration_seconds", "x"),
        lambda: collector.gauge("cache_hit_rate", "x"),
        lambda: collector.counter("ok", ""),
        lambda: collector.counter("ok", "x", ["bad label"]),
        lambda: collector.counter("ok", "x", ["__reserved"]),
        lambda: collector.counter("ok", "x", ["a", "a"]),
        lambda: collector.counter("ok", "x", "team"),  # a string, not a list of names
        lambda: collector.gauge("ok", "x", mode="average"),
        lambda: collector.histogram("ok", "x", ["le"]),
        lambda: collector.histogram("ok", "x", buckets=[]),
        lambda: collector.histogram("ok", "x", buckets=[2, 1]),
        lambda: collector.histogram("ok", "x", buckets=[1, math.nan]),
        lambda: collector.histogram("ok", "x", buckets=range(kinds.MAX_CUSTOM_BUCKETS + 1)),
        lambda: collector.counter("ok", "x", max_label_values=0),
    ]
    for define in bad:
        with pytest.raises(ValueError):
            define()
    first = collector.counter("app_things", "Things.", ["kind"])
    assert collector.counter("app_things_total", "Things.", ["kind"]) is first
    with pytest.raises(ValueError, match="already defined"):
        collector.gauge("app_things", "Things.")
    with pytest.raises(ValueError, match="already defined"):
        collector.counter("app_things", "Things.", ["other"])
    assert collector.histogram("app_wide", "x", buckets=range(1, kinds.MAX_CUSTOM_BUCKETS + 1)) is not None


def test_bad_input_is_dropped_and_counted(collector: MetricsCollector) -> None:
    """Wrong label sets, unusable values and negative counter increments are dropped, counted, never raised."""
    counter = collector.counter("app_chats", "Chats.", ["team"])
    plain = collector.counter("app_plain", "No labels.")
    gauge = collector.gauge("app_level", "Level.")
    histogram = collector.histogram("app_size", "Size.", buckets=[1])
    counter.labels(team="a").inc()
    counter.labels(team="a", extra="x").inc()  # wrong names
    counter.labels("a", team="a").inc()  # both forms
    counter.labels().inc()  # missing
    counter.inc()  # labelled metric without labels
    plain.labels(team="a").inc()  # unlabelled metric with labels
    counter.labels(team=["not", "a", "string"]).inc()
    counter.labels(team="").inc()
    collector.counter("app_wide", "Ten long labels.", [f"l{i}" for i in range(10)]).labels(*["€" * 200] * 10).inc()
    counter.labels(team="a").inc(-1)
    counter.labels(team="a").inc(math.inf)
    counter.labels(team="a").inc("3")  # type: ignore[arg-type]
    gauge.set(math.nan)
    gauge.inc(None)  # type: ignore[arg-type]
    histogram.observe(math.inf)
    got = samples(collector)
    assert got[("app_chats_total", (("team", "a"),))] == 1.0
    assert got[("gatewayz_metrics_dropped_total", (("reason", "invalid_label"),))] == 8.0
    assert got[("gatewayz_metrics_dropped_total", (("reason", "invalid_value"),))] == 6.0
    assert got[("app_level", ())] == 0.0
    assert got[("app_size_count", ())] == 0.0


def test_documentation_must_be_valid_unicode(make: Callable[..., MetricsCollector]) -> None:
    """Help text with a lone surrogate (text decoded with errors="surrogateescape") is
    refused when defined. Before, it was accepted: every scrape of that process was a
    500, and its record key, written with surrogates, made the whole worker file
    unreadable to every other process (all its requests gone from their scrapes)."""
    collector, other = make(), make()
    collector.record_request("/ok", "GET", 0.1, 200)
    with pytest.raises(ValueError, match="not valid Unicode"):
        collector.counter("app_bytes_seen", "Bytes seen \udcff in prompts.")

    class Help(str):
        def __str__(self) -> str:
            raise RuntimeError("never called")

    kept = collector.counter("app_helped", Help("Helped."))
    assert kept.definition.documentation.__class__ is str
    kept.inc()
    for reader in (collector, other):
        got = samples(reader)
        assert got[("http_requests_total", (("endpoint", "/ok"), ("method", "GET")))] == 1.0
        assert got[("app_helped_total", ())] == 1.0


def test_a_hostile_label_value_is_dropped_not_raised(collector: MetricsCollector) -> None:
    """A str subclass whose __hash__ or __eq__ raises, given positionally or by name:
    the call is dropped (or the value copied) and counted, never raised into the app."""

    class BadHash(str):
        def __hash__(self) -> int:
            raise RuntimeError("boom hash")

    class BadEq(str):
        __hash__ = str.__hash__

        def __eq__(self, other: object) -> bool:
            raise RuntimeError("boom eq")

    counter = collector.counter("app_calls", "Calls.", ["team"])
    counter.labels(BadHash("a")).inc()  # copied as a plain "a" by the guard
    counter.labels(team=BadHash("a")).inc()
    counter.labels(team=BadEq("a")).inc()  # compared with the cached "a": raises, then copied
    counter.labels(team=["a"]).inc()  # unhashable: dropped
    got = samples(collector)
    assert got[("app_calls_total", (("team", "a"),))] == 3.0
    assert got[("gatewayz_metrics_dropped_total", (("reason", "invalid_label"),))] == 1.0


def test_gauge_handles_share_one_value_past_the_handle_cache(
    collector: MetricsCollector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gauge child held by the app keeps working after the metric's handle cache was
    emptied (more label sets than it keeps): a new ``.labels()`` for the same labels
    finds the same series. Before, the two handles each kept a value and wrote it whole
    over the other's: inc/dec were lost."""
    monkeypatch.setattr(custom_handles, "MAX_CHILDREN", 10)
    waiting = collector.gauge("app_waiting", "Waiting.", ["team"], mode="livesum")
    held = waiting.labels("search")
    held.inc(5)
    for team in range(25):  # empties the cache twice
        waiting.labels(f"t{team}").set(0)
    again = waiting.labels("search")
    again.inc()
    held.inc()
    assert value(collector, "app_waiting", team="search") == 7.0
    again.dec(3)
    held.dec()
    assert value(collector, "app_waiting", team="search") == 3.0


def test_strict_mode_raises_for_bad_input(metrics_dir: str) -> None:
    """With strict=True the same bad input raises InvalidMetric."""
    collector = MetricsCollector(metrics_dir, strict=True)
    try:
        counter = collector.counter("app_chats", "Chats.", ["team"])
        with pytest.raises(InvalidMetric):
            counter.labels(nope="a")
        with pytest.raises(InvalidMetric):
            counter.labels(team="a").inc(-1)
        counter.labels(team="a").inc()
    finally:
        collector.close()


def test_label_values_are_guarded_per_metric(collector: MetricsCollector) -> None:
    """Past max_label_values distinct values a label records 'other', counted once per refused value."""
    counter = collector.counter("app_tenants", "Requests per tenant.", ["tenant"], max_label_values=3)
    for i in range(10):
        counter.labels(tenant=f"t{i}").inc()
    counter.labels(tenant="t9").inc()
    got = samples(collector)
    kept = {dict(labels)["tenant"]: v for (name, labels), v in got.items() if name == "app_tenants_total"}
    assert kept == {"t0": 1.0, "t1": 1.0, "t2": 1.0, "other": 8.0}
    assert got[("gatewayz_metrics_label_overflow_total", (("label", "app_tenants.tenant"),))] == 7.0


def test_openmetrics_and_json_agree(collector: MetricsCollector, clock: FakeClock) -> None:
    """Custom metrics are served in text 0.0.4, OpenMetrics and /metrics/json with the same numbers."""
    handles = define_all(collector)
    record(handles, 4.0, clock)
    text, openmetrics = samples(collector), samples(collector, openmetrics=True)
    for key, got in text.items():
        if key[0].startswith("app_"):
            assert openmetrics[key] == got, key
    custom = collector.to_dict()["custom"]
    assert isinstance(custom, dict)
    assert custom["app_chats"]["type"] == "counter"
    assert {tuple(s["labels"].items()): s["value"] for s in custom["app_chats"]["series"]} == {
        (("team", "a"),): 4.0, (("team", "b"),): 1.0,
    }
    assert custom["app_peak_queue"]["mode"] == "max"
    (words,) = custom["app_prompt_words"]["series"]
    assert words == {
        "labels": {"team": "a"}, "count": 1.0, "sum": 4.0,
        "buckets": {"1.0": 0.0, "10.0": 1.0, "100.0": 1.0, "+Inf": 1.0},
    }


def test_unlabelled_metrics_exist_from_definition(collector: MetricsCollector) -> None:
    """An unlabelled counter and histogram are served at 0 before anything is recorded (rate() sees the first event)."""
    collector.counter("app_started", "Starts.")
    collector.histogram("app_latency_seconds", "Latency.", buckets=[0.1])
    got = samples(collector)
    assert got[("app_started_total", ())] == 0.0
    assert got[("app_latency_seconds_count", ())] == 0.0
    assert got[("app_latency_seconds_bucket", (("le", "+Inf"),))] == 0.0


def test_redefined_metric_serves_only_matching_series(make: Callable[..., MetricsCollector], clock: FakeClock) -> None:
    """A metric redefined with another type (a new deployment) serves the series of the current definition only."""
    old = make()
    old.counter("app_items", "Items (old).").inc(5)
    old.close()
    clock.advance(1.0)
    new = make()
    new.gauge("app_items", "Items (new).").set(2)
    got = samples(new)
    assert got[("app_items", ())] == 2.0
    assert ("app_items_total", ()) not in got


def test_custom_values_are_in_the_worker_file_not_memory(make: Callable[..., MetricsCollector]) -> None:
    """A worker that recorded and exited is still counted by a fresh reader (what a recycled gunicorn worker needs)."""
    worker = make()
    worker.counter("app_done", "Done.").inc(41)
    worker.counter("app_done", "Done.").inc()
    worker.close()
    assert value(make(), "app_done_total") == 42.0
