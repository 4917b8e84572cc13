"""Settings: every key type-checked at init_app with a message naming it; one precedence order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_gatewayz_metrics import GatewayzMetrics
from flask_gatewayz_metrics.settings import Settings, collector_options_from_env

BAD_VALUES: list[tuple[str, Any, type[Exception]]] = [
    ("WINDOW_SECONDS", "60", TypeError),
    ("WINDOW_SECONDS", -1, ValueError),
    ("WINDOW_SECONDS", float("nan"), ValueError),
    ("WINDOW_SECONDS", True, TypeError),
    ("WINDOW_SLOTS", 2.5, TypeError),
    ("WINDOW_SLOTS", 0, ValueError),
    ("WINDOW_SLOTS", "5", TypeError),
    ("ERROR_STATUS", "500", TypeError),
    ("ERROR_STATUS", 700, ValueError),
    ("STRICT", "false", TypeError),
    ("RECORD_OWN_ROUTES", 1, TypeError),
    ("INCLUDE_APP_METRICS", "yes", TypeError),
    ("LABEL_LIMITS", ["model"], TypeError),
    ("LABEL_LIMITS", {"model": "10"}, TypeError),
    ("LABEL_LIMITS", {"model": -1}, ValueError),
    ("ALLOWED_MODELS", 5, TypeError),
    ("ALLOWED_PROVIDERS", ["openai", 3], TypeError),
    ("URL_PREFIX", "metrics", ValueError),
    ("URL_PREFIX", None, TypeError),
    ("UNMATCHED_ENDPOINT", "", ValueError),
    ("RESET_TOKEN", 1234, TypeError),
    ("AUTH_TOKEN", b"bytes", TypeError),
    ("DIR", 42, TypeError),
    ("TRUSTED_UIDS", "1001", TypeError),
    ("TRUSTED_UIDS", [-1], ValueError),
    ("DIR", "", ValueError),
    ("HEALTH_DEGRADED_ERROR_RATE", 5, ValueError),
    ("HEALTH_UNHEALTHY_ERROR_RATE", "0.5", TypeError),
]


@pytest.mark.parametrize(("key", "value", "error"), BAD_VALUES)
def test_bad_config_value_names_key_and_expected_type(key: str, value: Any, error: type[Exception]) -> None:
    """A wrong type or range in app.config fails init_app with the key and what it expects."""
    app = Flask(__name__)
    app.config["GATEWAYZ_METRICS_" + key] = value
    with pytest.raises(error) as info:
        GatewayzMetrics(app)
    message = str(info.value)
    assert "GATEWAYZ_METRICS_" + key in message
    assert "must be" in message and type(value).__name__ in message


def test_bad_constructor_option_names_option() -> None:
    """A wrong keyword argument fails at construction, naming the option."""
    with pytest.raises(TypeError, match=r"window_seconds=.*must be a number"):
        GatewayzMetrics(window_seconds="60")


def test_good_values_are_normalised(tmp_path: Path) -> None:
    """Ints for float keys, whole floats for int keys and path objects are accepted."""
    settings, custom = Settings.resolve(
        {"GATEWAYZ_METRICS_WINDOW_SECONDS": 60, "GATEWAYZ_METRICS_WINDOW_SLOTS": 6.0,
         "GATEWAYZ_METRICS_DIR": tmp_path, "GATEWAYZ_METRICS_ALLOWED_MODELS": ["a", "b"]},
        {},
    )  # fmt: skip
    assert settings.window_seconds == 60.0 and isinstance(settings.window_seconds, float)
    assert settings.window_slots == 6 and isinstance(settings.window_slots, int)
    assert settings.dir == str(tmp_path)
    assert settings.allowed_labels() == {"model": ["a", "b"]}
    assert custom


def test_precedence_config_then_option_then_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Config beats a constructor option, which beats an environment secret (as documented)."""
    monkeypatch.setenv("GATEWAYZ_METRICS_AUTH_TOKEN", "from-env")
    monkeypatch.setenv("GATEWAYZ_METRICS_RESET_TOKEN", "reset-from-env")
    settings, _ = Settings.resolve({}, {"auth_token": "from-option"})
    assert settings.auth_token == "from-option"
    assert settings.reset_token == "reset-from-env"  # nothing else gave it
    settings, _ = Settings.resolve({"GATEWAYZ_METRICS_AUTH_TOKEN": "from-config"}, {"auth_token": "from-option"})
    assert settings.auth_token == "from-config"


def test_env_is_not_read_for_non_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only secrets come from the environment in init_app; other keys keep their defaults."""
    monkeypatch.setenv("GATEWAYZ_METRICS_URL_PREFIX", "/elsewhere")
    settings, custom = Settings.resolve({}, {})
    assert settings.url_prefix == "/metrics"
    assert not custom


def test_degraded_rate_above_unhealthy_is_refused() -> None:
    """Health thresholds in the wrong order are a configuration error."""
    with pytest.raises(ValueError, match="HEALTH_DEGRADED_ERROR_RATE"):
        Settings.resolve({"GATEWAYZ_METRICS_HEALTH_DEGRADED_ERROR_RATE": 0.9}, {})


def test_process_wide_options_from_env() -> None:
    """The process-wide collector's environment variables are parsed and checked, naming the variable."""
    assert collector_options_from_env({}) == {}
    assert collector_options_from_env(
        {"GATEWAYZ_METRICS_WINDOW_SECONDS": "60", "GATEWAYZ_METRICS_WINDOW_SLOTS": "6",
         "GATEWAYZ_METRICS_ERROR_STATUS": " 400 "}
    ) == {"window_seconds": 60.0, "window_slots": 6, "error_status": 400}  # fmt: skip
    with pytest.raises(ValueError, match="GATEWAYZ_METRICS_WINDOW_SECONDS='soon'"):
        collector_options_from_env({"GATEWAYZ_METRICS_WINDOW_SECONDS": "soon"})
    with pytest.raises(ValueError, match="environment variable GATEWAYZ_METRICS_ERROR_STATUS must be"):
        collector_options_from_env({"GATEWAYZ_METRICS_ERROR_STATUS": "99"})


def test_trusted_uids_reach_the_reader(tmp_path: Path) -> None:
    """TRUSTED_UIDS is a storage setting: the app's collector reads files of those owners too."""
    app = Flask(__name__)
    app.config.update(GATEWAYZ_METRICS_DIR=str(tmp_path / "m"), GATEWAYZ_METRICS_TRUSTED_UIDS=[4242])
    GatewayzMetrics(app)
    collector = GatewayzMetrics.of(app).collector
    assert 4242 in collector._storage.reader.trusted
    collector.close()
