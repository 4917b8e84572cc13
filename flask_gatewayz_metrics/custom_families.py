"""What the application's own (custom) metrics look like, and reading them back merged.

A custom metric is described by a ``Definition``. Each process that records into one
writes a ``custom_meta`` record (name, storage kind, documentation, label names) beside
its series, so any process can serve every custom metric, including ones it never
defined itself (defined lazily by another worker, or by a worker that has exited).
Everything read from the files is untrusted: a series or a description that does not
parse is skipped, never an error.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import pairwise

from .storage import Merged, kinds

METRIC_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
"""Prometheus metric names, without colons (reserved for recording rules)."""
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
GAUGE_MODES = ("sum", "max", "min", "latest", "livesum")
MAX_NAME_LENGTH = 200
MAX_DOCUMENTATION = 500
MAX_LABEL_NAMES = 10

COUNTER_KIND = "custom_counter"
GAUGE_KIND_PREFIX = "custom_gauge_"
META_KIND = "custom_meta"


def histogram_kind(bucket_count: int) -> str:
    """The storage kind of a custom histogram's series with ``bucket_count`` finite bounds."""
    return f"{kinds.CUSTOM_HISTOGRAM_PREFIX}{bucket_count}"


def type_of_kind(kind: str) -> str | None:
    """"counter", "gauge" or "histogram" for a custom series kind, else None."""
    if kind == COUNTER_KIND:
        return "counter"
    if kind.startswith(GAUGE_KIND_PREFIX) and kind in kinds.KINDS:
        return "gauge"
    if kind.startswith(kinds.CUSTOM_HISTOGRAM_PREFIX) and kind in kinds.KINDS:
        return "histogram"
    return None


def bounds_label(bounds: Iterable[float]) -> str:
    """The finite bucket bounds as stored in a histogram series key (exact: ``repr``)."""
    return ",".join(repr(float(b)) for b in bounds)


def parse_bounds(text: str, count: int) -> tuple[float, ...] | None:
    """Bounds from a series key: ``count`` finite, strictly increasing floats, else None."""
    try:
        bounds = tuple(float(part) for part in text.split(","))
    except ValueError:
        return None
    if len(bounds) != count or not all(math.isfinite(b) for b in bounds):
        return None
    if any(b >= c for b, c in pairwise(bounds)):
        return None
    return bounds


def _parse_names(text: str) -> tuple[str, ...] | None:
    try:
        names = json.loads(text)
    except ValueError:
        return None
    if (
        not isinstance(names, list)
        or len(names) > MAX_LABEL_NAMES
        or not all(isinstance(n, str) and LABEL_NAME.match(n) and not n.startswith("__") for n in names)
        or len(set(names)) != len(names)
    ):
        return None
    return tuple(names)


@dataclass(frozen=True)
class Definition:
    """One custom metric: family name (a counter's without ``_total``), type, storage kind."""

    name: str
    type: str
    kind: str
    documentation: str
    labelnames: tuple[str, ...] = ()
    bounds: tuple[float, ...] = ()
    """Finite histogram bucket bounds (the +Inf bucket is implied)."""

    @property
    def mode(self) -> str:
        """A gauge's merge mode ("" for other types)."""
        return self.kind[len(GAUGE_KIND_PREFIX) :] if self.type == "gauge" else ""

    def meta_labels(self) -> tuple[str, ...]:
        """The label values of this definition's ``custom_meta`` record (``from_meta`` reads them back)."""
        return (self.name, self.kind, self.documentation, json.dumps(list(self.labelnames)))

    def sample_names(self) -> tuple[str, ...]:
        """Names the exposition uses for this family (to detect clashes)."""
        if self.type == "counter":
            return (self.name, f"{self.name}_total", f"{self.name}_created")
        if self.type == "histogram":
            return tuple(f"{self.name}{s}" for s in ("", "_bucket", "_sum", "_count", "_created"))
        return (self.name,)

    @classmethod
    def from_meta(cls, labels: tuple[str, ...]) -> Definition | None:
        """A definition read back from a ``custom_meta`` record, if it is well-formed."""
        name, kind, documentation, labelnames = labels
        kind_type = type_of_kind(kind)
        names = _parse_names(labelnames)
        if (
            kind_type is None
            or names is None
            or not METRIC_NAME.match(name)
            or len(name) > MAX_NAME_LENGTH
            or len(documentation) > MAX_DOCUMENTATION
            or (kind_type == "histogram" and "le" in names)
        ):
            return None
        return cls(name, kind_type, kind, documentation, names)


