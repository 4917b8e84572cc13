"""Scrape cost in CPU instructions (valgrind callgrind): a noise-free companion to
bench_steady_scrape.py for comparing two versions of the code (issue 13: the output side
split by topic must not cost more).

One process records a fixed mix (50 endpoints x 10 providers x 20 models, 2,000 requests
with tokens, streams, cache, database and external calls, at fixed instants of a manual
clock) into a fresh directory, scrapes twice to warm every cache, then scrapes ``n`` more
times; it runs under callgrind with a short and a long ``n``, and the difference divided
by the extra scrapes is the instruction count of one warm scrape (text 0.0.4 ``export()``,
or the JSON document ``to_dict()``), set-up excluded. Each ``--tree`` is a source tree put
first on ``PYTHONPATH`` (default: the installed package), measured alternately.

    python benchmarks/bench_scrape_instructions.py --tree /tmp/before --tree .   # needs valgrind
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys

SHORT, LONG = 1, 4
CASES = ("export", "to_dict")

CHILD = r'''
import sys, tempfile
case, n = sys.argv[1], int(sys.argv[2])
from flask_gatewayz_metrics import MetricsCollector, PrometheusExporter
from flask_gatewayz_metrics.testing import ManualClock
clock = ManualClock(1_800_000_000.0)
collector = MetricsCollector(tempfile.mkdtemp(), clock=clock)
E, P, M = 50, 10, 20
for i in range(2000):
    clock.now = 1_800_000_000.0 + i * 0.1
    model = (i + i // E) % M
    status = (200, 200, 200, 200, 200, 200, 429, 400, 500, 503)[i % 10]
    collector.record_request(f"/v1/e{i % E}", "POST", 0.001 * (1 + i % 997), status,
                             provider=f"p{model % P}", model=f"m{model}")
    if i % 4 == 0:
        collector.record_tokens(f"p{model % P}", f"m{model}", 100 + i, 20 + i % 50)
        collector.record_stream(f"p{model % P}", f"m{model}", "completed", 1.0, first_chunk_seconds=0.2)
    collector.record_cache_hit() if i % 3 else collector.record_cache_miss()
    collector.record_db_query(0.002)
    collector.record_external_api_call(f"s{i % 5}", error=i % 7 == 0)
exporter = PrometheusExporter(collector)
scrape = exporter.export if case == "export" else collector.to_dict
for _ in range(2 + n):
    scrape()
collector.close()
'''


def instructions(tree: str | None, case: str, scrapes: int) -> int:
    """Instructions of one child run (set-up, 2 warm-up scrapes and ``scrapes`` more)."""
    env = dict(os.environ, PYTHONHASHSEED="0")
    if tree is not None:
        env["PYTHONPATH"] = os.path.abspath(tree)
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-c", CHILD,
         case, str(scrapes)],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    match = re.search(r"Collected\s*:\s*(\d+)", out.stderr)
    if match is None:
        raise RuntimeError(f"no instruction count in valgrind output:\n{out.stderr[-2000:]}")
    return int(match.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", help="a source tree to measure (repeatable)")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind not installed (apt-get install valgrind)")
        return 1
    trees: list[str | None] = list(args.tree or [None])
    print(f"## Instructions per warm scrape (callgrind, {LONG} - {SHORT} scrapes, 50x10x20, 2,000 requests)\n")
    print("| tree | case | instructions/scrape |")
    print("|---|---|---|")
    for case in CASES:
        for tree in trees:
            per = (instructions(tree, case, LONG) - instructions(tree, case, SHORT)) / (LONG - SHORT)
            print(f"| {tree or 'installed'} | {case} | {per:,.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
