"""Scrape cost after many worker generations, ours (compacted / not) vs prometheus_client.

Usage: python benchmarks/bench_generations.py [--quick]

A *generation* is one worker that served its share of traffic and exited (gunicorn
``max_requests``). Here it is a ``MetricsCollector`` object that records
``REQUESTS_PER_GENERATION`` requests and is then closed (``close()`` releases its flock,
so its file is dead, exactly as when a worker process exits). Throughout the run 4 LIVE
workers (collectors that stay open) hold their own files. Scrapes are measured after 4,
50 and 200 generations (cumulative: the same directories grow from one checkpoint to
the next).

Traffic (deterministic; generation ``g`` uses ``random.Random(g)``, the live workers
seeds 1_000_001..1_000_004), per request:

* endpoint: 60 % on the 10 AI endpoints (``/v1/chat/completions``, ``/api/chat``, ...,
  uniform), 40 % on 40 other endpoints (``/api/v1/resource00..39``, uniform);
* AI endpoints: method POST, a model drawn with Zipf weights 1/(k+1) from 20 models
  ``model-00..19``; model ``k`` belongs to provider ``provider{k % 10}`` (2 models per
  provider, 10 providers); status 200 90 %, 429 4 %, 400 2 %, 500 2 %, 502 1 %, 503 1 %;
* other endpoints: GET (even index) or POST (odd index), no provider / model; status
  200 95 %, 404 2 %, 400 2 %, 500 1 %;
* latency: log-normal (mu -1, sigma 1.2, clamped to 1 ms .. 60 s).

With 2,000 requests per generation every endpoint, provider and model appears in every
generation (rare endpoint x status pairs only in some).

Ours, two directories fed the same traffic:

* **compacted**: after each generation exits, ``storage.compact(dir)`` (what the gunicorn
  ``child_exit`` hook does) folds its file into ``archive.gwza``; the scraper is
  ``MetricsCollector(dir)`` (auto_compact on; it finds nothing left to compact);
* **not compacted**: ``auto_compact=False`` everywhere and ``compact`` never called, so
  the dead files pile up (4 + N files).

Scrape = ``PrometheusExporter(scraper).export()`` (snapshot + exposition text), on a warm
scraper (file indexes kept between scrapes, as in a long-lived worker) and on a cold one
(a new collector, i.e. the first scrape of a fresh process).

Peer: a subprocess with ``PROMETHEUS_MULTIPROC_DIR`` set before prometheus_client is
imported; for each simulated pid (4 live + N generations) it sets
``values.ValueClass = values.MultiProcessValue(lambda: pid)``, creates the counters and
histograms equivalent to our since-start families (``http_requests{endpoint,method}``,
``http_request_errors{endpoint,method}``, ``http_response_status{endpoint,status}``,
``http_request_duration_seconds{endpoint,method}`` (our bucket bounds),
``provider_requests/errors{provider}``, ``provider_request_duration_seconds{provider}``,
``model_requests/errors{model}``) in a throwaway registry, records the same traffic, and
closes the pid's files. That leaves ``counter_<pid>.db`` and ``histogram_<pid>.db`` per
pid: 2 x (4 + N) files, as multiprocess mode keeps them forever. A peer scrape is
``generate_latest(registry)`` over a fresh registry with ``MultiProcessCollector``.

Repeats of the three warm cases are interleaved (the order rotates every round);
medians are reported.
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import Peer, PeerRecorder, median, peer_scrape, serve_peer, spread, table, unrecorded

from flask_gatewayz_metrics.storage import kinds

LIVE_WORKERS = 4
CHECKPOINTS = (4, 50, 200)
REQUESTS_PER_GENERATION = 2_000
LIVE_SEED = 1_000_001

AI_ENDPOINTS = [
    "/v1/chat/completions", "/api/chat", "/v1/completions", "/v1/responses", "/v1/messages",
    "/v1/embeddings", "/api/chat/stream", "/v1/images/generations", "/v1/audio/transcriptions", "/api/v1/generate",
]
OTHER_ENDPOINTS = [f"/api/v1/resource{i:02d}" for i in range(40)]
PROVIDERS = [f"provider{j}" for j in range(10)]
MODELS = [f"model-{k:02d}" for k in range(20)]
MODEL_PROVIDER = {m: PROVIDERS[k % 10] for k, m in enumerate(MODELS)}
MODEL_WEIGHTS = [1 / (k + 1) for k in range(20)]
AI_STATUSES = ([200, 429, 400, 500, 502, 503], [90, 4, 2, 2, 1, 1])
OTHER_STATUSES = ([200, 404, 400, 500], [95, 2, 2, 1])

Request = tuple[str, str, float, int, "str | None", "str | None"]


def traffic(seed: int, count: int = REQUESTS_PER_GENERATION) -> list[Request]:
    """(endpoint, method, latency, status, provider, model) of one worker's requests."""
    rng = random.Random(seed)
    out: list[Request] = []
    for _ in range(count):
        latency = min(60.0, max(0.001, rng.lognormvariate(-1.0, 1.2)))
        if rng.random() < 0.6:
            endpoint = rng.choice(AI_ENDPOINTS)
            model = rng.choices(MODELS, MODEL_WEIGHTS)[0]
            status = rng.choices(*AI_STATUSES)[0]
            out.append((endpoint, "POST", latency, status, MODEL_PROVIDER[model], model))
        else:
            index = rng.randrange(len(OTHER_ENDPOINTS))
            status = rng.choices(*OTHER_STATUSES)[0]
            out.append((OTHER_ENDPOINTS[index], "GET" if index % 2 == 0 else "POST", latency, status, None, None))
    return out


