"""The example gateway, driven through Flask's test client, as its metrics see it.

Its providers are real: the provider simulator in its own process on loopback ports
(fast and without random failures unless a test asks for them).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from servers import Simulator, running_simulator

from example_app.app import create_app

FAST = ("--latency-scale", "0.01", "--error-rate", "0", "--billing-error-rate", "0")


@pytest.fixture(scope="module")
def simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    """One provider simulator for the module: fast, no random errors or 429s."""
    with running_simulator(tmp_path_factory.mktemp("simulator"), *FAST) as running:
        yield running


def gateway(tmp_path: Path, upstreams: dict[str, str], **config: Any) -> Flask:
    metrics = tmp_path / "metrics"
    metrics.mkdir(mode=0o700, exist_ok=True)
    return create_app(
        {
            "TESTING": True,
            "GATEWAYZ_METRICS_DIR": str(metrics),
            "GATEWAY_DB_PATH": str(tmp_path / "models.sqlite3"),
            **upstreams,
            **config,
        }
    )


@pytest.fixture
def app(tmp_path: Path, simulator: Simulator) -> Flask:
    """The gateway with its own metrics directory, calling the module's simulator."""
    return gateway(tmp_path, simulator.config)


def metrics_json(client: FlaskClient) -> dict[str, Any]:
    response = client.get("/metrics/json")
    assert response.status_code == 200
    return response.get_json()  # type: ignore[no-any-return]


def test_chat_default_model_recorded_under_openai_gpt4(client: FlaskClient) -> None:
    """A chat without a model uses gpt-4 and is recorded under provider openai and model gpt-4."""
    response = client.post("/api/chat", json={"message": "test"})
    assert response.status_code == 200
    body = response.get_json()
    assert body["model"] == "gpt-4"
    assert body["provider"] == "openai"
    assert body["choices"][0]["message"]["role"] == "assistant"
    data = metrics_json(client)
    assert data["endpoints"]["/api/chat"]["requests"] == 1
    assert data["endpoints"]["/api/chat"]["status"] == {"200": 1}
    assert data["providers"]["openai"]["requests"] == 1
    assert data["providers"]["openai"]["errors"] == 0
    assert data["models"]["gpt-4"]["requests"] == 1
    assert set(data["providers"]) == {"openai"}
    assert set(data["models"]) == {"gpt-4"}


def test_provider_follows_model_prefix(client: FlaskClient) -> None:
    """claude-* goes to anthropic and gemini-* to google, each counted once."""
    assert client.post("/api/chat", json={"model": "claude-3-haiku", "message": "hi"}).status_code == 200
    assert client.post("/api/chat", json={"model": "gemini-1.5-pro", "message": "hi"}).status_code == 200
    data = metrics_json(client)
    assert {p: v["requests"] for p, v in data["providers"].items()} == {"anthropic": 1, "google": 1}
    assert {m: v["requests"] for m, v in data["models"].items()} == {"claude-3-haiku": 1, "gemini-1.5-pro": 1}


def test_simulated_500_is_counted_as_error(client: FlaskClient) -> None:
    """simulate_status 500 answers 500 and counts as an HTTP and a provider error."""
    response = client.post("/api/chat", json={"message": "x", "simulate_status": 500})
    assert response.status_code == 500
    assert response.get_json()["error"]["type"] == "upstream_error"
    assert client.post("/api/chat", json={"message": "x", "simulate_status": 429}).status_code == 429
    data = metrics_json(client)
    chat = data["endpoints"]["/api/chat"]
    assert chat["requests"] == 2
    assert chat["errors"] == 1
    assert chat["status"] == {"429": 1, "500": 1}
    assert data["providers"]["openai"] == {**data["providers"]["openai"], "requests": 2, "errors": 1}
    assert data["models"]["gpt-4"]["errors"] == 1
    assert data["external_apis"] == {}


