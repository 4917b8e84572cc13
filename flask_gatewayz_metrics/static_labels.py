"""Static labels: the same label pairs on every series (``GATEWAYZ_METRICS_STATIC_LABELS``).

Like prometheus_flask_exporter's static/default labels (``service``-like names, ``region``,
``cluster``): set once, they appear on every family ``/metrics`` serves (text, OpenMetrics,
gzip), on ``/metrics/json`` under ``static_labels`` and as resource attributes of the OTLP
export. They are added at one place, ``StaticLabels``, which wraps the exporter's whole
``collect()`` (the gateway's families, the application's custom and ``prometheus_client``
metrics, and any family added there later), so no family builder needs to know of them.

Names follow Prometheus' rules and may not be one of a family's own labels (checked at
start, ``check_no_clash``): a series would otherwise carry one name twice. A family that
appears later with such a label (e.g. a custom metric defined after ``init_app``) keeps
its own value for that label, and a warning is logged once per family.
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

log = logging.getLogger("flask_gatewayz_metrics")
MAX_STATIC_LABELS = 16
MAX_VALUE_LENGTH = 256
_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]{0,99}\Z")
RESERVED = {
    "le": "the bucket bound of every histogram",
    "quantile": "the quantile of summaries",
    "job": "set by Prometheus from the scrape config (a served one becomes exported_job)",
    "instance": "set by Prometheus from the scrape target (a served one becomes exported_instance)",
}


def parse_static_labels(value: Any) -> dict[str, str]:
    """Label pairs from a mapping or a ``name=value,name=value`` string (values
    percent-encoded, as in ``OTEL_RESOURCE_ATTRIBUTES``), each name and value checked;
    ``TypeError`` / ``ValueError`` say which one is wrong."""
    if isinstance(value, str):
        pairs: dict[str, Any] = {}
        for item in value.split(","):
            if not item.strip():
                continue
            name, sep, raw = item.partition("=")
            if not sep:
                raise ValueError(f"{item.strip()[:40]!r} is not name=value")
            pairs[name.strip()] = urllib.parse.unquote(raw.strip())
        value = pairs
    if not isinstance(value, Mapping):
        raise TypeError
    if len(value) > MAX_STATIC_LABELS:
        raise ValueError(f"at most {MAX_STATIC_LABELS} labels")
    out: dict[str, str] = {}
    for name, label_value in value.items():
        if not isinstance(name, str) or not isinstance(label_value, str):
            raise TypeError
        if not _NAME.match(name) or name.startswith("__"):
            raise ValueError(f"{name[:40]!r} is not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*, no leading __)")
        if name in RESERVED:
            raise ValueError(f"label {name!r} is reserved: {RESERVED[name]}")
        if not label_value or len(label_value) > MAX_VALUE_LENGTH:
            raise ValueError(f"the value of {name!r} must have 1 to {MAX_VALUE_LENGTH} characters")
        if any(ord(c) < 32 or ord(c) == 127 for c in label_value):
            raise ValueError(f"the value of {name!r} has a control character")
        if not label_value.isascii():
            try:
                label_value.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate: e.g. Latin-1 bytes in the environment
                raise ValueError(f"the value of {name!r} is not valid UTF-8 text") from None
        out[name] = label_value
    return out


def label_names(family: Metric) -> set[str]:
    """The label names a family declares or uses in its samples (``le`` of histograms included)."""
    names = set(getattr(family, "_labelnames", ()) or ())
    for sample in family.samples:
        names.update(sample.labels)
    return names


def check_no_clash(labels: Mapping[str, str], families: Iterable[Metric]) -> None:
    """Raise ``ValueError`` naming the first static label that is also a label of one of ``families``."""
    if not labels:
        return
    for family in families:
        clash = sorted(set(labels) & label_names(family))
        if clash:
            raise ValueError(
                f"GATEWAYZ_METRICS_STATIC_LABELS: {clash[0]!r} is already a label of the family {family.name!r}; "
                "choose another name"
            )


def with_labels(family: Metric, labels: Mapping[str, str]) -> Metric:
    """A copy of ``family`` whose every sample also carries ``labels`` (a sample's own label
    of the same name keeps its value)."""
    labelled = Metric(family.name, family.documentation, family.type, family.unit)
    labelled.samples = [sample._replace(labels={**labels, **sample.labels}) for sample in family.samples]
    return labelled


class StaticLabels(Collector):
    """``source``'s families, each with ``labels`` added to every sample: the one place
    static labels are applied for every exposition format."""

    def __init__(self, source: Collector, labels: Mapping[str, str]) -> None:
        self.source = source
        self.labels = dict(labels)
        self._warned: set[str] = set()

    def collect(self) -> Iterator[Metric]:
        """The source's families with the static labels added to every sample."""
        names = set(self.labels)
        for family in self.source.collect():
            if family.name not in self._warned and not names.isdisjoint(label_names(family)):
                self._warned.add(family.name)  # bounded by the number of families
                log.warning(
                    "family %s has its own label among GATEWAYZ_METRICS_STATIC_LABELS (%s): it keeps its own value",
                    family.name, ", ".join(sorted(names & label_names(family))),
                )  # fmt: skip
            yield with_labels(family, self.labels)
