"""Price table: record_tokens costs calls without cost_usd from a user-supplied table (dict or JSON file)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_gatewayz_metrics import GatewayzMetrics, MetricsCollector
from flask_gatewayz_metrics.prices import PriceTable, load_prices

TABLE = {
    "gpt-4o": {"input": 2.5, "output": 10.0, "cached_input": 1.25},
    "claude-3-haiku": {"input": 0.25, "output": 1.25},
}


def cost_of(collector: MetricsCollector, provider: str, model: str) -> float | None:
    """The since-start llm_cost_usd_total of one series (None: never recorded)."""
    for labels, payload in collector.snapshot().series("cost"):
        if labels == (provider, model):
            return payload[0]
    return None


def test_dict_table_costs_input_output_and_cached_input(collector: MetricsCollector) -> None:
    """Uncached input at 'input', cached input at 'cached_input', output at 'output' (USD per million)."""
    collector.set_prices(TABLE)
    collector.record_tokens("openai", "gpt-4o", 1_000_000, 500_000, cached_input_tokens=400_000)
    # 600k uncached * 2.5 + 400k cached * 1.25 + 500k output * 10, per million
    assert cost_of(collector, "openai", "gpt-4o") == pytest.approx(1.5 + 0.5 + 5.0)


def test_cached_input_defaults_to_input_price(collector: MetricsCollector) -> None:
    """A model without 'cached_input' bills cached tokens at its input price."""
    collector.set_prices(TABLE)
    collector.record_tokens("anthropic", "claude-3-haiku", 2_000_000, 0, cached_input_tokens=1_000_000)
    assert cost_of(collector, "anthropic", "claude-3-haiku") == pytest.approx(0.5)


def test_explicit_cost_wins_over_table(collector: MetricsCollector) -> None:
    """A cost_usd given by the caller is recorded as is, not the table's."""
    collector.set_prices(TABLE)
    collector.record_tokens("openai", "gpt-4o", 1_000_000, 0, cost_usd=0.01)
    assert cost_of(collector, "openai", "gpt-4o") == pytest.approx(0.01)


def test_unknown_model_gets_no_cost_and_one_log_line(
    collector: MetricsCollector, caplog: pytest.LogCaptureFixture
) -> None:
    """A model missing from the table: tokens counted, no cost series, one warning naming it."""
    collector.set_prices(TABLE)
    with caplog.at_level(logging.WARNING, logger="flask_gatewayz_metrics"):
        collector.record_tokens("openai", "gpt-5-unpriced", 100, 10)
        collector.record_tokens("openai", "gpt-5-unpriced", 100, 10)
    assert cost_of(collector, "openai", "gpt-5-unpriced") is None
    tokens = dict(collector.snapshot().series("tokens"))
    assert tokens[("openai", "gpt-5-unpriced", "input")][0] == 200
    assert [r.getMessage() for r in caplog.records].count(
        "no price for model 'gpt-5-unpriced' in the price table (PriceTable(2 models from dict)): "
        "its cost is not recorded"
    ) == 1


def test_no_table_means_no_cost(collector: MetricsCollector) -> None:
    """Without a table (the default), a call without cost_usd records no cost: no built-in prices."""
    collector.record_tokens("openai", "gpt-4o", 1000, 1000)
    assert cost_of(collector, "openai", "gpt-4o") is None


def test_json_file_table(tmp_path: Path, collector: MetricsCollector) -> None:
    """A JSON file path is read once and used like the dict."""
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(TABLE))
    collector.set_prices(str(path))
    collector.record_tokens("openai", "gpt-4o", 0, 1_000_000)
    assert cost_of(collector, "openai", "gpt-4o") == pytest.approx(10.0)


def test_setting_wires_table_into_app(tmp_path: Path, metrics_dir: str) -> None:
    """GATEWAYZ_METRICS_PRICES (a file path) reaches record_tokens through init_app."""
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(TABLE))
    app = Flask(__name__)
    app.config.update(GATEWAYZ_METRICS_DIR=metrics_dir, GATEWAYZ_METRICS_PRICES=path)
    metrics = GatewayzMetrics(app)
    collector = metrics.of(app).collector
    collector.record_tokens("openai", "gpt-4o", 2_000_000, 0)
    assert cost_of(collector, "openai", "gpt-4o") == pytest.approx(5.0)
    assert b'llm_cost_usd_total{model="gpt-4o",provider="openai"} 5.0' in app.test_client().get("/metrics").data


