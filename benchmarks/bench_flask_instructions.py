"""Per-request overhead in CPU instructions (valgrind callgrind): a noise-free companion
to bench_flask_overhead.py, whose timings swing +-30 % on a shared 2-core machine.

Each variant runs in its own process under callgrind twice, with a short and a long
loop of in-process WSGI requests; the difference divided by the extra requests is the
instruction count of one request, start-up excluded. Overheads are variant minus bare
Flask; ratios compare ours with prometheus_flask_exporter. Instructions are not time
(cache misses are not counted), and one process's count is repeatable, but it depends
on the heap layout: CPython's type attribute cache is indexed by addresses, so an
unrelated change that moves objects moves a variant by up to +-1,500 a request (seen
as run-to-run swings of the ratios). So each variant is counted in ``len(PADS)`` heap
layouts (the child allocates a pad of that many bytes before importing anything) and
the table gives the mean per request, with the spread over layouts; every variant gets
the same layouts, each layout with a hash seed of its own (``PYTHONHASHSEED`` 1..5, shared
by its short and long run; a seed set in the environment is used for all).

    python benchmarks/bench_flask_instructions.py          # needs valgrind (Debian package)
    python benchmarks/bench_flask_instructions.py --gunicorn [sync|gthread]

``--gunicorn``: the same count in a real gunicorn worker (one worker, ``bench_wrk.py``'s app
and request mix, over HTTP from this process): callgrind runs the server, a
``post_request`` hook calls ``os.getsid`` after the warm-up and after the counted
requests, and ``--dump-before=getsid`` makes callgrind dump its counters there, so the
difference is exactly those requests in the worker (parsing, sockets and all), start-up
and warm-up excluded (and a full garbage collection run after the warm-up, uncounted: see
``GUNICORN_HOOK``). Cases: bare, pfe (multiprocess), ours, ours + ``label_request``.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

SHORT, LONG = 200, 1200
VARIANTS = ("bare", "pfe", "pfe_multiprocess", "gatewayz", "gatewayz_labelled")

PADS = (0, 3_000, 17_000, 61_000, 150_000)
"""Bytes the child allocates before its imports: one heap layout each (see above)."""

CHILD = r'''
import os, sys, tempfile
variant, n, pad = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
collect = "collect" in sys.argv[4:]  # bench_cache_misses.py: a full collection after the warm-up
cold = "cold" in sys.argv[4:]  # bench_cache_misses.py --cold: caches flushed before each request
_pad = [bytearray(64) for _ in range(pad // 64)]  # shifts every later object's address
from flask import Flask
from werkzeug.test import EnvironBuilder
app = Flask("bench")
if variant.startswith("pfe"):
    from prometheus_flask_exporter import PrometheusMetrics
    PrometheusMetrics(app, group_by="url_rule")
labelled = variant == "gatewayz_labelled"
if variant.startswith("gatewayz"):
    from flask_gatewayz_metrics import GatewayzMetrics, label_request
    app.config["GATEWAYZ_METRICS_DIR"] = tempfile.mkdtemp()
    if cold:
        # Under valgrind time runs ~50x slower, and the cold loop's copies slower still:
        # the 1 s directory check and the window's slot changes, amortised over thousands
        # of requests in real time, would land every few requests, at a moment that
        # differs between runs.
        from flask_gatewayz_metrics import record_writer
        record_writer.DIRECTORY_CHECK_SECONDS = 1e6
        app.config["GATEWAYZ_METRICS_WINDOW_SECONDS"] = 86_400
    GatewayzMetrics(app)

@app.post("/api/chat/<int:x>")
def chat(x):
    if labelled:
        label_request(provider="openai", model="gpt-4")
    return {"ok": x}

environ = EnvironBuilder(path="/api/chat/3", method="POST").get_environ()
def start_response(status, headers, exc_info=None):
    pass
for _ in range(50):  # warm caches of labels and offsets before counting
    body = app(dict(environ), start_response); list(body); body.close()
import gc
if collect:
    gc.collect()
if cold:
    flush = bytearray(int(sys.argv[sys.argv.index("cold") + 1]))  # the same in every variant
    filler = bytes(len(flush))
    # No collections among the counted requests: a full one walks the whole heap (tens of
    # thousands of lines missed at once), and whether it falls in the short or the long run
    # moved a variant by hundreds of lines a request from one run to the next.
    gc.disable()
for _ in range(n):
    if cold:
        flush[:] = filler
    body = app(dict(environ), start_response); list(body); body.close()
'''


def instructions(variant: str, requests: int, pad: int = 0) -> int:
    env = dict(os.environ)
    # One hash seed per layout, the same for the short and the long run (and for every
    # variant): with a random seed each, their start-ups differ by millions of
    # instructions, which lands in the per-request difference (~2,000 a request between
    # two runs of the same code; with a shared seed a layout repeats to ~40).
    env.setdefault("PYTHONHASHSEED", str(PADS.index(pad) + 1 if pad in PADS else 1))
    if variant == "pfe_multiprocess":
        env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp()
    # In an empty directory: ``python -c`` puts the working directory first on sys.path,
    # and listing a busy one (/tmp) at each import moves the counts by thousands.
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-c", CHILD,
         variant, str(requests), str(pad)],
        env=env, capture_output=True, text=True, check=True, cwd=tempfile.mkdtemp(),
    )
    match = re.search(r"Collected\s*:\s*(\d+)", out.stderr)
    if match is None:
        raise RuntimeError(f"no instruction count in valgrind output:\n{out.stderr[-2000:]}")
    return int(match.group(1))


GUNICORN_WARMUP, GUNICORN_REQUESTS = 2000, 400
GUNICORN_HOOK = """
import gc
import os
_served = [0]


