"""Where a collector keeps its files, how that was decided, and cleaning up after a server.

In order of precedence:

1. ``explicit``: a directory given to the collector (``dir=`` / the app's
   ``GATEWAYZ_METRICS_DIR`` config key), else the ``GATEWAYZ_METRICS_DIR`` environment
   variable.
2. ``server``: a directory every process of one server finds on its own, keyed by the
   server's root process (``process.server_chain``: the gunicorn or uWSGI master, or the
   single process of waitress and the dev server):
   ``<tempdir>/gatewayz-metrics-<uid>/server-<pid>-<start ticks>-<scope>``. The per-user
   parent is created 0700 and gets every check ``GATEWAYZ_METRICS_DIR`` gets; the pid
   comes with the root's start time and a hash of the boot and pid namespace, so two
   servers, two users, or a reused pid never share one by accident.
3. ``private``: a new temporary directory for this process (and whatever it forks), used
   only when 2 is impossible (no ``/proc``, or the per-user parent is not ours); health
   reports it as ``degraded`` when the process looks like one of several.

A gunicorn master re-executed by ``kill -USR2`` joins its old master's directory: its
workers find the old master through ``GUNICORN_PID`` and leave an alias file
(``alias-<new master key>``) naming the directory, which they follow once the old master
has exited.

Clean-up: the root process removes its directory when it exits normally (``atexit``) if
it runs this code (an app loaded before forking: gunicorn ``--preload``, waitress, the
dev server; or the packaged gunicorn config's ``on_exit``), unless a live upgraded
master still uses it. Otherwise (plain gunicorn, uWSGI, whose master skips ``atexit``,
a kill) the next server of the same user that creates a directory sweeps those whose
root process and aliases are all gone.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass

from ..errors import MetricsDirectoryError
from . import process
from .directory import ensure_directory, is_worker_file, private_directory
from .reader import is_locked

log = logging.getLogger("flask_gatewayz_metrics")

EXPLICIT, SERVER, PRIVATE = "explicit", "server", "private"
USER_DIR_PREFIX = "gatewayz-metrics-"
SERVER_PREFIX = "server-"
ALIAS_PREFIX = "alias-"
APPS_DIR = "apps"
"""Subdirectory holding the directories of the second and later apps of a process."""
MAX_SWEEP_ENTRIES = 512
"""Entries of the per-user directory examined by one sweep (bounds its cost)."""
_NAME = re.compile(r"^(server|alias)-(\d{1,10})-(\d{1,20})-([0-9a-f]{12})$")
_NAMESPACE_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Location:
    """A collector's metrics directory and how it was chosen (shown by health and JSON)."""

    path: str
    mode: str
    chosen_by: str
    server_root_pid: int | None = None
    order_dependent: bool = False
    """An app's automatic directory chosen by creation order after the process had
    served requests (``default_collector.collector_for_app``): other workers may give it
    to another app."""

    def warning(self) -> str | None:
        """Why numbers may be partial or mixed: a private directory in a multi-process
        server, or an app directory that depends on the order apps were created in."""
        if self.order_dependent:
            return (
                "an app was initialised after this process had served requests (an app created "
                "on its first request?): the automatic per-app directories follow the order apps "
                "are created in, which other workers may not share, mixing apps' numbers; give each "
                "such app GATEWAYZ_METRICS_APP_NAME (or its own GATEWAYZ_METRICS_DIR)"
            )
        if self.mode != PRIVATE:
            return None
        hint = process.multiprocess_hint()
        if hint is None:
            return None
        return (
            f"the metrics directory is private to one process but {hint}: each scrape shows only "
            "that process's numbers; set GATEWAYZ_METRICS_DIR to a directory all processes share"
        )

    def report(self) -> dict[str, object]:
        """The ``metrics_directory`` entry of ``/metrics/json`` and ``/metrics/health``."""
        return {
            "path": self.path,
            "mode": self.mode,
            "chosen_by": self.chosen_by,
            "server_root_pid": self.server_root_pid,
            "warning": self.warning(),
        }

    def describe(self) -> str:
        """The start-up log line."""
        return f"metrics directory {self.path} ({self.mode}: {self.chosen_by})"


def announce(where: Location, first: bool) -> None:
    """The start-up line: which directory and how it was chosen (logged by the process
    that starts using the directory first, and by any process it warns about)."""
    try:
        warning = where.warning()
        if warning:
            log.warning("%s; %s", where.describe(), warning)
        elif first:
            if log.hasHandlers():
                log.info("%s", where.describe())
            else:  # logging not configured: still one visible line
                sys.stderr.write(f"flask_gatewayz_metrics: {where.describe()}\n")
    except Exception:  # a log line must never stop the app
        pass


