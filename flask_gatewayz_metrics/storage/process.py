"""Which process are we, and which server do we belong to (Linux ``/proc``), and were we forked?

- ``server_chain()``: this process and its ancestors that run the same program as the
  same user (a gunicorn or uWSGI worker, its master, a werkzeug reloader's parent); the
  last one is the server's root. A gunicorn master re-executed by ``kill -USR2`` (its
  environment names the old master in ``GUNICORN_PID``) continues the chain even when
  its command line is spelt differently.
- ``ProcessInfo.key``: pid plus start time (clock ticks since boot), so a reused pid never
  matches; ``scope()`` adds the boot and the pid namespace.
- ``ForkSentinel``: one word that reads 1 in the process that armed it and 0 in any
  process forked from it (``MADV_WIPEONFORK``), whoever forked: Python, or uWSGI from C
  (where ``os.register_at_fork`` handlers never run). Reading it costs one memory load.

Everything read from ``/proc`` is bounded; a process that vanishes mid-read ends the
walk, it never raises.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import re
import sys
from dataclasses import dataclass

MAX_DEPTH = 16
"""Ancestors examined at most (a server is rarely more than 3 deep)."""
MAX_CMDLINE = 64 * 1024
MAX_ENVIRON = 256 * 1024
REEXEC_VARIABLE = b"GUNICORN_PID"
"""Set by gunicorn in the environment of the master it re-executes on ``kill -USR2``."""
_MADV_WIPEONFORK = getattr(mmap, "MADV_WIPEONFORK", 18)  # Linux >= 4.14; not exported by 3.11
_TITLE = re.compile(rb"^([^\s:]+): (?:master|worker) \[")
"""gunicorn's process titles under setproctitle: ``gunicorn: master [app]`` and
``gunicorn: worker [app]`` name one server."""


@dataclass(frozen=True)
class ProcessInfo:
    """What ``/proc/<pid>`` says about a process (to tell a live writer from a reused pid)."""

    pid: int
    ppid: int
    uid: int
    start: int
    """Start time in clock ticks since boot (field 22 of ``/proc/<pid>/stat``)."""
    cmdline: bytes

    @property
    def key(self) -> str:
        """``pid-start``: unique for a process over the life of the machine."""
        return f"{self.pid}-{self.start}"

    def same_program(self, other: ProcessInfo) -> bool:
        """Whether both run the same command line (gunicorn's changing titles aside)."""
        return _TITLE.sub(rb"\1: [", self.cmdline) == _TITLE.sub(rb"\1: [", other.cmdline)


def process_info(pid: int) -> ProcessInfo | None:
    """What ``/proc`` says about ``pid``; None if it is gone or unreadable."""
    if pid <= 0:
        return None
    try:
        stat = _read(f"/proc/{pid}/stat", 4096)
        uid = os.stat(f"/proc/{pid}").st_uid
        cmdline = _read(f"/proc/{pid}/cmdline", MAX_CMDLINE)
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = stat[stat.rindex(b")") + 2 :].split()
        return ProcessInfo(pid, int(fields[1]), uid, int(fields[19]), cmdline)
    except (OSError, ValueError, IndexError):
        return None


def start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, None if there is no such process."""
    try:
        stat = _read(f"/proc/{pid}/stat", 4096)
        return int(stat[stat.rindex(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def is_alive(pid: int, start: int) -> bool:
    """Whether the process ``pid`` that started at ``start`` still runs (not a reused pid)."""
    return start_time(pid) == start


def reexec_parent(pid: int) -> int | None:
    """The old master named by ``GUNICORN_PID`` in ``pid``'s initial environment, if any."""
    try:
        environ = _read(f"/proc/{pid}/environ", MAX_ENVIRON)
    except OSError:
        return None
    for entry in environ.split(b"\0"):
        if entry.startswith(REEXEC_VARIABLE + b"="):
            value = entry[len(REEXEC_VARIABLE) + 1 :]
            return int(value) if value.isdigit() and len(value) < 12 else None
    return None


def server_chain() -> list[ProcessInfo]:
    """This process, then each ancestor of the same server, root last.

    Raises ``OSError`` when ``/proc`` cannot describe this process (not Linux, no /proc).
    """
    me = process_info(os.getpid())
    if me is None:
        raise OSError("/proc does not describe this process")
    chain = [me]
    child = me
    for _ in range(MAX_DEPTH):
        parent = process_info(child.ppid)
        if parent is None or parent.uid != me.uid:
            break
        if not (parent.same_program(child) or reexec_parent(child.pid) == parent.pid):
            break
        chain.append(parent)
        child = parent
    return chain


def scope() -> str:
    """This boot and pid namespace, hashed: pids and start times compare only within one."""
    parts = []
    for path in ("/proc/sys/kernel/random/boot_id",):
        try:
            parts.append(_read(path, 128).strip())
        except OSError:
            parts.append(b"")
    try:
        parts.append(os.readlink("/proc/self/ns/pid").encode())
    except OSError:
        parts.append(b"")
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:12]


def multiprocess_hint() -> str | None:
    """Why this process looks like one of several serving the same app, else None."""
    uwsgi = sys.modules.get("uwsgi")
    processes = getattr(uwsgi, "numproc", 0)
    if isinstance(processes, int) and processes > 1:
        return f"uWSGI runs {processes} processes"
    me = process_info(os.getpid())
    parent = process_info(me.ppid) if me is not None else None
    if me is not None and parent is not None and parent.uid == me.uid and parent.same_program(me):
        return f"this process ({me.pid}) is a child of process {parent.pid}, which runs the same program"
    return None


class ForkSentinel:
    """A word that reads 1 once armed, and 0 in every process forked afterwards.

    Backed by a private anonymous page marked ``MADV_WIPEONFORK``: the kernel hands a
    forked child a zeroed copy, however the fork was made. Where that is unsupported
    (old kernels, other systems) ``supported`` is False and ``arm()`` leaves the word at
    0, so callers that test it simply take their slow path (a pid comparison) every time.
    """

    def __init__(self) -> None:
        self.supported = False
        memory: mmap.mmap | bytearray
        try:
            memory = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            memory.madvise(_MADV_WIPEONFORK)
            self.supported = True
        except (OSError, AttributeError, ValueError):
            memory = bytearray(8)
        self._memory = memory
        self.word = memoryview(memory).cast("Q")
        """``word[0]``: 1 in the arming process (when supported), else 0."""

    def arm(self) -> None:
        """Set the word to 1 where supported; a process forked afterwards reads 0."""
        if self.supported:
            self.word[0] = 1

    def disarm(self) -> None:
        """Set the word back to 0."""
        self.word[0] = 0


def _read(path: str, limit: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        size = 0
        while size < limit:
            chunk = os.read(fd, min(65536, limit - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
