"""Per-request overhead in CPU instructions (valgrind callgrind): a noise-free companion
to bench_flask_overhead.py, whose timings swing +-30 % on a shared 2-core machine.

Each variant runs in its own process under callgrind twice, with a short and a long
loop of in-process WSGI requests; the difference divided by the extra requests is the
instruction count of one request, start-up excluded. Overheads are variant minus bare
Flask; ratios compare ours with prometheus_flask_exporter. Instructions are not time
(cache misses are not counted), but they are repeatable to the last digit.

    python benchmarks/bench_flask_instructions.py          # needs valgrind (Debian package)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile

SHORT, LONG = 200, 1200
VARIANTS = ("bare", "pfe", "pfe_multiprocess", "gatewayz", "gatewayz_labelled")

CHILD = r'''
import os, sys, tempfile
variant, n = sys.argv[1], int(sys.argv[2])
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
for _ in range(n):
    body = app(dict(environ), start_response); list(body); body.close()
'''


def instructions(variant: str, requests: int) -> int:
    env = dict(os.environ)
    if variant == "pfe_multiprocess":
        env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp()
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-c", CHILD,
         variant, str(requests)],
        env=env, capture_output=True, text=True, check=True,
    )
    match = re.search(r"Collected\s*:\s*(\d+)", out.stderr)
    if match is None:
        raise RuntimeError(f"no instruction count in valgrind output:\n{out.stderr[-2000:]}")
    return int(match.group(1))


def main() -> int:
    if shutil.which("valgrind") is None:
        print("valgrind not installed (apt-get install valgrind)")
        return 1
    per_request = {}
    for variant in VARIANTS:
        per_request[variant] = (instructions(variant, LONG) - instructions(variant, SHORT)) / (LONG - SHORT)
    bare = per_request["bare"]
    print(f"## Instructions per request (callgrind, {LONG} - {SHORT} requests)\n")
    print("| variant | instructions/request | overhead over bare Flask |")
    print("|---|---|---|")
    for variant, count in per_request.items():
        overhead = "-" if variant == "bare" else f"{count - bare:,.0f}"
        print(f"| {variant} | {count:,.0f} | {overhead} |")
    print("\n| ratio | value |\n|---|---|")
    for ours in ("gatewayz", "gatewayz_labelled"):
        for peer in ("pfe", "pfe_multiprocess"):
            ratio = (per_request[ours] - bare) / (per_request[peer] - bare)
            print(f"| {ours} / {peer} | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
