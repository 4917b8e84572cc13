"""Zero configuration under every server the README names: exact totals on every scrape.

Each test serves ``tests/deploy_app.py`` (``GatewayzMetrics(app)``, no environment, no
config file) with a real server, then runs 20+ rounds of traffic: after each round a
scrape, answered by whichever process the server picks, must report exactly what the
clients received, and every counter and histogram sample must be at least what the
previous scrape showed. Servers get their own ``TMPDIR``, so their automatic metrics
directories are created (and can be inspected) under the test's temporary directory.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from servers import REPO_ROOT, free_port, http, send_concurrently

pytestmark = pytest.mark.slow

TESTS_DIR = Path(__file__).resolve().parent
READY_TIMEOUT = 40.0
ROUNDS = 20
Key = tuple[str, tuple[tuple[str, str], ...]]


@dataclass
class Running:
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    tmp: Path

    def metrics_dirs(self) -> list[Path]:
        """The automatic server directories created under this server's TMPDIR."""
        return sorted(self.tmp.glob("gatewayz-metrics-*/server-*"))


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[object]:
    """Start a server command (``{port}`` is replaced) with the test app on the path; always stopped."""
    started: list[Running] = []

    def start(name: str, *command: str, **env: str) -> Running:
        port = free_port()
        tmp = tmp_path / f"tmp-{name}"
        tmp.mkdir(exist_ok=True)
        environment = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAYZ_METRICS_", "DEPLOY_APP_"))}
        environment.update(PYTHONPATH=os.pathsep.join([str(TESTS_DIR), str(REPO_ROOT)]), TMPDIR=str(tmp), **env)
        log = tmp_path / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [part.replace("{port}", str(port)) for part in command], cwd=REPO_ROOT, env=environment,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        server = Running(f"http://127.0.0.1:{port}", process, log, tmp)
        started.append(server)
        wait_ready(server)
        return server

    yield start
    for server in started:
        stop_group(server.process)


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL to the whole process group (an upgraded gunicorn master is in it)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if process.poll() is None:
        process.wait(timeout=10)


def wait_ready(server: Running) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"server exited with {server.process.returncode}:\n{server.log.read_text()}")
        try:
            if http("GET", server.url + "/pid", timeout=2.0)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    pytest.fail(f"server not ready after {READY_TIMEOUT}s:\n{server.log.read_text()}")


