"""A faster renderer of the text exposition formats, byte for byte prometheus_client's.

``generate_latest`` (text 0.0.4) and ``openmetrics.generate_latest`` (OpenMetrics 1.0.0)
re-validate and re-escape every label name and value of every sample at every scrape;
at tens of thousands of samples that is most of a scrape. ``TextRenderer`` produces the
same bytes for the same families (prometheus_client's escaping functions do the
escaping; only their results are kept), with:

* each sample's label part (``{name="value",...}``, sorted and escaped) kept from one
  scrape to the next, keyed by the sample's exact label items (a pure memo: a series
  that changes its labels is another key; the memo holds the label sets of the last
  scrape only, so its memory follows what is served);
* metric names, label names and value strings (``floatToGoString``) memoised.

Only the default escaping (``underscores``) of text 0.0.4 and OpenMetrics 1.0.0 is
rendered here: any other negotiated format goes to prometheus_client's encoder, and so
does any family the fast path cannot take (an exception inside it: prometheus_client
then renders, or raises, exactly as it would have).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

from prometheus_client import exposition, openmetrics
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.openmetrics import exposition as om
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

TEXT = "text"
OPENMETRICS = "openmetrics"
_OM_SUFFIXES = ("_created", "_gsum", "_gcount")
_TEXT_TYPES = {"counter": "counter", "info": "gauge", "stateset": "gauge", "gaugehistogram": "histogram",
               "unknown": "untyped"}  # fmt: skip
_TEXT_SUFFIX = {"counter": "_total", "info": "_info"}
_go_string: Callable[[Any], str] = floatToGoString  # typed aliases (prometheus_client has no annotations)
_exemplar_string: Callable[[Metric, Any, Any], str] = om._compose_exemplar_string
_VALUE_MEMO_LIMIT = 1 << 16
"""Distinct value strings kept (beyond it the memo starts again: values change)."""


def fast_format(encoder: Callable[..., bytes]) -> str | None:
    """Which format ``encoder`` (from ``choose_encoder``) renders, if this module can
    render it exactly (``TEXT`` or ``OPENMETRICS``); None otherwise."""
    if encoder is exposition.generate_latest:
        return TEXT
    if isinstance(encoder, partial) and not encoder.args:
        keywords = encoder.keywords
        if encoder.func is exposition.generate_latest and keywords == {"escaping": om.UNDERSCORES}:
            return TEXT
        if encoder.func is om.generate_latest and keywords == {"escaping": om.UNDERSCORES, "version": "1.0.0"}:
            return OPENMETRICS
    return None


Row = tuple[Sequence[str], Sequence[tuple[str, float]], "float | None"]


class SeriesHistogram(HistogramMetricFamily):
    """A ``HistogramMetricFamily`` that makes its samples only when they are asked for.

    ``add_metric`` keeps each series as a row (label values, cumulative buckets, sum);
    ``TextRenderer`` writes a row's lines directly (the same lines its samples give), and
    anything else that reads ``samples`` (protobuf, OTLP, static labels) gets exactly the
    samples ``HistogramMetricFamily.add_metric`` would have made, in the same order. A
    series with exemplars or a timestamp, or without buckets, is added at once.
    """

    def __init__(self, name: str, documentation: str, labels: Sequence[str] = (), unit: str = "") -> None:
        self._pending: list[Row] = []
        self._made: list[Sample] = []
        super().__init__(name, documentation, labels=list(labels), unit=unit)

    @property
    def samples(self) -> list[Sample]:
        """The samples, made now from the series added without them."""
        if self._pending:
            pending, self._pending = self._pending, []
            for labels, buckets, sum_value in pending:
                HistogramMetricFamily.add_metric(self, labels, buckets, sum_value)
        return self._made

    @samples.setter
    def samples(self, value: list[Sample]) -> None:
        """Replace every sample (``Metric.__init__`` sets none; ``static_labels`` relabels them)."""
        self._pending = []
        self._made = value

    def add_metric(
        self, labels: Sequence[str], buckets: Sequence[Any], sum_value: float | None, timestamp: Any = None
    ) -> None:
        """As ``HistogramMetricFamily.add_metric`` (its samples made later, if at all)."""
        if timestamp is None and buckets and all(len(b) == 2 for b in buckets):
            self._pending.append((labels, buckets, sum_value))
        else:
            HistogramMetricFamily.add_metric(self, labels, buckets, sum_value, timestamp)

    def take(self) -> tuple[list[Sample], list[Row]]:
        """The samples made so far and the rows not yet made into samples (for the renderer)."""
        return self._made, self._pending


def _escape_value(value: str) -> str:
    """A label value as both formats write it (backslash, newline and quote escaped)."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')


