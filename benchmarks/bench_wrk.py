"""End to end under real gunicorn, driven by ``wrk``: server CPU time per request and
``/metrics`` latency during load, for bare Flask, prometheus_flask_exporter
(multiprocess), ours, and ours + ``label_request`` (issue 12).

Usage: python benchmarks/bench_wrk.py [--quick] [--rounds N]
       (needs ``wrk``: ``apt-get install -y wrk``; run it in a network namespace of its
       own if other jobs bind ports: ``unshare -n sh -c 'ip link set lo up && python
       benchmarks/bench_wrk.py'``)

The app (``make_app()`` below): 50 POST routes ``/v1/eNN/chat`` (NN = 00..49, one URL
rule each) whose view parses the JSON body ``{"model": "model-MM"}`` and answers a small
JSON document naming the model and its provider (``provider{MM % 10}``: 20 models, 2 per
provider), and ``GET /api/items/<int:item_id>``. Cases:

* ``bare``: no metrics;
* ``pfe``: prometheus_flask_exporter's ``GunicornInternalPrometheusMetrics(app,
  group_by="url_rule")`` (multiprocess mode, ``/metrics`` on the app itself), with
  ``PROMETHEUS_MULTIPROC_DIR`` set and the ``child_exit`` hook its docs give;
* ``ours``: ``GatewayzMetrics(app)``, with ``flask_gatewayz_metrics.gunicorn``'s hooks;
* ``ours_labelled``: the same, and the chat view calls ``label_request(provider=...,
  model=...)``;
* ``ours_again``: ``ours`` once more, as an app of its own: the control. Its overhead
  differs from ``ours``'s only by the noise of the measurement, which the report shows
  beside the ratios.

**CPU per request: every case in the same worker processes.** One gunicorn server per
worker class (sync: 4 workers, 2 cores and the 4 worker files a scrape merges in
``bench_steady_scrape.py``; gthread: 2 workers x 4 threads, one process per core, 8
threads for wrk's 8 connections) serves every case, each its own Flask app mounted under
``/<case>`` (``make_shared_app()``: a dispatcher that moves the first path segment to
``SCRIPT_NAME``, the same few operations for every case). Earlier versions ran one server
per case; two servers running identical code then differed by up to 0.1 of the ratio in
one run (benchmarks/README.md, "Session 9"): a per-server effect (memory layout, which
core the workers ran on, their neighbours) as large as the differences measured. In one
set of processes it is the same for every case and cancels out of the differences.

``wrk -t1 -c8 -d3s`` runs one case at a time (``--rounds`` rounds, default 15; 2 with
``--quick``; the order of the cases reverses every round) with a Lua script: request
``n`` of a connection thread is ``GET /<case>/api/items/<n % 1000>`` when ``n % 4 == 0``,
else ``POST /<case>/v1/e<n % 50>/chat`` with model ``(n + n // 50) % 20`` (50 endpoints x
10 providers x 20 models). Two CPU figures per wrk run, each divided by the requests the
server answered in it:

* **server**: the run time of every thread of the master and of every worker
  (``/proc/<pid>/task/<tid>/schedstat``, nanoseconds, user and system), sockets,
  HTTP parsing and all;
* **app**: the CPU time of the thread that served each request (``time.thread_time_ns``)
  from gunicorn's ``pre_request`` hook to its ``post_request`` hook (the WSGI call, the
  body iterated and written to the socket; not accepting the connection and parsing the
  request), summed per worker in a small shared file (``APP_CPU_HOOKS``). Everything a
  metrics extension adds to a request happens in that span, and it leaves out most of
  the kernel's network work, whose noise is as large as the overheads compared.

Overhead = case - bare of the same round; the ratio compares medians of the per-round
overheads with pfe's.

**/metrics during load**: a server of its own per worker class and case (pfe, ours,
ours + ``label_request``; ``make_app()`` chosen by ``BENCH_WRK_CASE``), a wrk run of 6 s
(4 s with ``--quick``) with a scraper thread that fetches ``/metrics`` (a new connection
each time) and sleeps 150 ms between scrapes; p50 / p99 of the scrape's wall time (with
~30-50 scrapes, p99 is close to the maximum).

Checks (any failure raises): no non-2xx response from wrk; for ours and pfe each app's
own request total (``http_requests_total``, pfe's ``flask_http_request_total``) is at
least what wrk completed on it (plus readiness probes) and at most that plus 8 per run
(requests in flight when wrk stopped); for ``ours_labelled`` the chat routes'
``http_requests_total`` equals ``model_requests_total``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import statistics
import struct
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
SCRAPED = ("pfe", "ours", "ours_labelled")
WORKER_CLASSES = ("sync", "gthread")
CONNECTIONS = 8
SCRAPE_PAUSE = 0.15
LUA = r"""
local n = 0
local headers = {["Content-Type"] = "application/json"}
request = function()
  n = n + 1
  if n % 4 == 0 then
    return wrk.format("GET", PREFIX .. "/api/items/" .. (n % 1000))
  end
  local path = PREFIX .. string.format("/v1/e%02d/chat", n % 50)
  local body = string.format('{"model": "model-%02d"}', (n + math.floor(n / 50)) % 20)
  return wrk.format("POST", path, headers, body)
