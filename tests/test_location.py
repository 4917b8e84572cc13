"""Where collectors keep their files without configuration, and writers after a fork.

In-process tests of ``storage.location`` (the server's automatic directory, aliases for
an upgraded gunicorn master, the sweep of dead servers' directories, the private
fallback), of fork detection when no at-fork handler runs (a fork made from C, as
uWSGI does), and of one set of numbers per Flask app. The real servers are in
``test_deploy.py``.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

from flask_gatewayz_metrics import GatewayzMetrics, MetricsCollector, default_collector, get_metrics_collector
from flask_gatewayz_metrics import collector as collector_module
from flask_gatewayz_metrics.storage import layout, location, process
from flask_gatewayz_metrics.storage.access import DirectoryAccess
from flask_gatewayz_metrics.storage.worker_file import INITIAL_SIZE
from flask_gatewayz_metrics.testing import worker_file

_libc = ctypes.PyDLL(None, use_errno=True)  # keeps the GIL across fork(), as uWSGI's C does


@pytest.fixture
def tmpdir_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private TMPDIR (so automatic directories land under tmp_path), no metrics env."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setenv("TMPDIR", str(root))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    monkeypatch.delenv("GATEWAYZ_METRICS_DIR", raising=False)
    monkeypatch.setattr(location, "_server", None)
    yield root
    monkeypatch.setattr(location, "_server", None)


def c_fork() -> int:
    """fork(2) straight from libc, as uWSGI does: no ``os.register_at_fork`` handler runs."""
    pid = int(_libc.fork())
    if pid < 0:
        raise OSError(ctypes.get_errno(), "fork failed")
    return pid


def wait_child(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_automatic_directory_is_owner_only_and_keyed_by_the_root(tmpdir_env: Path) -> None:
    """Without configuration a collector uses <tmp>/gatewayz-metrics-<uid>/server-<root>-..., 0700."""
    c = MetricsCollector()
    me = process.process_info(os.getpid())
    assert me is not None
    root = process.server_chain()[-1]
    assert c.location.mode == location.SERVER
    assert c.location.server_root_pid == root.pid
    parent = tmpdir_env / f"gatewayz-metrics-{os.geteuid()}"
    assert Path(c.directory).parent == parent
    assert Path(c.directory).name.startswith(f"server-{root.pid}-{root.start}-")
    assert (parent.stat().st_mode & 0o777) == 0o700
    assert (Path(c.directory).stat().st_mode & 0o777) == 0o700
    c.record_cache_hit()
    assert c.snapshot().total("cache")[0] == 1.0
    c.close()


def test_explicit_directory_wins(tmpdir_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GATEWAYZ_METRICS_DIR, and a directory argument above it, beat the automatic directory."""
    env_dir, arg_dir = tmp_path / "env", tmp_path / "arg"
    monkeypatch.setenv("GATEWAYZ_METRICS_DIR", str(env_dir))
    from_env, from_arg = MetricsCollector(), MetricsCollector(str(arg_dir))
    assert (from_env.directory, from_env.location.mode) == (str(env_dir), location.EXPLICIT)
    assert "GATEWAYZ_METRICS_DIR" in from_env.location.chosen_by
    assert (from_arg.directory, from_arg.location.mode) == (str(arg_dir), location.EXPLICIT)
    assert not (tmpdir_env / f"gatewayz-metrics-{os.geteuid()}").exists()
    from_env.close()
    from_arg.close()


def test_children_of_the_same_program_agree_on_one_directory(tmpdir_env: Path, tmp_path: Path) -> None:
    """A child running its parent's command shares the parent's directory; another command does not."""
    script = tmp_path / "probe.py"
    script.write_text(
        "import os, subprocess, sys\n"
        "from flask_gatewayz_metrics.storage import location\n"
        "if os.environ.get('PROBE_CHILD') or len(sys.argv) > 1:\n"
        "    print(location.server_location().path)\n"
        "    sys.exit(0)\n"
        "child = subprocess.run([sys.executable, __file__], capture_output=True, text=True, check=True,\n"
        "                       env={**os.environ, 'PROBE_CHILD': '1'}, timeout=30)\n"
        "print(location.server_location().path)\n"
        "print(child.stdout.strip())\n"
    )
    env = {**os.environ, "TMPDIR": str(tmpdir_env)}
    env.pop("PROBE_CHILD", None)
    # The child runs "python probe.py" under "python probe.py" (same program): it shares;
    # with an argument it is another program and gets its own root.
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True, env=env,
                         timeout=60)
    parent_path, child_path = out.stdout.split()
    assert parent_path == child_path
    other = subprocess.run([sys.executable, str(script), "x"], capture_output=True, text=True, check=True,
                           env=env, timeout=60)
    assert other.stdout.strip() != parent_path


