"""Steady-state scrape: every window slot holds data, 4 live worker processes, side by side
with prometheus_client multiprocess and with the render floor, in one run (issue 12).

Usage: python benchmarks/bench_steady_scrape.py [--quick] [--mix 50x10x20]

``bench_scrape.py`` writes every record at one instant, so only one window slot holds
data. Here the collectors' clock (``MetricsCollector(clock=...)``) is driven through the
whole window, as under steady traffic:

* **Time.** The window is the default 300 s in 5 slots of 60 s. Each worker serves a
  steady ``RATE`` requests per second of *collector clock* (``N = RATE x 60`` requests
  per slot); its ``n``-th request happens at ``B + (n + 0.5) x 60 / N``, with ``B`` a
  slot-aligned instant just after the real start (the clock is fake but in the future of
  every real timestamp the library writes). First every worker serves 4.5 slots of
  traffic (slots 0..3 full, slot 4 half full). Then every **round** advances the clock by
  15 s: each worker serves 15 s of traffic (``N / 4`` requests) and then the scrapes are
  measured at the new time. Every 4th round a slot seals, a new one opens and the oldest
  leaves the window, so the window always holds 5 slots of data (checked exactly with
  ``collector.history()``).
* **Workers.** 4 real processes (this script with ``BENCH_ROLE=worker``), each with its own
  ``MetricsCollector`` writing its own live file; they stay alive (their files locked,
  live) until every measurement is done. The scraper is a collector in the parent process.
* **Labels.** Two mixes: 50 endpoints x 10 providers x 20 models and 200 x 20 x 100.
  Request index ``i = n + 7919 w`` (worker ``w``, its ``n``-th request): endpoint
  ``i % E``; model ``m = (i + i // E) % M``; provider ``m % P`` (a model belongs to one
  provider, ``M / P`` models per provider, as in ``bench_generations.py``); method POST.
  As ``gcd(E + 1, M) = 1`` for both mixes, ``E x M`` consecutive requests cover every
  endpoint x model combination once (1,000 and 20,000 combinations), and every slot of
  every worker touches every endpoint, provider and model. Status (seeded per chunk of
  requests, ``random.Random("mix:worker:first n")``): 200 90 %, 429 4 %, 400 2 %,
  500 2 %, 502 1 %, 503 1 %; latency log-normal (mu -1, sigma 1.2, 1 ms .. 60 s).

Cases, interleaved every round (the order rotates, so each case runs first as often):

* **ours, warm**: ``PrometheusExporter(scraper).export()`` on a long-lived scraper.
* **ours, cold**: a fresh Python process (this script with ``--cold``) that creates a
  ``MetricsCollector`` and exports once; only that part is timed (not the imports).
  Every other round.
* **prom mp**: a subprocess with ``PROMETHEUS_MULTIPROC_DIR`` set before prometheus_client
  is imported; 4 simulated pids (``values.MultiProcessValue(lambda: pid)``) record the same
  requests into prometheus_client metrics with **exactly the series we serve**
  (``SamePeerRecorder``: our counters and histograms with our bucket bounds, the window
  gauges, the small families, and in the full view the conventions' histograms). A scrape
  is a fresh ``CollectorRegistry`` + ``MultiProcessCollector`` + ``generate_latest``, as
  prometheus_flask_exporter does per ``/metrics`` request.
* **render floor**: a subprocess *without* ``PROMETHEUS_MULTIPROC_DIR`` whose single
  in-memory registry records the same requests into the same metrics (all 4 workers'
  traffic); a scrape is ``generate_latest`` alone: no files, no merge. ``_created``
  samples are disabled (multiprocess mode has none), so it renders the peer's samples.
* **Two views**, each with its own peer and floor: *full* = everything ``/metrics``
  serves by default (the conventions' families included); *SEMCONV=otlp* = ours with
  ``PrometheusExporter(semconv="otlp")`` (``GATEWAYZ_METRICS_SEMCONV=otlp``: the
  conventions' families left off ``/metrics``, still in OTLP), peer and floor without them.
  At the end of the run the series (sample names and label sets) of ours, the peer and the
  floor must be identical in each view (a digest of the sorted ``name{labels}`` keys).

Nothing may be dropped: the merged request count (since start and in the window, slot by
slot) must equal what the workers were sent, no worker may report a drop, all 4 files must
be live, and the peer's and the floor's ``http_requests_total`` must add up too. Any
mismatch raises.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import Peer, PeerRecorder, median, peer_scrape, serve_peer, spread, table, unrecorded

from flask_gatewayz_metrics.storage import kinds

WORKERS = 4
WINDOW_SECONDS = 300.0
SLOTS = 5
SLOT_SECONDS = WINDOW_SECONDS / SLOTS
ROUND_SECONDS = 15.0  # collector-clock time between two scrapes
WORKER_SHIFT = 7919  # request index offset between workers
STATUSES = ([200, 429, 400, 500, 502, 503], [90, 4, 2, 2, 1, 1])


@dataclass(frozen=True)
class Mix:
    name: str
    endpoints: int
    providers: int
    models: int


MIXES = (Mix("50x10x20", 50, 10, 20), Mix("200x20x100", 200, 20, 100))
Request = tuple[str, str, float, int, str, str]


def traffic(mix: Mix, worker: int, first: int, count: int) -> list[Request]:
    """Worker ``worker``'s requests ``first .. first + count - 1`` (see the module docstring)."""
    rng = random.Random(f"{mix.name}:{worker}:{first}")
    out: list[Request] = []
    for n in range(first, first + count):
        i = n + WORKER_SHIFT * worker
        m = (i + i // mix.endpoints) % mix.models
        latency = min(60.0, max(0.001, rng.lognormvariate(-1.0, 1.2)))
        status = rng.choices(*STATUSES)[0]
        out.append((
            f"/api/v1/endpoint{i % mix.endpoints:03d}", "POST", latency, status,
            f"provider{m % mix.providers:02d}", f"model-{m:03d}",
        ))
    return out


def request_time(base: float, per_slot: int, n: int) -> float:
    """Collector-clock time of a worker's ``n``-th request (half a step off slot boundaries)."""
    return base + (n + 0.5) * SLOT_SECONDS / per_slot


def series_digest(body: str) -> str:
    """A digest of the series (sample names and label sets, not values) of a text body."""
    keys = sorted(ln.rsplit(" ", 1)[0] for ln in body.splitlines() if ln and not ln.startswith("#"))
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]


