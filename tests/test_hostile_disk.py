"""A full disk (a real small tmpfs): every lost observation counted, compaction progresses, nothing left behind."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from flask_gatewayz_metrics import MetricsCollector
from flask_gatewayz_metrics.storage import access, compact, layout

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root (CI runs as root)")


def _mount_tmpfs(path: str, size: str) -> None:
    os.makedirs(path, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], check=True)


def _worker_files(directory: str) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(layout.WORKER_SUFFIX) and not n.startswith("."))


def fill_file_system(path: str) -> None:
    """Write zeros to ``path`` until the file system is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, bytes(4096))
    except OSError:
        pass
    finally:
        os.close(fd)


def _record_and_exit(directory: str, requests: int) -> None:
    access.RETRY_SECONDS = 0.0  # try to create the file on every request
    c = MetricsCollector(directory, auto_compact=False)
    for _ in range(requests):
        c.record_request("/full", "GET", 0.1, 200)
    os._exit(0)


def _in_child(fn: Callable[..., None], *args: Any) -> None:
    p = multiprocessing.get_context("fork").Process(target=fn, args=args)
    p.start()
    p.join(60)
    assert p.exitcode == 0


@needs_root
def test_full_disk_counts_every_loss_and_recovers(tmp_path: Any) -> None:
    """On a tmpfs our own files filled: losses counted in shared storage, compaction frees space, recording resumes."""
    mount = str(tmp_path / "tiny")
    _mount_tmpfs(mount, "1m")
    try:
        directory = os.path.join(mount, "metrics")
        scraper = MetricsCollector(directory, auto_compact=False)
        for _ in range(3):  # three workers that served and exited
            _in_child(_record_and_exit, directory, 10)
        fill_file_system(os.path.join(mount, "filler"))  # the rest of the disk
        seen = []
        for _ in range(3):  # each worker's losses survive it and add up: never backwards
            _in_child(_record_and_exit, directory, 50)
            seen.append(scraper.snapshot().dropped().get("storage_unavailable", 0))
        assert seen == [50, 100, 150]
        assert MetricsCollector(directory, auto_compact=False).snapshot().dropped()["storage_unavailable"] == 150
        result = scraper.compact()  # needs space for the archive: made by shrinking dead files
        assert result.absorbed == 3
        assert not [n for n in os.listdir(directory) if n.startswith(".")], os.listdir(directory)
        os.unlink(os.path.join(mount, "filler"))
        _in_child(_record_and_exit, directory, 20)  # space is back: recording resumes on its own
        snap = scraper.snapshot()
        assert snap.to_dict()["endpoints"]["/full"]["requests"] == 3 * 10 + 20
        assert snap.dropped()["storage_unavailable"] == 150
        scraper.close()
    finally:
        subprocess.run(["umount", "-l", mount], check=False)


def _record_endpoints_and_exit(directory: str, endpoints: int) -> None:
    c = MetricsCollector(directory, auto_compact=False)
    for i in range(endpoints):
        c.record_request(f"/e{i}", "GET", 0.1, 200)
    os._exit(0)


@needs_root
def test_failed_archive_write_leaves_no_temporary_file(tmp_path: Any) -> None:
    """If even shrunk dead files leave no room for the archive, compaction fails cleanly: no temp file."""
    mount = str(tmp_path / "tiny")
    _mount_tmpfs(mount, "1200k")
    try:
        directory = os.path.join(mount, "metrics")
        scraper = MetricsCollector(directory, auto_compact=False)
        _in_child(_record_endpoints_and_exit, directory, 600)  # ~460 KiB used in a 512 KiB file
        fill_file_system(os.path.join(mount, "filler"))
        with pytest.raises(OSError) as raised:
            compact(directory)
        assert "No space" in str(raised.value)
        assert not [n for n in os.listdir(directory) if n.startswith(".")], os.listdir(directory)
        assert len(_worker_files(directory)) == 1
        assert scraper.snapshot().total_requests == 600
        os.unlink(os.path.join(mount, "filler"))
        assert compact(directory).absorbed == 1  # space is back: compaction goes on
        assert scraper.snapshot().total_requests == 600
        scraper.close()
    finally:
        subprocess.run(["umount", "-l", mount], check=False)