def resolve(directory: str | None = None, namespace: str | None = None) -> Location:
    """The directory a new collector uses: ``directory`` if given, else per the precedence
    above; with ``namespace``, its own subdirectory ``apps/<namespace>`` of that.

    Raises ``MetricsDirectoryError`` for an explicit directory that is unsafe.
    """
    env = os.environ.get("GATEWAYZ_METRICS_DIR")
    if directory:
        base = Location(ensure_directory(directory), EXPLICIT, "the dir option / GATEWAYZ_METRICS_DIR config key")
    elif env:
        base = Location(ensure_directory(env), EXPLICIT, _env_origin(env))
    else:
        base = server_location()
    if not namespace:
        return base
    safe = _NAMESPACE_UNSAFE.sub("_", namespace)[:100] or "app"
    ensure_directory(os.path.join(base.path, APPS_DIR))
    path = ensure_directory(os.path.join(base.path, APPS_DIR, safe))
    return Location(path, base.mode, f"{base.chosen_by}; own subdirectory of this app", base.server_root_pid)


def _env_origin(path: str) -> str:
    marker = os.environ.get("GATEWAYZ_METRICS_PREPARED_BY", "")
    pid, _, prepared = marker.partition(":")
    if prepared == path and pid.isdigit():
        return f"GATEWAYZ_METRICS_DIR, prepared by the gunicorn config in master {pid}"
    return "GATEWAYZ_METRICS_DIR environment variable"


_server: tuple[int, Location] | None = None


def server_location() -> Location:
    """This server's automatic directory (found once per process), else a private one."""
    global _server
    pid = os.getpid()
    if _server is not None and _server[0] == pid:
        return _server[1]
    try:
        found = _find_server_directory()
    except (OSError, MetricsDirectoryError) as exc:
        reason = str(exc) if isinstance(exc, MetricsDirectoryError) else f"{type(exc).__name__}: {exc}"
        found = Location(private_directory(), PRIVATE, f"no shared directory could be set up ({reason})")
    _server = (pid, found)
    return found


def user_directory() -> str:
    """The per-user parent of automatic directories (created 0700, checked)."""
    return ensure_directory(os.path.join(tempfile.gettempdir(), f"{USER_DIR_PREFIX}{os.geteuid()}"))


def _find_server_directory() -> Location:
    chain = process.server_chain()
    root = chain[-1]
    scope = process.scope()
    parent = user_directory()
    name = _read_alias(parent, f"{ALIAS_PREFIX}{root.key}-{scope}") or f"{SERVER_PREFIX}{root.key}-{scope}"
    path = os.path.join(parent, name)
    created = not os.path.isdir(path)
    ensure_directory(path)
    # An upgraded gunicorn master (and its workers) must find this directory after
    # the old master exits: leave an alias under its own key.
    pid = os.getpid()
    cleans_up = root.pid == pid
    for member in chain[:-1]:
        if process.reexec_parent(member.pid) == member.ppid:
            _write_alias(parent, f"{ALIAS_PREFIX}{member.key}-{scope}", name)
            cleans_up = cleans_up or member.pid == pid
    if created:
        sweep(parent, scope, keep=name)
    if cleans_up:  # a root, or an upgraded master that may outlive its root
        atexit.register(_remove_at_exit, parent, name, scope, pid)
    how = "shared by the server" if len(chain) > 1 or root.pid != os.getpid() else "this server process"
    return Location(path, SERVER, f"automatic, {how}: root process {root.pid}", root.pid)


def _read_alias(parent: str, alias: str) -> str | None:
    """The directory name an alias file holds, if it is one of ours and well-formed."""
    try:
        fd = os.open(os.path.join(parent, alias), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        target = os.read(fd, 128).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
    match = _NAME.match(target)
    return target if match and match.group(1) == "server" else None


def _write_alias(parent: str, alias: str, target: str) -> None:
    path = os.path.join(parent, alias)
    if _read_alias(parent, alias) == target:
        return
    temp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, target.encode("ascii"))
    finally:
        os.close(fd)
    os.replace(temp, path)


