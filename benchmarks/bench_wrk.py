"""End to end under real gunicorn, driven by ``wrk``: server CPU time per request and
``/metrics`` latency during load, for bare Flask, prometheus_flask_exporter
(multiprocess), ours, and ours + ``label_request`` (issue 12).

Usage: python benchmarks/bench_wrk.py [--quick]
       (needs ``wrk``: ``apt-get install -y wrk``; run it in a network namespace of its
       own if other jobs bind ports: ``unshare -n sh -c 'ip link set lo up && python
       benchmarks/bench_wrk.py'``)

The app (``make_app()`` below, loaded by gunicorn as ``bench_wrk:make_app()``): 50 POST
routes ``/v1/eNN/chat`` (NN = 00..49, one URL rule each) whose view parses the JSON body
``{"model": "model-MM"}`` and answers a small JSON document naming the model and its
provider (``provider{MM % 10}``: 20 models, 2 per provider), and ``GET
/api/items/<int:item_id>``. Cases (``BENCH_WRK_CASE``):

* ``bare``: no metrics;
* ``pfe``: prometheus_flask_exporter's ``GunicornInternalPrometheusMetrics(app,
  group_by="url_rule")`` (multiprocess mode, ``/metrics`` on the app itself), with
  ``PROMETHEUS_MULTIPROC_DIR`` set and the ``child_exit`` hook its docs give;
* ``ours``: ``GatewayzMetrics(app)``, under ``-c python:flask_gatewayz_metrics.gunicorn_conf``;
* ``ours_labelled``: the same, and the chat view calls ``label_request(provider=...,
  model=...)``;
* ``ours_again``: ``ours`` once more, on a server of its own: the control. Its overhead
  differs from ``ours``'s only by the machine's noise, which the report shows beside the
  ratios (on the shared 2-core VM of ``benchmarks/README.md``, up to 3 µs per request, or
  0.08 of the ratio, between two identical servers in one run).

Every case runs under gunicorn with sync workers (4 workers: 2 cores, and the 4 worker
files a scrape merges in ``bench_steady_scrape.py``) and with gthread workers (2 workers x
4 threads: one process per core, 8 threads for wrk's 8 connections). All 10 servers run at
once (idle ones cost next to nothing) so the measurements can be interleaved.

``wrk -t1 -c8 -d3s`` (7 rounds; 2 with ``--quick``) with a Lua script: request ``n`` of a connection thread is
``GET /api/items/<n % 1000>`` when ``n % 4 == 0``, else ``POST /v1/e<n % 50>/chat`` with
model ``(n + n // 50) % 20`` (50 endpoints x 10 providers x 20 models).

* **CPU per request**: the run time of every thread of the master and of every worker
  (``/proc/<pid>/task/<tid>/schedstat``, nanoseconds; user and system time: earlier runs
  summed ``/proc/<pid>/stat``'s clock ticks, 10 ms each) before and after a wrk run
  without any scraper, divided by the requests wrk completed. Overhead = case - bare Flask of the same worker
  class and round; the ratio ours / pfe compares overheads. Rounds interleave every case
  (the order reverses every round); medians over rounds.
* **/metrics during load**: a separate, longer wrk run per case (6 s; 4 s with ``--quick``)
  with a scraper thread that fetches ``/metrics`` (a new connection each time) and sleeps
  150 ms between scrapes; p50 / p99 of the scrape's wall time (with ~30-50 scrapes, p99 is
  close to the maximum).

Checks (any failure raises): no non-2xx response from wrk; for ours and pfe the server's
own request total (``http_requests_total``, pfe's ``flask_http_request_total``) is at
least what wrk completed on that server (plus readiness probes) and at most that plus 8
per run (requests in flight when wrk stopped); for ``ours_labelled`` the chat routes'
``http_requests_total`` equals ``model_requests_total``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _common import median, spread, table  # noqa: E402

CASES = ("bare", "pfe", "ours", "ours_labelled", "ours_again")
CONNECTIONS = 8
SCRAPE_PAUSE = 0.15
LUA = r"""
local n = 0
local headers = {["Content-Type"] = "application/json"}
request = function()
  n = n + 1
  if n % 4 == 0 then
    return wrk.format("GET", "/api/items/" .. (n % 1000))
  end
  local path = string.format("/v1/e%02d/chat", n % 50)
  local body = string.format('{"model": "model-%02d"}', (n + math.floor(n / 50)) % 20)
  return wrk.format("POST", path, headers, body)
