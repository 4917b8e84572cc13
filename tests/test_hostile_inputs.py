"""The recording API never raises on hostile input (SECURITY.md): int / float subclasses
whose ``__float__`` or ``__int__`` raises, str subclasses whose ``__hash__`` / ``__eq__``
raises, objects whose ``__str__`` raises, ints past float's range. Each is dropped and
counted (``gatewayz_metrics_dropped_total``), or recorded as its plain value."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from flask_gatewayz_metrics import MetricsCollector
from flask_gatewayz_metrics.labels import as_number, as_status, plain_str
from flask_gatewayz_metrics.prices import load_prices
from flask_gatewayz_metrics.testing import scrape_samples


class BadFloatInt(int):
    def __float__(self) -> float:
        raise RuntimeError("boom float")


class BadFloatFloat(float):
    def __float__(self) -> float:
        raise RuntimeError("boom float")


class BadIntInt(int):
    def __int__(self) -> int:
        raise RuntimeError("boom int")


class BadHashStr(str):
    def __hash__(self) -> int:
        raise RuntimeError("boom hash")


class BadEqStr(str):
    def __eq__(self, other: object) -> bool:
        raise RuntimeError("boom eq")

    __hash__ = str.__hash__


class BadStrObj:
    def __str__(self) -> str:
        raise RuntimeError("boom str")

    def __format__(self, spec: str) -> str:
        raise RuntimeError("boom format")

    def __repr__(self) -> str:
        raise RuntimeError("boom repr")


class BadCmpInt(int):
    def __lt__(self, other: object) -> bool:
        raise RuntimeError("boom lt")

    def __le__(self, other: object) -> bool:
        raise RuntimeError("boom le")

    def __gt__(self, other: object) -> bool:
        raise RuntimeError("boom gt")

    def __ge__(self, other: object) -> bool:
        raise RuntimeError("boom ge")


NUMBERS = {"float-subclass-int": BadFloatInt(3), "float-subclass-float": BadFloatFloat(0.5)}

Call = Callable[[MetricsCollector, Any], None]
NUMBER_CALLS: dict[str, tuple[Call, str]] = {
    "record_provider_call(latency)": (lambda c, v: c.record_provider_call("openai", "gpt", v, 200), "invalid_latency"),
    "record_request(latency)": (lambda c, v: c.record_request("/x", "GET", v, 200), "invalid_latency"),
    "record_db_query": (lambda c, v: c.record_db_query(v), "invalid_latency"),
    "record_tokens(input)": (lambda c, v: c.record_tokens("openai", "gpt", v, 10), "invalid_value"),
    "record_tokens(cost)": (lambda c, v: c.record_tokens("openai", "gpt", 1, 10, cost_usd=v), "invalid_value"),
    "set_rate_limit_remaining": (lambda c, v: c.set_rate_limit_remaining("openai", "tokens", v), "invalid_value"),
    "set_budget_remaining": (lambda c, v: c.set_budget_remaining("red", v), "invalid_value"),
    "record_stream(duration)": (lambda c, v: c.record_stream("p", "m", "completed", v), "invalid_value"),
    "record_exemplar(latency)": (
        lambda c, v: c.record_exemplar("/x", "GET", v, "0af7651916cd43dd8448eb211c80319c"),
        "invalid_value",
    ),
}


def test_as_number_as_status_and_plain_str_never_raise() -> None:
    """The shared checks: a raising __float__ is NaN, an int past float's range inf, a
    raising __int__ None (an invalid status); a str subclass becomes a plain str."""
    assert math.isnan(as_number(BadFloatInt(3))) and math.isnan(as_number(BadFloatFloat(0.5)))
    assert as_number(10**400) == math.inf and as_number(BadCmpInt(7)) == 7.0
    assert as_status(BadIntInt(200)) is None and as_status(BadCmpInt(200)).__class__ is int
    plain = plain_str(BadHashStr("openai"))
    assert plain == "openai" and type(plain) is str and plain_str(b"x") is None and plain_str(5) is None


@pytest.mark.parametrize("value", list(NUMBERS.values()), ids=list(NUMBERS))
@pytest.mark.parametrize("call", list(NUMBER_CALLS), ids=list(NUMBER_CALLS))
def test_a_number_whose_float_raises_is_dropped(collector: MetricsCollector, call: str, value: object) -> None:
    """An int or float subclass whose __float__ raises is dropped and counted, never raised."""
    record, reason = NUMBER_CALLS[call]
    record(collector, value)
    assert collector.snapshot().dropped() == {reason: 1}


def test_budget_past_floats_range_is_dropped(collector: MetricsCollector) -> None:
    """set_budget_remaining(team, 10**400): dropped as invalid_value (an OverflowError before)."""
    collector.set_budget_remaining("red", 10**400)
    collector.set_budget_remaining("red", -(10**400))
    collector.set_budget_remaining("red", 12)
    assert collector.snapshot().dropped() == {"invalid_value": 2}
    assert [payload[0] for _, payload in collector.snapshot().series("budget")] == [12.0]


@pytest.mark.parametrize("cls", [BadHashStr, BadEqStr], ids=["hash-raises", "eq-raises"])
def test_closed_list_values_of_str_subclasses(collector: MetricsCollector, cls: type[str]) -> None:
    """error_type, limit and outcome of a str subclass whose __hash__ / __eq__ raises are
    compared as their plain text: recorded when in the list, dropped otherwise; the
    price table finds the model by its text. Nothing raises, nothing is an internal error."""
    collector.set_prices({"gpt": {"input": 1_000_000, "output": 0}})
    collector.record_provider_call("openai", "gpt", 0.1, 500, error_type=cls("timeout"))
    collector.record_provider_error("openai", 0, cls("rate_limited"))
    collector.record_provider_error("openai", 0, cls("bogus"))
    collector.set_rate_limit_remaining("openai", cls("tokens"), 5)
    collector.set_rate_limit_remaining("openai", cls("bogus"), 5)
    collector.record_stream("p", "m", cls("completed"), 1.0)
    collector.record_stream("p", "m", cls("bogus"), 1.0)
    collector.record_tokens("openai", cls("gpt"), 3, 0)
    snap = collector.snapshot()
    assert snap.dropped() == {"invalid_value": 2}
    errors = {labels: payload[0] for labels, payload in snap.series("provider_error_type")}
    assert errors == {("openai", "timeout"): 1, ("openai", "rate_limited"): 1, ("openai", "other"): 1}
    assert [labels for labels, _ in snap.series("rate_limit")] == [("openai", "tokens")]
    assert [labels for labels, _ in snap.series("stream")] == [("p", "m", "completed")]
    assert [payload[0] for _, payload in snap.series("cost")] == [3.0]
    client = [
        dict(labels)["error_type"]
        for (name, labels), _ in scrape_samples(collector).items()
        if name == "gen_ai_client_operation_duration_seconds_count"
    ]
    assert client == ["timeout"]


def test_status_whose_comparisons_raise(collector: MetricsCollector) -> None:
    """record_provider_error with an int subclass whose comparisons raise uses its value;
    one whose __int__ raises is no status (``other``)."""
    collector.record_provider_error("openai", BadCmpInt(429))
    collector.record_provider_error("openai", BadIntInt(503))
    errors = {labels: payload[0] for labels, payload in collector.snapshot().series("provider_error_type")}
    assert errors == {("openai", "rate_limited"): 1, ("openai", "other"): 1}


def test_exemplar_trace_id_whose_str_raises(collector: MetricsCollector) -> None:
    """A trace id that is no str (its __str__ / __format__ raising) is dropped, not raised;
    a str subclass is read as its text."""
    collector.record_exemplar("/x", "GET", 0.1, BadStrObj())  # type: ignore[arg-type]
    collector.record_exemplar("/x", "GET", 0.1, BadHashStr("0af7651916cd43dd8448eb211c80319c"))
    snap = collector.snapshot()
    assert snap.dropped() == {"invalid_value": 1}
    assert len(list(snap.series("exemplar"))) == 1


@pytest.mark.parametrize(
    "price",
    [10**400, -(10**400), 10**5000, BadFloatFloat(1.0), BadFloatInt(1)],
    ids=["overflow", "negative-overflow", "too-many-digits", "float-subclass", "int-subclass"],
)
def test_a_price_past_floats_range_is_a_configuration_error(price: object) -> None:
    """A price float() cannot take is the documented ValueError naming the model and field."""
    with pytest.raises(ValueError, match=r"model 'gpt' field 'output' must be a finite number >= 0, got "):
        load_prices({"gpt": {"input": 1, "output": price}})


class BadBool:
    def __bool__(self) -> bool:
        raise RuntimeError("boom bool")


def test_an_error_flag_whose_truth_raises_is_dropped(collector: MetricsCollector) -> None:
    """``error=`` whose ``__bool__`` raises: the call is dropped as invalid_value, nothing
    recorded, never raised (both raised from ``bool(error)`` before); a plain flag works."""
    collector.record_provider_call("openai", "gpt", 0.1, None, error=BadBool())
    collector.record_external_api_call("stripe", error=BadBool())  # type: ignore[arg-type]
    collector.record_external_api_call("stripe", error=True)
    snapshot = collector.snapshot()
    assert snapshot.dropped() == {"invalid_value": 2}
    samples = scrape_samples(collector)
    assert samples[("external_api_calls_total", (("service", "stripe"),))] == 1.0
    assert ("provider_requests_total", (("provider", "openai"),)) not in samples
