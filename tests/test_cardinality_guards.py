"""Cardinality guards: per-label limits and allowlists (overflow to "other", counted once
per refused value), also on the llm_* families and through the example gateway."""

from __future__ import annotations

import random
import uuid
from pathlib import Path

from flask import Flask

from flask_gatewayz_metrics import MetricsCollector
from flask_gatewayz_metrics.testing import Samples
from flask_gatewayz_metrics.testing import parse_samples as parse
from flask_gatewayz_metrics.testing import sample_key as key
from flask_gatewayz_metrics.testing import scrape_samples as scrape
from flask_gatewayz_metrics.testing import series as named

# --------------------------------------------------------------------------- cardinality guards


def http_scrape(app: Flask) -> Samples:
    """One /metrics scrape through the test client, parsed."""
    response = app.test_client().get("/metrics")
    assert response.status_code == 200
    return parse(response.get_data(as_text=True))


def expected_overflow(calls: list[tuple[str, str]], limit: int, allowed: set[str]) -> tuple[int, int, list[str]]:
    """Model of the guard: (provider overflows, model overflows, admitted models).

    The first ``limit`` distinct models (or the allowlisted providers) are admitted;
    every other value becomes "other" and is counted once, when first refused.
    """
    admitted: list[str] = []
    refused_providers: set[str] = set()
    refused_models: set[str] = set()
    for provider, model in calls:
        if provider not in allowed:
            refused_providers.add(provider)
        if model in admitted:
            continue
        if len(admitted) < limit:
            admitted.append(model)
        else:
            refused_models.add(model)
    return len(refused_providers), len(refused_models), admitted


def test_label_limits_and_allowlist(metrics_dir: str) -> None:
    """10,000 random models: <= 5 + other series; foreign providers become other; overflows counted exactly."""
    rng = random.Random(7)
    names = [f"model-{rng.getrandbits(40):x}" for _ in range(3_000)]
    calls = [(rng.choice(["openai", "anthropic", "mistral"]), rng.choice(names)) for _ in range(10_000)]
    c = MetricsCollector(metrics_dir, label_limits={"model": 5}, allowed_labels={"provider": ["openai"]})
    try:
        for provider, model in calls:
            c.record_request("/api/chat", "POST", 0.01, 200, provider=provider, model=model)
        s = scrape(c)
        provider_overflow, model_overflow, admitted = expected_overflow(calls, 5, {"openai"})
        models = {dict(lab)["model"] for lab in named(s, "model_requests_total")}
        assert models == {*admitted, "other"}
        assert len(models) == 6
        providers = {dict(lab)["provider"]: v for lab, v in named(s, "provider_requests_total").items()}
        assert providers == {
            "openai": sum(p == "openai" for p, _ in calls),
            "other": sum(p != "openai" for p, _ in calls),
        }
        assert s[key("model_requests_total", model="other")] == sum(m not in admitted for _, m in calls)
        assert s[key("gatewayz_metrics_label_overflow_total", label="model")] == model_overflow
        assert s[key("gatewayz_metrics_label_overflow_total", label="provider")] == provider_overflow
        assert model_overflow > 2_000  # the random names really overflowed
        assert provider_overflow == 2  # anthropic and mistral, each counted once
        assert c.to_dict()["llm"]["label_overflow"] == {  # type: ignore[index]
            "model": float(model_overflow),
            "provider": float(provider_overflow),
        }
        assert s[key("http_requests_total", endpoint="/api/chat", method="POST")] == 10_000
    finally:
        c.close()