def test_root_process_removes_its_directory_at_exit(tmpdir_env: Path) -> None:
    """A server root (here a one-process script) removes its automatic directory when it exits."""
    code = (
        "from flask_gatewayz_metrics import MetricsCollector\n"
        "c = MetricsCollector(); c.record_cache_hit(); print(c.directory)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "TMPDIR": str(tmpdir_env)}, timeout=60)
    path = Path(out.stdout.strip())
    assert path.parent.is_dir()
    assert not path.exists()
    assert "metrics directory" in out.stderr and "server" in out.stderr  # the start-up line


def test_sweep_removes_only_dead_servers_of_this_scope(tmpdir_env: Path) -> None:
    """Directories of exited roots go; live roots, live aliases' targets and other scopes stay."""
    parent = Path(location.user_directory())
    scope = process.scope()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    me = process.process_info(os.getpid())
    assert me is not None
    gone = parent / f"server-{dead.pid}-1-{scope}"
    reused_pid = parent / f"server-{me.pid}-{me.start + 1}-{scope}"  # same pid, other start
    alive = parent / f"server-{me.pid}-{me.start}-{scope}"
    aliased = parent / f"server-{dead.pid}-2-{scope}"
    foreign = parent / f"server-{dead.pid}-1-{'0' * 12}"
    for d in (gone, reused_pid, alive, aliased, foreign):
        d.mkdir()
        (d / layout.CONTROL_NAME).write_bytes(b"x")
    (parent / f"alias-{me.pid}-{me.start}-{scope}").write_text(aliased.name)
    (parent / f"alias-{dead.pid}-3-{scope}").write_text(alive.name)
    removed = location.sweep(str(parent), scope)
    assert sorted(removed) == sorted([gone.name, reused_pid.name, f"alias-{dead.pid}-3-{scope}"])
    assert alive.exists() and aliased.exists() and foreign.exists()


def test_sweep_keeps_a_directory_a_live_process_writes(tmpdir_env: Path) -> None:
    """A directory whose named root is gone but whose worker file a live process holds
    (gunicorn --daemon forks the real master away from the one that prepared it) stays."""
    parent = Path(location.user_directory())
    scope = process.scope()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    in_use = parent / f"server-{dead.pid}-1-{scope}"
    writer = MetricsCollector(str(in_use))
    writer.record_cache_hit()  # this process now holds a worker file in it
    assert location.sweep(str(parent), scope) == []
    assert in_use.is_dir()
    writer.close()
    assert location.sweep(str(parent), scope) == [in_use.name]


def test_upgraded_master_follows_its_alias(tmpdir_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A root with an alias (a gunicorn master started by USR2 whose old master exited) uses
    the old master's directory."""
    parent = Path(location.user_directory())
    scope = process.scope()
    root = process.server_chain()[-1]
    old = parent / f"server-1-1-{scope}"
    old.mkdir(mode=0o700)
    (parent / f"alias-{root.key}-{scope}").write_text(old.name)
    c = MetricsCollector()
    assert c.directory == str(old)
    c.close()


def test_exiting_root_keeps_a_directory_an_upgraded_master_uses(tmpdir_env: Path) -> None:
    """A root leaving (old gunicorn master after USR2) keeps its directory while a live
    process's alias names it, and removes it once that process is gone too."""
    parent = Path(location.user_directory())
    scope = process.scope()
    me = process.process_info(os.getpid())
    assert me is not None
    mine = parent / f"server-{me.key}-{scope}"
    mine.mkdir(mode=0o700)
    upgraded = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        info = process.process_info(upgraded.pid)
        assert info is not None
        (parent / f"alias-{info.key}-{scope}").write_text(mine.name)
        assert not location.release(str(mine))
        assert mine.is_dir()
    finally:
        upgraded.kill()
        upgraded.wait()
    assert location.release(str(mine))
    assert not mine.exists()


def test_squatted_user_directory_falls_back_to_private(tmpdir_env: Path) -> None:
    """If another user owns <tmp>/gatewayz-metrics-<uid>, nothing is written there: a private
    directory is used, and health says degraded once the process looks like a worker."""
    squatted = tmpdir_env / f"gatewayz-metrics-{os.geteuid()}"
    squatted.mkdir(mode=0o700)
    os.chown(squatted, 65534, 65534)
    c = MetricsCollector()
    assert c.location.mode == location.PRIVATE
    assert "owned by uid 65534" in c.location.chosen_by
    assert not Path(c.directory).is_relative_to(squatted)
    assert c.location.warning() is None  # pytest is no server's worker
    c.close()


def test_fork_from_c_never_writes_the_parents_file(tmp_path: Path) -> None:
    """A child forked by libc (no at-fork hook, as under uWSGI) opens its own file; totals stay exact."""
    c = MetricsCollector(str(tmp_path / "m"))
    c.observe_request("/x", "GET", 0.01, 200)  # the parent's file exists and is mapped
    parent_file = worker_file(c)
    assert parent_file is not None
    before = Path(parent_file).read_bytes()
    pid = c_fork()
    if pid == 0:  # child: no Python-level fork handling happened
        code = 1
        try:
            c.add_in_flight(1)
            c.observe_request("/x", "GET", 0.02, 200, leaving=True)
            c.record_cache_hit()
            code = 0 if worker_file(c) not in (None, parent_file) else 2
        finally:
            os._exit(code)
    assert wait_child(pid) == 0
    assert Path(parent_file).read_bytes() == before
    c.observe_request("/x", "GET", 0.03, 200)
    snap = c.snapshot()
    assert snap.requests.by_endpoint_method[("/x", "GET")].count == 3.0
    assert snap.total("cache")[0] == 1.0
    assert snap.in_flight == 0.0
    c.close()


def test_storage_writable_checks_its_pid(tmp_path: Path) -> None:
    """Storage.writable() in a C-forked child drops the inherited file and makes its own."""
    directory = str(tmp_path / "m")
    os.makedirs(directory, mode=0o700)
    storage = DirectoryAccess(directory, 60.0, 5)
    storage.writable()
    parent_file = storage.own_file
    pid = c_fork()
    if pid == 0:
        code = 1
        try:
            storage.writable()
            code = 0 if storage.own_file not in (None, parent_file) else 2
        finally:
            os._exit(code)
    assert wait_child(pid) == 0
    assert parent_file is not None and os.path.exists(parent_file)
    storage.close()


def test_fork_sentinel_reads_zero_in_a_child() -> None:
    """The sentinel is 1 where armed and 0 after any fork (here one made from C)."""
    sentinel = process.ForkSentinel()
    assert sentinel.supported  # Linux >= 4.14
    sentinel.arm()
    assert sentinel.word[0] == 1
    pid = c_fork()
    if pid == 0:
        os._exit(0 if sentinel.word[0] == 0 else 1)
    assert wait_child(pid) == 0
    assert sentinel.word[0] == 1


def test_new_files_start_small(tmp_path: Path) -> None:
    """A process's file starts at INITIAL_SIZE (16 KiB) and doubles as records are added."""
    c = MetricsCollector(str(tmp_path / "m"))
    c.record_cache_hit()
    assert worker_file(c) is not None
    assert os.path.getsize(worker_file(c)) == INITIAL_SIZE == 16 * 1024
    for k in range(40):  # ~0.6 KiB of records (sparse sketches) per endpoint: past 16 KiB
        c.observe_request(f"/x{k}", "GET", 0.01, 200, provider="openai", model="gpt-4")
    size = os.path.getsize(worker_file(c))
    assert size > INITIAL_SIZE and size & (size - 1) == 0
    c.close()


def test_a_new_process_folds_a_crowded_directory(tmp_path: Path) -> None:
    """A process opening its file among >= 64 worker files folds the dead ones first."""
    directory = str(tmp_path / "m")
    parent = MetricsCollector(directory)
    for _ in range(70):  # 70 processes that each served one request and exited
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                parent.observe_request("/x", "GET", 0.01, 200)
                code = 0
            finally:
                os._exit(code)
        assert wait_child(pid) == 0
    files = [n for n in os.listdir(directory) if n.endswith(layout.WORKER_SUFFIX)]
    # The 64th child folded its 63 predecessors; 6 more came after it.
    assert len(files) == 70 - (collector_module.FOLD_AT_START_FILES - 1)
    assert parent.snapshot().requests.by_endpoint_method[("/x", "GET")].count == 70.0
    parent.close()


def test_two_apps_have_their_own_numbers(tmpdir_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two apps without options in one process: separate numbers; get_metrics_collector()
    outside a request is the first app's collector."""
    monkeypatch.setattr(default_collector, "_default", None)
    monkeypatch.setattr(default_collector, "_base_taken", False)
    monkeypatch.setattr(default_collector, "_automatic_apps", 0)
    apps = []
    for name in ("first_app", "second_app"):
        app = Flask(name)
        GatewayzMetrics(app)
        app.add_url_rule(f"/{name}", name, lambda: "ok")
        apps.append(app)
    first, second = (GatewayzMetrics.of(app).collector for app in apps)
    assert first is not second
    assert get_metrics_collector() is first
    assert second.directory == os.path.join(first.directory, "apps", "second_app-2")
    apps[0].test_client().get("/first_app")
    apps[1].test_client().get("/second_app")
    apps[1].test_client().get("/second_app")
    assert first.snapshot().endpoints() == ["/first_app"]
    assert second.snapshot().endpoints() == ["/second_app"]
    assert second.snapshot().total_requests == 2.0
    shared = Flask("third_app")
    GatewayzMetrics(shared, collector=first)  # sharing on purpose
    assert GatewayzMetrics.of(shared).collector is first


def test_an_app_made_after_requests_is_reported_and_a_named_app_is_not(
    tmpdir_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second app initialised by automatic order after the process recorded requests
    (an app created on its first request) may get another app's directory in another
    worker: it and the first app say so in health (degraded) and the log. An app with
    ``app_name`` has ``apps/named-<name>`` whatever the order, and no warning."""
    monkeypatch.setattr(default_collector, "_default", None)
    monkeypatch.setattr(default_collector, "_base_taken", False)
    monkeypatch.setattr(default_collector, "_automatic_apps", 0)
    record_at_import = Flask("import_app")  # a recording before any app: not a served request
    GatewayzMetrics(record_at_import)
    default_collector.get_metrics_collector().record_request("/warm", "GET", 0.1, 200)
    first = Flask("first_app")
    GatewayzMetrics(first)
    first.add_url_rule("/one", "one", lambda: "ok")
    client = first.test_client()
    assert client.get("/metrics/health").get_json()["status"] == "healthy"
    client.get("/one")
    # One process (a test suite making apps one after another): nothing to mix.
    alone = Flask("alone_app")
    GatewayzMetrics(alone)
    assert alone.test_client().get("/metrics/health").get_json()["status"] == "healthy"
    # The same in a process that looks like one of several workers (the real case is
    # test_deploy's, under gunicorn).
    monkeypatch.setattr(process, "multiprocess_hint", lambda: "one of several workers")
    named = Flask("named_app")
    GatewayzMetrics(named, app_name="tenant_b")
    named_collector = GatewayzMetrics.of(named).collector
    assert named_collector.directory == os.path.join(
        GatewayzMetrics.of(record_at_import).collector.directory, "apps", "named-tenant_b"
    )
    assert client.get("/metrics/health").get_json()["status"] == "healthy"
    assert named.test_client().get("/metrics/health").get_json()["status"] == "healthy"
    late = Flask("late_app")
    GatewayzMetrics(late)
    for app in (record_at_import, late):
        report = app.test_client().get("/metrics/health").get_json()
        assert report["status"] == "degraded"
        assert any("GATEWAYZ_METRICS_APP_NAME" in reason for reason in report["reasons"]), report["reasons"]
    for bad in ("", "a-b", "1abc", "x" * 65, "a/b", 3):
        with pytest.raises((TypeError, ValueError), match="GATEWAYZ_METRICS_APP_NAME"):
            app = Flask("bad")
            app.config["GATEWAYZ_METRICS_APP_NAME"] = bad
            GatewayzMetrics(app)


def test_gunicorn_title_normalisation() -> None:
    """setproctitle's 'gunicorn: master [app]' and 'gunicorn: worker [app]' name one server."""
    def info(cmdline: bytes) -> process.ProcessInfo:
        return process.ProcessInfo(1, 0, 0, 1, cmdline)

    assert info(b"gunicorn: master [app:app]").same_program(info(b"gunicorn: worker [app:app]"))
    assert not info(b"gunicorn: master [app:app]").same_program(info(b"gunicorn: worker [other:app]"))
    assert not info(b"python\0a.py").same_program(info(b"python\0b.py"))
