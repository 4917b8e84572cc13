"""The example gateway, driven through Flask's test client, as its metrics see it.

Its providers are real: the provider simulator in its own process on loopback ports
(fast and without random failures unless a test asks for them).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from servers import Simulator, free_port, running_simulator

from example_app.app import TTLCache, create_app

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


# --------------------------------------------------------------------------- OpenAI-compatible API

HELLO = [{"role": "user", "content": "hello there"}]


def openai_error(response: Any) -> dict[str, Any]:
    """The error of an OpenAI-shaped error answer (exactly its four fields)."""
    error = response.get_json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error  # type: ignore[no-any-return]


def test_v1_chat_completion_records_usage_tokens_and_cost(client: FlaskClient) -> None:
    """A plain completion answers OpenAI's object; its usage is what the metrics count as tokens and cost."""
    response = client.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": HELLO})
    assert response.status_code == 200
    body = response.get_json()
    assert body["object"] == "chat.completion" and body["model"] == "gpt-4o"
    assert body["choices"][0]["message"]["content"].startswith("[gpt-4o] You said: hello there")
    usage = body["usage"]
    assert usage["prompt_tokens"] == 5  # 3 per message + 2 words, the simulator's count
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    scrape = client.get("/metrics").get_data(as_text=True)
    labels = 'model="gpt-4o",provider="openai"'
    assert f'llm_tokens_total{{direction="input",{labels}}} 5.0' in scrape
    assert f'llm_tokens_total{{direction="output",{labels}}} {usage["completion_tokens"]}.0' in scrape
    cost = (5 * 0.005 + usage["completion_tokens"] * 0.015) / 1000
    assert f"llm_cost_usd_total{{{labels}}} {cost!r}" in scrape
    assert 'llm_rate_limit_remaining{limit="requests",provider="openai"}' in scrape
    data = metrics_json(client)
    assert data["endpoints"]["/v1/chat/completions"]["status"] == {"200": 1}
    assert data["providers"]["openai"]["requests"] == 1
    assert data["external_apis"] == {"stripe": {"calls": 1, "errors": 0}}


