"""Checks that the metrics directory is safe to write before anything is written.

Another user who can write the directory could plant a symlink named like a metrics
file (and make us overwrite whatever it points to) or feed every scrape fake numbers.
So the directory must belong to us and not be world-writable, and no metrics file in
it may be a symlink. Checked when a collector starts (at import / ``init_app`` time),
never during a request; files are also opened with ``O_NOFOLLOW``.
"""

from __future__ import annotations

import atexit
import errno
import os
import shutil
import stat
import tempfile

from ..errors import MetricsDirectoryError  # re-exported: its old home
from . import layout


def ensure_directory(path: str) -> str:
    """Create ``path`` (mode 0700) if needed and check that it is safe; return it."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError as exc:
        raise MetricsDirectoryError(f"cannot create metrics directory {path!r}: {exc.strerror}") from exc
    if stat.S_ISLNK(st.st_mode):
        raise MetricsDirectoryError(
            f"metrics directory {path!r} is a symlink; set GATEWAYZ_METRICS_DIR to the real directory"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise MetricsDirectoryError(f"metrics directory {path!r} is not a directory")
    if st.st_uid != os.geteuid():
        raise MetricsDirectoryError(
            f"metrics directory {path!r} is owned by uid {st.st_uid}, not by this process (uid {os.geteuid()}); "
            "use a directory of your own"
        )
    if st.st_mode & stat.S_IWOTH:
        raise MetricsDirectoryError(
            f"metrics directory {path!r} is world-writable (mode {stat.S_IMODE(st.st_mode):o}); "
            "use a private subdirectory (created 0700) such as /tmp/gatewayz-metrics"
        )
    for name in os.listdir(path):
        if is_metrics_file(name) and os.path.islink(os.path.join(path, name)):
            raise MetricsDirectoryError(
                f"{os.path.join(path, name)!r} is a symlink; remove it (metrics files are never symlinks)"
            )
    _check_quarantine(os.path.join(path, layout.QUARANTINE_DIR))
    return path


def _check_quarantine(path: str) -> None:
    """The compactor moves bad files into ``quarantine/``: it must be a real directory of ours."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise MetricsDirectoryError(f"cannot check {path!r}: {exc.strerror}") from exc
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & stat.S_IWOTH:
        raise MetricsDirectoryError(
            f"{path!r} is not a private directory of this user (a symlink, a file, or another user's); "
            "remove it, the quarantine is created when needed"
        )


def open_directory(path: str) -> int:
    """A descriptor of the metrics directory ``path`` for ``dir_fd=`` operations.

    Refuses (``OSError``) a symlink, a directory of another user or a world-writable
    one, so that whatever is created, renamed or deleted through the descriptor is
    inside a directory we own, whatever the path points to later.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & stat.S_IWOTH:
        os.close(fd)
        raise PermissionError(errno.EPERM, "metrics directory is not a private directory of this user", path)
    return fd


def private_directory() -> str:
    """A new 0700 temporary directory, removed at exit by the process that made it.

    What a single-process app uses when no directory is configured: the same storage
    path as under gunicorn, nothing to clean up by hand.
    """
    path = tempfile.mkdtemp(prefix="gatewayz-metrics-")
    owner = os.getpid()

    def remove() -> None:
        if os.getpid() == owner:
            shutil.rmtree(path, ignore_errors=True)

    atexit.register(remove)
    return path


# "Is this one of our files?" has three answers, by what the caller does with the name.
# They live here together so that a new file name is added to every one that needs it.


def is_worker_file(name: str, *, include_hidden: bool = False) -> bool:
    """A worker file published under its final name; with ``include_hidden`` also one
    still being created (it has a hidden name, ``layout.TEMP_PREFIX``, until its header
    is written and it is locked)."""
    return name.endswith(layout.WORKER_SUFFIX) and (include_hidden or not name.startswith(layout.TEMP_PREFIX))


def is_data_file(name: str) -> bool:
    """A file whose records are merged (the archive or a worker file, published or not):
    what the compactor may quarantine when it cannot be read."""
    return name == layout.ARCHIVE_NAME or is_worker_file(name, include_hidden=True)


SERVER_STATE_NAMES = (layout.CONTROL_NAME, layout.ARCHIVE_NAME)
"""Files besides worker files that hold a server's numbers: what emptying a directory
for a new server removes. ``compaction.lock`` is left: unlinking a lock file another
process may hold would let a second compactor lock a new one beside it."""


def is_server_state_file(name: str) -> bool:
    """A file that holds the numbers of the server that used the directory: worker files
    (published or not), the control file and the archive."""
    return is_worker_file(name, include_hidden=True) or name in SERVER_STATE_NAMES


def is_metrics_file(name: str) -> bool:
    """Any file the package creates and opens by name at the top of a metrics directory
    (worker files, control, archive, compaction lock): none of them may be a symlink."""
    return is_server_state_file(name) or name == layout.COMPACTION_LOCK_NAME
