"""Series per server across worker generations that each bring fresh model names.

Usage: python benchmarks/bench_label_generations.py [--generations N] [--models M]

The case of issue 11: every *generation* (a worker that served its share and exited,
gunicorn ``max_requests``) sees ``--models`` (default 1,000) model names no earlier
generation used: ``g{generation}-model-{k}``, one request each on ``/v1/chat`` (POST,
200, latency 0.1 s), provider ``provider{k % 10}``. A writer admits 200 model names per
process (``labels.DEFAULT_LIMITS``) and records the rest as ``other``; before issue 11
the archive kept every name it absorbed, so the series (and directory, ``/metrics``
and ``compact()``) grew with the number of generations.

After each generation exits (``close()`` releases its flock) ``storage.compact(dir)``
folds its file into the archive, as the gunicorn ``child_exit`` hook does; its time is
recorded. At checkpoints (10, 50, 100, 200 by default) a long-lived scraper
(``MetricsCollector(dir)``, warm file index) exports ``/metrics``
(``PrometheusExporter.export()``, median of 5) and the directory size, the archive's
series and the body size are reported. Checks: the merged request count equals what
was recorded, nothing is dropped.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time


def main() -> None:
    from flask_gatewayz_metrics import MetricsCollector
    from flask_gatewayz_metrics.exposition import PrometheusExporter
    from flask_gatewayz_metrics.storage import compact, layout

    args = sys.argv[1:]
    generations = int(args[args.index("--generations") + 1]) if "--generations" in args else 200
    models = int(args[args.index("--models") + 1]) if "--models" in args else 1_000
    checkpoints = sorted({c for c in (10, 50, 100, generations) if c <= generations})
    directory = tempfile.mkdtemp(prefix="bench-label-generations-")
    rows: list[tuple[object, ...]] = []
    compact_ms: list[float] = []
    problems: list[str] = []
    try:
        scraper = MetricsCollector(directory, auto_compact=False)
        exporter = PrometheusExporter(scraper)
        for generation in range(generations):
            c = MetricsCollector(directory, auto_compact=False)
            for k in range(models):
                c.record_request(
                    "/v1/chat", "POST", 0.1, 200, provider=f"provider{k % 10}", model=f"g{generation}-model-{k}"
                )
            c.close()
            t0 = time.perf_counter()
            compact(directory)
            compact_ms.append((time.perf_counter() - t0) * 1000)
            done = generation + 1
            if done not in checkpoints:
                continue
            exporter.export()  # warm the scraper's index
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                body = exporter.export()
                times.append((time.perf_counter() - t0) * 1000)
            snap = scraper.snapshot()
            size = sum(
                os.path.getsize(os.path.join(directory, n)) for n in os.listdir(directory)
                if os.path.isfile(os.path.join(directory, n))
            )  # fmt: skip
            archive_series = sum(
                1 for (kind, _labels) in _archive_keys(directory, layout) if kind not in ("absorbed", "storage_errors")
            )
            if snap.total_requests != done * models or snap.dropped():
                problems.append(f"{done}: {snap.total_requests} of {done * models}, dropped {snap.dropped()}")
            recent = compact_ms[-min(10, len(compact_ms)) :]
            rows.append((
                done, f"{archive_series:,}", f"{len(snap.to_dict()['models']):,}", f"{size / 1048576:.2f}",
                f"{len(body) / 1048576:.3f}", f"{statistics.median(times):.1f}",
                f"{statistics.median(recent):.1f}", f"{max(recent):.1f}",
            ))  # fmt: skip
        scraper.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}\n")
    print(f"## {generations} generations x {models:,} fresh model names (one request each)\n")
    print("| generations | archive series | models exposed | directory MiB | /metrics MiB | /metrics ms (median of 5) "
          "| compact() ms, median of last 10 | max of last 10 |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(str(x) for x in row) + " |")
    print(f"\ncompact() over all {len(compact_ms)} runs: median {statistics.median(compact_ms):.1f} ms, "
          f"max {max(compact_ms):.1f} ms")
    print(f"Correctness checks: {problems or 'all requests merged, nothing dropped'}")


def _archive_keys(directory: str, layout: object) -> list[tuple[str, tuple[str, ...]]]:
    """(kind, labels) of every record of the archive."""
    from flask_gatewayz_metrics.storage.reader import DirectoryReader

    views, _ = DirectoryReader(directory).read()
    return [(r.kind, r.labels) for v in views if v.is_archive for r in v.records]


if __name__ == "__main__":
    main()