def test_simulated_latency_is_honoured(client: FlaskClient) -> None:
    """simulate_latency_seconds sets the upstream latency the provider metrics see."""
    assert client.post("/api/chat", json={"message": "x", "simulate_latency_seconds": 0.05}).status_code == 200
    latency = metrics_json(client)["providers"]["openai"]["latency_seconds"]
    assert 0.05 <= latency["min"] < 0.5


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        ("{not json", "application/json"),
        ('["a list"]', "application/json"),
        ('{"message": 3}', "application/json"),
        ('{"model": "gpt-4"}', "application/json"),
        ('{"message": "x", "stream": "yes"}', "application/json"),
        ('{"message": "x", "simulate_status": 99}', "application/json"),
        ('{"message": "x", "simulate_status": true}', "application/json"),
        ('{"message": "x", "simulate_latency_seconds": 31}', "application/json"),
        ('{"message": "x", "simulate_latency_seconds": "1"}', "application/json"),
        ('{"message": "x"}', "text/plain"),
    ],
)
def test_bad_request_is_400_not_error(client: FlaskClient, data: str, content_type: str) -> None:
    """Malformed bodies answer a JSON 400, recorded as status 400 and not as an error."""
    response = client.post("/api/chat", data=data, content_type=content_type)
    assert response.status_code == 400
    assert response.get_json()["error"]["type"] == "invalid_request_error"
    chat = metrics_json(client)["endpoints"]["/api/chat"]
    assert chat["requests"] == 1
    assert chat["errors"] == 0
    assert chat["status"] == {"400": 1}


def test_unknown_model_is_400(client: FlaskClient) -> None:
    """A model with no known provider prefix is a 400 and reaches no provider."""
    response = client.post("/api/chat", json={"model": "llama-3", "message": "hi"})
    assert response.status_code == 400
    assert "llama-3" in response.get_json()["error"]["message"]
    data = metrics_json(client)
    assert data["endpoints"]["/api/chat"]["status"] == {"400": 1}
    assert data["providers"] == {}
    assert data["models"] == {}


def test_streaming_is_event_stream_recorded_once_closed(client: FlaskClient) -> None:
    """stream=true answers server-sent events and the request is recorded once the body is closed."""
    with client.post("/api/chat", json={"message": "one two three four five six seven", "stream": True}) as response:
        assert response.status_code == 200
        assert response.mimetype == "text/event-stream"
        events = response.get_data(as_text=True).split("\n\n")
    chunks = [e for e in events if e]
    assert all(chunk.startswith("data: ") for chunk in chunks)
    assert len(chunks) >= 3
    assert chunks[-1] == "data: [DONE]"
    data = metrics_json(client)
    assert data["endpoints"]["/api/chat"]["requests"] == 1
    assert data["endpoints"]["/api/chat"]["status"] == {"200": 1}
    assert data["providers"]["openai"]["requests"] == 1
    assert data["external_apis"]["stripe"] == {"calls": 1, "errors": 0}


def test_models_listing_records_cache_miss_then_hit(client: FlaskClient) -> None:
    """The first listing misses the cache and queries SQLite; the next ones hit the cache."""
    first = client.get("/api/models")
    assert first.status_code == 200
    ids = {m["id"] for m in first.get_json()["data"]}
    assert {"gpt-4", "claude-3-opus", "gemini-1.5-pro"} <= ids
    assert client.get("/api/models").get_json() == first.get_json()
    client.get("/api/models")
    data = metrics_json(client)
    assert data["cache"] == {"hits": 2, "misses": 1, "hit_rate": pytest.approx(2 / 3)}
    assert data["database"]["queries"] == 1
    assert data["database"]["latency_avg_seconds"] > 0
    scrape = client.get("/metrics").get_data(as_text=True)
    assert "cache_hits_total 2.0" in scrape
    assert "cache_misses_total 1.0" in scrape
    assert "db_queries_total 1.0" in scrape


