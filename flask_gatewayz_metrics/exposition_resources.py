"""What the application's requests use, as metric families: the cache, the database and the
requests in flight."""

from __future__ import annotations

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from .exposition_common import add_windowed
from .snapshot import Snapshot
from .storage import kinds


def cache_db_families(snap: Snapshot) -> list[Metric]:
    """Cache hits, misses and the window's hit rate; database queries and the window's latency."""
    cache = snap.total("cache")
    hits = CounterMetricFamily("cache_hits_total", "Cache lookups that found their entry.")
    hits.add_metric([], cache[kinds.CACHE_HITS])
    misses = CounterMetricFamily("cache_misses_total", "Cache lookups that did not find their entry.")
    misses.add_metric([], cache[kinds.CACHE_MISSES])
    hit_rate = GaugeMetricFamily("cache_hit_rate", "Share of cache lookups that hit over the sliding window (0-1).")
    add_windowed(hit_rate, [], snap.cache_hit_rate())
    queries = CounterMetricFamily("db_queries_total", "Database queries.")
    queries.add_metric([], snap.total("db")[kinds.DB_QUERIES])
    db_avg = GaugeMetricFamily(
        "db_query_latency_avg_seconds", "Average database query latency over the sliding window."
    )
    db_window = snap.window("db_window")
    add_windowed(db_avg, [], db_window.average)
    db_min = GaugeMetricFamily("db_query_latency_min_seconds", "Smallest database query latency, sliding window.")
    add_windowed(db_min, [], db_window.minimum)
    db_max = GaugeMetricFamily("db_query_latency_max_seconds", "Largest database query latency, sliding window.")
    add_windowed(db_max, [], db_window.maximum)
    return [hits, misses, hit_rate, queries, db_avg, db_min, db_max]


def in_flight_family(snap: Snapshot) -> Metric:
    """Requests being served now, summed over live workers."""
    in_flight = GaugeMetricFamily("http_requests_in_flight", "Requests being served now, summed over live workers.")
    in_flight.add_metric([], snap.in_flight)
    return in_flight