def post_request(worker, req, environ, resp):
    _served[0] += 1
    if _served[0] == {warmup}:
        # A full collection now, uncounted: the first full (generation 2) collection after
        # start-up otherwise comes 2,000-4,000 requests in, when the objects the imports left
        # outnumber a quarter of the heap, at a request count that differs by case (the
        # imports differ), and its ~15 M instructions land in one case's 400 counted
        # requests and not in another's (~38,000 a request).
        gc.collect()
    if _served[0] in ({warmup}, {end}):
        os.getsid(0)  # callgrind dumps its counters here (--dump-before=getsid)
"""


def _bench_request(port: int, n: int) -> None:
    """Request ``n`` of bench_wrk.py's Lua mix, on a new connection."""
    import http.client
    import json

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    if n % 4 == 0:
        conn.request("GET", f"/api/items/{n % 1000}")
    else:
        body = json.dumps({"model": f"model-{(n + n // 50) % 20:02d}"})
        conn.request("POST", f"/v1/e{n % 50:02d}/chat", body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    conn.close()
    if response.status != 200:
        raise RuntimeError(f"status {response.status}")


def gunicorn_instructions(case: str, worker_class: str) -> float:
    """Instructions per request in one gunicorn worker (see the module docstring)."""
    import glob
    import signal
    import socket
    import time

    here = os.path.dirname(os.path.abspath(__file__))
    tmp = tempfile.mkdtemp()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("PROMETHEUS_MULTIPROC_DIR", "GATEWAYZ_METRICS_DIR")}
    env.update(BENCH_WRK_CASE=case, PYTHONHASHSEED="0")
    directory = os.path.join(tmp, "metrics")
    os.makedirs(directory)
    conf = os.path.join(tmp, "conf.py")
    with open(conf, "w") as f:
        if case == "pfe":
            env["PROMETHEUS_MULTIPROC_DIR"] = directory
        elif case.startswith("ours"):
            env["GATEWAYZ_METRICS_DIR"] = directory
            f.write("from flask_gatewayz_metrics.gunicorn_conf import *  # noqa: F403\n")
        f.write(GUNICORN_HOOK.format(warmup=GUNICORN_WARMUP, end=GUNICORN_WARMUP + GUNICORN_REQUESTS))
    args = ["valgrind", "--tool=callgrind", "--dump-before=getsid", f"--callgrind-out-file={tmp}/cg.%p",
            sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", "--pythonpath", here, "-c", conf,
            "--log-level", "warning", "--timeout", "600", "-w", "1", "-k", worker_class]
    if worker_class == "gthread":
        args += ["--threads", "4"]
    args.append("bench_wrk:make_app()")
    with open(os.path.join(tmp, "log"), "wb") as log:
        server = subprocess.Popen(args, env=env, stdout=log, stderr=log, cwd=os.path.dirname(here))
    try:
        deadline = time.monotonic() + 300
        served = 0
        while not served:
            try:
                _bench_request(port, 1)
                served = 1
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(1)
        for n in range(served, GUNICORN_WARMUP + GUNICORN_REQUESTS):
            _bench_request(port, n)
        time.sleep(2)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(120)
    for path in glob.glob(f"{tmp}/cg.*"):
        with open(path) as f:
            text = f.read()
        part = re.search(r"^part: (\d+)", text, re.M)
        total = re.search(r"^(?:totals|summary): (\d+)", text, re.M)
        if part and total and int(part.group(1)) == 2:
            return int(total.group(1)) / GUNICORN_REQUESTS
    raise RuntimeError(f"no callgrind dump of the counted requests in {tmp}")


