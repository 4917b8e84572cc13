"""Per-process mmap files in a shared directory, merged by whoever reads them.

``storage.merge`` is the module (the function is ``storage.merge.merge``): nothing here
re-exports a name that would hide a submodule.
"""

from __future__ import annotations

from ..errors import StorageUnavailable
from .access import DirectoryAccess
from .compaction import CompactionResult, compact
from .merge import Merged
from .reader import StorageProblem, WorkerView
from .window_stats import WindowStats

__all__ = [
    "CompactionResult",
    "DirectoryAccess",
    "Merged",
    "StorageProblem",
    "StorageUnavailable",
    "WindowStats",
    "WorkerView",
    "compact",
]
