"""The provider simulator on its own: OpenAI's wire format, rate-limit budget, forced outcomes, bad input."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from flask.testing import FlaskClient
from servers import running_simulator

from example_app import simulator
from example_app.app import create_app

CHAT = {
    "model": "gpt-4o",
    "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a b c"}],
}
FAST = ("--latency-scale", "0", "--error-rate", "0", "--billing-error-rate", "0", "--max-filler", "0")


def with_the_clock_minute_left(seconds: float = 10.0) -> None:
    """Return once at least ``seconds`` of the current clock minute are left (sleeping into
    the next minute if need be: at most ``seconds`` + 0.5 s).

    A simulated provider's rate-limit budget renews at every clock minute
    (``int(time.time() // 60)``), so a test that asserts what is left of it must send its
    requests within one minute: called just before them, not before the simulator
    starts (its start-up on a loaded machine can take seconds)."""
    left = 60.0 - time.time() % 60
    if left < seconds:
        time.sleep(left + 0.5)


def test_plain_and_streamed_answers_in_openai_format(tmp_path: Path) -> None:
    """A completion and a stream agree on text and usage; every answer carries rate-limit headers."""
    with running_simulator(tmp_path, *FAST, upstreams=("openai",)) as sim, httpx.Client(trust_env=False) as client:
        url = f"http://127.0.0.1:{sim.ports['openai']}/v1/chat/completions"
        with_the_clock_minute_left()  # the remaining counts below are of one minute's budget
        plain = client.post(url, json=CHAT)
        assert plain.status_code == 200
        body = plain.json()
        assert body["object"] == "chat.completion"
        text = body["choices"][0]["message"]["content"]
        assert text == "[gpt-4o] You said: a b c"
        assert body["usage"] == {"prompt_tokens": 3 + 2 + 3 + 3, "completion_tokens": 6, "total_tokens": 17}
        assert int(plain.headers["x-ratelimit-remaining-requests"]) == 2999
        assert int(plain.headers["x-ratelimit-remaining-tokens"]) == 1_000_000 - 17

        streamed = client.post(url, json={**CHAT, "stream": True, "stream_options": {"include_usage": True}})
        assert streamed.headers["content-type"] == "text/event-stream"
        events = [line.removeprefix("data: ") for line in streamed.text.split("\n\n") if line]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(event) for event in events[:-1]]
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == text
        assert chunks[-1]["usage"] == body["usage"] and chunks[-1]["choices"] == []
        assert int(streamed.headers["x-ratelimit-remaining-requests"]) == 2998

        limited = client.post(url, json={**CHAT, "max_tokens": 2})
        assert limited.json()["choices"][0]["finish_reason"] == "length"
        assert limited.json()["usage"]["completion_tokens"] == 2


def test_spent_budget_is_429_and_the_gateway_falls_back(tmp_path: Path) -> None:
    """Past its per-minute budget a provider answers 429 (retry-after); the gateway reports 0 and falls back."""
    with running_simulator(tmp_path, *FAST, "--requests-per-minute", "2") as sim:
        config = {"GATEWAYZ_METRICS_DIR": str(tmp_path / "metrics"), "GATEWAY_DB_PATH": str(tmp_path / "m.db")}
        client: FlaskClient = create_app({**config, **sim.config}).test_client()
        body = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}
        with_the_clock_minute_left()  # all four in one minute's budget of two
        answers = [client.post("/v1/chat/completions", json=body) for _ in range(4)]
        assert [a.status_code for a in answers] == [200] * 4
        # openai's budget is spent after two: anthropic answers the others.
        assert [a.headers["X-Gateway-Provider"] for a in answers] == ["openai", "openai", "anthropic", "anthropic"]
        scrape = client.get("/metrics").get_data(as_text=True)
    assert 'llm_rate_limit_remaining{limit="requests",provider="openai"} 0.0' in scrape
    assert 'provider_errors_by_type_total{error_type="rate_limited",provider="openai"}' not in scrape  # not >= 500
    assert 'llm_provider_fallbacks_total{from_provider="openai",to_provider="anthropic"} 2.0' in scrape


@pytest.mark.parametrize(
    ("headers", "body", "message"),
    [
        ({"x-simulate-status": "99"}, CHAT, "x-simulate-status"),
        ({"x-simulate-latency": "nan"}, CHAT, "x-simulate-latency"),
        ({"x-simulate-chunk-delay": "9"}, CHAT, "x-simulate-chunk-delay"),
        ({}, {"model": "gpt-4o", "messages": []}, "messages"),
        ({}, {"messages": CHAT["messages"]}, "model"),
        ({}, {**CHAT, "max_tokens": 0}, "max_tokens"),
    ],
)
def test_bad_requests_are_400(tmp_path: Path, headers: dict[str, str], body: dict[str, object], message: str) -> None:
    """Bad headers or bodies are a 400 in OpenAI's error shape, and the simulator keeps serving."""
    with running_simulator(tmp_path, *FAST, upstreams=("openai",)) as sim, httpx.Client(trust_env=False) as client:
        url = f"http://127.0.0.1:{sim.ports['openai']}/v1/chat/completions"
        response = client.post(url, json=body, headers=headers)
        assert response.status_code == 400
        assert message in response.json()["error"]["message"]
        assert client.post(url, json=CHAT).status_code == 200


def test_command_line_is_checked() -> None:
    """Port assignments and rates are validated before anything listens."""
    assert simulator.parse_ports("openai=8101,stripe=8104") == {"openai": 8101, "stripe": 8104}
    for bad in ("openai", "openai=0", "open ai=80", "openai=http"):
        with pytest.raises(ValueError, match="NAME=PORT"):
            simulator.parse_ports(bad)
    for argv in (["--error-rate", "2"], ["--jitter", "-1"], ["--ttft", "-1"], ["--tokens-per-second", "0"]):
        with pytest.raises(SystemExit):
            simulator.parse_args(["--ports", "openai=8101", *argv])
