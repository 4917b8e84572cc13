"""Every exception the package raises on purpose, in one place.

Import them from here or from the package itself (``from flask_gatewayz_metrics import
InvalidMetric``). The modules that raise them still re-export them under their old
names (``collector.InvalidMetric``, ``storage.StorageUnavailable``,
``storage.directory.MetricsDirectoryError``), so existing imports keep working.

This module imports nothing from the package: it sits below ``storage/``, so any layer
may raise or catch these classes without an upward import.

Private exceptions used only for control flow inside one module (``_Skip`` and ``_Live``
in ``storage.reader``, ``_Invalid`` in ``custom``, ``_InvalidLabel`` in ``collector``)
stay beside the code that raises and catches them: they never leave it.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

__all__ = ["InvalidMetric", "MetricsDirectoryError", "StorageUnavailable"]


class InvalidMetric(ValueError):
    """Raised in strict mode for input that would otherwise be dropped and counted.

    Outside strict mode (the default) a bad argument to a ``record_*`` call or a custom
    metric is never raised: it is dropped and counted in
    ``gatewayz_metrics_dropped_total{reason}``.

    .. versionadded:: 0.1.0
    """


class StorageUnavailable(Exception):
    """The worker file cannot be created or grown right now (disk full, gone, read-only).

    Raised by ``storage.DirectoryAccess`` to the recording code, which drops the value and counts
    it (``reason="storage_unavailable"``); it never reaches a request.

    .. versionadded:: 0.1.0
    """


class MetricsDirectoryError(RuntimeError):
    """The metrics directory is unsafe or unusable; the message says how to fix it.

    Raised when a collector starts (at import or ``init_app`` time), never during a
    request: for instance a directory owned by another user, world-writable, or a symlink.

    .. versionadded:: 0.1.0
    """