def test_v1_stream_with_usage_in_last_chunk(client: FlaskClient) -> None:
    """stream + include_usage: chunk events, then one with the usage and no choices, then [DONE]; recorded once."""
    body = {"model": "claude-3-haiku", "messages": HELLO, "stream": True, "stream_options": {"include_usage": True}}
    with client.post("/v1/chat/completions", json=body) as response:
        assert response.status_code == 200 and response.mimetype == "text/event-stream"
        events = [e.removeprefix("data: ") for e in response.get_data(as_text=True).split("\n\n") if e]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] == 5
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1])
    assert len(text.split()) == chunks[-1]["usage"]["completion_tokens"]
    scrape = client.get("/metrics").get_data(as_text=True)
    labels = 'model="claude-3-haiku",provider="anthropic"'
    assert 'llm_streams_total{model="claude-3-haiku",outcome="completed",provider="anthropic"} 1.0' in scrape
    assert f'llm_tokens_total{{direction="input",{labels}}} 5.0' in scrape
    without = {"model": "claude-3-haiku", "messages": HELLO, "stream": True}
    with client.post("/v1/chat/completions", json=without) as response:
        plain = response.get_data(as_text=True)
    assert '"usage"' not in plain and plain.endswith("data: [DONE]\n\n")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": HELLO}, "model"),
        ({"model": "gpt-4o"}, "messages"),
        ({"model": "gpt-4o", "messages": []}, "messages"),
        ({"model": "gpt-4o", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0]"),
        ({"model": "gpt-4o", "messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        ({"model": "gpt-4o", "messages": HELLO, "stream": "yes"}, "stream"),
        ({"model": "gpt-4o", "messages": HELLO, "stream_options": {"include_usage": True}}, "stream_options"),
        ({"model": "gpt-4o", "messages": HELLO, "max_tokens": 0}, "max_tokens"),
        ({"model": "gpt-4o", "messages": HELLO, "temperature": 3}, "temperature"),
        ({"model": "gpt-4o", "messages": HELLO, "n": 2}, "n"),
    ],
)
def test_v1_invalid_request_is_400_with_param(client: FlaskClient, body: dict[str, Any], param: str) -> None:
    """An invalid body is a 400 invalid_request_error naming the parameter, and reaches no provider."""
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    error = openai_error(response)
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert metrics_json(client)["providers"] == {}


def test_v1_unknown_model_route_and_method_errors(client: FlaskClient) -> None:
    """Unknown model 404 model_not_found; unknown /v1 route 404, wrong method 405, huge body 413: OpenAI's shape."""
    response = client.post("/v1/chat/completions", json={"model": "gpt-5-imaginary", "messages": HELLO})
    assert response.status_code == 404
    assert openai_error(response)["code"] == "model_not_found"
    assert openai_error(client.get("/v1/models/nope"))["code"] == "model_not_found"
    assert client.get("/v1/models/gpt-4o").get_json() == {
        "id": "gpt-4o", "object": "model", "created": 1_700_000_000, "owned_by": "openai"
    }  # fmt: skip
    listed = client.get("/v1/models").get_json()
    assert listed["object"] == "list" and {m["owned_by"] for m in listed["data"]} == {"openai", "anthropic", "google"}
    assert openai_error(client.get("/v1/nothing"))["type"] == "not_found_error"
    response = client.get("/v1/chat/completions")
    assert response.status_code == 405 and "POST" in response.headers["Allow"]
    openai_error(response)
    response = client.post("/v1/chat/completions", data=b"x" * (1024 * 1024 + 1), content_type="application/json")
    assert response.status_code == 413
    openai_error(response)
    assert client.get("/api/nothing").status_code == 404  # outside /v1 Flask's own pages stay


def test_v1_forced_429_passes_rate_limit_headers(client: FlaskClient) -> None:
    """A provider's 429 is answered 429 rate_limit_error with its retry-after and rate-limit headers, no fallback."""
    response = client.post(
        "/v1/chat/completions", json={"model": "gpt-4o", "messages": HELLO}, headers={"x-simulate-status": "429"}
    )
    assert response.status_code == 429
    assert openai_error(response)["type"] == "rate_limit_error"
    assert response.headers["retry-after"] == "1"
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    scrape = client.get("/metrics").get_data(as_text=True)
    assert 'llm_rate_limit_remaining{limit="requests",provider="openai"} 0.0' in scrape
    assert "llm_provider_fallbacks_total{" not in scrape
    bad = client.post(
        "/v1/chat/completions", json={"model": "gpt-4o", "messages": HELLO}, headers={"x-simulate-status": "abc"}
    )
    assert bad.status_code == 400 and openai_error(bad)["param"] == "x-simulate-status"


def test_v1_refused_connection_falls_back(tmp_path: Path, simulator: Simulator) -> None:
    """A provider port nobody listens on: a connection error for it, a fallback, and the backup's answer."""
    upstreams = {**simulator.config, "GATEWAY_ANTHROPIC_URL": f"http://127.0.0.1:{free_port()}"}
    client = gateway(tmp_path, upstreams).test_client()
    response = client.post("/v1/chat/completions", json={"model": "claude-3-opus", "messages": HELLO})
    assert response.status_code == 200
    assert response.get_json()["model"] == "gemini-1.5-pro"  # anthropic's fallback
    assert response.headers["X-Gateway-Provider"] == "google"
    scrape = client.get("/metrics").get_data(as_text=True)
    assert 'provider_errors_by_type_total{error_type="connection",provider="anthropic"} 1.0' in scrape
    assert 'llm_provider_fallbacks_total{from_provider="anthropic",to_provider="google"} 1.0' in scrape
    assert 'llm_tokens_total{direction="input",model="gemini-1.5-pro",provider="google"} 5.0' in scrape


def test_v1_upstream_time_out_is_504(tmp_path: Path, simulator: Simulator) -> None:
    """A provider slower than GATEWAY_UPSTREAM_TIMEOUT: a timeout error, the fallback times out too, 504."""
    client = gateway(tmp_path, simulator.config, GATEWAY_UPSTREAM_TIMEOUT=0.2).test_client()
    response = client.post(
        "/v1/chat/completions", json={"model": "gpt-4o", "messages": HELLO}, headers={"x-simulate-latency": "1"}
    )
    assert response.status_code == 504
    assert openai_error(response)["code"] == "upstream_timeout"
    scrape = client.get("/metrics").get_data(as_text=True)
    assert 'provider_errors_by_type_total{error_type="timeout",provider="openai"} 1.0' in scrape
    assert 'provider_errors_by_type_total{error_type="timeout",provider="anthropic"} 1.0' in scrape
    assert 'http_request_errors_total{endpoint="/v1/chat/completions",method="POST"} 1.0' in scrape


def test_models_cache_is_bounded() -> None:
    """Client-chosen keys cannot grow the cache past its bound; the newest entries stay."""
    cache = TTLCache(60.0, max_entries=3)
    for i in range(10):
        cache.put(f"model:{i}", None)
    assert [cache.get(f"model:{i}")[0] for i in range(10)] == [False] * 7 + [True] * 3
