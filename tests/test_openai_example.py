"""The example gateway as its users run it: gunicorn, real provider processes, the official ``openai`` SDK.

The gateway (3 gunicorn workers) calls three provider simulators, each its own process
on its own loopback port, told to answer deterministically: the first token after
``TTFT`` seconds, then ``TOKENS_PER_SECOND``, no jitter, no random failures. Our
metrics must then agree with what the SDK saw (requests, tokens, stream outcomes,
exactly) and with what the simulator was told to produce (time to first token and
upstream latency, within 5 %). Then provider processes are killed mid-run.

Timing robustness on a loaded 2-core machine: the delays are long (0.5 s, so 5 % is
25 ms, an order of magnitude above the loopback and gateway overhead of a few ms);
the SDK sends from as many threads as there are workers, so no request waits for a
worker while it is being timed; and the check compares averages over every call
(sums and counts of our histograms, exact), not single calls. The measured values can
only be slower than the simulator's, so they are checked from 1 % below (timer
granularity) to 5 % above.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from servers import REPO_ROOT, Server, Simulator, free_port, http, running_simulator, scrape, stop

pytestmark = pytest.mark.slow

TTFT = 0.5
TOKENS_PER_SECOND = 500.0
DETERMINISTIC = (
    "--ttft", str(TTFT), "--tokens-per-second", str(TOKENS_PER_SECOND), "--jitter", "0", "--latency-scale", "1",
    "--error-rate", "0", "--rate-limit-rate", "0", "--billing-error-rate", "0",
)  # fmt: skip
MODELS = ("gpt-4o", "gpt-4", "claude-3-haiku", "claude-3-opus", "gemini-1.5-pro", "gemini-1.5-flash")
WORKERS = 3
CALLS = 210
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass(frozen=True)
class Call:
    """One SDK call to make: model, streamed or not, and how a stream ends."""

    model: str
    stream: bool = False
    hang_up: bool = False
    broken: bool = False


@dataclass(frozen=True)
class Result:
    """What the SDK saw: a status (200, or the error's), the usage it was given, the stream's end."""

    call: Call
    status: int
    usage: tuple[int, int] | None = None
    outcome: str | None = None
    error: dict[str, Any] | None = None


def plan(count: int, models: tuple[str, ...] = MODELS) -> list[Call]:
    """``count`` calls over ``models``: every third one streamed, some of those left or broken."""
    calls = []
    for i in range(count):
        model = models[i % len(models)]
        if i % 3 == 2:
            calls.append(Call(model, stream=True, hang_up=i % 27 == 2, broken=i % 69 == 5))
        else:
            calls.append(Call(model))
    return calls


def make_call(client: openai.OpenAI, call: Call) -> Result:
    """One SDK call, its answer read to the end (or left after the first chunk)."""
    messages = [{"role": "user", "content": f"hello {call.model}, how are you today?"}]
    headers = {}
    if call.hang_up:
        # A long stream, so the gateway notices the hang-up mid-way: it does at its first write
        # after the client's close, and a stream whose last chunk went out before that close
        # is rightly "completed". Its answer has at least 9 words, so 0.25 s between tokens
        # leaves the client at least 2 s to close after the first one (0.05 s left 0.4 s, a
        # thread's stall on a loaded 2-core machine).
        headers["x-simulate-chunk-delay"] = "0.25"
    if call.broken:
        headers["x-simulate-stream-error"] = "true"
    try:
        if not call.stream:
            completion = client.chat.completions.create(model=call.model, messages=messages)  # type: ignore[arg-type]
            assert completion.usage is not None
            return Result(call, 200, (completion.usage.prompt_tokens, completion.usage.completion_tokens))
        stream = client.chat.completions.create(
            model=call.model, messages=messages, stream=True, stream_options={"include_usage": True},  # type: ignore[arg-type]
            extra_headers=headers,
        )  # fmt: skip
        usage = None
        with stream:
            try:
                for chunk in stream:
                    if call.hang_up:
                        return Result(call, 200, outcome="client_disconnect")
                    if chunk.usage is not None:
                        assert chunk.choices == []  # OpenAI's usage chunk
                        usage = (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
            except openai.APIError as exc:  # the gateway's error event for the provider's broken stream
                return Result(call, 200, outcome="error", error=exc.body if isinstance(exc.body, dict) else None)
        assert usage is not None
        return Result(call, 200, usage, outcome="completed")
    except openai.APIStatusError as exc:
        return Result(call, exc.status_code, error=exc.body if isinstance(exc.body, dict) else None)


def run_calls(client: openai.OpenAI, calls: list[Call]) -> list[Result]:
    """Every call, from as many threads as the gateway has workers (bounded by the SDK's time-out)."""
    with ThreadPoolExecutor(WORKERS) as pool:
        return list(pool.map(lambda call: make_call(client, call), calls, timeout=300))


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name`` over every series whose labels include ``labels``."""
    return sum(
        value for (sample, sample_labels), value in samples.items()
        if sample == name and labels.items() <= dict(sample_labels).items()
    )  # fmt: skip


def wait_for(url: str, predicate: Callable[[Samples], bool], timeout: float = 20.0) -> Samples:
    deadline = time.monotonic() + timeout
    samples = scrape(url)
    while not predicate(samples) and time.monotonic() < deadline:
        time.sleep(0.2)
        samples = scrape(url)
    return samples


def health(url: str) -> dict[str, Any]:
    status, body = http("GET", url + "/metrics/health")
    assert status in (200, 503)
    return json.loads(body)  # type: ignore[no-any-return]


def provider_of(model: str) -> str:
    return {"gpt": "openai", "cla": "anthropic", "gem": "google"}[model[:3]]


@pytest.fixture
def providers(tmp_path: Path) -> Iterator[dict[str, Simulator]]:
    """One deterministic simulator process per provider (the billing API beside openai's)."""
    with ExitStack() as stack:
        yield {
            name: stack.enter_context(running_simulator(tmp_path, *DETERMINISTIC, name=name, upstreams=upstreams))
            for name, upstreams in (("openai", ("openai", "stripe")), ("anthropic", ("anthropic",)),
                                    ("google", ("google",)))
        }  # fmt: skip


def test_openai_sdk_through_gunicorn_with_real_providers(
    start_gunicorn: Callable[..., Server], providers: dict[str, Simulator]
) -> None:
    """210 SDK calls, a third streamed: exact counts, timings within 5 %; killed providers: errors, fallback, health."""
    urls = {key: value for simulator in providers.values() for key, value in simulator.config.items()}
    server = start_gunicorn(workers=WORKERS, simulator_args=None, **urls)
    client = openai.OpenAI(
        base_url=server.url + "/v1", api_key="test", max_retries=0, timeout=30,
        http_client=openai.DefaultHttpxClient(trust_env=False),
    )  # fmt: skip
    with client:
        # Phase 1: every provider up.
        calls = plan(CALLS)
        results = run_calls(client, calls)
        assert {r.status for r in results} == {200}
        streamed = [r for r in results if r.call.stream]
        assert len(streamed) * 3 == len(results)
        outcomes = {o: sum(1 for r in streamed if r.outcome == o) for o in ("completed", "client_disconnect", "error")}
        assert outcomes["client_disconnect"] >= 5 and outcomes["error"] >= 2
        assert all(r.error and r.error.get("code") == "upstream_stream_error" for r in streamed if r.outcome == "error")
        # Hung-up streams end when the gateway notices: wait (bounded) until none is in flight.
        s = wait_for(server.url, lambda s: total(s, "http_requests_in_flight") == 0)

        chat = {"endpoint": "/v1/chat/completions", "method": "POST"}
        assert total(s, "http_requests_total", **chat) == CALLS
        assert total(s, "http_request_errors_total", **chat) == outcomes["error"]  # streams broken after their 200
        for outcome, count in outcomes.items():
            assert total(s, "llm_streams_total", outcome=outcome) == count, outcome
        assert total(s, "llm_time_to_first_chunk_seconds_count") == len(streamed)
        assert total(s, "llm_stream_duration_seconds_count") == len(streamed)
        input_tokens = sum(r.usage[0] for r in results if r.usage)
        output_tokens = sum(r.usage[1] for r in results if r.usage)
        assert total(s, "llm_tokens_total", direction="input") == input_tokens
        assert total(s, "llm_tokens_total", direction="output") == output_tokens
        assert total(s, "external_api_calls_total", service="stripe") == sum(1 for r in results if r.usage)
        for provider in ("openai", "anthropic", "google"):
            calls_to = sum(1 for r in results if provider_of(r.call.model) == provider)
            assert total(s, "provider_requests_total", provider=provider) == calls_to
            assert total(s, "provider_errors_total", provider=provider) == 0
            assert total(s, "llm_rate_limit_remaining", provider=provider, limit="requests") > 0

        # Timing: what the simulator was told, against our averages (histogram sums / counts).
        ttft = total(s, "llm_time_to_first_chunk_seconds_sum") / len(streamed)
        assert TTFT * 0.99 <= ttft <= TTFT * 1.05, f"time to first token {ttft:.4f}s, told {TTFT}s"
        # A provider call of a stream lasts until its first token; a plain one until its last token.
        told = sum(
            TTFT if r.call.stream else TTFT + (r.usage[1] - 1) / TOKENS_PER_SECOND  # type: ignore[index]
            for r in results
        )  # fmt: skip
        latency = total(s, "provider_request_duration_seconds_sum")
        assert told * 0.99 <= latency <= told * 1.05, f"upstream latency {latency / CALLS:.4f}s, told {told / CALLS}s"
        print(f"\naverages: time to first token {ttft:.4f}s (told {TTFT}s); upstream latency "
              f"{latency / CALLS:.4f}s (told {told / CALLS:.4f}s)")  # fmt: skip
        assert health(server.url)["status"] == "healthy"

        # Phase 2: anthropic's process is killed. Its calls fail to connect and fall back to google.
        stop(providers["anthropic"].process)
        down = plan(30, ("claude-3-haiku", "gpt-4o", "gemini-1.5-pro"))
        results2 = run_calls(client, down)
        assert {r.status for r in results2} == {200}  # the fallback answered every client
        claude = sum(1 for c in down if c.model.startswith("claude"))
        s = wait_for(server.url, lambda s: total(s, "http_requests_in_flight") == 0)
        assert total(s, "provider_errors_by_type_total", provider="anthropic", error_type="connection") == claude
        assert total(s, "provider_errors_total", provider="anthropic") == claude
        assert total(s, "llm_provider_fallbacks_total", from_provider="anthropic", to_provider="google") == claude
        report = health(server.url)
        assert report["status"] == "healthy", report  # the fallback absorbed the outage: no failed request

        # Phase 3: google (anthropic's fallback) is killed too. Claude calls now fail (502 in
        # OpenAI's shape), gemini calls fall back to openai, and health reports the errors.
        stop(providers["google"].process)
        down3 = plan(30, ("claude-3-haiku", "gemini-1.5-pro"))
        results3 = run_calls(client, down3)
        failed = [r for r in results3 if r.status != 200]
        assert {r.call.model for r in failed} == {"claude-3-haiku"}
        assert {r.status for r in failed} == {502}
        assert all(r.error and r.error["code"] == "upstream_unreachable" for r in failed if not r.call.stream)
        s = wait_for(server.url, lambda s: total(s, "http_requests_in_flight") == 0)
        assert total(s, "llm_provider_fallbacks_total", from_provider="google", to_provider="openai") == 15
        assert total(s, "provider_errors_by_type_total", provider="google", error_type="connection") == 30
        report = health(server.url)
        assert report["status"] in ("degraded", "unhealthy"), report
        assert any("error rate" in reason for reason in report["reasons"]), report

        # Across the whole run: requests and tokens exactly as the SDK saw them.
        everything = results + results2 + results3
        assert total(s, "http_requests_total", **chat) == len(everything)
        assert total(s, "llm_tokens_total", direction="input") == sum(r.usage[0] for r in everything if r.usage)
        assert total(s, "llm_tokens_total", direction="output") == sum(r.usage[1] for r in everything if r.usage)


def test_run_example_stops_the_simulator_with_gunicorn(tmp_path: Path) -> None:
    """bash scripts/run_example.sh serves the OpenAI API; when gunicorn exits, the simulator exits too."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAYZ_", "GATEWAY_"))}
    env["GATEWAY_SIMULATED_LATENCY_SCALE"] = "0.02"
    log = tmp_path / "run_example.log"
    with log.open("wb") as out:
        script = subprocess.Popen(
            ["bash", "scripts/run_example.sh", "--bind", f"127.0.0.1:{port}", "--workers", "2"], cwd=REPO_ROOT,
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            assert script.poll() is None, log.read_text()
            try:
                if http("GET", f"http://127.0.0.1:{port}/healthz", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=30)
        with client:
            messages = [{"role": "user", "content": "hi"}]
            answer = client.chat.completions.create(model="gemini-1.5-pro", messages=messages)  # type: ignore[arg-type]
            assert answer.choices[0].message.content
            assert {m.id for m in client.models.list()} >= {"gpt-4o", "claude-3-haiku", "gemini-1.5-pro"}
        children = [int(pid) for pid in Path(f"/proc/{script.pid}/task/{script.pid}/children").read_text().split()]
        commands = {pid: Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode() for pid in children}
        gunicorn = next(pid for pid, command in commands.items() if "gunicorn" in command)
        simulator = next(pid for pid, command in commands.items() if "example_app.simulator" in command)
        os.kill(gunicorn, signal.SIGTERM)
        assert script.wait(timeout=60) == 0, log.read_text()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{simulator}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not Path(f"/proc/{simulator}").exists(), "the simulator outlived gunicorn"
    finally:
        if script.poll() is None:
            os.killpg(script.pid, signal.SIGKILL)
            script.wait(timeout=10)
