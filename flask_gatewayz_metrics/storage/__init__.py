"""Per-process mmap files in a shared directory, merged by whoever reads them."""

from __future__ import annotations

from ..errors import StorageUnavailable
from .compaction import CompactionResult, compact
from .merge import Merged, merge
from .reader import StorageProblem, WorkerView
from .store import Storage
from .window_stats import WindowStats

__all__ = [
    "CompactionResult",
    "Merged",
    "Storage",
    "StorageProblem",
    "StorageUnavailable",
    "WindowStats",
    "WorkerView",
    "compact",
    "merge",
]
