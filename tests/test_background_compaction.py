"""gunicorn's child_exit compacts in a forked child: the master only forks (and reaps it like any child)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from flask_gatewayz_metrics import MetricsCollector
from flask_gatewayz_metrics import gunicorn as hooks
from flask_gatewayz_metrics.testing import worker_file, worker_files


def test_child_exit_folds_the_dead_file_in_a_child(metrics_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The dead worker's file is folded by a child process that exits cleanly; the caller keeps recording."""
    monkeypatch.setenv("GATEWAYZ_METRICS_DIR", metrics_dir)
    dead = MetricsCollector(metrics_dir, auto_compact=False)
    for k in range(50):
        dead.record_request(f"/e{k % 5}", "GET", 0.01 * 1.1**k, 200, provider="p", model="m")
    dead.close()
    live = MetricsCollector(metrics_dir, auto_compact=False)
    live.record_request("/live", "GET", 0.1, 200)
    assert len(worker_files(metrics_dir)) == 2
    forked: list[int] = []
    real_fork = os.fork

    def fork() -> int:
        pid = real_fork()
        if pid:
            forked.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", fork)
    hooks.child_exit(SimpleNamespace(), SimpleNamespace(pid=12345))
    assert len(forked) == 1 and forked[0] != os.getpid()
    _, status = os.waitpid(forked[0], 0)  # what gunicorn's SIGCHLD handler does
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert worker_files(metrics_dir) == [os.path.basename(worker_file(live) or "")]
    live.record_request("/live", "GET", 0.1, 200)  # the fork left this process's file alone
    snap = live.snapshot()
    assert snap.total_requests == 52
    assert snap.window("endpoint_window", ("/e0",)).count == 10
    live.close()


def test_child_exit_without_a_directory_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """No GATEWAYZ_METRICS_DIR: no fork at all."""
    monkeypatch.delenv("GATEWAYZ_METRICS_DIR", raising=False)
    monkeypatch.setattr(os, "fork", lambda: pytest.fail("forked"))
    hooks.child_exit(SimpleNamespace(), SimpleNamespace(pid=1))
