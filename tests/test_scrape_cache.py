"""The scrape cache (sealed slots, archive, dead files merged once): same output as without it, rebuilt when due."""

from __future__ import annotations

import os
import shutil
import tempfile

from conftest import FakeClock
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flask_gatewayz_metrics import MetricsCollector, PrometheusExporter
from flask_gatewayz_metrics.storage import compact
from flask_gatewayz_metrics.storage.control import ControlFile
from flask_gatewayz_metrics.storage.merge import MergeCache, merge
from flask_gatewayz_metrics.storage.reader import DirectoryReader
from flask_gatewayz_metrics.testing import worker_file

WINDOW = 60.0
SLOTS = 4

OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("record"), st.integers(0, 3), st.integers(0, 3), st.floats(1e-4, 100.0)),
        st.tuples(st.just("advance"), st.sampled_from([0.4, 3.0, 7.5, 15.0, 16.1, 45.0, 200.0])),
        st.tuples(st.just("new_worker")),
        st.tuples(st.just("kill_worker"), st.integers(0, 3)),
        st.tuples(st.just("compact")),
        st.tuples(st.just("reset")),
        st.tuples(st.just("scrape")),
    ),
    min_size=1,
    max_size=40,
)


class Scenario:
    """Writers, a scraper with a long-lived cache and one that merges from scratch each time."""

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="gwzm-cache-")
        self.clock = FakeClock()
        self.workers: list[MetricsCollector] = []
        self.cached = self._collector()
        self.uncached = self._collector()
        self.cached.record_cache_hit()  # a live scraper has a file of its own, too
        self.new_worker()

    def _collector(self) -> MetricsCollector:
        return MetricsCollector(
            self.directory, window_seconds=WINDOW, window_slots=SLOTS, clock=self.clock, auto_compact=False
        )

    def new_worker(self) -> None:
        self.workers.append(self._collector())

    def apply(self, operation: tuple[object, ...]) -> None:
        name, *args = operation
        if name == "record" and self.workers:
            worker, label, latency = args
            c = self.workers[int(worker) % len(self.workers)]  # type: ignore[call-overload]
            c.record_request(f"/e{label}", "POST", latency, 200 if label else 500, provider=f"p{label}", model="m")
            c.record_db_query(float(latency) / 10)  # type: ignore[arg-type]
        elif name == "advance":
            self.clock.advance(float(args[0]))  # type: ignore[arg-type]
        elif name == "new_worker":
            self.new_worker()
        elif name == "kill_worker" and self.workers:
            self.workers.pop(int(args[0]) % len(self.workers)).close()  # type: ignore[call-overload]
        elif name == "compact":
            compact(self.directory)
        elif name == "reset":
            self.cached.reset()
        self.check()

    def check(self) -> None:
        """Cached and uncached scrapes agree to the last bit, and with a plain merge of the files."""
        self.uncached._merge_cache = MergeCache()  # nothing kept from earlier scrapes
        cached_text = PrometheusExporter(self.cached).export()
        uncached_text = PrometheusExporter(self.uncached).export()
        assert cached_text == uncached_text
        snap = self.cached.snapshot()
        views, _ = DirectoryReader(self.directory).read()
        assert snap.merged == merge(views, ControlFile(self.directory).epoch, self.clock.now)
        assert snap.to_dict() == self.uncached.snapshot().to_dict()

    def close(self) -> None:
        for c in [*self.workers, self.cached, self.uncached]:
            c.close()
        shutil.rmtree(self.directory)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(operations=OPERATIONS)
def test_cached_and_uncached_scrapes_are_identical(operations: list[tuple[object, ...]]) -> None:
    """Random record / rotate / reset / compact / new and dead workers: cached scrape == scrape from scratch."""
    scenario = Scenario()
    try:
        for operation in operations:
            scenario.apply(operation)
    finally:
        scenario.close()


def _rebuilds(scenario: Scenario) -> int:
    scenario.cached.snapshot()
    return scenario.cached._merge_cache.rebuilt


def test_the_cache_is_reused_and_invalidated_exactly_when_needed() -> None:
    """Reused while only live current slots change; rebuilt on rotation, death, new file, compaction, reset, copy."""
    s = Scenario()
    try:
        for k in range(5):
            s.workers[0].record_request(f"/e{k}", "GET", 0.1 * (k + 1), 200)
        s.clock.advance(WINDOW / SLOTS)  # the slot written so far is sealed now
        before = _rebuilds(s)
        for k in range(200):  # current-slot writes and growth of a live file: no rebuild
            s.workers[0].record_request(f"/new{k}", "GET", 1e-3 * 1.05**k, 200)
            assert _rebuilds(s) == before
        s.check()
        steps = {
            "rotation": lambda: s.clock.advance(WINDOW / SLOTS),
            "new worker": lambda: (s.new_worker(), s.workers[-1].record_request("/w", "GET", 0.2, 200)),
            "dead worker": lambda: s.workers.pop(0).close(),
            "compaction": lambda: compact(s.directory),
            "reset": s.cached.reset,
        }
        for what, step in steps.items():
            before = _rebuilds(s)
            step()
            assert _rebuilds(s) == before + 1, what
            assert _rebuilds(s) == before + 1, what  # and reused again afterwards
            s.check()
            if s.workers:
                s.workers[-1].record_request("/after", "GET", 0.3, 200)
        # A dead file replaced under the same name (a restore, a copy): another inode.
        s.workers[-1].record_request("/dead", "GET", 0.3, 200)
        path = worker_file(s.workers[-1]) or ""
        s.workers.pop().close()
        assert s.cached.snapshot().window("endpoint_window", ("/dead",)).count == 1
        shutil.copyfile(path, path + ".copy")
        before = _rebuilds(s)
        os.replace(path + ".copy", path)
        assert _rebuilds(s) == before + 1
        s.check()
    finally:
        s.close()