def wait_until(condition: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def children(pid: int) -> set[int]:
    try:
        return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except OSError:
        return set()


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@dataclass
class Tally:
    """What the clients received so far, and the counters the last scrape served."""

    ok: int = 0
    failed: int = 0
    imports: int | None = None
    """External calls recorded while the app was imported (None: not checked)."""
    scrapes: int = 0
    previous: dict[Key, float] = field(default_factory=dict)

    def rounds(self, url: str, count: int = ROUNDS, ok: int = 4, fail: int = 2) -> None:
        """``count`` rounds: ``ok`` + ``fail`` requests sent concurrently, then one checked scrape."""
        for _ in range(count):
            statuses = send_concurrently(url, [("GET", "/ok", None)] * ok + [("GET", "/fail", None)] * fail, 3, 30.0)
            assert statuses == Counter({200: ok, 500: fail})
            self.ok += statuses[200]
            self.failed += statuses[500]
            self.check(url)

    def check(self, url: str) -> None:
        """One scrape: exact totals, and no counter or histogram sample lower than before."""
        status, body = http("GET", url + "/metrics")
        assert status == 200
        samples: dict[Key, float] = {}
        monotonic: dict[Key, float] = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                samples[key] = sample.value
                # process_/python_ families are prometheus_client's per-process collectors,
                # served from whichever process answers (not this part's concern).
                if (
                    family.type in ("counter", "histogram")
                    and not family.name.startswith(("process_", "python_"))
                    and not sample.name.endswith("_created")
                ):
                    monotonic[key] = sample.value
        expected = {
            ("http_requests_total", (("endpoint", "/ok"), ("method", "GET"))): float(self.ok),
            ("http_requests_total", (("endpoint", "/fail"), ("method", "GET"))): float(self.failed),
            ("http_request_errors_total", (("endpoint", "/fail"), ("method", "GET"))): float(self.failed),
            ("http_response_status_total", (("endpoint", "/ok"), ("status", "200"))): float(self.ok),
            ("http_response_status_total", (("endpoint", "/fail"), ("status", "500"))): float(self.failed),
            ("provider_requests_total", (("provider", "openai"),)): float(self.ok),
        }
        if self.imports is not None:
            expected["external_api_calls_total", (("service", "import"),)] = float(self.imports)
        assert {key: samples.get(key) for key in expected} == expected, f"scrape {self.scrapes + 1}"
        lower = {key: (before, monotonic.get(key)) for key, before in self.previous.items()
                 if monotonic.get(key, -1.0) < before}  # fmt: skip
        assert not lower, f"counters went down or vanished at scrape {self.scrapes + 1}: {lower}"
        self.previous = monotonic
        self.scrapes += 1


def health(url: str) -> dict[str, object]:
    status, body = http("GET", url + "/metrics/health")
    assert status == 200
    report: dict[str, object] = json.loads(body)
    return report


def assert_shared_automatic(server: Running) -> None:
    """Health names the one automatic directory, chosen by the server's root, without a warning
    (the status itself is degraded: a third of the test traffic fails on purpose)."""
    report = health(server.url)
    directory = report["metrics_directory"]
    assert isinstance(directory, dict)
    assert directory["mode"] == "server", directory
    assert directory["server_root_pid"] == server.process.pid
    assert directory["warning"] is None
    assert report["reasons"] == [f"error rate {report['error_rate']:.3f} >= 0.05"]
    assert [str(p) for p in server.metrics_dirs()] == [directory["path"]]


def installed_script(name: str) -> str:
    """The console script pip installed for this interpreter (venv bin, scripts dir, PATH)."""
    candidates = [Path(sys.executable).with_name(name), Path(sysconfig.get_path("scripts")) / name]
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    found = shutil.which(name)
    assert found, f"{name} is not installed (it is in the test extra)"
    return found


GUNICORN_SCRIPT = installed_script("gunicorn")
GUNICORN = (sys.executable, GUNICORN_SCRIPT, "--bind", "127.0.0.1:{port}")
"""As the ``gunicorn`` script runs (``python -m gunicorn`` cannot survive USR2: the re-exec
as ``python .../gunicorn/__main__.py`` puts gunicorn's own ``http`` package first on the path)."""


def test_gunicorn_sync_recycled_workers_no_config(launch: object) -> None:
    """gunicorn sync, 3 workers recycled every ~8 requests, no -c, no env: every scrape exact."""
    server = launch("sync", *GUNICORN, "-w", "3", "--max-requests", "8", "--max-requests-jitter", "3",  # type: ignore[operator]
                    "deploy_app:app")
    tally = Tally()
    tally.rounds(server.url)
    assert_shared_automatic(server)
    assert "Autorestarting worker" in server.log.read_text()  # workers really were recycled
    assert server.log.read_text().count("flask_gatewayz_metrics: metrics directory") >= 1


def test_gunicorn_sync_preload(launch: object) -> None:
    """gunicorn --preload (the app loaded in the master, workers forked and recycled): exact."""
    server = launch("preload", *GUNICORN, "-w", "2", "--preload", "--max-requests", "10",  # type: ignore[operator]
                    "deploy_app:app", DEPLOY_APP_RECORD_AT_IMPORT="1")
    tally = Tally(imports=1)
    tally.rounds(server.url)
    assert_shared_automatic(server)


def test_gunicorn_gthread(launch: object) -> None:
    """gunicorn gthread workers (4 threads each): exact."""
    server = launch("gthread", *GUNICORN, "-w", "2", "-k", "gthread", "--threads", "4",  # type: ignore[operator]
                    "deploy_app:app")
    Tally().rounds(server.url)
    assert_shared_automatic(server)


def test_gunicorn_gevent(launch: object) -> None:
    """gunicorn gevent workers: exact."""
    server = launch("gevent", *GUNICORN, "-w", "2", "-k", "gevent", "deploy_app:app")  # type: ignore[operator]
    Tally().rounds(server.url)
    assert_shared_automatic(server)


UWSGI = (
    installed_script("uwsgi"), "--master", "--processes", "3", "--http-socket", "127.0.0.1:{port}",
    "--module", "deploy_app:app", "--home", sys.prefix, "--need-app", "--die-on-term", "--disable-logging",
)


def test_uwsgi_default_mode_with_a_record_at_import(launch: object) -> None:
    """uWSGI's default mode: the app (and a record) made in the master, workers forked from C: exact."""
    server = launch("uwsgi", *UWSGI, DEPLOY_APP_RECORD_AT_IMPORT="1")  # type: ignore[operator]
    tally = Tally(imports=1)
    tally.rounds(server.url)
    assert_shared_automatic(server)


def test_uwsgi_lazy_apps(launch: object) -> None:
    """uWSGI --lazy-apps: each of 3 workers imports the app (and records once): exact."""
    server = launch("uwsgi-lazy", *UWSGI, "--lazy-apps", DEPLOY_APP_RECORD_AT_IMPORT="1")  # type: ignore[operator]
    wait_until(lambda: b'external_api_calls_total{service="import"} 3.0' in http("GET", server.url + "/metrics")[1],
               "all three workers to load the app")
    tally = Tally(imports=3)
    tally.rounds(server.url)
    assert_shared_automatic(server)


def test_waitress(launch: object) -> None:
    """waitress (one process, threads): exact; the directory is removed when it exits."""
    server = launch("waitress", sys.executable, "-m", "waitress", "--listen=127.0.0.1:{port}",  # type: ignore[operator]
                    "--threads=4", "deploy_app:app")
    Tally().rounds(server.url)
    assert_shared_automatic(server)
    server.process.send_signal(signal.SIGINT)
    # A bound, not a timing check (waitress gives its threads up to 5 s). Earlier hangs
    # here were a suite started in the background with SIGINT ignored: see conftest.py.
    server.process.wait(timeout=30)
    assert server.metrics_dirs() == []


def test_dev_server_threaded(launch: object) -> None:
    """The Flask dev server, threaded: exact."""
    server = launch("dev", sys.executable, str(TESTS_DIR / "deploy_app.py"), "{port}")  # type: ignore[operator]
    Tally().rounds(server.url)
    assert_shared_automatic(server)


def test_dev_server_process_per_request(launch: object) -> None:
    """The dev server with processes=4 (a fork per request): exact, and dead files stay few and small."""
    server = launch("dev-procs", sys.executable, str(TESTS_DIR / "deploy_app.py"), "{port}", "4")  # type: ignore[operator]
    tally = Tally()
    tally.rounds(server.url)
    assert_shared_automatic(server)
    # 240 requests with no scrape in between: one file per request until new processes
    # fold them, so the directory stays bounded in files and bytes.
    statuses = send_concurrently(server.url, [("GET", "/ok", None)] * 240, 4, 60.0)
    tally.ok += statuses[200]
    [directory] = server.metrics_dirs()
    files = list(directory.glob("*.gwzm"))
    assert len(files) <= 64 + 4
    # Each file holds one request: the records it needs, in a file that starts at 16 KiB
    # and doubles (far below this bound since the sketch buckets are stored sparsely).
    assert max(f.stat().st_size for f in files) <= 256 * 1024
    assert sum(f.stat().st_size for f in files) <= (64 + 4) * 256 * 1024
    tally.check(server.url)


def upgrade(old_master: int) -> int:
    """``kill -USR2``: the pid of the new master once it is serving."""
    before = children(old_master)
    os.kill(old_master, signal.SIGUSR2)
    new: list[int] = []

    def started() -> bool:
        new[:] = [pid for pid in children(old_master) - before if len(children(pid)) >= 2]
        return bool(new)

    wait_until(started, "the USR2 master and its workers")
    return new[0]


def test_gunicorn_usr2_and_hup_zero_config(launch: object) -> None:
    """No config: HUP, then USR2 with both masters' workers serving, then the old master gone
    and the new workers recycled: every scrape exact throughout. Started as ``python -X utf8
    gunicorn``, so the new master's command line differs (gunicorn re-executes without the
    interpreter options) and only ``GUNICORN_PID`` links it to the old one."""
    server = launch("usr2", sys.executable, "-X", "utf8", *GUNICORN[1:], "-w", "2",  # type: ignore[operator]
                    "--max-requests", "12", "deploy_app:app")
    master = server.process.pid
    tally = Tally()
    tally.rounds(server.url, 5)
    workers = children(master)
    os.kill(master, signal.SIGHUP)
    wait_until(lambda: not (children(master) & workers) and len(children(master)) == 2, "HUP's new workers")
    tally.rounds(server.url, 5)
    directory = server.metrics_dirs()
    new_master = upgrade(master)
    tally.rounds(server.url, 5)  # old and new workers both answer
    os.kill(master, signal.SIGTERM)
    server.process.wait(timeout=30)
    wait_until(lambda: len(children(new_master)) == 2, "the new master's workers")
    tally.rounds(server.url, 8)  # only the new master's workers, recycled every 12 requests
    assert server.metrics_dirs() == directory
    assert list(server.tmp.glob(f"gatewayz-metrics-*/alias-{new_master}-*"))
    os.kill(new_master, signal.SIGTERM)
    wait_until(lambda: not alive(new_master), "the new master to exit")


def test_gunicorn_packaged_config_usr2_and_exit(launch: object) -> None:
    """-c python:flask_gatewayz_metrics.gunicorn_conf with --preload: HUP and USR2 keep every
    count, and the directory is removed when the last master exits."""
    server = launch("conf", *GUNICORN, "-w", "2", "--preload", "-c", "python:flask_gatewayz_metrics.gunicorn_conf",  # type: ignore[operator]
                    "--max-requests", "15", "deploy_app:app")
    master = server.process.pid
    tally = Tally()
    tally.rounds(server.url, 5)
    report = health(server.url)["metrics_directory"]
    assert isinstance(report, dict)
    assert "prepared by the gunicorn config" in str(report["chosen_by"])
    [directory] = server.metrics_dirs()
    os.kill(master, signal.SIGHUP)
    tally.rounds(server.url, 5)
    new_master = upgrade(master)
    tally.rounds(server.url, 5)
    os.kill(master, signal.SIGTERM)
    server.process.wait(timeout=30)
    assert directory.is_dir()  # the old master's on_exit left it to the new one
    wait_until(lambda: len(children(new_master)) == 2, "the new master's workers")
    tally.rounds(server.url, 6)
    os.kill(new_master, signal.SIGTERM)
    wait_until(lambda: not alive(new_master), "the new master to exit")
    assert not directory.exists()


def test_private_directory_under_several_workers_is_degraded(launch: object, tmp_path: Path) -> None:
    """If no shared directory can be set up (the per-user parent belongs to another user),
    health says degraded, with the reason, and the start-up line warns."""
    squatted = tmp_path / "tmp-squatted" / f"gatewayz-metrics-{os.geteuid()}"
    squatted.mkdir(parents=True, mode=0o700)
    os.chown(squatted, 65534, 65534)
    server = launch("squatted", *GUNICORN, "-w", "2", "deploy_app:app")  # type: ignore[operator]
    report = health(server.url)
    directory = report["metrics_directory"]
    assert isinstance(directory, dict)
    assert directory["mode"] == "private"
    assert "owned by uid 65534" in str(directory["chosen_by"])
    assert report["status"] == "degraded"
    assert any("private to one process" in str(reason) for reason in report["reasons"])  # type: ignore[attr-defined]
    assert "private to one process" in server.log.read_text()
    assert list(squatted.iterdir()) == []


def test_gunicorn_daemon_with_packaged_config(tmp_path: Path) -> None:
    """--daemon with the packaged config: the directory, prepared before gunicorn forks the
    real master away, survives another server's start-up sweep, and counts stay exact."""
    port, tmp, pidfile, log = free_port(), tmp_path / "tmp", tmp_path / "gunicorn.pid", tmp_path / "daemon.log"
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAYZ_METRICS_", "DEPLOY_APP_"))}
    env.update(PYTHONPATH=os.pathsep.join([str(TESTS_DIR), str(REPO_ROOT)]), TMPDIR=str(tmp))
    command = [
        sys.executable, GUNICORN_SCRIPT, "--bind", f"127.0.0.1:{port}", "-w", "2", "--daemon", "--pid", str(pidfile),
        "--error-logfile", str(log), "-c", "python:flask_gatewayz_metrics.gunicorn_conf", "deploy_app:app",
    ]  # fmt: skip
    subprocess.run(command, cwd=REPO_ROOT, env=env, check=True, timeout=30)
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip().isdigit(), "the daemon's pid file")
    master = int(pidfile.read_text())
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _answers(url), "the daemon to serve")
        tally = Tally()
        tally.rounds(url, 5)
        [directory] = sorted(tmp.glob("gatewayz-metrics-*/server-*"))
        assert not alive(int(directory.name.split("-")[1]))  # keyed by the process that exited
        sweeper = "from flask_gatewayz_metrics import MetricsCollector; MetricsCollector().record_cache_hit()"
        subprocess.run([sys.executable, "-c", sweeper], env=env, check=True, timeout=30)
        assert directory.is_dir()
        tally.rounds(url, 5)
    finally:
        os.kill(master, signal.SIGTERM)
        wait_until(lambda: not alive(master), "the daemon to exit")


