"""The OpenTelemetry semantic conventions' histograms as metric families (see ``semconv``).

On ``/metrics`` each appears under the OpenTelemetry-to-Prometheus translation: dots
become underscores in names and attribute keys, and a metric in seconds gets the
``_seconds`` suffix (``gen_ai.client.operation.duration`` ->
``gen_ai_client_operation_duration_seconds``; the annotation unit ``{token}`` adds
nothing). OTLP export sends them under their OpenTelemetry names and attribute keys
(``CONVENTIONS``, used by ``otlp_encode``); attributes without a value (``error.type``
of a success) are left out there, and are empty labels here, which Prometheus treats
as absent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client.metrics_core import Metric

from .exposition_common import cumulative
from .exposition_text import SeriesHistogram
from .semconv import DEFAULT_OPERATION, OTHER, http_error_type
from .snapshot import Snapshot
from .storage import kinds

GEN_AI = ("gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model", "gen_ai.response.model")
TOKEN_TYPES = ("input", "output")
"""The conventions' gen_ai.token.type values (cached input tokens are part of input)."""


@dataclass(frozen=True)
class Convention:
    """One conventions' metric: its OpenTelemetry and Prometheus names, and where its data is."""

    name: str
    unit: str
    description: str
    stability: str
    kind: str
    """The storage record kind holding its series."""
    bounds: tuple[float, ...]
    attributes: tuple[str, ...]
    int_attributes: frozenset[str] = frozenset()
    """Attributes whose values the conventions type as int (sent as such by OTLP)."""

    @property
    def prometheus_name(self) -> str:
        """The family name on ``/metrics`` (dots to underscores, ``_seconds`` for a unit of s)."""
        return self.name.replace(".", "_") + ("_seconds" if self.unit == "s" else "")

    @property
    def labels(self) -> list[str]:
        """The Prometheus label names of the attributes (dots to underscores)."""
        return [attribute.replace(".", "_") for attribute in self.attributes]

    @property
    def attribute_of(self) -> dict[str, str]:
        """Prometheus label name -> OpenTelemetry attribute key."""
        return dict(zip(self.labels, self.attributes, strict=True))


HTTP_SERVER_DURATION = Convention(
    "http.server.request.duration", "s", "Duration of HTTP server requests.", "stable",
    kinds.HTTP_SERVER_BUCKETS, kinds.HTTP_SERVER_BOUNDS,
    ("http.route", "http.request.method", "http.response.status_code", "error.type"),
    frozenset({"http.response.status_code"}),
)  # fmt: skip
TOKEN_USAGE = Convention(
    "gen_ai.client.token.usage", "{token}", "Number of input and output tokens used.", "development",
    "tokens", kinds.TOKEN_BOUNDS, (*GEN_AI, "gen_ai.token.type"),
)  # fmt: skip
CLIENT_DURATION = Convention(
    "gen_ai.client.operation.duration", "s", "GenAI operation duration (upstream calls).", "development",
    "gen_ai_client_duration", kinds.GEN_AI_DURATION_BOUNDS, (*GEN_AI, "error.type"),
)  # fmt: skip
SERVER_DURATION = Convention(
    "gen_ai.server.request.duration", "s", "Generative AI server request duration (the gateway's responses).",
    "development", "gen_ai_server_duration", kinds.GEN_AI_DURATION_BOUNDS, (*GEN_AI, "error.type"),
)  # fmt: skip
TIME_TO_FIRST_TOKEN = Convention(
    "gen_ai.server.time_to_first_token", "s", "Time to generate first token for successful responses.",
    "development", "gen_ai_first_token", kinds.GEN_AI_FIRST_TOKEN_BOUNDS, GEN_AI,
)  # fmt: skip
TIME_PER_OUTPUT_TOKEN = Convention(
    "gen_ai.server.time_per_output_token", "s",
    "Time per output token generated after the first token for successful responses.",
    "development", "gen_ai_per_output_token", kinds.GEN_AI_PER_TOKEN_BOUNDS, GEN_AI,
)  # fmt: skip

CONVENTIONS: dict[str, Convention] = {
    c.prometheus_name: c
    for c in (
        TOKEN_USAGE, CLIENT_DURATION, SERVER_DURATION, TIME_TO_FIRST_TOKEN, TIME_PER_OUTPUT_TOKEN,
        HTTP_SERVER_DURATION,
    )
}  # fmt: skip
"""Every conventions' metric by its Prometheus family name."""
ONLY_CONVENTIONS_KINDS = frozenset(c.kind for c in CONVENTIONS.values()) - {"tokens"}
"""Record kinds that feed only the conventions' families (``tokens`` also feeds
``llm_tokens_total``): a scrape without those families need not merge them."""


def semconv_families(snap: Snapshot) -> list[Metric]:
    """The conventions' histograms, built from one snapshot (empty families included)."""
    out: list[Metric] = []
    for convention in CONVENTIONS.values():
        family = SeriesHistogram(
            convention.prometheus_name, convention.description, labels=convention.labels,
            unit="seconds" if convention.unit == "s" else "",
        )  # fmt: skip
        if convention is HTTP_SERVER_DURATION:
            for labels, (counts, total) in sorted(_http_server_series(snap).items()):
                family.add_metric(list(labels), cumulative(convention.bounds, counts), total)
        else:
            for key, payload in snap.series(convention.kind):
                values = _labels(convention, key)
                if values is not None:
                    family.add_metric(
                        values,
                        cumulative(convention.bounds, payload[kinds.HISTOGRAM_BUCKETS :]),
                        payload[kinds.HISTOGRAM_SUM],
                    )
        out.append(family)
    return out


def _http_server_series(snap: Snapshot) -> dict[tuple[str, ...], tuple[list[float], float]]:
    """http.server.request.duration per (route, method, status code, error.type): the
    buckets of the ``kinds.HTTP_SERVER_BUCKETS`` series, the sum of their ``request`` records
    (same labels: endpoint, method, status, failed). A status stored both with and
    without a failure has one error.type: their series are added up."""
    out: dict[tuple[str, ...], tuple[list[float], float]] = {}
    for key, payload in snap.series(kinds.HTTP_SERVER_BUCKETS):
        if len(key) < 4 or not key[2].isdigit():
            continue
        endpoint, method, status, failed = key[:4]
        request = snap.merged.total("request", tuple(key))
        total = request[kinds.REQ_SUM] if request is not None else 0.0
        labels = (endpoint, OTHER if method == "OTHER" else method, status, http_error_type(int(status), failed == "1"))
        previous = out.get(labels)
        counts = payload if previous is None else [a + b for a, b in zip(previous[0], payload, strict=False)]
        out[labels] = (counts, total + (previous[1] if previous is not None else 0.0))
    return out


def _labels(convention: Convention, key: Sequence[str]) -> list[str] | None:
    """The family's label values of one stored series (None: not part of this family).

    Indexed rather than unpacked, so that labels another version may add to a stored
    kind are left out instead of breaking the scrape."""
    if convention is TOKEN_USAGE:
        if len(key) < 3 or key[2] not in TOKEN_TYPES:
            return None
        return [DEFAULT_OPERATION, key[0], key[1], key[1], key[2]]
    if convention.attributes[: len(GEN_AI)] == GEN_AI:
        # Stored: operation, provider, model[, error type]; the one model the application
        # recorded is both the requested and the responding model.
        width = len(convention.attributes) - 1
        if len(key) < width:
            return None
        return [key[0], key[1], key[2], key[2], *key[3:width]]
    width = len(convention.attributes)
    return list(key[:width]) if len(key) >= width else None