@dataclass
class CustomSeries:
    """One merged series of a custom metric: its label values, value or sum, and buckets."""

    labels: tuple[str, ...]
    value: float = 0.0
    """Counter or gauge value; a histogram's sum."""
    bounds: tuple[float, ...] = ()
    buckets: list[float] = field(default_factory=list)
    """Histogram: one count per bucket (+Inf last), not cumulative."""

    @property
    def count(self) -> float:
        """Histogram: the observations (the sum of the bucket counts)."""
        return math.fsum(self.buckets)


@dataclass
class CustomFamily:
    """A custom metric and its merged series, sorted by label values."""

    definition: Definition
    series: list[CustomSeries]


def custom_families(merged: Merged, local: Iterable[Definition]) -> list[CustomFamily]:
    """Every custom metric with its merged series, sorted by name.

    This process's own definitions win; a metric only other processes defined is
    described by its newest ``custom_meta`` record. Series whose kind does not match the
    chosen definition (the metric was redefined with another type) are left out.
    """
    chosen: dict[str, Definition] = {d.name: d for d in local}
    local_names = set(chosen)
    defined_at: dict[str, float] = {}
    for labels, payload in merged.totals.get(META_KIND, {}).items():
        definition = Definition.from_meta(labels)
        if definition is None or definition.name in local_names:
            continue
        if definition.name not in defined_at or payload[kinds.SET] > defined_at[definition.name]:
            chosen[definition.name] = definition
            defined_at[definition.name] = payload[kinds.SET]
    series: dict[str, list[CustomSeries]] = {name: [] for name in chosen}
    for kind, payloads in merged.totals.items():
        if type_of_kind(kind) is None:
            continue
        for labels, payload in payloads.items():
            definition = chosen.get(labels[0])
            if definition is None or not _accepts(definition, kind):
                continue
            found = _series(definition, kind, labels, payload)
            if found is not None:
                series[definition.name].append(found)
    out = []
    for name, definition in sorted(chosen.items()):
        rows = sorted(series[name], key=lambda s: s.labels)
        if not rows and not definition.labelnames and definition.mode not in ("max", "min", "latest"):
            # An unlabelled counter, histogram or summed gauge exists at 0 from the start.
            rows = [CustomSeries((), 0.0, definition.bounds, [0.0] * (len(definition.bounds) + 1))]
        out.append(CustomFamily(definition, rows))
    return out


def _accepts(definition: Definition, kind: str) -> bool:
    if definition.type == "histogram":
        return kind.startswith(kinds.CUSTOM_HISTOGRAM_PREFIX)
    return kind == definition.kind


def _series(definition: Definition, kind: str, labels: tuple[str, ...], payload: list[float]) -> CustomSeries | None:
    """One merged series, or None if its key does not parse or it was never set."""
    try:
        values = json.loads(labels[-1])
    except ValueError:
        return None
    if (
        not isinstance(values, list)
        or len(values) != len(definition.labelnames)
        or not all(isinstance(v, str) for v in values)
    ):
        return None
    if definition.type != "histogram":
        if definition.mode in ("max", "min", "latest") and not payload[kinds.SET]:
            return None  # allocated but never set
        return CustomSeries(tuple(values), payload[kinds.VALUE])
    bounds = parse_bounds(labels[1], kinds.KINDS[kind].size - 2)
    if bounds is None:
        return None
    return CustomSeries(tuple(values), payload[kinds.HISTOGRAM_SUM], bounds, payload[kinds.HISTOGRAM_BUCKETS :])