def test_model_detail_uses_route_template_label(client: FlaskClient) -> None:
    """/api/models/<model_id> is labelled by its template, found or not."""
    assert client.get("/api/models/gpt-4").get_json()["provider"] == "openai"
    assert client.get("/api/models/nope").status_code == 404
    assert client.get("/api/models/gpt-4").status_code == 200
    data = metrics_json(client)
    assert data["endpoints"]["/api/models/<model_id>"]["status"] == {"200": 2, "404": 1}
    assert data["cache"]["hits"] == 1
    assert data["cache"]["misses"] == 2
    assert data["database"]["queries"] == 2
    scrape = client.get("/metrics").get_data(as_text=True)
    assert 'http_requests_total{endpoint="/api/models/<model_id>",method="GET"} 3.0' in scrape


def test_stripe_billing_counted_per_successful_chat(client: FlaskClient) -> None:
    """Each successful chat is billed once through stripe; failed upstream calls are not billed."""
    for _ in range(3):
        assert client.post("/api/chat", json={"message": "bill me"}).status_code == 200
    assert client.post("/api/chat", json={"message": "x", "simulate_status": 503}).status_code == 503
    data = metrics_json(client)
    assert data["external_apis"] == {"stripe": {"calls": 3, "errors": 0}}
    scrape = client.get("/metrics").get_data(as_text=True)
    assert 'external_api_calls_total{service="stripe"} 3.0' in scrape
    assert 'external_api_errors_total{service="stripe"} 0.0' in scrape


def test_billing_errors_are_counted(tmp_path: Path) -> None:
    """With a billing API that always fails every stripe call is an error, and the chat still succeeds."""
    with running_simulator(tmp_path, *FAST, "--billing-error-rate", "1") as failing:
        client = gateway(tmp_path, failing.config).test_client()
        assert client.post("/api/chat", json={"message": "x"}).status_code == 200
    assert client.get("/metrics/json").get_json()["external_apis"] == {"stripe": {"calls": 1, "errors": 1}}


def test_random_upstream_errors_fall_back_then_fail(tmp_path: Path) -> None:
    """With providers that always fail, a chat falls back once and answers the fallback's 5xx, both counted."""
    with running_simulator(tmp_path, *FAST, "--error-rate", "1") as failing:
        client = gateway(tmp_path, failing.config).test_client()
        response = client.post("/api/chat", json={"message": "x"})
    assert response.status_code in (500, 502, 503)
    assert response.get_json()["error"]["provider"] == "anthropic"  # openai's fallback
    data = client.get("/metrics/json").get_json()
    assert data["providers"]["openai"]["errors"] == 1
    assert data["providers"]["anthropic"]["errors"] == 1
    assert data["endpoints"]["/api/chat"]["errors"] == 1
    assert data["external_apis"] == {}
    scrape = client.get("/metrics").get_data(as_text=True)
    assert 'llm_provider_fallbacks_total{from_provider="openai",to_provider="anthropic"} 1.0' in scrape
    assert 'provider_errors_by_type_total{error_type="5xx",provider="openai"} 1.0' in scrape


def test_unmatched_path_and_healthz(client: FlaskClient) -> None:
    """/healthz answers ok; an unknown path is a 404 under the shared "unmatched" label."""
    assert client.get("/healthz").get_json() == {"status": "ok"}
    assert client.get("/no/such/path").status_code == 404
    endpoints = metrics_json(client)["endpoints"]
    assert endpoints["unmatched"]["status"] == {"404": 1}
    assert endpoints["/healthz"]["requests"] == 1


def test_invalid_gateway_setting_fails_at_startup() -> None:
    """A non-numeric gateway setting is refused when the app is built, not on first request."""
    with pytest.raises(ValueError, match="GATEWAY_UPSTREAM_TIMEOUT"):
        create_app({"GATEWAY_UPSTREAM_TIMEOUT": "fast"})
    with pytest.raises(ValueError, match="GATEWAY_OPENAI_URL"):
        create_app({"GATEWAY_OPENAI_URL": "ftp://127.0.0.1:1"})
