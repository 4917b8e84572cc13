"""storage.reader on its own: which files of a directory are read, with what liveness, and what is refused."""

from __future__ import annotations

import os

from conftest import FakeClock

from flask_gatewayz_metrics.storage import compact, layout
from flask_gatewayz_metrics.storage.reader import TRUSTED_UIDS_ENV, DirectoryReader, trusted_uids
from flask_gatewayz_metrics.testing import collectors_on_one_directory, worker_file


def test_one_view_per_worker_file_with_liveness_from_the_flock(metrics_dir: str, clock: FakeClock) -> None:
    """Every worker file is one view; a closed writer's file reads as dead, an open one as live."""
    with collectors_on_one_directory(3, metrics_dir, clock=clock) as workers:
        for worker in workers:
            worker.record_cache_hit()
        names = [os.path.basename(worker_file(worker) or "") for worker in workers]
        workers[2].close()
        views, problems = DirectoryReader(metrics_dir).read()
        assert problems == []
        assert {view.name: view.live for view in views} == {names[0]: True, names[1]: True, names[2]: False}
        assert {view.writer_pid for view in views} == {os.getpid()}
        assert all((view.epoch, view.slots, view.slot_seconds) == (0, 5, 60.0) for view in views)


def test_dead_only_reader_skips_live_files(metrics_dir: str, clock: FakeClock) -> None:
    """The compactor's reader (dead_only) sees only files nobody holds."""
    with collectors_on_one_directory(2, metrics_dir, clock=clock) as workers:
        for worker in workers:
            worker.record_cache_hit()
        workers[0].close()
        views, _ = DirectoryReader(metrics_dir, dead_only=True).read()
        assert [view.live for view in views] == [False]


def test_garbage_file_is_a_problem_and_the_rest_is_read(metrics_dir: str, clock: FakeClock) -> None:
    """A worker-named file of garbage is reported as a problem; the good file is still read."""
    with collectors_on_one_directory(1, metrics_dir, clock=clock) as (worker,):
        worker.record_cache_hit()
        bad = os.path.join(metrics_dir, "worker-1-00000000000000aa" + layout.WORKER_SUFFIX)
        with open(bad, "wb") as f:
            f.write(b"\x00garbage" * 100)
        views, problems = DirectoryReader(metrics_dir).read()
        assert [view.name for view in views] == [os.path.basename(worker_file(worker) or "")]
    assert [problem.path for problem in problems] == [bad]


def test_file_of_an_untrusted_owner_is_refused(metrics_dir: str, clock: FakeClock) -> None:
    """A worker file owned by a uid outside the trusted set is not read, and says why."""
    with collectors_on_one_directory(2, metrics_dir, clock=clock) as workers:
        for worker in workers:
            worker.record_cache_hit()
        path = worker_file(workers[1]) or ""
        os.chown(path, 65534, 65534)  # the tests run as root: a real other owner
        views, problems = DirectoryReader(metrics_dir).read()
        assert len(views) == 1
        assert [(p.path, p.reason.split(":")[0]) for p in problems] == [(path, "untrusted_owner")]
        views, problems = DirectoryReader(metrics_dir, trusted={os.geteuid(), 65534}).read()
        assert (len(views), problems) == (2, [])


def test_hidden_files_and_other_names_are_not_read(metrics_dir: str, clock: FakeClock) -> None:
    """A file still being created (hidden name) and files of other names are neither views nor problems."""
    with collectors_on_one_directory(1, metrics_dir, clock=clock) as (worker,):
        worker.record_cache_hit()
        for name in (layout.TEMP_PREFIX + "worker-1-00" + layout.WORKER_SUFFIX, "notes.txt"):
            with open(os.path.join(metrics_dir, name), "wb") as f:
                f.write(b"x" * 64)
        views, problems = DirectoryReader(metrics_dir).read()
    assert (len(views), problems) == (1, [])


def test_archive_view_lists_what_it_absorbed(metrics_dir: str, clock: FakeClock) -> None:
    """After compaction the archive is a view naming the files it absorbed, which are no longer read."""
    with collectors_on_one_directory(2, metrics_dir, clock=clock) as workers:
        for worker in workers:
            worker.record_cache_hit()
        dead = os.path.basename(worker_file(workers[0]) or "")
        workers[0].close()
        compact(metrics_dir)
        views, problems = DirectoryReader(metrics_dir).read()
    archive = [view for view in views if view.is_archive]
    assert problems == [] and len(archive) == 1 and len(views) == 2
    assert dead in archive[0].absorbed()
    assert dead not in {view.name for view in views}


def test_trusted_uids_from_the_environment(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """$GATEWAYZ_METRICS_TRUSTED_UIDS adds uids; malformed entries are ignored, never raised."""
    monkeypatch.setenv(TRUSTED_UIDS_ENV, "1001, x, -5,,1002")
    assert trusted_uids([7]) == frozenset({os.geteuid(), 7, 1001, 1002})