def mix_by_name(name: str) -> Mix:
    return next(m for m in MIXES if m.name == name)


# ----------------------------------------------------------------- worker processes
def run_worker() -> None:
    """One live worker: its own collector and file, fed chunks of requests over stdin."""
    from flask_gatewayz_metrics import MetricsCollector

    now = [0.0]
    collector = MetricsCollector(
        os.environ["BENCH_DIR"], window_seconds=WINDOW_SECONDS, window_slots=SLOTS, clock=lambda: now[0]
    )

    def write(mix: str, worker: int, first: int, count: int, base: float, per_slot: int) -> dict[str, object]:
        record = collector.record_request
        for k, (e, method, latency, status, p, m) in enumerate(traffic(mix_by_name(mix), worker, first, count)):
            now[0] = request_time(base, per_slot, first + k)
            record(e, method, latency, status, provider=p, model=m)
        return {"unrecorded": unrecorded(collector)}

    serve_peer({"write": write}, {"pid": os.getpid()})
    collector.close()


# ----------------------------------------------------------------- prometheus_client sides
class SamePeerRecorder(PeerRecorder):
    """prometheus_client metrics with exactly the series (names and label sets) we serve
    for this traffic: ``PeerRecorder``'s counters and histograms, plus the window gauges
    per endpoint, provider and model (set once per chunk to the latest latency: a gauge
    costs the scrape the same whatever its value), the small families (cache, db, drops,
    storage errors, files, build info, start time, uptime, in flight) and, with
    ``conventions``, the OpenTelemetry conventions' two histograms this traffic fills
    (``http.server.request.duration``, ``gen_ai.server.request.duration``; same bounds and
    attributes as ``exposition_semconv``). The run checks that the series match ours.
    """

    def __init__(self, buckets: Sequence[float], conventions: bool) -> None:
        super().__init__(buckets)
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        from flask_gatewayz_metrics import exposition

        reg = CollectorRegistry()
        WINDOW_GAUGES = exposition.WINDOW_LATENCY_GAUGES
        self.conventions = conventions
        gauge = lambda name, labels: Gauge(name, "g", labels, registry=reg, multiprocess_mode="max")  # noqa: E731
        self.window: dict[str, list[object]] = {
            "endpoint": [gauge(f"http_request_latency_{n}_seconds", ["endpoint"]) for n in WINDOW_GAUGES],
            "provider": [gauge("provider_error_rate", ["provider"])]
            + [gauge(f"provider_latency_{n}_seconds", ["provider"]) for n in WINDOW_GAUGES],
            "model": [gauge("model_error_rate", ["model"])]
            + [gauge(f"model_latency_{n}_seconds", ["model"]) for n in WINDOW_GAUGES],
        }
        self.latest: dict[tuple[str, str], float] = {}
        self.extra: list[object] = [Counter(n, "c", registry=reg) for n in ("cache_hits", "cache_misses", "db_queries")]
        dropped = Counter("gatewayz_metrics_dropped", "d", ["reason"], registry=reg)
        for reason in exposition.DROP_REASONS:
            dropped.labels(reason).inc(0)
        errors = Counter("gatewayz_metrics_storage_errors", "e", ["reason"], registry=reg)
        for reason in exposition.STORAGE_ERROR_REASONS:
            errors.labels(reason).inc(0)
        files = Gauge("gatewayz_metrics_worker_files", "f", ["state"], registry=reg, multiprocess_mode="livesum")
        files.labels("live").set(1)
        files.labels("dead").set(0)
        in_flight = Gauge("http_requests_in_flight", "i", registry=reg, multiprocess_mode="livesum")
        self.extra += [dropped, errors, files, in_flight]
        from flask_gatewayz_metrics._version import VERSION

        build = Gauge("gatewayz_build_info", "b", ["version", "python_version"], registry=reg, multiprocess_mode="max")
        build.labels(VERSION, platform.python_version()).set(1)
        start = Gauge("gatewayz_start_time_seconds", "s", registry=reg, multiprocess_mode="min")
        start.set(time.time())
        uptime = Gauge("gatewayz_uptime_seconds", "u", registry=reg, multiprocess_mode="max")
        uptime.set(1)
        self.extra += [build, start, uptime]
        if conventions:
            self.http_server = Histogram(
                "http_server_request_duration_seconds", "h",
                ["http_route", "http_request_method", "http_response_status_code", "error_type"],
                buckets=[*kinds.HTTP_SERVER_BOUNDS, float("inf")], registry=reg,
            )  # fmt: skip
            self.gen_ai_server = Histogram(
                "gen_ai_server_request_duration_seconds", "g",
                ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "gen_ai_response_model",
                 "error_type"],
                buckets=[*kinds.GEN_AI_DURATION_BOUNDS, float("inf")], registry=reg,
            )  # fmt: skip

    def record(
        self, endpoint: str, method: str, latency: float, code: int, provider: str | None, model: str | None
    ) -> None:
        from flask_gatewayz_metrics.semconv import DEFAULT_OPERATION, gen_ai_error_type, http_error_type

        super().record(endpoint, method, latency, code, provider, model)
        self.latest[("endpoint", endpoint)] = latency
        if provider is not None:
            self.latest[("provider", provider)] = latency
        if model is not None:
            self.latest[("model", model)] = latency
        if self.conventions:
            self.http_server.labels(endpoint, method, str(code), http_error_type(code, False)).observe(latency)
            if provider is not None and model is not None:
                error = gen_ai_error_type(code, False, 500)
                self.gen_ai_server.labels(DEFAULT_OPERATION, provider, model, model, error).observe(latency)

    def flush(self) -> None:
        """Set the window gauges of the series the last chunk touched."""
        for (group, value), latency in self.latest.items():
            for family in self.window[group]:
                family.labels(value).set(latency)  # type: ignore[attr-defined]
        self.latest.clear()


