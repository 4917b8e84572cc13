"""storage.merge on its own: worker files read back and combined by each kind's merge rule."""

from __future__ import annotations

import pytest
from conftest import FakeClock

from flask_gatewayz_metrics.storage import compact, kinds
from flask_gatewayz_metrics.storage.merge import MergeCache, Merged, combine, merge
from flask_gatewayz_metrics.storage.reader import DirectoryReader
from flask_gatewayz_metrics.testing import collectors_on_one_directory

REQUEST_OK = ("/x", "GET", "200", "0")


def merged(directory: str, now: float, epoch: int = 0, cache: MergeCache | None = None) -> Merged:
    views, problems = DirectoryReader(directory).read()
    assert problems == []
    return merge(views, epoch, now, cache)


def total(m: Merged, kind: str) -> float:
    """The first payload value of every series of ``kind``, summed."""
    return sum(payload[0] for payload in m.totals.get(kind, {}).values())


def test_sum_kinds_add_exactly_across_files(metrics_dir: str, clock: FakeClock) -> None:
    """Counts and latency sums of three workers' files add to the exact totals."""
    with collectors_on_one_directory(3, metrics_dir, clock=clock) as workers:
        for i, worker in enumerate(workers):
            for _ in range(i + 1):
                worker.record_request("/x", "GET", 0.25, 200)
            worker.record_cache_hit()
        m = merged(metrics_dir, clock.now)
    assert m.total("request", REQUEST_OK)[:2] == [6.0, 1.5]
    assert m.total("cache") == [3.0, 0.0]
    window = m.window("endpoint_window", ("/x",))
    assert (window.count, window.total, window.minimum, window.maximum) == (6.0, 1.5, 0.25, 0.25)


def test_files_of_an_older_epoch_are_ignored(metrics_dir: str, clock: FakeClock) -> None:
    """A merge for epoch 1 leaves out files written in epoch 0 (before a reset)."""
    with collectors_on_one_directory(2, metrics_dir, clock=clock) as workers:
        for worker in workers:
            worker.record_cache_hit()
        assert total(merged(metrics_dir, clock.now, epoch=0), "cache") == 2.0
        assert merged(metrics_dir, clock.now, epoch=1).totals == {}


def test_latest_kind_takes_the_newest_write_even_zero(metrics_dir: str, clock: FakeClock) -> None:
    """Rate-limit headroom: the value written last (by the writer's clock) wins, whichever file holds it."""
    with collectors_on_one_directory(2, metrics_dir, clock=clock) as workers:
        workers[1].set_rate_limit_remaining("openai", "requests", 40)
        clock.advance(1.0)
        workers[0].set_rate_limit_remaining("openai", "requests", 0)
        m = merged(metrics_dir, clock.now)
    assert m.total("rate_limit", ("openai", "requests")) == [0.0, clock.now]


def test_live_kind_counts_live_writers_only(metrics_dir: str, clock: FakeClock) -> None:
    """A "live" gauge sums live workers' values; a closed (exited) worker's value drops out."""
    with collectors_on_one_directory(2, metrics_dir, clock=clock) as workers:
        for value, worker in zip((3, 4), workers, strict=True):
            worker.gauge("app_connections", "Open connections.", mode="livesum").set(value)
        assert total(merged(metrics_dir, clock.now), "custom_gauge_livesum") == 7.0
        workers[1].close()
        assert total(merged(metrics_dir, clock.now), "custom_gauge_livesum") == 3.0


def test_window_forgets_slots_that_left_it_but_totals_stay(metrics_dir: str, clock: FakeClock) -> None:
    """Past the window (5 x 60 s) the windowed stats are empty while since-start totals keep every count."""
    with collectors_on_one_directory(1, metrics_dir, clock=clock) as (worker,):
        worker.record_request("/x", "GET", 0.5, 200)
        clock.advance(301.0)
        m = merged(metrics_dir, clock.now)
    assert m.total("request", REQUEST_OK)[0] == 1.0
    assert m.window("endpoint_window", ("/x",)).count == 0.0


