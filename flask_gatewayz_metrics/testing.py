"""Helpers for testing an application's metrics (and this package's own tests).

Everything here works on a real metrics directory and real worker files: nothing is
mocked, so a test sees exactly what a scrape of a multi-worker server would.

Several workers without forking: every :class:`~flask_gatewayz_metrics.MetricsCollector`
holds its own worker file and its own ``flock`` on it, so N collectors on one directory
behave like N worker processes of one server (each writes only its file, every one of
them reads the merged numbers of all)::

    from flask_gatewayz_metrics.testing import collectors_on_one_directory, scrape_samples, sample_key

    with collectors_on_one_directory(3, str(tmp_path)) as workers:
        for worker in workers:
            worker.record_request("/v1/chat", "POST", 0.2, 200)
        samples = scrape_samples(workers[0])
    assert samples[sample_key("http_requests_total", endpoint="/v1/chat", method="POST")] == 3

A test that needs a real fork, gunicorn or uWSGI still wants those; these helpers cover
the many tests that only need "several writers, one reader".

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from .collector import MetricsCollector
from .exposition import PrometheusExporter
from .storage.directory import is_worker_file

__all__ = [
    "OPENMETRICS",
    "ManualClock",
    "SampleKey",
    "Samples",
    "collectors_on_one_directory",
    "parse_samples",
    "sample_key",
    "scrape_samples",
    "scrape_text",
    "series",
    "worker_file",
    "worker_files",
]

SampleKey = tuple[str, tuple[tuple[str, str], ...]]
"""One sample's identity: (sample name, its labels as sorted (name, value) pairs)."""

Samples = dict[SampleKey, float]
"""Every sample of one scrape: ``{(sample name, sorted labels): value}``."""

OPENMETRICS = "application/openmetrics-text; version=1.0.0"
"""The ``Accept`` header of a scraper that wants OpenMetrics (for :func:`scrape_text`)."""


class ManualClock:
    """A wall clock the test moves by hand, to test sliding windows without sleeping.

    Pass it as ``MetricsCollector(clock=...)``; several collectors can share one::

        clock = ManualClock()
        metrics = MetricsCollector(directory, clock=clock)
        clock.advance(60.0)  # the next slot of the default 5 x 60 s window
    """

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        """The current time, in seconds since the epoch."""
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        self.now += seconds


@contextmanager
def collectors_on_one_directory(n: int, directory: str, **options: Any) -> Iterator[list[MetricsCollector]]:
    """``n`` collectors on ``directory``, standing in for ``n`` worker processes of one server.

    ``options`` go to every :class:`~flask_gatewayz_metrics.MetricsCollector` (``clock``,
    ``window_seconds``, ``strict``, ...). Each collector creates its own worker file on its
    first write, and all are closed when the block ends (a closed collector's file stays,
    unlocked, like the file of a worker that exited)::

        with collectors_on_one_directory(4, directory, clock=ManualClock()) as workers:
            workers[1].record_cache_hit()
            workers[1].close()  # this "worker" exits; its counts stay in the merged numbers
            assert workers[0].to_dict()["cache"]["hits"] == 1
    """
    collectors: list[MetricsCollector] = []
    try:
        for _ in range(n):
            collectors.append(MetricsCollector(directory, **options))
        yield collectors
    finally:
        for collector in collectors:
            collector.close()


def scrape_text(collector: MetricsCollector, accept: str | None = None) -> str:
    """What ``/metrics`` would answer for ``collector``'s directory, as text.

    The Prometheus text format 0.0.4 by default; ``accept=OPENMETRICS`` gives OpenMetrics.
    """
    if accept is None:
        return PrometheusExporter(collector).export()
    body, _ = PrometheusExporter(collector).render(accept)
    return body.decode("utf-8")


def parse_samples(text: str, *, openmetrics: bool = False) -> Samples:
    """Every sample of an exposition ``text`` as ``{(sample name, sorted labels): value}``.

    Parsed with prometheus_client's own parser (its OpenMetrics parser when
    ``openmetrics``), so a text it would reject fails the test here too::

        >>> parse_samples('x_total{b="2",a="1"} 3.5\\n')
        {('x_total', (('a', '1'), ('b', '2'))): 3.5}
    """
    # The OpenMetrics parser has no annotations; both yield prometheus_client Metric families.
    families = parse_openmetrics(text) if openmetrics else parse_text(text)  # type: ignore[no-untyped-call]
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in families for s in family.samples}


def scrape_samples(collector: MetricsCollector, *, openmetrics: bool = False) -> Samples:
    """One scrape of ``collector``'s directory, parsed by :func:`parse_samples`."""
    if openmetrics:
        return parse_samples(scrape_text(collector, OPENMETRICS), openmetrics=True)
    return parse_samples(scrape_text(collector))


def sample_key(name: str, **labels: str) -> SampleKey:
    """The :data:`Samples` key of sample ``name`` with exactly ``labels``::

        >>> sample_key("http_requests_total", method="GET", endpoint="/")
        ('http_requests_total', (('endpoint', '/'), ('method', 'GET')))
    """
    return name, tuple(sorted(labels.items()))


def series(samples: Mapping[SampleKey, float], name: str, **labels: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples named ``name`` whose labels include ``labels``, keyed by their labels::

        >>> series({sample_key("x", a="1", b="2"): 3.0, sample_key("x", a="2"): 1.0}, "x", a="1")
        {(('a', '1'), ('b', '2')): 3.0}
    """
    return {
        sample_labels: value
        for (sample_name, sample_labels), value in samples.items()
        if sample_name == name and all(dict(sample_labels).get(k) == v for k, v in labels.items())
    }


def worker_file(collector: MetricsCollector) -> str | None:
    """The path of the worker file ``collector`` writes (``None`` before its first write,
    after ``close()``, and in a forked child until it writes its own)."""
    return collector._storage.own_file


def worker_files(directory: str) -> list[str]:
    """The names of the worker files in ``directory`` (live or dead, not yet compacted),
    sorted; files still being created under a hidden name are left out."""
    return sorted(name for name in os.listdir(directory) if is_worker_file(name))