def main_gunicorn(worker_class: str) -> int:
    cases = ("bare", "pfe", "ours", "ours_labelled")
    per_request = {case: gunicorn_instructions(case, worker_class) for case in cases}
    bare = per_request["bare"]
    print(f"## Instructions per request in one gunicorn {worker_class} worker (callgrind, "
          f"{GUNICORN_REQUESTS} requests after {GUNICORN_WARMUP})\n")
    print("| case | instructions/request | overhead over bare Flask | / pfe |")
    print("|---|---|---|---|")
    for case, count in per_request.items():
        overhead = count - bare
        ratio = overhead / (per_request["pfe"] - bare)
        print(f"| {case} | {count:,.0f} | {'-' if case == 'bare' else f'{overhead:,.0f}'} | "
              f"{'-' if case == 'bare' else f'{ratio:.2f}'} |")
    return 0


def main() -> int:
    if shutil.which("valgrind") is None:
        print("valgrind not installed (apt-get install valgrind)")
        return 1
    if "--gunicorn" in sys.argv:
        rest = sys.argv[sys.argv.index("--gunicorn") + 1 :]
        return main_gunicorn(rest[0] if rest else "sync")
    def per_layout(job: tuple[str, int]) -> float:
        variant, pad = job
        return (instructions(variant, LONG, pad) - instructions(variant, SHORT, pad)) / (LONG - SHORT)

    jobs = [(variant, pad) for variant in VARIANTS for pad in PADS]
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # each job is one valgrind process
        counts = dict(zip(jobs, pool.map(per_layout, jobs), strict=True))
    layouts = {variant: [counts[variant, pad] for pad in PADS] for variant in VARIANTS}
    per_request = {variant: statistics.mean(values) for variant, values in layouts.items()}
    bare = per_request["bare"]
    print(f"## Instructions per request (callgrind, {LONG} - {SHORT} requests, mean of {len(PADS)} heap layouts)\n")
    print("| variant | instructions/request | min..max over layouts | overhead over bare Flask |")
    print("|---|---|---|---|")
    for variant, count in per_request.items():
        overhead = "-" if variant == "bare" else f"{count - bare:,.0f}"
        spread = f"{min(layouts[variant]):,.0f}..{max(layouts[variant]):,.0f}"
        print(f"| {variant} | {count:,.0f} | {spread} | {overhead} |")
    print("\n| ratio | value |\n|---|---|")
    for ours in ("gatewayz", "gatewayz_labelled"):
        for peer in ("pfe", "pfe_multiprocess"):
            ratio = (per_request[ours] - bare) / (per_request[peer] - bare)
            each = [
                (counts[ours, pad] - counts["bare", pad]) / (counts[peer, pad] - counts["bare", pad]) for pad in PADS
            ]
            print(f"| {ours} / {peer} | {ratio:.3f} (per layout {min(each):.3f}..{max(each):.3f}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