def _answers(url: str) -> bool:
    try:
        return http("GET", url + "/pid", timeout=2.0)[0] == 200
    except OSError:
        return False


def requests_by_endpoint(url: str) -> dict[str, float]:
    """``http_requests_total`` by endpoint in one scrape of ``url`` (which must answer 200)."""
    status, body = http("GET", url)
    assert status == 200
    return {
        sample.labels["endpoint"]: sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if sample.name == "http_requests_total"
    }


def test_two_apps_in_one_process_keep_their_own_numbers(launch: object) -> None:
    """Two apps in each of 3 recycled gunicorn workers: each app's scrape shows exactly its own
    requests (the workers agree on each app's directory without configuration)."""
    server = launch("two-apps", *GUNICORN, "-w", "3", "--max-requests", "9", "deploy_two_apps:app")  # type: ignore[operator]
    sent = {"a": 0, "b": 0}
    for _ in range(ROUNDS):
        statuses = send_concurrently(server.url, [("GET", "/a/ok", None)] * 3 + [("GET", "/b/ok", None)], 3, 30.0)
        assert statuses == Counter({200: 4})
        sent["a"] += 3
        sent["b"] += 1
        for mount, count in sent.items():
            totals = requests_by_endpoint(f"{server.url}/{mount}/metrics")
            assert totals.get("/ok") == float(count), mount  # (the readiness probe hit /pid of the first)