def test_archive_and_files_merge_to_the_same_totals(metrics_dir: str, clock: FakeClock) -> None:
    """Compacting dead files into the archive changes no merged total."""
    with collectors_on_one_directory(3, metrics_dir, clock=clock) as workers:
        for worker in workers:
            worker.record_request("/x", "GET", 0.5, 200)
        workers[0].close()
        workers[1].close()
        before = merged(metrics_dir, clock.now)
        assert compact(metrics_dir).absorbed == 2
        after = merged(metrics_dir, clock.now)
    assert after.totals == before.totals
    assert after.window("endpoint_window", ("/x",)).count == 3.0


def test_cache_reuses_the_sealed_part_and_gives_the_same_result(metrics_dir: str, clock: FakeClock) -> None:
    """With a MergeCache the sealed part is merged once for unchanged inputs; the result equals an uncached merge."""
    cache = MergeCache()
    with collectors_on_one_directory(2, metrics_dir, clock=clock) as workers:
        workers[0].record_request("/x", "GET", 0.5, 200)
        workers[1].close()
        first = merged(metrics_dir, clock.now, cache=cache)
        workers[0].record_request("/x", "GET", 0.5, 200)  # a live write: not sealed
        second = merged(metrics_dir, clock.now, cache=cache)
        assert cache.rebuilt == 1
        assert second.totals == merged(metrics_dir, clock.now).totals
    assert first.total("request", REQUEST_OK)[0] == 1.0
    assert second.total("request", REQUEST_OK)[0] == 2.0


@pytest.mark.parametrize(
    ("kind", "current", "incoming", "expected"),
    [
        ("cache", [1.0, 2.0], [3.0, 4.0], [4.0, 6.0]),
        ("rate_limit", [5.0, 10.0], [7.0, 9.0], [5.0, 10.0]),  # older incoming loses
        ("rate_limit", [5.0, 10.0], [0.0, 11.0], [0.0, 11.0]),  # newer incoming wins, even 0
        ("custom_gauge_max", [5.0, 1.0], [7.0, 1.0], [7.0, 1.0]),
        ("custom_gauge_min", [5.0, 1.0], [7.0, 1.0], [5.0, 1.0]),
        ("custom_gauge_max", [5.0, 1.0], [9.0, 0.0], [5.0, 1.0]),  # never set: no say
        ("custom_gauge_min", [0.0, 0.0], [7.0, 1.0], [7.0, 1.0]),
    ],
)
def test_combine_follows_the_kinds_rule(
    kind: str, current: list[float], incoming: list[float], expected: list[float]
) -> None:
    """combine adds "sum" payloads, keeps the newest "latest" one and the max / min of set gauges."""
    assert combine(kinds.KINDS[kind], current, incoming) == expected
    assert combine(kinds.KINDS[kind], None, incoming) == incoming


def test_request_counts_are_the_buckets_total(metrics_dir: str, clock: FakeClock) -> None:
    """The request path adds a record's count first and its bucket last: a scrape that
    copies the file between the two, or a worker killed there, saw a count one ahead
    of the histogram's buckets, and served http_requests_total (and the per-status
    total) above the histogram's _count and +Inf (found by a review of the scrape side:
    38 scrapes of a run under load). Readers now take the count from the buckets."""
    from flask_gatewayz_metrics import MetricsCollector
    from flask_gatewayz_metrics.testing import sample_key, scrape_samples

    collector = MetricsCollector(metrics_dir, clock=clock)
    try:
        collector.record_request("/x", "GET", 0.2, 200, "openai", "gpt")
        collector.record_request("/x", "GET", 0.3, 200, "openai", "gpt")
        # A third request interrupted after its count, before its bucket: the counts only.
        request, _, provider_record = next(iter(collector._request_targets.values()))[:3]
        collector._doubles[request + kinds.REQ_COUNT] += 1.0
        collector._doubles[provider_record + kinds.REQ_COUNT] += 1.0
        samples = scrape_samples(collector)
    finally:
        collector.close()
    served = {
        "requests": samples[sample_key("http_requests_total", endpoint="/x", method="GET")],
        "status": samples[sample_key("http_response_status_total", endpoint="/x", status="200")],
        "count": samples[sample_key("http_request_duration_seconds_count", endpoint="/x", method="GET")],
        "inf": samples[sample_key("http_request_duration_seconds_bucket", endpoint="/x", method="GET", le="+Inf")],
        "provider": samples[sample_key("provider_requests_total", provider="openai")],
        "provider count": samples[sample_key("provider_request_duration_seconds_count", provider="openai")],
    }
    assert set(served.values()) == {2.0}, served