def _entries(parent: str, scope: str) -> tuple[dict[str, bool], dict[str, tuple[str, bool]]]:
    """Server directories (name -> root alive) and aliases (name -> (target, alive)) of
    this boot and pid namespace."""
    servers: dict[str, bool] = {}
    aliases: dict[str, tuple[str, bool]] = {}
    with os.scandir(parent) as entries:
        for count, entry in enumerate(entries):
            if count >= MAX_SWEEP_ENTRIES:
                break
            match = _NAME.match(entry.name)
            if match is None or match.group(4) != scope:
                continue  # another boot or pid namespace: its pids mean nothing here
            alive = process.is_alive(int(match.group(2)), int(match.group(3)))
            if match.group(1) == "server":
                servers[entry.name] = alive
            else:
                aliases[entry.name] = (_read_alias(parent, entry.name) or "", alive)
    return servers, aliases


def sweep(parent: str, scope: str, keep: str = "") -> list[str]:
    """Remove server directories whose root process and aliases are all gone, and dead
    aliases; return the names removed. Never touches ``keep`` or another scope's entries."""
    removed: list[str] = []
    try:
        servers, aliases = _entries(parent, scope)
    except OSError:
        return removed
    in_use = {target for target, alive in aliases.values() if alive}
    for name, (_, alive) in aliases.items():
        if not alive and _unlink(os.path.join(parent, name)):
            removed.append(name)
    for name, alive in servers.items():
        path = os.path.join(parent, name)
        if not alive and name != keep and name not in in_use and not _written_by_live_process(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(name)
    return removed


def _written_by_live_process(path: str, except_pid: int = 0) -> bool:
    """Whether a live process (other than ``except_pid``) holds a worker file in ``path``
    or an app subdirectory: the directory is in use whatever its name says (e.g. gunicorn
    ``--daemon`` prepared it in the process that then forked the real master away)."""
    own = f"worker-{except_pid}-"
    directories = [path]
    try:
        with os.scandir(os.path.join(path, APPS_DIR)) as apps:
            directories += [e.path for e in apps if e.is_dir(follow_symlinks=False)][:MAX_SWEEP_ENTRIES]
    except OSError:
        pass
    for directory in directories:
        try:
            names = [
                n for n in os.listdir(directory) if is_worker_file(n, include_hidden=True) and not n.startswith(own)
            ]
        except OSError:
            continue
        for name in names[:MAX_SWEEP_ENTRIES]:
            try:
                fd = os.open(os.path.join(directory, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                if is_locked(fd):
                    return True
            finally:
                os.close(fd)
    return False


def is_automatic(path: str) -> bool:
    """Whether ``path`` is a server directory this module chose (by its name and place)."""
    parent, name = os.path.split(os.path.abspath(path))
    match = _NAME.match(name)
    return (
        match is not None
        and match.group(1) == "server"
        and parent == os.path.join(os.path.abspath(tempfile.gettempdir()), f"{USER_DIR_PREFIX}{os.geteuid()}")
    )


def release(path: str) -> bool:
    """Remove the automatic directory at ``path`` (this process is its server's root and
    is exiting) unless another live process still uses it; True if removed."""
    if not is_automatic(path):
        return False  # a directory the user chose is theirs to keep
    parent, name = os.path.split(os.path.abspath(path))
    return _remove_at_exit(parent, name, name.rsplit("-", 1)[-1], os.getpid())


def _remove_at_exit(parent: str, name: str, scope: str, owner: int) -> bool:
    """Remove server directory ``name`` as ``owner`` exits, if no other live process of
    the server (its root, an upgraded master) still uses it."""
    if os.getpid() != owner:
        return False  # a forked child inherited the atexit handler
    try:
        servers, aliases = _entries(parent, scope)
    except OSError:
        return False
    me = process.process_info(owner)
    mine = f"{ALIAS_PREFIX}{me.key}-{scope}" if me is not None else ""
    if any(alive and target == name and alias != mine for alias, (target, alive) in aliases.items()):
        return False  # an upgraded gunicorn master carries on in this directory
    own_root = name == f"{SERVER_PREFIX}{me.key}-{scope}" if me is not None else False
    if servers.get(name) and not own_root:
        return False  # its root (an older master) is still alive
    if _written_by_live_process(os.path.join(parent, name), owner):
        return False
    shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
    if mine:
        _unlink(os.path.join(parent, mine))
    return True


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
    except OSError:
        return False
    return True


def worker_file_count(directory: str, limit: int) -> int:
    """Worker files in ``directory``, counting up to ``limit`` (cheap: one listing)."""
    count = 0
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if is_worker_file(entry.name, include_hidden=True):
                    count += 1
                    if count >= limit:
                        break
    except OSError:
        pass
    return count