end
"""
PFE_CONF = """
from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics


def child_exit(server, worker):
    GunicornInternalPrometheusMetrics.mark_process_dead_on_child_exit(worker.pid)
"""
SHARED_CONF = """
from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics

from flask_gatewayz_metrics.gunicorn import child_exit as gatewayz_child_exit
from flask_gatewayz_metrics.gunicorn import on_exit, prepare_metrics_dir

prepare_metrics_dir()


def child_exit(server, worker):
    GunicornInternalPrometheusMetrics.mark_process_dead_on_child_exit(worker.pid)
    gatewayz_child_exit(server, worker)
"""
APP_CPU_HOOKS = """
import mmap as _mmap
import os as _os
import struct as _struct
import time as _time

_cpu = {}


def post_fork(server, worker):
    # Two int64 per worker, in a file of its own: CPU ns of the requests served, and their count.
    fd = _os.open(_os.path.join(_os.environ["BENCH_WRK_APP_CPU"], str(_os.getpid())), _os.O_RDWR | _os.O_CREAT)
    _os.ftruncate(fd, 16)
    _cpu["map"] = _mmap.mmap(fd, 16)
    _os.close(fd)


def pre_request(worker, req):
    req.bench_cpu_start = _time.thread_time_ns()


def post_request(worker, req, environ, resp):
    spent = _time.thread_time_ns() - req.bench_cpu_start
    total, count = _struct.unpack_from("qq", _cpu["map"])
    _struct.pack_into("qq", _cpu["map"], 0, total + spent, count + 1)