def register_all(recorder: PeerRecorder, registry: object) -> None:
    """Add a recorder's metrics to ``registry`` (the recorders keep their registries private)."""
    from prometheus_client import metrics

    for value in vars(recorder).values():
        for item in value.values() if isinstance(value, dict) else [value]:
            for metric in item if isinstance(item, list) else [item]:
                if isinstance(metric, metrics.MetricWrapperBase):
                    registry.register(metric)  # type: ignore[attr-defined]


def run_prometheus_side(multiprocess: bool) -> None:
    """The peer (multiprocess: one set of pid files per simulated worker) or the floor
    (single process, one in-memory registry for all workers' traffic), with our families
    (``BENCH_CONVENTIONS=1``: the conventions' too)."""
    from prometheus_client import CollectorRegistry, generate_latest, values


    conventions = os.environ.get("BENCH_CONVENTIONS") == "1"
    buckets = [*kinds.HISTOGRAM_BOUNDS, float("inf")]
    recorders: dict[int, SamePeerRecorder] = {}
    floor_registry = CollectorRegistry()
    if not multiprocess:
        # Multiprocess mode has no ``_created`` samples: leave them out of the floor too,
        # so both render the same samples.
        from prometheus_client import disable_created_metrics

        disable_created_metrics()
        recorders[0] = SamePeerRecorder(buckets, conventions)
        register_all(recorders[0], floor_registry)

    def write(mix: str, chunks: list[list[int]]) -> dict[str, object]:
        for worker, first, count in chunks:
            if multiprocess:
                pid = 100_000 + worker
                values.ValueClass = values.MultiProcessValue(lambda pid=pid: pid)
                if worker not in recorders:
                    recorders[worker] = SamePeerRecorder(buckets, conventions)
                recorder = recorders[worker]
            else:
                recorder = recorders[0]
            for request in traffic(mix_by_name(mix), worker, first, count):
                recorder.record(*request)
            recorder.flush()
        return {}

    def scrape() -> dict[str, object]:
        if multiprocess:
            body, seconds = peer_scrape()
        else:
            t0 = time.perf_counter()
            body = generate_latest(floor_registry)
            seconds = time.perf_counter() - t0
        lines = [ln for ln in body.splitlines() if ln and not ln.startswith(b"#")]
        total = sum(float(ln.rsplit(b" ", 1)[1]) for ln in lines if ln.startswith(b"http_requests_total{"))
        return {"seconds": seconds, "bytes": len(body), "samples": len(lines), "requests": total,
                "series": series_digest(body.decode())}

    def files() -> dict[str, object]:
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
        out = {}
        for name in sorted(os.listdir(directory)) if directory else []:
            st = os.stat(os.path.join(directory, name))
            out[name] = [st.st_size, st.st_blocks * 512]
        return out

    serve_peer(
        {"write": write, "scrape": scrape, "files": files},
        {"multiprocess": getattr(values.ValueClass, "_multiprocess", False)},
    )


