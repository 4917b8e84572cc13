"""Per-request cache misses (valgrind cachegrind): why server CPU time does not follow
instruction counts (issue 12).

``bench_flask_instructions.py`` counts instructions: ours are ~0.15 of
prometheus_flask_exporter's, yet our CPU time per request is ~0.3-0.45 of its. This
benchmark runs the same in-process requests (the same child program, variants and heap
layouts) under cachegrind with its cache simulation, the last level sized like this
machine's per-core L2 (``/sys/devices/system/cpu/cpu0/cache``), and reports per request:
instructions, L1 data misses, and misses of that L2-sized level for data and for
instructions. A miss there is a trip to L3 or memory: tens to hundreds of cycles, where
an instruction costs well under one.

Like the instruction count, each figure is the difference of a short and a long run
divided by the extra requests, averaged over heap layouts (``PADS``), and the child
runs one full garbage collection after its warm-up (uncounted), so that the first full
collection after start-up, which lands in some variants' counted requests and not in
others', does not decide the comparison.

    python benchmarks/bench_cache_misses.py          # needs valgrind (Debian package)
    python benchmarks/bench_cache_misses.py --cold

``--cold``: before each counted request the child overwrites a buffer twice the size of
that last level, so every request starts with caches holding none of its lines, as
under four workers on two cores (``bench_cold_requests.py`` measures the same condition
in time; this counts it). The copy is the same in every variant and cancels out in the
difference to bare Flask; what is left is the lines a request of that variant misses:
the number that sets its CPU time on a busy server, where an instruction count does not
(session 11, benchmarks/README.md). Fewer requests are counted (the copies are slow
under valgrind); in this mode the child also stretches the collector's periodic
directory check and its window slots (``bench_flask_instructions.CHILD``), which under
valgrind's slowed clock would land every few requests at moments that differ between
runs, and turns the garbage collector off for the counted requests (a full collection
in one run and not the other moved a variant by hundreds of lines a request).
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_flask_instructions import CHILD, LONG, SHORT

VARIANTS = ("bare", "pfe_multiprocess", "gatewayz", "gatewayz_labelled")
PADS = (0, 17_000, 150_000)
"""Heap layouts (a subset of bench_flask_instructions.PADS: cachegrind is slower)."""
EVENTS = ("instructions", "L1 data misses", "L2 data misses", "L2 instruction misses")


def l2_geometry() -> tuple[int, int, int]:
    """(size in bytes, ways, line bytes) of cpu0's level-2 cache, as cachegrind's ``--LL``."""
    for index in sorted(os.listdir("/sys/devices/system/cpu/cpu0/cache")):
        base = f"/sys/devices/system/cpu/cpu0/cache/{index}"
        if not index.startswith("index"):
            continue
        with open(f"{base}/level") as f:
            if f.read().strip() != "2":
                continue
        with open(f"{base}/size") as f:
            size = f.read().strip()
        with open(f"{base}/ways_of_associativity") as f:
            ways = int(f.read())
        with open(f"{base}/coherency_line_size") as f:
            line = int(f.read())
        number = int(size.rstrip("KM"))
        return number * (1024 if size.endswith("K") else 1024 * 1024 if size.endswith("M") else 1), ways, line
    raise RuntimeError("no level-2 cache described under /sys/devices/system/cpu/cpu0/cache")


def _count(label: str, text: str) -> int:
    match = re.search(rf"{label}:\s*([\d,]+)", text)
    if match is None:
        raise RuntimeError(f"no {label!r} in cachegrind output:\n{text[-2000:]}")
    return int(match.group(1).replace(",", ""))


COLD_SHORT, COLD_LONG = 40, 120
"""Requests of the short and long run with ``--cold``."""


def events(
    variant: str, requests: int, pad: int, geometry: tuple[int, int, int], cold: bool = False
) -> tuple[int, ...]:
    """The four ``EVENTS`` of one child run under cachegrind (``cold``: caches flushed
    before each request)."""
    env = dict(os.environ)
    if variant == "pfe_multiprocess":
        env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp()
    size, ways, line = geometry
    out = subprocess.run(
        ["valgrind", "--tool=cachegrind", "--cache-sim=yes", f"--LL={size},{ways},{line}",
         "--cachegrind-out-file=/dev/null", sys.executable, "-c", CHILD, variant, str(requests), str(pad),
         "collect", *(["cold", str(2 * size)] if cold else [])],
        env=env, capture_output=True, text=True, check=True, cwd=tempfile.mkdtemp(),
    )
    text = out.stderr
    return (_count("I +refs", text), _count("D1 +misses", text), _count("LLd misses", text),
            _count("LLi misses", text))


def main() -> int:
    geometry = l2_geometry()
    cold = "--cold" in sys.argv[1:]
    few, many = (COLD_SHORT, COLD_LONG) if cold else (SHORT, LONG)

    def per_request(job: tuple[str, int]) -> list[float]:
        variant, pad = job
        short, long = events(variant, few, pad, geometry, cold), events(variant, many, pad, geometry, cold)
        return [(b - a) / (many - few) for a, b in zip(short, long, strict=True)]

    jobs = [(variant, pad) for variant in VARIANTS for pad in PADS]
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # each job is two valgrind processes in turn
        counts = dict(zip(jobs, pool.map(per_request, jobs), strict=True))
    mean = {v: [statistics.mean(counts[v, pad][e] for pad in PADS) for e in range(len(EVENTS))] for v in VARIANTS}
    size, ways, line = geometry
    state = "caches flushed before each request" if cold else "a loop of requests"
    print(f"## Cache misses per request ({state}; cachegrind; last level = this machine's L2: "
          f"{size // 1024} KiB, {ways}-way, {line}-byte lines; {many} - {few} requests, mean of "
          f"{len(PADS)} heap layouts)\n")
    print("| variant | " + " | ".join(EVENTS) + " |")
    print("|---|" + "---|" * len(EVENTS))
    for v in VARIANTS:
        print(f"| {v} | " + " | ".join(f"{x:,.0f}" for x in mean[v]) + " |")
    print("\nOverhead over bare Flask, and ours / prometheus_flask_exporter (multiprocess):\n")
    print("| variant | " + " | ".join(EVENTS) + " |")
    print("|---|" + "---|" * len(EVENTS))
    bare = mean["bare"]
    peer = [p - b for p, b in zip(mean["pfe_multiprocess"], bare, strict=True)]
    for v in VARIANTS[1:]:
        over = [x - b for x, b in zip(mean[v], bare, strict=True)]
        ratios = ["" if v == "pfe_multiprocess" else f" ({o / p:.2f})" for o, p in zip(over, peer, strict=True)]
        cells = [f"{o:,.0f}{r}" for o, r in zip(over, ratios, strict=True)]
        print(f"| {v} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