end
"""
PFE_CONF = """
from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics


def child_exit(server, worker):
    GunicornInternalPrometheusMetrics.mark_process_dead_on_child_exit(worker.pid)
"""


# ----------------------------------------------------------------- the app (in gunicorn)
def make_app():  # type: ignore[no-untyped-def]
    """The benchmark app for ``BENCH_WRK_CASE`` (gunicorn: ``bench_wrk:make_app()``)."""
    from flask import Flask, abort, request

    case = os.environ["BENCH_WRK_CASE"]
    app = Flask("bench_wrk")
    labelled = case == "ours_labelled"
    if labelled:
        from flask_gatewayz_metrics import label_request

    def chat():  # type: ignore[no-untyped-def]
        payload = request.get_json(silent=True)
        model = payload.get("model") if isinstance(payload, dict) else None
        if not isinstance(model, str) or not model.startswith("model-"):
            abort(400)
        provider = f"provider{int(model[6:]) % 10}"
        if labelled:
            label_request(provider=provider, model=model)
        return {"model": model, "provider": provider, "choices": [{"text": "ok"}]}

    for e in range(50):
        app.add_url_rule(f"/v1/e{e:02d}/chat", f"chat{e:02d}", chat, methods=["POST"])

    @app.get("/api/items/<int:item_id>")
    def item(item_id: int):  # type: ignore[no-untyped-def]
        return {"id": item_id, "name": f"item {item_id}"}

    if case == "pfe":
        from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics

        app.extensions["bench_pfe"] = GunicornInternalPrometheusMetrics(app, group_by="url_rule")
    elif case in ("ours", "ours_labelled", "ours_again"):
        from flask_gatewayz_metrics import GatewayzMetrics

        # BENCH_WRK_WINDOW_SECONDS: another window (bench_flask_instructions --gunicorn uses it
        # to keep a slot rotation out of the few counted requests).
        window = os.environ.get("BENCH_WRK_WINDOW_SECONDS")
        GatewayzMetrics(app, **({"window_seconds": float(window)} if window else {}))
    elif case != "bare":
        raise ValueError(case)
    return app


# ----------------------------------------------------------------- servers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    case: str
    worker_class: str
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    completed: int = 0  # requests wrk completed plus readiness probes
    runs: int = 0
    cpu_us: list[float] = field(default_factory=list)
    rps: list[float] = field(default_factory=list)
    scrape_ms: list[float] = field(default_factory=list)
    scrape_bytes: int = 0

    @property
    def name(self) -> str:
        return f"{self.case}/{self.worker_class}"

    def start(self, tmp: str, log: str) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in ("PROMETHEUS_MULTIPROC_DIR", "GATEWAYZ_METRICS_DIR")}
        env["BENCH_WRK_CASE"] = self.case
        args = [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{self.port}", "--pythonpath", HERE,
                "--log-level", "warning", "--timeout", "60"]
        if self.worker_class == "sync":
            args += ["-k", "sync", "-w", "4"]
        else:
            args += ["-k", "gthread", "-w", "2", "--threads", "4"]
        directory = os.path.join(tmp, self.name.replace("/", "-"))
        os.makedirs(directory)
        if self.case == "pfe":
            env["PROMETHEUS_MULTIPROC_DIR"] = directory
            conf = os.path.join(tmp, "pfe_gunicorn_conf.py")
            with open(conf, "w") as f:
                f.write(PFE_CONF)
            args += ["-c", conf]
        elif self.case.startswith("ours"):
            env["GATEWAYZ_METRICS_DIR"] = directory
            args += ["-c", "python:flask_gatewayz_metrics.gunicorn_conf"]
        args.append("bench_wrk:make_app()")
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(args, env=env, stdout=out, stderr=out, cwd=os.path.dirname(HERE))

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name}: gunicorn exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/items/1", timeout=5) as r:
                    r.read()
                self.completed += 1
                if len(worker_pids(self.proc.pid)) == (4 if self.worker_class == "sync" else 2):
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name}: not ready in 60 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=30) as r:
            return r.read()  # type: ignore[no-any-return]


def worker_pids(master: int) -> list[int]:
    pids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{master}/task"):
            with open(f"/proc/{master}/task/{task}/children") as f:
                pids += [int(p) for p in f.read().split()]
    except OSError:
        pass
    return pids


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` in nanoseconds: the first field of each
    ``/proc/<pid>/task/<tid>/schedstat`` (the scheduler's run time, user and system; 0
    for a process that is gone). ``/proc/<pid>/stat``'s utime and stime count clock ticks
    (10 ms): over a 3 s run at ~4,000 requests/s, ±1 tick on each of 5 processes is ±4 µs
    a request, as much as the overheads compared."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that just ended
    return total


def tree_ns(master: int) -> int:
    return cpu_ns(master) + sum(cpu_ns(p) for p in worker_pids(master))


# ----------------------------------------------------------------- wrk
def run_wrk(port: int, seconds: int, script: str) -> tuple[int, float, str]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "-s", script, f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, timeout=seconds + 60, check=True,
    ).stdout
    match = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    if not match:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad:
        raise RuntimeError(f"port {port}: {bad.group(1)} non-2xx responses:\n{out}")
    elapsed = float(match.group(2)) / (1000 if match.group(3) == "ms" else 1)
    errors = re.search(r"Socket errors: .*", out)
    return int(match.group(1)), int(match.group(1)) / elapsed, errors.group(0) if errors else ""


def measure_cpu(server: Server, seconds: int, script: str) -> float:
    """Server CPU µs per completed request over one wrk run (no scraper)."""
    assert server.proc is not None
    before = tree_ns(server.proc.pid)
    done, rps, _ = run_wrk(server.port, seconds, script)
    time.sleep(0.3)  # let the last in-flight requests finish
    after = tree_ns(server.proc.pid)
    server.completed += done
    server.runs += 1
    server.rps.append(rps)
    return (after - before) / 1e3 / done


def measure_scrapes(server: Server, seconds: int, script: str) -> None:
    """wrk drives the app while a thread scrapes ``/metrics`` every ~150 ms."""
    stop = threading.Event()
    errors: list[str] = []

    def scraper() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                body = server.get("/metrics")
            except OSError as exc:
                errors.append(repr(exc))
            else:
                server.scrape_ms.append((time.perf_counter() - t0) * 1000)
                server.scrape_bytes = len(body)
            stop.wait(SCRAPE_PAUSE)

    thread = threading.Thread(target=scraper)
    thread.start()
    try:
        done, _, _ = run_wrk(server.port, seconds, script)
    finally:
        stop.set()
        thread.join()
    server.completed += done
    server.runs += 1
    if errors:
        raise RuntimeError(f"{server.name}: /metrics failed: {errors[:3]}")


# ----------------------------------------------------------------- checks
def sample_sum(body: str, name: str, label_filter: str = "") -> float:
    total = 0.0
    for line in body.splitlines():
        if line.startswith(name + "{") and label_filter in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def check(server: Server) -> str:
    if server.case == "bare":
        return ""
    time.sleep(0.5)
    body = server.get("/metrics").decode()
    name = "flask_http_request_total" if server.case == "pfe" else "http_requests_total"
    total = sample_sum(body, name)
    low, high = server.completed, server.completed + CONNECTIONS * server.runs
    if not low <= total <= high:
        raise RuntimeError(f"{server.name}: server counted {total:,.0f} requests, wrk completed {low:,} (max {high:,})")
    note = f"{server.name}: server counted {total:,.0f}, wrk + probes completed {low:,}"
    if server.case == "ours_labelled":
        chats = sample_sum(body, "http_requests_total", 'endpoint="/v1/e')
        models = sample_sum(body, "model_requests_total")
        if chats != models or not chats:
            raise RuntimeError(f"{server.name}: chat requests {chats:,.0f} but model requests {models:,.0f}")
        note += f"; chat requests = model requests = {models:,.0f}"
    return note


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98] if len(values) > 1 else values[0]


# ----------------------------------------------------------------- main
def main() -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install -y wrk")
    quick = "--quick" in sys.argv
    seconds = 3
    scrape_seconds = 4 if quick else 6
    rounds = 2 if quick else 7
    tmp = tempfile.mkdtemp(prefix="bench-wrk-")
    script = os.path.join(tmp, "mix.lua")
    with open(script, "w") as f:
        f.write(LUA)
    log = os.path.join(tmp, "gunicorn.log")
    servers = [Server(case, wc) for wc in ("sync", "gthread") for case in CASES]
    load_before = os.getloadavg()
    started = time.monotonic()
    notes: list[str] = []
    try:
        for s in servers:
            s.start(tmp, log)
        for s in servers:
            s.wait_ready()
        for s in servers:  # warm-up: imports, first label sets, files
            s.completed += run_wrk(s.port, 1, script)[0]
            s.runs += 1
        for r in range(rounds):
            for s in servers if r % 2 == 0 else servers[::-1]:
                s.cpu_us.append(measure_cpu(s, seconds, script))
        for s in servers:
            if s.case != "bare":
                measure_scrapes(s, scrape_seconds, script)
        notes = [n for n in (check(s) for s in servers) if n]
    except Exception:
        with open(log) as f:
            sys.stderr.write(f.read()[-4000:])
        raise
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    report(servers, seconds, rounds, load_before, time.monotonic() - started, notes)


def report(servers: list[Server], seconds: int, rounds: int, load_before: tuple[float, ...], took: float,
           notes: list[str]) -> None:
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; load average before "
          f"{' '.join(f'{x:.2f}' for x in load_before)}, after "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; {took:.0f} s\n")
    print(f"## Server CPU time per request under gunicorn, wrk -t1 -c{CONNECTIONS} -d{seconds}s "
          f"(median of {rounds} interleaved rounds; master + workers run time (schedstat), µs per request)\n")
    by = {(s.case, s.worker_class): s for s in servers}
    rows = []
    ratio_rows = []
    for wc in ("sync", "gthread"):
        bare = by[("bare", wc)]
        overhead: dict[str, list[float]] = {}
        for case in CASES:
            s = by[(case, wc)]
            if case != "bare":
                overhead[case] = [a - b for a, b in zip(s.cpu_us, bare.cpu_us, strict=True)]
            rows.append((
                wc, case, f"{median(s.cpu_us):.0f}", spread(s.cpu_us),
                f"{median(overhead[case]):.0f}" if case in overhead else "-",
                f"{min(s.cpu_us) - min(bare.cpu_us):.0f}" if case in overhead else "-",
                f"{median(s.rps):,.0f}",
            ))
        pfe = median(overhead["pfe"])
        pfe_min = min(by[("pfe", wc)].cpu_us) - min(bare.cpu_us)
        ratio_rows.append((
            wc, f"{median(overhead['ours']) / pfe:.2f}", f"{median(overhead['ours_labelled']) / pfe:.2f}",
            f"{median(overhead['ours_again']) / pfe:.2f}",
            f"{(min(by[('ours', wc)].cpu_us) - min(bare.cpu_us)) / pfe_min:.2f}",
            f"{(min(by[('ours_labelled', wc)].cpu_us) - min(bare.cpu_us)) / pfe_min:.2f}",
        ))
    print(table(["workers", "case", "CPU µs/request", "min..max", "overhead vs bare µs (paired median)",
                 "overhead (min - min)", "wrk req/s"], rows))
    print("\nOverhead ratios (same run; target <= 0.33):\n")
    print(table(["workers", "ours / pfe", "ours + label_request / pfe", "control: ours again / pfe",
                 "ours / pfe (min - min)", "ours + label_request / pfe (min - min)"], ratio_rows))
    print(f"\n## /metrics while wrk drives the app (scrape every ~{SCRAPE_PAUSE * 1000:.0f} ms + its own time)\n")
    rows = []
    for s in servers:
        if s.case != "bare":
            rows.append((s.worker_class, s.case, len(s.scrape_ms), f"{median(s.scrape_ms):.1f}",
                         f"{p99(s.scrape_ms):.1f}", f"{max(s.scrape_ms):.1f}", f"{s.scrape_bytes:,}"))
    print(table(["workers", "case", "scrapes", "p50 ms", "p99 ms", "max ms", "body bytes"], rows))
    print("\nWorkers: sync 4 workers; gthread 2 workers x 4 threads.")
    print("Checks passed (no non-2xx; server-side counts match wrk):")
    for note in notes:
        print(f"- {note}")


if __name__ == "__main__":
    main()
