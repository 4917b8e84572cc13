"""Recent history: the window's clock-aligned slots one by one, merged across workers.

The windowed records already keep the last ``slots`` intervals of every series, and the
slots of all workers line up on the clock. Merging them slot by slot (instead of into
one window, as ``merge`` does for the gauges) gives a short history of request counts,
errors and latency quantiles at the slot width, from every worker alive or dead, with
no extra work on the request path. Its size is bounded by slots x series.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import kinds, layout
from .merge import oldest_slot_in_window
from .reader import WorkerView
from .window_stats import WindowStats

Labels = tuple[str, ...]
HISTORY_KINDS = ("endpoint_window", "provider_window")


@dataclass
class SlotHistory:
    """Per-slot statistics: all endpoints together, and per provider."""

    slot_seconds: float
    slots: int
    taken_at: float
    overall: dict[int, WindowStats] = field(default_factory=dict)
    series: dict[str, dict[Labels, dict[int, WindowStats]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        """JSON form: slots oldest first, each with its start time and how long it has run."""
        return {
            "slot_seconds": self.slot_seconds,
            "slots": self.slots,
            "requests": [self._point(slot, stats) for slot, stats in sorted(self.overall.items())],
            "providers": {
                labels[0]: [self._point(slot, stats) for slot, stats in sorted(by_slot.items())]
                for labels, by_slot in sorted(self.series.get("provider_window", {}).items())
            },
        }

    def _point(self, slot: int, stats: WindowStats) -> dict[str, object]:
        start = slot * self.slot_seconds
        elapsed = min(self.slot_seconds, max(0.0, self.taken_at - start)) if self.slot_seconds else None
        return {
            "start": start,
            "seconds": elapsed,
            "requests": int(stats.count),
            "errors": int(stats.errors),
            "avg": stats.average,
            "p50": stats.quantile(0.50),
            "p95": stats.quantile(0.95),
            "p99": stats.quantile(0.99),
        }


def slot_history(views: list[WorkerView], epoch: int, now: float, slot_seconds: float, slots: int) -> SlotHistory:
    """Merge the windowed slots of ``views`` slot by slot, for files of ``slot_seconds`` slots.

    Files of another window geometry (a configuration change in progress) are left out:
    their slots do not line up with these.
    """
    history = SlotHistory(slot_seconds, slots, now)
    for view in views:
        if view.epoch < epoch or view.slot_seconds != slot_seconds:
            continue
        oldest = oldest_slot_in_window(view, now)
        doubles = view.doubles
        for record in view.records:
            if record.kind not in HISTORY_KINDS:
                continue
            kind = kinds.KINDS[record.kind]
            stride = layout.slot_stride(kind.with_sketch)
            if record.kind == "endpoint_window":
                by_slot = history.overall  # all endpoints together
            else:
                by_slot = history.series.setdefault(record.kind, {}).setdefault(record.labels, {})
            for position in range(view.slots):
                base = record.offset + position * stride
                slot_id = doubles[base + layout.SLOT_ID]
                if slot_id >= oldest:
                    by_slot.setdefault(int(slot_id), WindowStats()).add_slot(view, base, kind.with_sketch)
    return history