# --------------------------------------------------------------------------- peer
def run_peer() -> None:
    from prometheus_client import values

    multiprocess = getattr(values.ValueClass, "_multiprocess", False)

    def populate(pids: list[int], seeds: list[int], bounds: list[float]) -> dict[str, object]:
        buckets = [*bounds, float("inf")]
        for pid, seed in zip(pids, seeds, strict=True):
            values.ValueClass = values.MultiProcessValue(lambda pid=pid: pid)
            recorder = PeerRecorder(buckets)
            for request in traffic(seed):
                recorder.record(*request)
            values.ValueClass.close_all_files()  # the "process" exits: its files stay
        return {"files": len(os.listdir(os.environ["PROMETHEUS_MULTIPROC_DIR"]))}

    def scrape() -> dict[str, object]:
        body, seconds = peer_scrape()
        samples = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
        total = sum(
            float(line.rsplit(b" ", 1)[1]) for line in body.splitlines() if line.startswith(b"http_requests_total{")
        )
        return {"seconds": seconds, "bytes": len(body), "samples": samples, "requests": total}

    serve_peer({"populate": populate, "scrape": scrape}, {"multiprocess": multiprocess})


# --------------------------------------------------------------------------- ours
def record_all(collector, requests: list[Request]) -> None:  # type: ignore[no-untyped-def]
    rec = collector.record_request
    for endpoint, method, latency, status, provider, model in requests:
        rec(endpoint, method, latency, status, provider=provider, model=model)