class _Families:
    """A collector over an already collected list (to hand to prometheus_client's encoders)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


class TextRenderer:
    """Renders families as text 0.0.4 or OpenMetrics 1.0.0, memoising across scrapes.

    Safe to share between threads: each render builds its own new memo of label parts
    and publishes it with one attribute store; the other memos only ever gain entries
    whose value is a pure function of their key.
    """

    def __init__(self) -> None:
        self._prefixes: dict[str, dict[Any, Any]] = {}
        """Per format: ``name{labels}`` of each series of the last scrape."""
        self._values: dict[float, str] = {}
        self._names: dict[tuple[str, str], str] = {}

    def render(self, families: list[Metric], fmt: str) -> bytes:
        """``families`` in ``fmt``; exactly prometheus_client's bytes (or its exception)."""
        try:
            return self._render(families, fmt)
        except Exception:
            original = exposition.generate_latest if fmt == TEXT else openmetrics.exposition.generate_latest
            return original(_Families(families))

    # ------------------------------------------------------------------ pieces
    def _name(self, name: str, how: str) -> str:
        key = (name, how)
        found = self._names.get(key)
        if found is None:
            if how == "metric":
                found = om.escape_metric_name(name, om.UNDERSCORES)
            elif how == "label":
                found = om.escape_label_name(name, om.UNDERSCORES)
            else:  # an OpenMetrics sample name
                found = om._escape(name, om.UNDERSCORES, om._is_legacy_labelname_rune)
            self._names[key] = found
        return found

    def _value(self, value: Any) -> str:
        # 0.0 and -0.0 are equal keys but render differently; NaN never matches itself.
        if value.__class__ is not float or value == 0.0 or math.isnan(value):
            return _go_string(value)
        found = self._values.get(value)
        if found is None:
            if len(self._values) >= _VALUE_MEMO_LIMIT:
                self._values = {}
            found = self._values[value] = _go_string(value)
        return found

    def _label_part(self, items: tuple[tuple[str, str], ...]) -> str:
        """``{k="v",...}`` (sorted by name, escaped) of one sample's label items."""
        if not items:
            return ""
        name = self._name
        return "{" + ",".join(f'{name(k, "label")}="{_escape_value(v)}"' for k, v in sorted(items)) + "}"

    # ------------------------------------------------------------------ formats
    def _render(self, families: list[Metric], fmt: str) -> bytes:
        old = self._prefixes.get(fmt, {})
        new: dict[Any, Any] = {}
        out: list[str] = []
        if fmt == TEXT:
            for metric in families:
                self._text_family(metric, out, old, new)
        else:
            for metric in families:
                self._openmetrics_family(metric, out, old, new)
            out.append("# EOF\n")
        body = "".join(out).encode("utf-8")
        self._prefixes[fmt] = new  # the series of this scrape only
        return body

    def _prefix(self, s: Any, how: str, old: dict[Any, Any], new: dict[Any, Any]) -> str:
        """``name{labels}`` of sample ``s`` (its name escaped as ``how`` says)."""
        key = (s.name, how, tuple(s.labels.items()))
        found = new.get(key)
        if found is None:
            found = old.get(key)
            if found is None:
                found = self._name(s.name, how) + self._label_part(key[2])
            new[key] = found
        return found

    def _text_family(self, metric: Metric, out: list[str], old: dict[Any, Any], new: dict[Any, Any]) -> None:
        mtype = metric.type
        mname = self._name(metric.name + _TEXT_SUFFIX.get(mtype, ""), "metric")
        doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {mname} {doc}\n# TYPE {mname} {_TEXT_TYPES.get(mtype, mtype)}\n")
        special = {metric.name + suffix: suffix for suffix in _OM_SUFFIXES}
        late: dict[str, list[str]] = {}
        value = self._value
        name = self._name
        prefix = self._prefix
        samples, rows = metric.take() if isinstance(metric, SeriesHistogram) else (metric.samples, [])
        for s in samples:
            if s.timestamp is None:
                line = f"{prefix(s, 'metric', old, new)} {value(s.value)}\n"
            else:
                line = f"{prefix(s, 'metric', old, new)} {value(s.value)} {int(float(s.timestamp) * 1000):d}\n"
            suffix = special.get(s.name)
            if suffix is None:
                out.append(line)
            else:
                late.setdefault(suffix, []).append(line)
        if rows:
            self._rows(metric, rows, "metric", out, old, new)
        for suffix, lines in sorted(late.items()):
            extra = name(metric.name + suffix, "metric")
            out.append(f"# HELP {extra} {doc}\n# TYPE {extra} gauge\n")
            out.extend(lines)

    def _openmetrics_family(self, metric: Metric, out: list[str], old: dict[Any, Any], new: dict[Any, Any]) -> None:
        mname = self._name(metric.name, "metric")
        doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
        out.append(f"# HELP {mname} {doc}\n# TYPE {mname} {metric.type}\n")
        if metric.unit:
            out.append(f"# UNIT {mname} {metric.unit}\n")
        value = self._value
        samples, rows = metric.take() if isinstance(metric, SeriesHistogram) else (metric.samples, [])
        for s in samples:
            if s.native_histogram:
                continue  # OpenMetrics 1.0 has no native histograms (prometheus_client skips them too)
            exemplar = _exemplar_string(metric, s, s.exemplar) if s.exemplar else ""
            timestamp = "" if s.timestamp is None else f" {s.timestamp}"
            shown = "" if s.value is None else value(s.value)
            out.append(f"{self._prefix(s, 'sample', old, new)} {shown}{timestamp}{exemplar}\n")
        if rows:
            self._rows(metric, rows, "sample", out, old, new)

    def _rows(
        self, metric: Metric, rows: list[Row], how: str, out: list[str], old: dict[Any, Any],
        new: dict[Any, Any],
    ) -> None:  # fmt: skip
        """The lines of ``SeriesHistogram`` rows: those of the samples ``add_metric`` would
        make (``_bucket`` per bucket, then ``_count`` and ``_sum`` when the first bound is
        not negative and there is a sum), their ``name{labels}`` parts memoised per row."""
        value = self._value
        names: Sequence[str] = getattr(metric, "_labelnames", ())
        for labels, buckets, sum_value in rows:
            key = (metric.name, how, tuple(labels), "row")
            found: tuple[list[str], list[str], str | None, str | None] | None = new.get(key) or old.get(key)
            if found is None or len(found[0]) != len(buckets) or any(
                le != known for (le, _), known in zip(buckets, found[0], strict=True)
            ):
                found = self._row_prefixes(metric.name, how, names, labels, [b[0] for b in buckets])
            new[key] = found
            _, prefixes, count_prefix, sum_prefix = found
            out.extend([f"{p} {value(v)}\n" for p, (_, v) in zip(prefixes, buckets, strict=True)])
            if sum_value is not None and count_prefix is not None:
                out.append(f"{count_prefix} {value(buckets[-1][1])}\n{sum_prefix} {value(sum_value)}\n")

    def _row_prefixes(
        self, name: str, how: str, labelnames: Sequence[str], labels: Sequence[str], les: list[str]
    ) -> tuple[list[str], list[str], str | None, str | None]:
        """(le texts, ``name_bucket{...}`` per bucket, ``name_count{...}``, ``name_sum{...}``);
        the count and sum parts are None when ``add_metric`` leaves those samples out."""
        pairs = list(zip(labelnames, labels, strict=False))  # as add_metric: the shorter decides
        bucket = self._name(name + "_bucket", how)
        prefixes = [bucket + self._label_part(tuple(dict([*pairs, ("le", le)]).items())) for le in les]
        if not float(les[0]) >= 0:  # as add_metric decides (NaN too)
            return les, prefixes, None, None
        part = self._label_part(tuple(dict(pairs).items()))
        return les, prefixes, self._name(name + "_count", how) + part, self._name(name + "_sum", how) + part
