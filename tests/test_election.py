"""election: one process per server holds a role through an flock in the metrics directory."""

from __future__ import annotations

import os
import signal

import pytest

from flask_gatewayz_metrics import election, metrics_port, otlp_status

TYPES: dict[str, tuple[type, ...]] = {"pid": (int,), "ok": (bool,), "note": (str,)}


def test_second_holder_is_refused_until_the_first_lets_go(metrics_dir: str) -> None:
    """While one descriptor holds the lock another attempt gets -1 and no error; after closing it succeeds."""
    first, error = election.try_lock(metrics_dir, "role.lock")
    assert first >= 0 and error is None
    second, error = election.try_lock(metrics_dir, "role.lock")
    assert (second, error) == (-1, None)
    os.close(first)
    third, error = election.try_lock(metrics_dir, "role.lock")
    assert third >= 0 and error is None
    os.close(third)


def test_unopenable_lock_file_reports_an_error_naming_it(metrics_dir: str) -> None:
    """A lock name that is a symlink cannot be opened (O_NOFOLLOW): -1 and an error naming the file."""
    os.symlink(os.path.join(metrics_dir, "elsewhere"), os.path.join(metrics_dir, "role.lock"))
    fd, error = election.try_lock(metrics_dir, "role.lock")
    assert fd == -1
    assert error is not None and error.startswith("cannot open role.lock:")


def test_a_killed_holder_frees_the_role(metrics_dir: str) -> None:
    """A child that took the lock and was SIGKILLed leaves the role free for the next attempt."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the holder
        fd, _ = election.try_lock(metrics_dir, "role.lock")
        os.write(write, b"1" if fd >= 0 else b"0")
        signal.pause()
        os._exit(0)
    try:
        assert os.read(read, 1) == b"1"
        assert election.try_lock(metrics_dir, "role.lock") == (-1, None)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read)
        os.close(write)
    fd, error = election.try_lock(metrics_dir, "role.lock")
    assert fd >= 0 and error is None
    os.close(fd)


def test_closing_an_inherited_descriptor_keeps_the_parents_lock(metrics_dir: str) -> None:
    """A forked child closing its copy of the holder's descriptor does not unlock the parent's role."""
    fd, _ = election.try_lock(metrics_dir, "role.lock")
    assert fd >= 0
    pid = os.fork()
    if pid == 0:
        code = 0 if election.close_inherited(fd) == -1 else 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert election.try_lock(metrics_dir, "role.lock") == (-1, None)  # still ours
    os.close(fd)


def test_status_round_trip_keeps_only_typed_keys(metrics_dir: str) -> None:
    """write_status then read_status gives back the known keys of the right type, bool only where listed."""
    election.write_status(metrics_dir, "role.status.json", {"pid": 12, "ok": True, "note": "fine", "extra": 1})
    assert election.read_status(metrics_dir, "role.status.json", 4096, TYPES) == {"pid": 12, "ok": True, "note": "fine"}
    election.write_status(metrics_dir, "role.status.json", {"pid": True, "ok": 1, "note": 5})
    assert election.read_status(metrics_dir, "role.status.json", 4096, TYPES) == {}
    assert not [n for n in os.listdir(metrics_dir) if n.endswith(".tmp")]


@pytest.mark.parametrize(
    "content",
    [b"", b"not json", b"[1, 2]", b'"text"', b"\xff\xfe", b"[" * 3000, b"{" * 3000, b'{"pid": 1}' + b" " * 5000],
    ids=["empty", "garbage", "list", "string", "not utf-8", "nested lists", "nested objects", "too large"],
)
def test_hostile_status_file_is_ignored(metrics_dir: str, content: bytes) -> None:
    """Whatever the status file holds, reading it gives None instead of raising (deep nesting included)."""
    with open(os.path.join(metrics_dir, "role.status.json"), "wb") as f:
        f.write(content)
    assert election.read_status(metrics_dir, "role.status.json", 4096, TYPES) is None


def test_both_roles_read_their_status_through_it(metrics_dir: str) -> None:
    """The OTLP and metrics-port status readers survive a status file of nested brackets."""
    for name in (otlp_status.STATUS_NAME, metrics_port.STATUS_NAME):
        with open(os.path.join(metrics_dir, name), "wb") as f:
            f.write(b"[" * 3000)
    assert otlp_status.read_status(metrics_dir) is None
    assert metrics_port.read_status(metrics_dir) is None