"""


# ----------------------------------------------------------------- the apps (in gunicorn)
def make_app(case: str | None = None):  # type: ignore[no-untyped-def]
    """The benchmark app for ``case`` (default ``BENCH_WRK_CASE``; gunicorn:
    ``bench_wrk:make_app()``)."""
    from flask import Flask, abort, request

    case = case or os.environ["BENCH_WRK_CASE"]
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

        options: dict[str, object] = {"app_name": case}  # several in one process: a directory each
        # BENCH_WRK_WINDOW_SECONDS: another window (bench_flask_instructions --gunicorn uses it
        # to keep a slot rotation out of the few counted requests).
        window = os.environ.get("BENCH_WRK_WINDOW_SECONDS")
        if window:
            options["window_seconds"] = float(window)
        GatewayzMetrics(app, **options)
    elif case != "bare":
        raise ValueError(case)
    return app


def make_shared_app():  # type: ignore[no-untyped-def]
    """Every case's app in one WSGI app, each under ``/<case>`` (gunicorn:
    ``bench_wrk:make_shared_app()``)."""
    apps = {case: make_app(case).wsgi_app for case in CASES}
    # (app.wsgi_app, what app.__call__ calls: the same for every case, and one call less.)

    def dispatch(environ, start_response):  # type: ignore[no-untyped-def]
        _, case, rest = environ["PATH_INFO"].split("/", 2)
        environ["SCRIPT_NAME"] = "/" + case
        environ["PATH_INFO"] = "/" + rest
        return apps[case](environ, start_response)

    return dispatch


# ----------------------------------------------------------------- servers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """One gunicorn server: every case mounted under ``/<case>`` (``case`` None), or one
    case's app at the root."""

    worker_class: str
    case: str | None = None
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    app_cpu_dir: str = ""

    @property
    def name(self) -> str:
        return f"{self.case or 'shared'}/{self.worker_class}"

    def start(self, tmp: str, log: str) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in ("PROMETHEUS_MULTIPROC_DIR", "GATEWAYZ_METRICS_DIR")}
        args = [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{self.port}", "--pythonpath", HERE,
                "--log-level", "warning", "--timeout", "60"]
        if self.worker_class == "sync":
            args += ["-k", "sync", "-w", "4"]
        else:
            args += ["-k", "gthread", "-w", "2", "--threads", "4"]
        directory = os.path.join(tmp, self.name.replace("/", "-"))
        os.makedirs(directory)
        conf = os.path.join(directory, "gunicorn_conf.py")
        if self.case is None:
            env["PROMETHEUS_MULTIPROC_DIR"] = os.path.join(directory, "prometheus")
            env["GATEWAYZ_METRICS_DIR"] = os.path.join(directory, "gatewayz")
            env["BENCH_WRK_APP_CPU"] = self.app_cpu_dir = os.path.join(directory, "app-cpu")
            for path in (env["PROMETHEUS_MULTIPROC_DIR"], self.app_cpu_dir):
                os.makedirs(path)
            with open(conf, "w") as f:
                f.write(SHARED_CONF + APP_CPU_HOOKS)
            args += ["-c", conf, "bench_wrk:make_shared_app()"]
        else:
            env["BENCH_WRK_CASE"] = self.case
            if self.case == "pfe":
                env["PROMETHEUS_MULTIPROC_DIR"] = directory
                with open(conf, "w") as f:
                    f.write(PFE_CONF)
                args += ["-c", conf]
            elif self.case.startswith("ours"):
                env["GATEWAYZ_METRICS_DIR"] = directory
                args += ["-c", "python:flask_gatewayz_metrics.gunicorn_conf"]
            args.append("bench_wrk:make_app()")
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(args, env=env, stdout=out, stderr=out, cwd=os.path.dirname(HERE))

    def wait_ready(self, completed: dict[str, int]) -> None:
        """Until every worker runs (each readiness probe counted in ``completed``)."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name}: gunicorn exited with {self.proc.returncode}")
            try:
                for case in CASES if self.case is None else ("",):
                    self.get(f"/{case}/api/items/1" if case else "/api/items/1")
                    completed[case or str(self.case)] += 1
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

    def app_cpu(self) -> tuple[int, int]:
        """CPU ns of the requests the workers served so far (``APP_CPU_HOOKS``), and their count."""
        total = count = 0
        for name in os.listdir(self.app_cpu_dir):
            with open(os.path.join(self.app_cpu_dir, name), "rb") as f:
                spent, served = struct.unpack("qq", f.read(16))
            total += spent
            count += served
        return total, count


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
def lua_script(tmp: str, prefix: str) -> str:
    """The request mix under ``prefix`` ("" or "/<case>"), as a wrk script file."""
    path = os.path.join(tmp, f"mix{prefix.replace('/', '-')}.lua")
    with open(path, "w") as f:
        f.write(f'PREFIX = "{prefix}"\n{LUA}')
    return path


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


@dataclass
class CpuRuns:
    """The CPU figures of one case under one worker class, a value per round."""

    server_us: list[float] = field(default_factory=list)
    app_us: list[float] = field(default_factory=list)
    rps: list[float] = field(default_factory=list)


def measure_cpu(server: Server, seconds: int, script: str, runs: CpuRuns) -> int:
    """One wrk run (no scraper) against the shared ``server``: its CPU µs per request
    appended to ``runs``; returns the requests wrk completed."""
    assert server.proc is not None
    before, app_before = tree_ns(server.proc.pid), server.app_cpu()
    done, rps, _ = run_wrk(server.port, seconds, script)
    time.sleep(0.3)  # let the last in-flight requests finish
    after, app_after = tree_ns(server.proc.pid), server.app_cpu()
    served = app_after[1] - app_before[1]
    runs.server_us.append((after - before) / 1e3 / served)
    runs.app_us.append((app_after[0] - app_before[0]) / 1e3 / served)
    runs.rps.append(rps)
    return done


def measure_scrapes(server: Server, seconds: int, script: str) -> tuple[list[float], int, int]:
    """wrk drives the app while a thread scrapes ``/metrics`` every ~150 ms: the scrapes'
    wall times in ms, the last body's size, and the requests wrk completed."""
    stop = threading.Event()
    errors: list[str] = []
    times: list[float] = []
    size = 0

    def scraper() -> None:
        nonlocal size
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                body = server.get("/metrics")
            except OSError as exc:
                errors.append(repr(exc))
            else:
                times.append((time.perf_counter() - t0) * 1000)
                size = len(body)
            stop.wait(SCRAPE_PAUSE)

    thread = threading.Thread(target=scraper)
    thread.start()
    try:
        done, _, _ = run_wrk(server.port, seconds, script)
    finally:
        stop.set()
        thread.join()
    if errors:
        raise RuntimeError(f"{server.name}: /metrics failed: {errors[:3]}")
    return times, size, done