def main() -> None:
    from flask_gatewayz_metrics import MetricsCollector
    from flask_gatewayz_metrics.exposition import PrometheusExporter
    from flask_gatewayz_metrics.storage import compact

    quick = "--quick" in sys.argv
    repeats = 5 if quick else 9
    cold_repeats = 3
    tmp = tempfile.mkdtemp(prefix="bench-generations-")
    dirs = {"compacted": os.path.join(tmp, "compacted"), "plain": os.path.join(tmp, "plain")}
    prom_dir = os.path.join(tmp, "prom")
    os.makedirs(prom_dir)
    bounds = list(kinds.HISTOGRAM_BOUNDS)
    peer = Peer(__file__, {"PROMETHEUS_MULTIPROC_DIR": prom_dir})
    rows: list[tuple[object, ...]] = []
    detail_rows: list[tuple[object, ...]] = []
    med_at: dict[int, dict[str, float]] = {}
    compact_ms: list[float] = []
    problems: list[str] = []
    live: list[object] = []
    try:
        assert peer.info["multiprocess"] is True, peer.info
        live_seeds = [LIVE_SEED + i for i in range(LIVE_WORKERS)]
        peer.send(case="populate", pids=[100 + i for i in range(LIVE_WORKERS)], seeds=live_seeds, bounds=bounds)
        for directory in dirs.values():
            for seed in live_seeds:
                c = MetricsCollector(directory, auto_compact=False)
                record_all(c, traffic(seed))
                live.append(c)
        peer.receive()
        scrapers = {
            "compacted": MetricsCollector(dirs["compacted"]),  # auto_compact=True (default)
            "plain": MetricsCollector(dirs["plain"], auto_compact=False),
        }
        exporters = {name: PrometheusExporter(c) for name, c in scrapers.items()}
        done = 0
        for checkpoint in CHECKPOINTS:
            new = list(range(done, checkpoint))
            # the peer writes its pid files while we write ours (2 CPUs; writing is not timed)
            peer.send(case="populate", pids=[10_000 + g for g in new], seeds=new, bounds=bounds)
            for g in new:
                requests = traffic(g)
                for name, directory in dirs.items():
                    c = MetricsCollector(directory, auto_compact=False)
                    record_all(c, requests)
                    if unrecorded(c):
                        problems.append(f"generation {g} ({name}): unrecorded {unrecorded(c)}")
                    c.close()  # the worker exits: its flock is released, the file is dead
                t0 = time.perf_counter()
                result = compact(dirs["compacted"])
                compact_ms.append((time.perf_counter() - t0) * 1000)
                if result.absorbed != 1:
                    problems.append(f"generation {g}: compaction absorbed {result.absorbed}")
            peer_files = peer.receive()["files"]
            done = checkpoint

            # warm-up scrapes (fill the warm scrapers' file indexes)
            for exporter in exporters.values():
                exporter.export()
            peer_last = peer.ask(case="scrape")
            bodies = {name: exporter.export() for name, exporter in exporters.items()}
            snaps = {name: c.snapshot() for name, c in scrapers.items()}

            samples: dict[str, list[float]] = {k: [] for k in ("compacted", "plain", "peer")}
            order = ["compacted", "plain", "peer"]
            for rep in range(repeats):
                for case in order[rep % 3 :] + order[: rep % 3]:
                    if case == "peer":
                        samples[case].append(float(peer.ask(case="scrape")["seconds"]))  # type: ignore[arg-type]
                    else:
                        t0 = time.perf_counter()
                        exporters[case].export()
                        samples[case].append(time.perf_counter() - t0)
            cold: dict[str, list[float]] = {"compacted": [], "plain": []}
            for _ in range(cold_repeats):
                for name, directory in dirs.items():
                    t0 = time.perf_counter()
                    c = MetricsCollector(directory, auto_compact=False)
                    PrometheusExporter(c).export()
                    cold[name].append(time.perf_counter() - t0)
                    c.close()

            ms = {k: [x * 1000 for x in v] for k, v in samples.items()}
            cold_ms = {k: [x * 1000 for x in v] for k, v in cold.items()}
            med = {k: median(v) for k, v in ms.items()}
            med.update({f"cold_{k}": median(v) for k, v in cold_ms.items()})
            med_at[checkpoint] = med
            expected = REQUESTS_PER_GENERATION * (LIVE_WORKERS + checkpoint)
            files = {
                name: sorted(n for n in os.listdir(d) if n.endswith((".gwzm", ".gwza"))) for name, d in dirs.items()
            }
            sizes = {name: sum(os.path.getsize(os.path.join(dirs[name], n)) for n in f) for name, f in files.items()}
            for name in dirs:
                snap = snaps[name]
                if snap.total_requests != expected or snap.dropped() or snap.problems:
                    problems.append(
                        f"{checkpoint} generations ({name}): {snap.total_requests:,.0f} of {expected:,} requests, "
                        f"dropped {snap.dropped()}, problems {snap.problems}"
                    )
            if peer_last["requests"] != expected:
                problems.append(f"{checkpoint} generations (peer): {peer_last['requests']:,.0f} of {expected:,}")
            rows.append((
                checkpoint,
                f"{med['compacted']:.1f} ({spread(ms['compacted'])})",
                f"{med['plain']:.1f} ({spread(ms['plain'])})",
                f"{med['peer']:.1f} ({spread(ms['peer'])})",
                f"{med['peer'] / med['compacted']:.1f}x",
                f"{med['plain'] / med['compacted']:.1f}x",
                f"{med['cold_compacted']:.1f}",
                f"{med['cold_plain']:.1f}",
            ))
            detail_rows.append((
                checkpoint,
                f"{len(files['compacted'])} ({sizes['compacted'] / 1048576:.1f} MiB)",
                f"{len(files['plain'])} ({sizes['plain'] / 1048576:.1f} MiB)",
                f"{peer_files}",
                f"{len(bodies['compacted']):,}",
                f"{peer_last['bytes']:,}",
                f"{sum(1 for ln in bodies['compacted'].splitlines() if ln and not ln.startswith('#')):,}",
                f"{peer_last['samples']:,}",
                f"{snaps['compacted'].total_requests:,.0f} / {snaps['plain'].total_requests:,.0f} / "
                f"{peer_last['requests']:,.0f} of {expected:,}",
            ))
        for c in (*live, *scrapers.values()):
            c.close()  # type: ignore[attr-defined]
    finally:
        peer.close()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs\n")
    print(
        f"## Scrape after N worker generations: {LIVE_WORKERS} live workers + N dead ones, "
        f"{REQUESTS_PER_GENERATION:,} requests each, 50 endpoints x 10 providers x 20 models "
        f"(median ms of {repeats} interleaved repeats, min..max; cold: median of {cold_repeats})\n"
    )
    print(table(
        ["N", "ours, compacted (warm)", "ours, no compaction (warm)", "prom mp", "prom / ours compacted",
         "no compaction / compacted", "ours compacted, cold", "ours no compaction, cold"],
        rows,
    ))
    print("\nFiles, body and check of the merged request count (ours compacted / no compaction / peer):\n")
    print(table(
        ["N", "ours files, compacted", "ours files, no compaction", "peer .db files", "ours body bytes",
         "peer body bytes", "ours samples", "peer samples", "requests merged"],
        detail_rows,
    ))
    print(
        f"\ncompact() after each generation exit: median {median(compact_ms):.1f} ms "
        f"({spread(compact_ms)} ms) over {len(compact_ms)} runs"
    )
    first, last = med_at[CHECKPOINTS[0]], med_at[CHECKPOINTS[-1]]
    flat = last["compacted"] / first["compacted"]
    speedup = last["peer"] / last["compacted"]
    print(
        f"Target ours flat in generations ({CHECKPOINTS[-1]} within 1.5x of {CHECKPOINTS[0]}): "
        f"{'MET' if flat <= 1.5 else 'NOT met'} ({flat:.2f}x warm; "
        f"{last['cold_compacted'] / first['cold_compacted']:.2f}x cold)"
    )
    print(
        f"Target ours >= 10x faster than prometheus_client at {CHECKPOINTS[-1]} generations: "
        f"{'MET' if speedup >= 10 else 'NOT met'} ({speedup:.1f}x warm; "
        f"{last['peer'] / last['cold_compacted']:.1f}x cold)"
    )
    print(f"Correctness checks: {problems or 'all requests merged, no drops, no storage problems'}")


if __name__ == "__main__":
    if "--peer" in sys.argv:
        run_peer()
    else:
        main()
