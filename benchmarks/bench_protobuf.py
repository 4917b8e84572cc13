"""Protobuf scrape against text scrape, with and without native-histogram recording, in one run.

Usage: python benchmarks/bench_protobuf.py [--quick]

Two metrics directories receive the same traffic from 4 live worker processes each (this
script with ``BENCH_ROLE=worker``; they keep their files locked until the end): directory
**classic** with native recording off (the default: what a text scrape cost before native
histograms existed), directory **native** with it on (``native_histograms=True``). The
traffic is ``bench_steady_scrape.py``'s label mix and latencies (``traffic``), all at one
instant of a real clock (the window's current slot holds it), ``REQUESTS`` per worker.

Cases, interleaved every round (the order rotates, so each runs first as often), each a
warm, long-lived ``PrometheusExporter`` in this process. Timed in CPU time of this
process (``time.process_time``: a scrape is single-threaded here), which other jobs on a
shared machine disturb far less than wall time (also reported):

* **text, classic** / **text, native**: ``render("text/plain")`` of each directory: the
  text path must not get slower because native records sit in the files (the merge skips
  them; only the protobuf path reads them).
* **protobuf, classic** / **protobuf, native**: ``render(<Prometheus's protobuf Accept>)``:
  the protobuf encoding, and (native) reading and encoding the native buckets.

Before timing, every case's answer is checked: both directories' text scrapes hold the same
samples, and the native directory's protobuf scrape carries native buckets whose count is
each histogram's count.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import Peer, median, serve_peer, spread, table, unrecorded
from bench_steady_scrape import MIXES, Mix, mix_by_name, traffic

WORKERS = 4
REQUESTS = 20_000
"""Per worker and mix: every endpoint x model combination of the larger mix at least once."""
ROUNDS = 25
PROMETHEUS_ACCEPT = (
    "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,"
    "text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)


def run_worker() -> None:
    """One live worker writing into ``$BENCH_DIR`` (native recording as ``$BENCH_NATIVE`` says)."""
    from flask_gatewayz_metrics import MetricsCollector

    collector = MetricsCollector(os.environ["BENCH_DIR"], native_histograms=os.environ["BENCH_NATIVE"] == "1")

    def write(mix: str, worker: int, count: int) -> dict[str, object]:
        record = collector.record_request
        for e, method, latency, status, p, m in traffic(mix_by_name(mix), worker, 0, count):
            record(e, method, latency, status, provider=p, model=m)
        return {"unrecorded": unrecorded(collector)}

    serve_peer({"write": write}, {"pid": os.getpid()})
    collector.close()


def populate(mix: Mix, directory: str, native: bool, requests: int) -> list[Peer]:
    """4 live workers that have each recorded ``requests`` requests of ``mix`` into ``directory``."""
    env = {"BENCH_ROLE": "worker", "BENCH_DIR": directory, "BENCH_NATIVE": "1" if native else "0"}
    workers = [Peer(__file__, env) for _ in range(WORKERS)]
    for w, worker in enumerate(workers):
        worker.send(case="write", mix=mix.name, worker=w, count=requests)
    for worker in workers:
        answer = worker.receive()
        if answer["unrecorded"]:
            raise SystemExit(f"a worker dropped requests: {answer['unrecorded']}")
    return workers


def check(exporters: dict[str, object], requests: int) -> None:
    """The cases answer what they should (see the module docstring)."""
    from prometheus_client.parser import text_string_to_metric_families

    from flask_gatewayz_metrics import exposition_protobuf

    def samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode("utf-8"))
            for s in family.samples
            if not s.name.startswith(("gatewayz_uptime", "gatewayz_start_time"))  # per directory
        }

    classic, native = (exporters[name].render("text/plain")[0] for name in ("classic", "native"))  # type: ignore[attr-defined]
    if samples(classic) != samples(native):
        raise SystemExit("the text scrapes of the two directories differ")
    total = sum(v for (name, _), v in samples(native).items() if name == "http_requests_total")
    if total != WORKERS * requests:
        raise SystemExit(f"{total} requests merged, {WORKERS * requests} sent")
    lookup = exporters["native"].collector.native_lookup()  # type: ignore[attr-defined]
    counted = sum(b.count for (name, _), b in lookup.items() if name == "http_request_duration_seconds")
    if not lookup or counted != total:
        raise SystemExit("native buckets missing or not counting every request")
    body, content_type = exporters["native"].render(PROMETHEUS_ACCEPT)  # type: ignore[attr-defined]
    if content_type != exposition_protobuf.CONTENT_TYPE or native_histograms_in(body) != len(lookup):
        raise SystemExit("the protobuf scrape does not carry every native histogram")


def native_histograms_in(body: bytes) -> int:
    """How many histograms of a protobuf scrape carry schema-5 native buckets."""
    from google.protobuf.internal.decoder import _DecodeVarint32

    from flask_gatewayz_metrics import exposition_protobuf

    family_class = exposition_protobuf._classes()["MetricFamily"]
    found = position = 0
    while position < len(body):
        length, position = _DecodeVarint32(body, position)
        family = family_class.FromString(body[position : position + length])
        position += length
        found += sum(1 for m in family.metric if m.HasField("histogram") and m.histogram.HasField("schema"))
    return found


def run_mix(mix: Mix, requests: int, rounds: int, tmp: str) -> dict[str, object]:
    from flask_gatewayz_metrics import MetricsCollector, PrometheusExporter

    workers: list[Peer] = []
    exporters: dict[str, PrometheusExporter] = {}
    sizes: dict[str, int] = {}
    try:
        for name, native in (("classic", False), ("native", True)):
            directory = os.path.join(tmp, f"{mix.name}-{name}")
            os.mkdir(directory, 0o700)
            workers += populate(mix, directory, native, requests)
            exporters[name] = PrometheusExporter(MetricsCollector(directory, native_histograms=native))
            sizes[name] = sum(used(os.path.join(directory, f)) for f in os.listdir(directory) if f.endswith(".gwzm"))
        check(exporters, requests)
        cases = {
            f"{fmt}, {name}": (exporters[name], accept)
            for fmt, accept in (("text", "text/plain"), ("protobuf", PROMETHEUS_ACCEPT))
            for name in ("classic", "native")
        }
        times: dict[str, list[float]] = {case: [] for case in cases}
        walls: dict[str, list[float]] = {case: [] for case in cases}
        lengths: dict[str, int] = {}
        order = list(cases)
        for case, (exporter, accept) in cases.items():  # warm every cache once
            lengths[case] = len(exporter.render(accept)[0])
        for r in range(rounds):
            rotated = order[r % len(order) :] + order[: r % len(order)]
            for case in rotated:
                exporter, accept = cases[case]
                start, cpu = time.perf_counter(), time.process_time()
                exporter.render(accept)
                times[case].append((time.process_time() - cpu) * 1000)
                walls[case].append((time.perf_counter() - start) * 1000)
        return {"mix": mix.name, "times": times, "walls": walls, "lengths": lengths, "sizes": sizes}
    finally:
        for worker in workers:
            worker.close()


def used(path: str) -> int:
    """Bytes of records a worker file holds (its header's ``used``)."""
    with open(path, "rb") as f:
        return int.from_bytes(f.read(16)[8:16], "little")


def report(results: list[dict[str, object]], requests: int) -> None:
    print(f"\n## Protobuf vs text scrape ({WORKERS} live workers per directory, {requests:,} requests each)\n")
    rows = []
    for result in results:
        times: dict[str, list[float]] = result["times"]  # type: ignore[assignment]
        lengths: dict[str, int] = result["lengths"]  # type: ignore[assignment]
        walls: dict[str, list[float]] = result["walls"]  # type: ignore[assignment]
        for case, values in times.items():
            rows.append([
                result["mix"], case, f"{median(values):.1f}", spread(values), f"{median(walls[case]):.1f}",
                f"{lengths[case]:,}",
            ])  # fmt: skip
    print(table(["mix", "case", "scrape CPU ms (median)", "min..max", "wall ms (median)", "bytes"], rows))
    print()
    rows = []
    for result in results:
        times = result["times"]  # type: ignore[assignment]
        sizes: dict[str, int] = result["sizes"]  # type: ignore[assignment]
        text = median(times["text, native"]) / median(times["text, classic"])
        fastest = min(times["text, native"]) / min(times["text, classic"])
        proto = median(times["protobuf, native"]) / median(times["text, native"])
        rows.append([
            result["mix"], f"{text:.2f} (fastest: {fastest:.2f})", f"{proto:.2f}",
            f"{sizes['classic'] / 2**20:.2f} / {sizes['native'] / 2**20:.2f} MiB",
        ])  # fmt: skip
    headers = ["mix", "text: native / classic directory", "protobuf / text (native)", "files used: classic / native"]
    print(table(headers, rows))


def main() -> None:
    if os.environ.get("BENCH_ROLE") == "worker":
        run_worker()
        return
    quick = "--quick" in sys.argv
    requests = REQUESTS // 4 if quick else REQUESTS
    rounds = 5 if quick else ROUNDS
    random.seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        results = [run_mix(mix, requests, rounds, tmp) for mix in MIXES]
    report(results, requests)


if __name__ == "__main__":
    main()