# ----------------------------------------------------------------- checks
def sample_sum(body: str, name: str, label_filter: str = "") -> float:
    total = 0.0
    for line in body.splitlines():
        if line.startswith(name + "{") and label_filter in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def check(server: Server, case: str, completed: int, runs: int) -> str:
    """That ``case``'s app on ``server`` counted what wrk completed on it (see the module
    docstring); a line for the report."""
    if case == "bare":
        return ""
    time.sleep(0.5)
    body = server.get("/metrics" if server.case else f"/{case}/metrics").decode()
    name = "flask_http_request_total" if case == "pfe" else "http_requests_total"
    total = sample_sum(body, name)
    low, high = completed, completed + CONNECTIONS * runs
    where = f"{case} ({server.name})"
    if not low <= total <= high:
        raise RuntimeError(f"{where}: counted {total:,.0f} requests, wrk completed {low:,} (max {high:,})")
    note = f"{where}: counted {total:,.0f}, wrk + probes completed {low:,}"
    if case == "ours_labelled":
        chats = sample_sum(body, "http_requests_total", 'endpoint="/v1/e')
        models = sample_sum(body, "model_requests_total")
        if chats != models or not chats:
            raise RuntimeError(f"{where}: chat requests {chats:,.0f} but model requests {models:,.0f}")
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
    rounds = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 2 if quick else 15
    tmp = tempfile.mkdtemp(prefix="bench-wrk-")
    scripts = {case: lua_script(tmp, f"/{case}") for case in CASES}
    root_script = lua_script(tmp, "")
    log = os.path.join(tmp, "gunicorn.log")
    shared = {wc: Server(wc) for wc in WORKER_CLASSES}
    alone = {(wc, case): Server(wc, case) for wc in WORKER_CLASSES for case in SCRAPED}
    servers = [*shared.values(), *alone.values()]
    completed: dict[tuple[str, str], int] = {}  # (server name, case): requests completed
    wrk_runs: dict[tuple[str, str], int] = {}
    cpu = {(wc, case): CpuRuns() for wc in WORKER_CLASSES for case in CASES}
    scrapes: dict[tuple[str, str], tuple[list[float], int]] = {}
    load_before = os.getloadavg()
    started = time.monotonic()
    notes: list[str] = []

    def count(server: Server, case: str, done: int) -> None:
        completed[(server.name, case)] = completed.get((server.name, case), 0) + done
        wrk_runs[(server.name, case)] = wrk_runs.get((server.name, case), 0) + 1

    try:
        for s in servers:
            s.start(tmp, log)
        for s in servers:
            probes: dict[str, int] = dict.fromkeys(CASES, 0)
            s.wait_ready(probes)
            for case, n in probes.items():
                completed[(s.name, case)] = n
        for s in shared.values():  # warm-up: imports, first label sets, files
            for case in CASES:
                count(s, case, run_wrk(s.port, 1, scripts[case])[0])
        order = [(wc, case) for wc in WORKER_CLASSES for case in CASES]
        for r in range(rounds):
            for wc, case in order if r % 2 == 0 else order[::-1]:
                count(shared[wc], case, measure_cpu(shared[wc], seconds, scripts[case], cpu[(wc, case)]))
        for (wc, case), s in alone.items():
            times, size, done = measure_scrapes(s, scrape_seconds, root_script)
            count(s, case, done)
            scrapes[(wc, case)] = (times, size)
        for s in servers:
            for case in CASES if s.case is None else (s.case,):
                note = check(s, case, completed[(s.name, case)], wrk_runs.get((s.name, case), 0))
                if note:
                    notes.append(note)
    except Exception:
        with open(log) as f:
            sys.stderr.write(f.read()[-4000:])
        raise
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    report(cpu, scrapes, seconds, rounds, load_before, time.monotonic() - started, notes)