def test_apps_created_on_their_first_request_keep_their_own_numbers_by_name(launch: object) -> None:
    """Apps made on their first request (Flask's application dispatching), in whatever
    order each of 2 recycled workers happens to get them: with ``app_name`` each app's
    scrape shows exactly its own requests. (Found by a deployment review: by creation
    order alone, a worker that made ``b`` first recorded it where the others keep ``a``.)"""
    server = launch("lazy-apps", *GUNICORN, "-w", "2", "--max-requests", "7", "deploy_lazy_apps:app")  # type: ignore[operator]
    sent = {"a": 0, "b": 0}
    for round_number in range(ROUNDS):
        first, second = ("a", "b") if round_number % 3 else ("b", "a")
        batch = [("GET", f"/{first}/ok", None)] * 2 + [("GET", f"/{second}/ok", None)]
        assert send_concurrently(server.url, batch, 3, 30.0) == Counter({200: 3})
        sent[first] += 2
        sent[second] += 1
        for mount, count in sent.items():
            totals = requests_by_endpoint(f"{server.url}/{mount}/metrics")
            assert totals == {"/ok": float(count)}, (mount, round_number)


def test_apps_created_on_their_first_request_without_names_are_reported(launch: object) -> None:
    """The same apps without ``app_name``: in each worker the app made second, after the
    first had served requests, and the first one say in /metrics/health that their
    directories follow an order other workers may not share (degraded, naming
    GATEWAYZ_METRICS_APP_NAME)."""
    server = launch(  # type: ignore[operator]
        "lazy-apps-unnamed", *GUNICORN, "-w", "2", "deploy_lazy_apps:app", DEPLOY_LAZY_NAMED="0"
    )
    # Which worker takes a request is up to the workers' race for it: send pairs until both
    # workers have made both apps (a worker that only ever made one has nothing to report).
    made: dict[str, set[str]] = {}  # worker pid -> the apps it made
    deadline = time.monotonic() + 60.0
    with ThreadPoolExecutor(2) as pool:
        for _ in range(200):
            if sorted(map(len, made.values())) == [2, 2] or time.monotonic() > deadline:
                break
            for status, body in pool.map(lambda path: http("GET", server.url + path), ("/a/ok", "/b/ok")):
                assert status == 200
                prefix, pid = body.decode().split()
                made.setdefault(pid, set()).add(prefix)
    assert len(made) == 2 and all(apps == {"a", "b"} for apps in made.values()), made
    for mount in ("a", "b") * 3:
        status, body = http("GET", f"{server.url}/{mount}/metrics/health")
        report = json.loads(body)
        assert status == 200 and report["status"] == "degraded", (mount, report)
        assert any("GATEWAYZ_METRICS_APP_NAME" in reason for reason in report["reasons"]), report["reasons"]
