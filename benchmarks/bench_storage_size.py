"""Worker file size, scrape time and compaction time under steady traffic (every window slot filled).

Usage: python benchmarks/bench_storage_size.py [--quick] [--requests-per-slot N]

For each cardinality (endpoints x providers x models: 50 x 10 x 20 and 200 x 20 x 100)
4 live workers (``MetricsCollector`` objects on a fake clock, each its own file) record
``N`` requests per window slot (default 2,000) into every one of the 5 slots of the
default 300 s window. A request has a uniform endpoint (GET), provider and model and a
log-normal latency (mu -1, sigma 1.2, clamped to 1 ms .. 60 s, as bench_generations
draws them). Reported per cardinality:

* the bytes a worker file uses (its ``used`` pointer) and its size on disk (reserved
  with ``posix_fallocate``; it doubles up to 256 KiB, then grows by eighths of a power
  of two, ``storage.worker_file.grown_size``);
* the median time of a warm scrape (``PrometheusExporter.export()``) by a fifth collector;
* the time ``compact()`` takes to fold one dead worker's file into the archive, and
  the time gunicorn's ``child_exit`` hook keeps a small master process busy
  (``compact_in_background``: a fork; the child compacts).
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

from flask_gatewayz_metrics import MetricsCollector, PrometheusExporter
from flask_gatewayz_metrics.storage import compact, layout

WINDOW_SECONDS = 300.0
SLOTS = 5
WORKERS = 4


def used_bytes(path: str) -> int:
    with open(path, "rb") as f:
        return int(struct.unpack_from("<Q", f.read(16), 8)[0])


MASTER = """
import os, sys, time
from flask_gatewayz_metrics.gunicorn import compact_in_background
t0 = time.perf_counter()
pid = compact_in_background(sys.argv[1])
print(time.perf_counter() - t0)
os.waitpid(pid, 0)
"""


def hook_in_small_process(directory: str) -> float:
    """Seconds ``compact_in_background`` keeps a small process (like a gunicorn master
    without ``--preload``) busy: its fork; the child compacts meanwhile."""
    done = subprocess.run([sys.executable, "-c", MASTER, directory], capture_output=True, text=True, check=True)
    return float(done.stdout.split()[-1])


def run(endpoints: int, providers: int, models: int, per_slot: int, scrapes: int) -> dict[str, float]:
    directory = tempfile.mkdtemp(prefix="gwzm-size-")
    now = [1_000_000.0 * WINDOW_SECONDS]
    options = {"window_seconds": WINDOW_SECONDS, "window_slots": SLOTS, "auto_compact": False}
    workers = [MetricsCollector(directory, clock=lambda: now[0], **options) for _ in range(WORKERS)]
    rng = random.Random(1)
    slot_seconds = WINDOW_SECONDS / SLOTS
    record_seconds = 0.0
    recorded = 0
    for slot in range(SLOTS):
        for w, worker in enumerate(workers):
            draws = [
                (f"/api/v1/e{rng.randrange(endpoints):03d}", f"p{rng.randrange(providers):02d}",
                 f"m{rng.randrange(models):03d}", min(60.0, max(0.001, rng.lognormvariate(-1.0, 1.2))))
                for _ in range(per_slot)
            ]
            now[0] = 1_000_000.0 * WINDOW_SECONDS + slot * slot_seconds + w
            record = worker.record_request
            t0 = time.perf_counter()
            for endpoint, provider, model, latency in draws:
                record(endpoint, "GET", latency, 200, provider=provider, model=model)
            record_seconds += time.perf_counter() - t0
            recorded += per_slot
    files = [os.path.join(directory, n) for n in os.listdir(directory) if n.endswith(layout.WORKER_SUFFIX)]
    used = max(used_bytes(p) for p in files)
    disk = max(os.path.getsize(p) for p in files)
    scraper = MetricsCollector(directory, clock=lambda: now[0], **options)
    exporter = PrometheusExporter(scraper)
    times = []
    for _ in range(scrapes):
        t0 = time.perf_counter()
        exporter.export()
        times.append(time.perf_counter() - t0)
    workers[0].close()  # one worker exits: compaction folds its file
    t0 = time.perf_counter()
    compact(directory)
    compact_seconds = time.perf_counter() - t0
    workers[1].close()  # another one exits: what gunicorn's child_exit hook costs the master
    hook_seconds = hook_in_small_process(directory)
    for worker in [*workers[2:], scraper]:
        worker.close()
    shutil.rmtree(directory)
    return {
        "used_kib": used / 1024, "disk_kib": disk / 1024, "scrape_ms": 1000 * statistics.median(times),
        "compact_ms": 1000 * compact_seconds, "hook_ms": 1000 * hook_seconds,
        "record_us": 1e6 * record_seconds / recorded,
    }


def main() -> None:
    quick = "--quick" in sys.argv
    per_slot = int(sys.argv[sys.argv.index("--requests-per-slot") + 1]) if "--requests-per-slot" in sys.argv else 2_000
    print(f"format {layout.VERSION}; {WORKERS} workers; {per_slot} requests per worker per slot; {SLOTS} slots")
    print(
        f"{'cardinality':>14} {'used KiB':>9} {'disk KiB':>9} {'scrape ms':>10} {'compact ms':>11}"
        f" {'child_exit ms':>14} {'record us':>10}"
    )
    for e, p, m in ((50, 10, 20), (200, 20, 100)):
        r = run(e, p, m, per_slot, 3 if quick else 9)
        print(
            f"{f'{e}x{p}x{m}':>14} {r['used_kib']:9.0f} {r['disk_kib']:9.0f} {r['scrape_ms']:10.1f}"
            f" {r['compact_ms']:11.1f} {r['hook_ms']:14.1f} {r['record_us']:10.2f}"
        )


if __name__ == "__main__":
    main()
