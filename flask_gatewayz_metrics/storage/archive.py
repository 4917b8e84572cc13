"""The archive of dead workers' files: what it holds (``archive_builder``) and how it is
written, crash-safe at every step (``compaction``). This module keeps their public names
importable from their old home.
"""

from __future__ import annotations

from .archive_builder import (
    DEFAULT_SLOT_SECONDS,
    DEFAULT_SLOTS,
    NATIVE_CHAIN_REASON,
    WINDOW_GEOMETRY_REASON,
    ArchiveBuilder,
    combine_native,
)
from .compaction import (
    LABEL_LIMITS_ENV,
    MAX_FILES_PER_RUN,
    QUARANTINE_KEEP,
    CompactionResult,
    compact,
    limit_labels,
    limits_from_environment,
)

__all__ = [
    "DEFAULT_SLOTS",
    "DEFAULT_SLOT_SECONDS",
    "LABEL_LIMITS_ENV",
    "MAX_FILES_PER_RUN",
    "NATIVE_CHAIN_REASON",
    "QUARANTINE_KEEP",
    "WINDOW_GEOMETRY_REASON",
    "ArchiveBuilder",
    "CompactionResult",
    "combine_native",
    "compact",
    "limit_labels",
    "limits_from_environment",
]
