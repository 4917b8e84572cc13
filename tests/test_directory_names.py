"""storage.directory's answers to "is this one of our files?", one per use."""

from __future__ import annotations

import pytest

from flask_gatewayz_metrics.storage import directory, layout

WORKER = "worker-12-0123456789abcdef" + layout.WORKER_SUFFIX
HIDDEN = layout.TEMP_PREFIX + WORKER
NAMES = [WORKER, HIDDEN, layout.CONTROL_NAME, layout.ARCHIVE_NAME, layout.COMPACTION_LOCK_NAME, "tenant.key", "x.txt"]


@pytest.mark.parametrize(
    ("check", "expected"),
    [
        (directory.is_worker_file, {WORKER}),
        (lambda n: directory.is_worker_file(n, include_hidden=True), {WORKER, HIDDEN}),
        (directory.is_data_file, {WORKER, HIDDEN, layout.ARCHIVE_NAME}),
        (directory.is_server_state_file, {WORKER, HIDDEN, layout.CONTROL_NAME, layout.ARCHIVE_NAME}),
        (
            directory.is_metrics_file,
            {WORKER, HIDDEN, layout.CONTROL_NAME, layout.ARCHIVE_NAME, layout.COMPACTION_LOCK_NAME},
        ),
    ],
    ids=["published worker", "any worker", "data", "server state", "metrics"],
)
def test_each_question_picks_its_names(check, expected) -> None:  # type: ignore[no-untyped-def]
    """Each helper accepts exactly the names its callers act on, and no file of anyone else."""
    assert {name for name in NAMES if check(name)} == expected


def test_a_symlinked_compaction_lock_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """ensure_directory refuses a symlink under any of our names, compaction.lock included."""
    target = tmp_path / "elsewhere"
    target.write_text("")
    metrics = tmp_path / "metrics"
    metrics.mkdir(mode=0o700)
    (metrics / layout.COMPACTION_LOCK_NAME).symlink_to(target)
    with pytest.raises(directory.MetricsDirectoryError, match="symlink"):
        directory.ensure_directory(str(metrics))
