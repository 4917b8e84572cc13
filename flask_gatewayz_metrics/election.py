"""One process per server for a background role, elected through the metrics directory.

The OTLP export (``otlp.py``) and the separate metrics port (``metrics_port.py``) must
each run in exactly one process of a server, and move to another process when that one
dies, however it dies. Both elect the same way, with the helpers here:

- the role belongs to whoever holds a non-blocking ``flock`` on a lock file in the
  metrics directory (``try_lock``); the kernel drops the lock when the holder dies, even
  by SIGKILL, so another process's next attempt gets it;
- a forked child inherits the holder's descriptor, but not the role: it closes the
  descriptor without unlocking (``close_inherited``), since the lock belongs to the open
  file description, which the parent still holds;
- the holder writes its state to a small JSON status file (``write_status``, atomic by
  rename) that every process reads back for ``/metrics/health`` (``read_status``: bounded
  and type-checked, since anything in the directory is untrusted).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Mapping
from typing import Any

LOCK_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
"""How a lock file is opened: created if missing, never through a symlink, not inherited by exec."""


def try_lock(directory: str, name: str) -> tuple[int, str | None]:
    """Try to take the role whose lock file is ``name`` in ``directory``, without waiting.

    Returns ``(fd, None)`` with the locked descriptor (keep it open while holding the
    role); ``(-1, None)`` when another process holds the lock; ``(-1, error)`` when the
    lock file cannot be opened (the error names the file, for health and logs).
    """
    try:
        fd = os.open(os.path.join(directory, name), LOCK_FLAGS, 0o600)
    except OSError as exc:
        return -1, f"cannot open {name}: {exc.strerror or exc}"
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # another process holds the role
        os.close(fd)
        return -1, None
    return fd, None


def close_inherited(fd: int) -> int:
    """Close a lock descriptor inherited through ``fork`` without unlocking; returns -1.

    ``flock`` locks belong to the open file description, which the parent still holds
    through its own descriptor, so closing the child's copy leaves the parent's role alone.
    """
    if fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass
    return -1


def write_status(directory: str, name: str, status: Mapping[str, Any]) -> None:
    """Write ``status`` as JSON to ``name`` in ``directory`` by rename, so readers see a
    whole file, old or new. Failures are ignored: the status is informational."""
    path = os.path.join(directory, name)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, json.dumps(status).encode())
        finally:
            os.close(fd)
        os.replace(tmp, path)  # readers see a whole file, old or new
    except OSError:
        pass


def read_status(
    directory: str, name: str, max_bytes: int, types: Mapping[str, tuple[type, ...]]
) -> dict[str, Any] | None:
    """The status file ``name`` in ``directory``, or None when missing, too large (over
    ``max_bytes``) or not a JSON object.

    Only the keys in ``types`` whose value has one of the listed types are kept; ``bool``
    passes only where it is listed itself (JSON ``true`` is not a pid).
    """
    try:
        fd = os.open(os.path.join(directory, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        raw = os.read(fd, max_bytes + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        data = json.loads(raw) if len(raw) <= max_bytes else None
    except (ValueError, RecursionError):  # RecursionError: a file of nested brackets
        return None
    if not isinstance(data, dict):
        return None
    return {
        k: v
        for k, v in data.items()
        if k in types and isinstance(v, types[k]) and (bool in types[k] or not isinstance(v, bool))
    }
