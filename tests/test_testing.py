"""flask_gatewayz_metrics.testing: the public helpers behave as documented."""

from __future__ import annotations

import doctest
import os

import pytest

from flask_gatewayz_metrics import testing
from flask_gatewayz_metrics.storage import layout
from flask_gatewayz_metrics.testing import (
    ManualClock,
    collectors_on_one_directory,
    parse_samples,
    sample_key,
    scrape_samples,
    scrape_text,
    series,
    worker_file,
    worker_files,
)


def test_docstring_examples_run() -> None:
    """Every >>> example in the module's docstrings gives what it shows."""
    result = doctest.testmod(testing)
    assert result.attempted >= 3
    assert result.failed == 0


def test_collectors_stand_in_for_workers(metrics_dir: str) -> None:
    """N collectors write N worker files, each reads everyone's merged totals, all closed at the end."""
    clock = ManualClock()
    with collectors_on_one_directory(3, metrics_dir, clock=clock) as workers:
        assert len(workers) == 3
        assert worker_files(metrics_dir) == []  # files are created on the first write
        for i, worker in enumerate(workers):
            for _ in range(i + 1):
                worker.record_request("/v1/chat", "POST", 0.25, 200)
        paths = [worker_file(w) for w in workers]
        assert sorted(os.path.basename(p or "") for p in paths) == worker_files(metrics_dir)
        assert len(set(paths)) == 3
        for worker in workers:
            samples = scrape_samples(worker)
            assert samples[sample_key("http_requests_total", endpoint="/v1/chat", method="POST")] == 6
    assert [worker_file(w) for w in workers] == [None, None, None]
    assert len(worker_files(metrics_dir)) == 3  # closed like exited workers: files stay


def test_collectors_are_closed_when_the_block_raises(metrics_dir: str) -> None:
    """An exception inside the block still closes every collector."""
    with pytest.raises(RuntimeError), collectors_on_one_directory(2, metrics_dir) as workers:
        workers[0].record_cache_hit()
        raise RuntimeError("test failed")
    assert worker_file(workers[0]) is None


def test_scrape_text_formats(metrics_dir: str) -> None:
    """scrape_text serves text 0.0.4 by default and OpenMetrics when asked; both parse to the same counter."""
    with collectors_on_one_directory(1, metrics_dir) as (worker,):
        worker.record_cache_hit()
        text = scrape_text(worker)
        om = scrape_text(worker, testing.OPENMETRICS)
        assert "# EOF" not in text
        assert om.endswith("# EOF\n")
        assert parse_samples(text)[sample_key("cache_hits_total")] == 1
        assert scrape_samples(worker, openmetrics=True)[sample_key("cache_hits_total")] == 1


def test_parse_samples_rejects_what_prometheus_client_rejects() -> None:
    """A malformed exposition fails the test instead of giving partial samples."""
    with pytest.raises(ValueError):
        parse_samples('x_total{a="1" 3\n')


def test_series_filters_by_name_and_label_subset() -> None:
    """series keeps samples of one name whose labels include the given ones."""
    samples = {
        sample_key("x", a="1", b="2"): 1.0,
        sample_key("x", a="1", b="3"): 2.0,
        sample_key("x", a="2"): 3.0,
        sample_key("y", a="1"): 4.0,
    }
    assert series(samples, "x", a="1") == {(("a", "1"), ("b", "2")): 1.0, (("a", "1"), ("b", "3")): 2.0}
    assert series(samples, "x") == {(("a", "1"), ("b", "2")): 1.0, (("a", "1"), ("b", "3")): 2.0, (("a", "2"),): 3.0}


def test_manual_clock_moves_only_when_told() -> None:
    """ManualClock answers the same time until advanced."""
    clock = ManualClock(100.0)
    assert clock() == clock() == 100.0
    clock.advance(60.0)
    assert clock() == 160.0


def test_worker_files_leave_out_hidden_and_other_files(metrics_dir: str) -> None:
    """worker_files lists published worker files only: not a file being created, not the control file."""
    for name in ("worker-1-00" + layout.WORKER_SUFFIX, ".worker-2-00" + layout.WORKER_SUFFIX, layout.CONTROL_NAME):
        open(os.path.join(metrics_dir, name), "wb").close()
    assert worker_files(metrics_dir) == ["worker-1-00" + layout.WORKER_SUFFIX]
