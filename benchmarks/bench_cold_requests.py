"""Per-request CPU time in process with the caches of a busy server: ``bench_wrk.py``'s
apps and request mix called as WSGI apps, the level-2 cache evicted before every
request (issue 12).

Usage: python benchmarks/bench_cold_requests.py [--quick]

Under gunicorn, four sync workers take turns on two cores (with wrk and the kernel's
network work): each request finds the caches refilled by the others. There our overhead
is ~0.45 of prometheus_flask_exporter's (``bench_wrk.py``), in a loop of in-process
requests ~0.3 (``bench_flask_overhead.py``): our path does a few operations on each of
many objects and calls C code nothing else in the request runs (memoryview items,
``math.log2``, the lock), each a cache miss when cold (benchmarks/README.md, "Session
10"). This benchmark reproduces the server's figure in about a minute, without a server
and with less noise: before each request it copies a buffer twice the size of cpu0's
level-2 cache (``/sys/devices/system/cpu/cpu0/cache``), then times the request alone with
``time.thread_time_ns``. The same requests without the copy (``hot``, the loop timed as
a whole) are measured in the same run.

Cases as in ``bench_wrk.py`` (bare, pfe multiprocess, ours, ours + ``label_request``, and
``ours_again``, the control: ``ours`` once more as an app of its own), all in this
process; rounds interleave the cases (order reversed every round); overhead = case -
bare of the same round, medians over rounds.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _common import median, table  # noqa: E402

CASES = ("bare", "pfe", "ours", "ours_labelled", "ours_again")


def l2_bytes() -> int:
    """cpu0's level-2 cache size in bytes (1 MiB if sysfs does not say)."""
    root = "/sys/devices/system/cpu/cpu0/cache"
    for index in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        try:
            with open(f"{root}/{index}/level") as f:
                level = f.read().strip()
            with open(f"{root}/{index}/size") as f:
                size = f.read().strip()
        except OSError:
            continue
        if level == "2" and size.endswith("K"):
            return int(size[:-1]) * 1024
    return 1 << 20


def environ(n: int) -> dict[str, Any]:
    """Request ``n`` of ``bench_wrk.py``'s mix."""
    base = {"SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr}
    if n % 4 == 0:
        return {**base, "REQUEST_METHOD": "GET", "PATH_INFO": f"/api/items/{n % 1000}", "wsgi.input": io.BytesIO()}
    body = json.dumps({"model": f"model-{(n + n // 50) % 20:02d}"}).encode()
    return {**base, "REQUEST_METHOD": "POST", "PATH_INFO": f"/v1/e{n % 50:02d}/chat", "wsgi.input": io.BytesIO(body),
            "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body))}


def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
    return None


def serve(app: Any, env: dict[str, Any]) -> None:
    """One request, its body read and closed as a WSGI server would."""
    body = app(env, start_response)
    for _ in body:
        pass
    body.close()


def measure(app: Any, requests: int, evict: bytearray | None, fill: bytes) -> float:
    """CPU µs per request of ``requests`` requests: with ``evict``, each timed alone after
    the buffer copy; without, the loop timed as a whole (a clock read per request is a
    system call, which would cool the caches too)."""
    environs = [environ(n) for n in range(requests)]
    if evict is None:
        start = time.thread_time_ns()
        for env in environs:
            serve(app, env)
        return (time.thread_time_ns() - start) / 1e3 / requests
    spent = 0
    for env in environs:
        evict[:] = fill
        start = time.thread_time_ns()
        serve(app, env)
        spent += time.thread_time_ns() - start
    return spent / 1e3 / requests


def main() -> None:
    quick = "--quick" in sys.argv
    rounds, requests = (3, 500) if quick else (9, 1500)
    tmp = tempfile.mkdtemp(prefix="bench-cold-")
    # Before prometheus_client is imported: pfe's multiprocess mode.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.path.join(tmp, "prometheus")
    os.environ["GATEWAYZ_METRICS_DIR"] = os.path.join(tmp, "gatewayz")
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    from bench_wrk import make_app

    try:
        apps = {case: make_app(case).wsgi_app for case in CASES}
        size = 2 * l2_bytes()
        fill = os.urandom(size)
        evict = bytearray(size)
        for app in apps.values():  # warm-up: imports, label sets, files
            measure(app, 300, None, fill)
        results: dict[tuple[str, str], list[float]] = {(mode, case): [] for mode in ("cold", "hot") for case in CASES}
        started = time.monotonic()
        load_before = os.getloadavg()
        for r in range(rounds):
            for case in CASES if r % 2 == 0 else CASES[::-1]:
                results[("cold", case)].append(measure(apps[case], requests, evict, fill))
                results[("hot", case)].append(measure(apps[case], requests, None, fill))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, level-2 cache {l2_bytes() // 1024} KiB "
          f"(evicted with a {size // 1024} KiB copy); load average before "
          f"{' '.join(f'{x:.2f}' for x in load_before)}, after {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"{time.monotonic() - started:.0f} s\n")
    print(f"## CPU µs per request in process, bench_wrk.py's mix (median of {rounds} rounds of {requests})\n")
    rows = []
    for mode in ("cold", "hot"):
        bare = results[(mode, "bare")]
        overhead = {case: [a - b for a, b in zip(results[(mode, case)], bare, strict=True)] for case in CASES[1:]}
        pfe = median(overhead["pfe"])
        for case in CASES:
            rows.append((
                mode, case, f"{median(results[(mode, case)]):.1f}",
                f"{median(overhead[case]):.1f}" if case in overhead else "-",
                f"{median(overhead[case]) / pfe:.2f}" if case in overhead else "-",
            ))
    print(table(["caches", "case", "µs/request", "overhead vs bare µs", "overhead / pfe's"], rows))


if __name__ == "__main__":
    main()