def report(cpu: dict[tuple[str, str], CpuRuns], scrapes: dict[tuple[str, str], tuple[list[float], int]],
           seconds: int, rounds: int, load_before: tuple[float, ...], took: float, notes: list[str]) -> None:
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; load average before "
          f"{' '.join(f'{x:.2f}' for x in load_before)}, after "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; {took:.0f} s\n")
    print(f"## CPU time per request under gunicorn, every case in the same workers, wrk -t1 -c{CONNECTIONS} "
          f"-d{seconds}s (median of {rounds} interleaved rounds, µs per request)\n")
    rows = []
    ratio_rows = []
    for wc in WORKER_CLASSES:
        for what in ("server", "app"):
            values = {case: cpu[(wc, case)].server_us if what == "server" else cpu[(wc, case)].app_us
                      for case in CASES}
            bare = values["bare"]
            overhead = {case: [a - b for a, b in zip(values[case], bare, strict=True)] for case in CASES[1:]}
            for case in CASES:
                rows.append((
                    wc, what, case, f"{median(values[case]):.1f}", spread(values[case]),
                    f"{median(overhead[case]):.1f}" if case in overhead else "-",
                    f"{median(cpu[(wc, case)].rps):,.0f}" if what == "server" else "",
                ))
            pfe = median(overhead["pfe"])
            ratio_rows.append((
                wc, what, *(f"{median(overhead[case]) / pfe:.2f}" for case in ("ours", "ours_labelled", "ours_again")),
                f"{median([o / p for o, p in zip(overhead['ours'], overhead['pfe'], strict=True)]):.2f}",
            ))
    print(table(["workers", "CPU", "case", "µs/request", "min..max", "overhead vs bare µs (paired median)",
                 "wrk req/s"], rows))
    print("\nserver: master + workers run time (schedstat); app: the serving thread's CPU time from "
          "pre_request to post_request.\n\nOverhead ratios (same run; target <= 0.33):\n")
    print(table(["workers", "CPU", "ours / pfe", "ours + label_request / pfe", "control: ours again / pfe",
                 "ours / pfe (median of per-round ratios)"], ratio_rows))
    print(f"\n## /metrics while wrk drives the app (a server per case; scrape every ~{SCRAPE_PAUSE * 1000:.0f} ms "
          "+ its own time)\n")
    rows = []
    for (wc, case), (times, size) in scrapes.items():
        rows.append((wc, case, len(times), f"{median(times):.1f}", f"{p99(times):.1f}", f"{max(times):.1f}",
                     f"{size:,}"))
    print(table(["workers", "case", "scrapes", "p50 ms", "p99 ms", "max ms", "body bytes"], rows))
    print("\nWorkers: sync 4 workers; gthread 2 workers x 4 threads.")
    print("Checks passed (no non-2xx; server-side counts match wrk):")
    for note in notes:
        print(f"- {note}")


if __name__ == "__main__":
    main()