BAD_TABLES: list[tuple[Any, type[Exception], str]] = [
    (["gpt-4o"], TypeError, "expected a dict"),
    ({"gpt-4o": 2.5}, TypeError, "model 'gpt-4o' must map to a dict"),
    ({"gpt-4o": {"input": 2.5}}, ValueError, "model 'gpt-4o' needs 'output'"),
    ({"gpt-4o": {"input": "2.5", "output": 1}}, TypeError, "model 'gpt-4o' field 'input' must be a number"),
    ({"gpt-4o": {"input": 1, "output": -1}}, ValueError, "model 'gpt-4o' field 'output' must be a finite number"),
    ({"gpt-4o": {"input": 1, "output": float("inf")}}, ValueError, "field 'output' must be a finite number"),
    ({"gpt-4o": {"input": 1, "output": True}}, TypeError, "field 'output' must be a number"),
    ({"gpt-4o": {"input": 1, "output": 1, "cache": 1}}, ValueError, "model 'gpt-4o' has unknown field(s) ['cache']"),
    ({"": {"input": 1, "output": 1}}, TypeError, "model names must be non-empty str"),
]


@pytest.mark.parametrize(("table", "error", "message"), BAD_TABLES)
def test_bad_table_is_rejected_at_init_naming_key_and_field(
    metrics_dir: str, table: Any, error: type[Exception], message: str
) -> None:
    """init_app rejects a malformed table with an error naming the setting, the model and the field."""
    app = Flask(__name__)
    app.config.update(GATEWAYZ_METRICS_DIR=metrics_dir, GATEWAYZ_METRICS_PRICES=table)
    with pytest.raises(error) as info:
        GatewayzMetrics(app)
    assert "GATEWAYZ_METRICS_PRICES must be" in str(info.value)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "is not valid JSON"),
        (b'{"gpt-4o": {"input": 1}}', "model 'gpt-4o' needs 'output'"),
        (b"\xff\xfe", "is not valid JSON"),
    ],
)
def test_bad_file_is_rejected_naming_the_file(tmp_path: Path, content: bytes, message: str) -> None:
    """A broken price file is reported with its path and what is wrong in it."""
    path = tmp_path / "prices.json"
    path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        load_prices(str(path))
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_missing_and_oversized_files_are_rejected(tmp_path: Path) -> None:
    """A missing file or one over 1 MiB is refused before parsing."""
    with pytest.raises(ValueError, match="cannot be read"):
        load_prices(tmp_path / "absent.json")
    big = tmp_path / "big.json"
    big.write_bytes(b" " * ((1 << 20) + 1))
    with pytest.raises(ValueError, match="larger than"):
        load_prices(big)


def test_keyword_option_and_table_object() -> None:
    """prices= as a keyword argument is checked early; a PriceTable passes through unchanged."""
    with pytest.raises(TypeError, match=r"GatewayzMetrics\(prices=\.\.\.\) must be"):
        GatewayzMetrics(prices={"m": 1})
    table = load_prices(TABLE)
    assert isinstance(table, PriceTable) and load_prices(table) is table and len(table) == 2


def test_unpriced_models_remembered_bounded_in_size(
    collector: MetricsCollector, caplog: pytest.LogCaptureFixture
) -> None:
    """Unknown model names of 100 KB each: the set of names already logged keeps at most
    100 of them, each cut to 200 characters (a label's length), and each is logged once."""
    collector.set_prices(TABLE)
    with caplog.at_level(logging.WARNING, logger="flask_gatewayz_metrics"):
        for i in range(150):
            name = f"{i:03d}" + "x" * 100_000
            collector.record_tokens("openai", name, 1, 1)
            collector.record_tokens("openai", name, 1, 1)
    unpriced = collector._unpriced
    assert unpriced is not None and len(unpriced) == 100
    assert max(len(name) for name in unpriced) == 200
    assert len([r for r in caplog.records if r.getMessage().startswith("no price for model")]) == 100
