"""Scrape cost: snapshot + exposition over 4 worker files, side by side with
prometheus_client's multiprocess mode over 4 pid files.

Usage: python benchmarks/bench_scrape.py [--quick]

Ours: 4 ``MetricsCollector`` objects on one directory (= 4 worker files) each record
every one of the 50 endpoints x 10 providers x 20 models combinations twice (request
``i`` gets endpoint ``i % 50``, provider ``i // 50 % 10``, model ``i // 500 % 20``;
every 50th is a 500). Records are per grouping, so every file holds the request
records (endpoint, method, status, failed), provider records (provider, status,
failed), model records (model, status, failed) and the endpoint / provider / model
windows. A fifth collector that never writes plays the scraping process. No drop is
allowed: the run checks ``snapshot().dropped()`` and the merged request count.

Peer: a subprocess with ``PROMETHEUS_MULTIPROC_DIR`` set before prometheus_client is
imported; for each of 4 fake pids it sets ``values.ValueClass =
MultiProcessValue(lambda: pid)``, creates the equivalent counters and histograms
(the since-start families we expose: per endpoint+method, per endpoint+status, per
provider, per model) and records the same requests. A scrape is what
prometheus_flask_exporter does per request of /metrics: a fresh ``CollectorRegistry``,
``MultiProcessCollector(registry)``, ``generate_latest(registry)``.

Repeats of both sides are interleaved; medians are reported.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (
    COMBOS,
    Peer,
    PeerRecorder,
    combo,
    latencies,
    median,
    peer_scrape,
    serve_peer,
    spread,
    table,
    unrecorded,
)

from flask_gatewayz_metrics.storage import kinds

WORKERS = 4


def status_of(i: int) -> int:
    """Every 50th request fails with a 500 (so error series are non-zero)."""
    return 500 if i % 50 == 7 else 200


# --------------------------------------------------------------------------- peer
def run_peer() -> None:
    from prometheus_client import values

    def populate(bounds: list[float], requests: int) -> dict[str, object]:
        buckets = [*bounds, float("inf")]
        lats = latencies()
        for pid in range(1, WORKERS + 1):
            values.ValueClass = values.MultiProcessValue(lambda pid=pid: 100_000 + pid)
            recorder = PeerRecorder(buckets)
            for i in range(requests):
                e, p, m = combo(i)
                recorder.record(e, "POST", lats[i % len(lats)], status_of(i), p, m)
        return {"files": len(os.listdir(os.environ["PROMETHEUS_MULTIPROC_DIR"]))}

    def scrape() -> dict[str, object]:
        body, seconds = peer_scrape()
        samples = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
        return {"seconds": seconds, "bytes": len(body), "samples": samples}

    serve_peer(
        {"populate": populate, "scrape": scrape},
        {"multiprocess": getattr(values.ValueClass, "_multiprocess", False)},
    )


# --------------------------------------------------------------------------- ours
def main() -> None:
    from flask_gatewayz_metrics import MetricsCollector
    from flask_gatewayz_metrics.exposition import PrometheusExporter

    quick = "--quick" in sys.argv
    repeats = 5 if quick else 9
    cold_repeats = 3 if quick else 5
    requests = COMBOS  # per worker: every combination once
    tmp = tempfile.mkdtemp(prefix="bench-scrape-")
    ours_dir = os.path.join(tmp, "ours")
    prom_dir = os.path.join(tmp, "prom")
    os.makedirs(prom_dir)
    peer = Peer(__file__, {"PROMETHEUS_MULTIPROC_DIR": prom_dir})
    try:
        assert peer.info["multiprocess"] is True, peer.info
        t0 = time.perf_counter()
        populated = peer.ask(case="populate", bounds=list(kinds.HISTOGRAM_BOUNDS), requests=requests)
        peer_fill = time.perf_counter() - t0

        lats = latencies()
        workers = [MetricsCollector(ours_dir, window_seconds=300) for _ in range(WORKERS)]
        t0 = time.perf_counter()
        for w in workers:
            for i in range(requests):  # first pass allocates every series (the file grows)
                e, p, m = combo(i)
                w.record_request(e, "POST", lats[i % len(lats)], status_of(i), provider=p, model=m)
            for i in range(requests):
                e, p, m = combo(i)
                w.record_request(e, "POST", lats[i % len(lats)], status_of(i), provider=p, model=m)
        ours_fill = time.perf_counter() - t0
        drops = [unrecorded(w) for w in workers]
        scraper = MetricsCollector(ours_dir, window_seconds=300)
        exporter = PrometheusExporter(scraper)
        snap = scraper.snapshot()
        dropped = snap.dropped()
        body = exporter.export()
        ours_samples = sum(1 for line in body.splitlines() if line and not line.startswith("#"))
        file_sizes = [os.path.getsize(os.path.join(ours_dir, n)) for n in os.listdir(ours_dir) if n.endswith(".gwzm")]

        samples: dict[str, list[float]] = {k: [] for k in ("snapshot", "export", "cold", "peer")}
        for rep in range(repeats):
            t0 = time.perf_counter()
            scraper.snapshot()
            samples["snapshot"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            exporter.export()
            samples["export"].append(time.perf_counter() - t0)
            samples["peer"].append(float(peer.ask(case="scrape")["seconds"]))  # type: ignore[arg-type]
            if rep < cold_repeats:  # a process that never read the files before
                t0 = time.perf_counter()
                cold = MetricsCollector(ours_dir, window_seconds=300)
                PrometheusExporter(cold).export()
                samples["cold"].append(time.perf_counter() - t0)
                cold.close()
        peer_last = peer.ask(case="scrape")
        for w in workers:
            w.close()
        scraper.close()
    finally:
        peer.close()
        shutil.rmtree(tmp, ignore_errors=True)

    ms = {k: [x * 1000 for x in v] for k, v in samples.items()}
    med = {k: median(v) for k, v in ms.items()}
    expected = 2 * requests * WORKERS
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs\n")
    print(
        f"## Scrape: 50 endpoints x 10 providers x 20 models, {WORKERS} worker files "
        f"(median of {repeats} repeats; cold: {cold_repeats})\n"
    )
    rows = [
        ("ours: snapshot() (read + merge 4 files, warm reader)", f"{med['snapshot']:.1f}",
         spread(ms["snapshot"]), "", ""),
        ("ours: export() = snapshot + families + text, warm", f"{med['export']:.1f}", spread(ms["export"]),
         f"{len(body):,}", f"{ours_samples:,}"),
        ("ours: first scrape of a new process (cold reader)", f"{med['cold']:.1f}", spread(ms["cold"]), "", ""),
        ("prom mp: MultiProcessCollector + generate_latest", f"{med['peer']:.1f}", spread(ms["peer"]),
         f"{peer_last['bytes']:,}", f"{peer_last['samples']:,}"),
    ]
    print(table(["case", "median ms", "min..max", "body bytes", "samples"], rows))
    print("\nRatios (same run):")
    print(table(["ratio", "value"], [
        ("ours export (warm) / prom mp scrape", f"{med['export'] / med['peer']:.2f}"),
        ("ours export (cold) / prom mp scrape", f"{med['cold'] / med['peer']:.2f}"),
        ("ours snapshot share of export", f"{med['snapshot'] / med['export']:.0%}"),
    ]))
    print(
        f"\nOurs: {WORKERS} files of {', '.join(f'{s / 1048576:.1f}' for s in sorted(file_sizes))} MiB, "
        f"{snap.total_requests:,.0f} requests merged (expected {expected:,}: two passes over every "
        f"combination per worker); writing took {ours_fill:.1f} s. Peer: {populated['files']} pid files, "
        f"writing took {peer_fill:.1f} s."
    )
    ok = snap.total_requests == expected and not dropped and not any(drops)
    print(
        f"Drops: snapshot().dropped() = {dropped}, in-memory per worker = {drops} "
        f"({'none, all requests accounted for' if ok else 'WARNING: requests missing or dropped'})"
    )


if __name__ == "__main__":
    if "--peer" in sys.argv:
        run_peer()
    else:
        main()