# ----------------------------------------------------------------- cold scrape
def run_cold(directory: str, at: float) -> None:
    """A fresh process's first scrape (imports are not timed)."""
    from flask_gatewayz_metrics import MetricsCollector
    from flask_gatewayz_metrics.exposition import PrometheusExporter

    t0 = time.perf_counter()
    collector = MetricsCollector(directory, window_seconds=WINDOW_SECONDS, window_slots=SLOTS, clock=lambda: at)
    body = PrometheusExporter(collector).export()
    seconds = time.perf_counter() - t0
    requests = collector.snapshot().total_requests
    collector.close()
    print(json.dumps({"seconds": seconds, "bytes": len(body), "requests": requests}))


def cold_scrape(directory: str, at: float) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    out = subprocess.run(
        [sys.executable, __file__, "--cold", directory, repr(at)], env=env, capture_output=True, text=True, check=True,
        timeout=120,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


# ----------------------------------------------------------------- one mix
SUFFIX = {"full": "", "spec": "_spec"}
CASES = ("ours", "ours_spec", "peer", "peer_spec", "floor", "floor_spec", "cold")


class Failed(RuntimeError):
    """A correctness check failed: the figures of this run must not be used."""


def run_mix(mix: Mix, per_slot: int, rounds: int, tmp: str) -> dict[str, object]:
    from flask_gatewayz_metrics import MetricsCollector
    from flask_gatewayz_metrics.exposition import PrometheusExporter
    from flask_gatewayz_metrics.storage import layout

    ours_dir = os.path.join(tmp, f"ours-{mix.name}")
    os.makedirs(ours_dir)
    base = (math.floor(time.time() / SLOT_SECONDS) + 2) * SLOT_SECONDS
    # Per view ("full": every family we serve by default; "spec": GATEWAYZ_METRICS_SEMCONV=otlp,
    # the conventions' families left off /metrics) a peer and a floor with exactly its series.
    sides: dict[str, Peer] = {}
    for view, flag in (("full", "1"), ("spec", "0")):
        prom_dir = os.path.join(tmp, f"prom-{mix.name}-{view}")
        os.makedirs(prom_dir)
        sides["peer" + SUFFIX[view]] = Peer(
            __file__, {"BENCH_ROLE": "peer", "PROMETHEUS_MULTIPROC_DIR": prom_dir, "BENCH_CONVENTIONS": flag}
        )
        sides["floor" + SUFFIX[view]] = Peer(
            __file__, {"BENCH_ROLE": "floor", "BENCH_CONVENTIONS": flag}, drop_env=["PROMETHEUS_MULTIPROC_DIR"]
        )
    workers = [
        Peer(__file__, {"BENCH_ROLE": "worker", "BENCH_DIR": ours_dir}, drop_env=["PROMETHEUS_MULTIPROC_DIR"])
        for _ in range(WORKERS)
    ]
    sent = 0  # requests per worker so far
    scrape_at = [0.0]
    problems: list[str] = []
    try:
        for name, side in sides.items():
            if side.info["multiprocess"] is not name.startswith("peer"):
                raise Failed(f"prometheus_client mode of {name}: {side.info}")

        def serve(count: int) -> None:
            """Every worker (and the peer and floor) serves its next ``count`` requests."""
            nonlocal sent
            chunks = [[w, sent, count] for w in range(WORKERS)]
            for side in sides.values():
                side.send(case="write", mix=mix.name, chunks=chunks)
            for w, worker in enumerate(workers):
                worker.send(case="write", mix=mix.name, worker=w, first=sent, count=count, base=base,
                            per_slot=per_slot)
            for w, worker in enumerate(workers):
                lost = worker.receive()["unrecorded"]
                if lost:
                    problems.append(f"worker {w} dropped {lost}")
            for side in sides.values():
                side.receive()
            sent += count
            scrape_at[0] = request_time(base, per_slot, sent - 1) + 0.25 * SLOT_SECONDS / per_slot

        t0 = time.perf_counter()
        serve(per_slot * (SLOTS - 1) + per_slot // 2)
        fill_seconds = time.perf_counter() - t0
        scraper = MetricsCollector(
            ours_dir, window_seconds=WINDOW_SECONDS, window_slots=SLOTS, clock=lambda: scrape_at[0]
        )
        exporters = {"ours": PrometheusExporter(scraper), "ours_spec": PrometheusExporter(scraper, semconv="otlp")}
        for exporter in exporters.values():
            exporter.export()  # warm-up: the scraper maps every file once
        per_round = int(per_slot * ROUND_SECONDS / SLOT_SECONDS)
        ms: dict[str, list[float]] = {case: [] for case in CASES}
        last: dict[str, dict[str, object]] = {}
        for r in range(rounds):
            serve(per_round)
            cases = [c for c in CASES if c != "cold"] + (["cold"] if r % 2 == 0 else [])
            shift = r % len(cases)
            for case in cases[shift:] + cases[:shift]:
                if case in exporters:
                    t0 = time.perf_counter()
                    body = exporters[case].export()
                    ms[case].append((time.perf_counter() - t0) * 1000)
                    last[case] = {"bytes": len(body.encode()), "samples": sum(
                        1 for ln in body.splitlines() if ln and not ln.startswith("#")), "series": series_digest(body)}
                elif case == "cold":
                    result = cold_scrape(ours_dir, scrape_at[0])
                    ms[case].append(float(result["seconds"]) * 1000)
                    if result["requests"] != sent * WORKERS:
                        problems.append(f"cold scrape merged {result['requests']} of {sent * WORKERS}")
                else:
                    result = sides[case].ask(case="scrape")
                    ms[case].append(float(result["seconds"]) * 1000)  # type: ignore[arg-type]
                    last[case] = result
                    if result["requests"] != sent * WORKERS:
                        problems.append(f"{case}: http_requests_total {result['requests']} of {sent * WORKERS}")

        # ---- correctness: every request merged, the window exactly as sent, files live
        expected = sent * WORKERS
        snap = scraper.snapshot()
        current = (sent - 1) // per_slot  # slot index (from B) of the latest requests
        oldest = current - (SLOTS - 1)
        expected_slots = {
            s: WORKERS * (min(sent, (s + 1) * per_slot) - s * per_slot) for s in range(max(0, oldest), current + 1)
        }
        slot0 = round(base / SLOT_SECONDS)
        history = scraper.history().to_dict()
        got_slots = {round(float(p["start"]) / SLOT_SECONDS) - slot0: int(p["requests"]) for p in history["requests"]}
        got_slots = {s: c for s, c in got_slots.items() if c}
        if snap.total_requests != expected:
            problems.append(f"merged {snap.total_requests:,.0f} requests of {expected:,}")
        if snap.dropped() or snap.problems:
            problems.append(f"snapshot dropped {snap.dropped()}, problems {snap.problems}")
        if got_slots != expected_slots or len(got_slots) != SLOTS:
            problems.append(f"window slots {got_slots} != expected {expected_slots}")
        if snap.request_window().count != sum(expected_slots.values()):
            problems.append(f"window count {snap.request_window().count} != {sum(expected_slots.values())}")
        if snap.live_files != WORKERS or snap.worker_files != WORKERS:
            problems.append(f"{snap.live_files} live of {snap.worker_files} worker files, expected {WORKERS} live")
        ours_files = {}
        for name in sorted(os.listdir(ours_dir)):
            st = os.stat(os.path.join(ours_dir, name))
            ours_files[name] = (st.st_size, st.st_blocks * 512)
        # Sizes only (liveness is checked above): if a later storage format keeps a worker's
        # data in more than one file, the table lists every file but the control file and
        # the archive, and the full listing goes to stderr.
        suffix = getattr(layout, "WORKER_SUFFIX", ".gwzm")
        worker_files = {n: s for n, s in ours_files.items() if n.endswith(suffix)}
        if len(worker_files) != WORKERS:
            print(f"note ({mix.name}): files in the metrics directory: {ours_files}", file=sys.stderr)
            worker_files = {n: s for n, s in ours_files.items() if not n.startswith(("control", "archive"))}
        used_bytes = {n: header_used(os.path.join(ours_dir, n)) for n in worker_files}
        peer_files = sides["peer"].ask(case="files")
        for view, suffix in SUFFIX.items():
            digests = {c + suffix: last[c + suffix]["series"] for c in ("ours", "peer", "floor")}
            if len(set(digests.values())) != 1:
                problems.append(f"{view}: the series served differ: {digests}")
        scraper.close()
    finally:
        for side in (*sides.values(), *workers):
            side.close()
    if problems:
        raise Failed(f"{mix.name}: " + "; ".join(problems))
    return {
        "mix": mix, "ms": ms, "last": last, "sent": sent, "fill_seconds": fill_seconds,
        "worker_files": worker_files, "ours_files": ours_files, "peer_files": peer_files, "used_bytes": used_bytes,
        "slots": expected_slots, "rounds": rounds, "per_slot": per_slot,
    }


# ----------------------------------------------------------------- report
def mib(n: float) -> str:
    return f"{n / 1048576:.2f}"


def header_used(path: str) -> int:
    """A worker file's ``used`` (bytes of complete records, header bytes 8..16), 0 if unreadable."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return 0
    return int.from_bytes(head[8:16], "little") if len(head) == 16 else 0


def report(results: list[dict[str, object]]) -> None:
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} "
          f"{os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} (at the end)\n")
    first = results[0]
    print(
        f"## Steady-state scrape: {WORKERS} live worker processes, every one of the {SLOTS} window slots "
        f"holds data; a scrape every {ROUND_SECONDS:.0f} s of collector clock "
        f"(median ms of {first['rounds']} interleaved rounds, min..max; cold: every other round)\n"
    )
    rows = []
    ratio_rows = []
    file_rows = []
    targets = []
    for res in results:
        mix = res["mix"]
        ms = res["ms"]
        last = res["last"]
        med = {k: median(v) for k, v in ms.items()}  # type: ignore[attr-defined]
        for case, label in (
            ("ours", "full: ours, warm (export)"), ("cold", "full: ours, cold (new process)"),
            ("peer", "full: prom mp (MultiProcessCollector)"), ("floor", "full: render floor (generate_latest)"),
            ("ours_spec", "SEMCONV=otlp: ours, warm"), ("peer_spec", "SEMCONV=otlp: prom mp"),
            ("floor_spec", "SEMCONV=otlp: render floor"),
        ):  # fmt: skip
            info = last.get(case, {})  # type: ignore[attr-defined]
            rows.append((mix.name, label, f"{med[case]:.1f}", spread(ms[case]),  # type: ignore[index]
                         f"{info['bytes']:,}" if info else "", f"{info['samples']:,}" if info else ""))
        ratio_rows.append((
            mix.name, "full (default)", f"{med['ours'] / med['peer']:.2f}", f"{med['cold'] / med['peer']:.2f}",
            f"{med['ours'] / med['floor']:.2f}", f"{med['cold'] / med['floor']:.2f}",
            f"{med['peer'] / med['floor']:.2f}",
        ))
        ratio_rows.append((
            mix.name, "SEMCONV=otlp", f"{med['ours_spec'] / med['peer_spec']:.2f}", "",
            f"{med['ours_spec'] / med['floor_spec']:.2f}", "", f"{med['peer_spec'] / med['floor_spec']:.2f}",
        ))
        sizes = sorted(res["worker_files"].values())  # type: ignore[attr-defined]
        per_pid: dict[str, list[int]] = {}
        for name, (size, blocks) in res["peer_files"].items():  # type: ignore[attr-defined]
            pid = name.rsplit("_", 1)[-1]
            acc = per_pid.setdefault(pid, [0, 0])
            acc[0] += size
            acc[1] += blocks
        peer_sizes = sorted(per_pid.values())
        file_rows.append((
            mix.name,
            ", ".join(mib(u) for u in sorted(res["used_bytes"].values())),  # type: ignore[attr-defined]
            ", ".join(mib(s) for s, _ in sizes), ", ".join(mib(b) for _, b in sizes),
            ", ".join(mib(s) for s, _ in peer_sizes), ", ".join(mib(b) for _, b in peer_sizes),
            f"{res['sent'] * WORKERS:,}", f"{res['fill_seconds']:.1f}",
        ))
        targets.append(
            f"- {mix.name}, SEMCONV=otlp view: <= 0.5x prometheus_client: "
            f"{'MET' if med['ours_spec'] <= 0.5 * med['peer_spec'] else 'NOT met'} "
            f"({med['ours_spec'] / med['peer_spec']:.2f}x warm); <= 2x the render floor: "
            f"{'MET' if med['ours_spec'] <= 2 * med['floor_spec'] else 'NOT met'} "
            f"({med['ours_spec'] / med['floor_spec']:.2f}x warm)"
        )
        targets.append(
            f"- {mix.name}, full view (judged): steady scrape <= 0.5x prometheus_client: "
            f"{'MET' if med['ours'] <= 0.5 * med['peer'] else 'NOT met'} ({med['ours'] / med['peer']:.2f}x warm); "
            f"<= 2x the render floor: {'MET' if med['ours'] <= 2 * med['floor'] else 'NOT met'} "
            f"({med['ours'] / med['floor']:.2f}x warm); worker file <= 1 MiB: "
            f"{'MET' if max(s for s, _ in sizes) <= 1048576 else 'NOT met'} ({mib(max(s for s, _ in sizes))} MiB)"
        )
    print(table(["mix", "case", "median ms", "min..max", "body bytes", "samples"], rows))
    print("\nRatios of medians (same run):\n")
    print(table(["mix", "view", "ours warm / prom mp", "ours cold / prom mp", "ours warm / floor",
                 "ours cold / floor", "prom mp / floor"], ratio_rows))
    print("\nFiles per worker at the end (MiB: bytes used by records, apparent size and allocated blocks; "
          "the peer's counter_ + histogram_ .db files added up per pid):\n")
    print(table(["mix", "ours, used", "ours, size", "ours, allocated", "prom mp per pid, size",
                 "prom mp per pid, allocated", "requests merged", "initial fill s"], file_rows))
    print("\nTargets of issue 12 (this run):")
    print("\n".join(targets))
    slots = ", ".join(f"{r['mix'].name}: {sorted(r['slots'].values())}" for r in results)  # type: ignore[attr-defined]
    print(
        f"\nChecks passed: every request merged (since start and per window slot, exact), no drops, "
        f"{WORKERS} live worker files, peer and floor totals equal, and in each view ours, the peer and the "
        f"floor serve exactly the same series (names and label sets). Requests per window slot at the end "
        f"({WORKERS} workers): {slots}."
    )


def main() -> None:
    quick = "--quick" in sys.argv
    rate = 40 if quick else 80  # requests per second of collector clock, per worker
    rounds = 8 if quick else 16
    tmp = tempfile.mkdtemp(prefix="bench-steady-")
    try:
        only = sys.argv[sys.argv.index("--mix") + 1] if "--mix" in sys.argv else None
        results = [run_mix(mix, int(rate * SLOT_SECONDS), rounds, tmp) for mix in MIXES if only in (None, mix.name)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(results)
    print(f"\nTraffic: {rate} requests/s of collector clock per worker ({int(rate * SLOT_SECONDS):,} per slot), "
          f"{int(rate * ROUND_SECONDS):,} per worker between two scrapes.")


if __name__ == "__main__":
    role = os.environ.get("BENCH_ROLE")
    if "--cold" in sys.argv:
        run_cold(sys.argv[2], float(sys.argv[3]))
    elif "--peer" in sys.argv and role == "worker":
        run_worker()
    elif "--peer" in sys.argv and role in ("peer", "floor"):
        run_prometheus_side(role == "peer")
    else:
        main()