def test_label_limits_bound_llm_families(metrics_dir: str) -> None:
    """Tokens, streams and errors of random models and providers stay within the guard's series too."""
    c = MetricsCollector(metrics_dir, label_limits={"model": 3}, allowed_labels={"provider": ["openai"]})
    try:
        for i in range(500):
            c.record_tokens(f"p{i % 7}", f"m{i}", 1, 1, cost_usd=0.001)
            c.record_stream("openai", f"m{i}", "completed", 0.5)
            c.record_provider_error(f"p{i}", 500)
            c.record_fallback(f"p{i}", "openai")
        s = scrape(c)
        assert {dict(lab)["model"] for lab in named(s, "llm_tokens_total")} == {"m0", "m1", "m2", "other"}
        assert {dict(lab)["provider"] for lab in named(s, "llm_tokens_total")} == {"other"}
        assert {dict(lab)["model"] for lab in named(s, "llm_streams_total")} == {"m0", "m1", "m2", "other"}
        assert named(s, "provider_errors_by_type_total") == {(("error_type", "5xx"), ("provider", "other")): 500.0}
        assert named(s, "llm_provider_fallbacks_total") == {
            (("from_provider", "other"), ("to_provider", "openai")): 500.0
        }
        assert s[key("llm_tokens_total", provider="other", model="other", direction="input")] == 497
        assert s[key("gatewayz_metrics_label_overflow_total", label="model")] == 497  # once per refused value
    finally:
        c.close()


def example_app(metrics_dir: str, tmp_path: Path, upstreams: dict[str, str]) -> Flask:
    from example_app.app import create_app

    return create_app(
        {
            "GATEWAYZ_METRICS_DIR": metrics_dir,
            "GATEWAY_DB_PATH": str(tmp_path / "models.sqlite3"),
            **upstreams,
        }
    )


def series_counts(s: Samples) -> tuple[int, int, int]:
    models = {dict(labels).get("model") for (_, labels) in s if "model" in dict(labels)}
    return len(named(s, "http_requests_total")), len(models), len(s)


def test_example_app_random_paths_and_models_add_a_handful_of_series(
    metrics_dir: str, tmp_path: Path, example_upstreams: dict[str, str]
) -> None:
    """10,000 random unknown paths and 1,000 chats with random unknown models add at most a handful of series."""
    app = example_app(metrics_dir, tmp_path, example_upstreams)
    client = app.test_client()
    assert client.post("/api/chat", json={"message": "warm up"}).status_code == 200
    assert client.get("/api/models").status_code == 200
    before = http_scrape(app)
    rng = random.Random(3)
    for _ in range(10_000):
        assert client.get(f"/{rng.getrandbits(64):x}/{uuid.UUID(int=rng.getrandbits(128))}").status_code == 404
    for _ in range(1_000):
        response = client.post("/api/chat", json={"model": f"llama-{rng.getrandbits(48):x}", "message": "hi"})
        assert response.status_code == 400
    after = http_scrape(app)
    requests_before, models_before, _ = series_counts(before)
    requests_after, models_after, total_after = series_counts(after)
    assert requests_after - requests_before <= 3  # unmatched GET (and nothing per path)
    assert models_after == models_before
    assert after[key("http_requests_total", endpoint="unmatched", method="GET")] == 10_000
    assert after[key("http_requests_total", endpoint="/api/chat", method="POST")] == 1_001
    # One new endpoint label (unmatched) with its buckets and gauges, and one
    # http_server_request_duration_seconds series (14 buckets, +Inf, count, sum) per new
    # (route, method, status): unmatched GET 404 and /api/chat POST 400.
    assert total_after - len(before) <= 40 + 2 * 17
    gen_ai_models = {dict(labels).get("gen_ai_request_model") for (name, labels) in after if name.startswith("gen_ai")}
    assert gen_ai_models <= {dict(labels).get("gen_ai_request_model") for (_, labels) in before} | {None, "other"}


def test_example_app_accepted_random_models_collapse_into_other(
    metrics_dir: str, tmp_path: Path, example_upstreams: dict[str, str]
) -> None:
    """1,000 chats with random gpt-* models (accepted by the example) add one model series: other."""
    app = example_app(metrics_dir, tmp_path, example_upstreams)
    client = app.test_client()
    rng = random.Random(5)
    for _ in range(1_000):
        response = client.post("/api/chat", json={"model": f"gpt-{rng.getrandbits(48):x}", "message": "hi"})
        assert response.status_code == 200
    s = http_scrape(app)
    models = {dict(lab)["model"] for lab in named(s, "model_requests_total")}
    assert models == {"other"}  # the example allowlists its catalogue's models
    assert {dict(lab)["model"] for lab in named(s, "llm_tokens_total")} == {"other"}
    assert s[key("model_requests_total", model="other")] == 1_000
