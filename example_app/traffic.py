"""Drive mixed traffic at a locally running gateway, so its metrics have something to show.

    python -m example_app.traffic --url http://127.0.0.1:8000 --requests 500 --concurrency 8

Clients are what a gateway's users run: the official ``openai`` SDK (plain and streamed
chat completions over several models and providers, some streams left mid-way, model
listings), plus a little of the seed's ``/api/chat`` and unknown paths with the
standard library. Provider failures come from the simulated providers, and some are
asked for with the simulator's ``x-simulate-*`` headers. The run is bounded both in
requests and in time (``--max-seconds``), and only loopback URLs are accepted: this is a
load generator, and pointing it at someone else's server by mistake must be impossible.
"""

from __future__ import annotations

import argparse
import http.client
import importlib
import ipaddress
import json
import random
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import openai
from openai.types.chat import ChatCompletionMessageParam

CHAT_MODELS = ("gpt-4", "gpt-4o", "gpt-3.5-turbo", "claude-3-opus", "claude-3-haiku", "gemini-1.5-pro")
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
REQUEST_TIMEOUT = 30.0
SDK_HTTP_ERROR: type[Exception] = importlib.import_module(
    openai.DefaultHttpxClient.__mro__[1].__module__.partition(".")[0]
).HTTPError
"""What the SDK's own HTTP library (httpx, or httpx2 from openai 3 on) raises for a broken connection."""


@dataclass(frozen=True)
class Planned:
    """One request to send: its kind, model, extra headers, or method/path/body for plain HTTP."""

    kind: str
    """sdk_chat, sdk_stream, sdk_models, sdk_model, or http (plain HTTP with method/path/body)."""
    model: str = "gpt-4"
    headers: dict[str, str] = field(default_factory=dict)
    hang_up: bool = False
    """Close the stream after its first chunk (a client that leaves mid-stream)."""
    method: str = "GET"
    path: str = ""
    body: dict[str, object] | None = None


@dataclass
class Tally:
    """Outcomes and the tokens the SDK was told about, shared by the sender threads (guarded by ``lock``)."""

    statuses: Counter[str] = field(default_factory=Counter)
    done: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, outcome: str, usage: tuple[int, int] | None = None) -> None:
        with self.lock:
            self.statuses[outcome] += 1
            self.done += 1
            if usage is not None:
                self.input_tokens += usage[0]
                self.output_tokens += usage[1]


def plan(rng: random.Random) -> Planned:
    """A request drawn from the traffic mix: mostly SDK chat, streams, listings, some failures and noise."""
    model = rng.choice(CHAT_MODELS)
    traced = {"traceparent": f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"}
    mix: tuple[tuple[float, Planned], ...] = (
        (0.33, Planned("sdk_chat", model)),
        (0.10, Planned("sdk_chat", model, traced)),  # a W3C trace: kept as a latency exemplar
        (0.15, Planned("sdk_stream", model)),
        (0.03, Planned("sdk_stream", model, {"x-simulate-chunk-delay": "0.05"}, hang_up=True)),
        (0.02, Planned("sdk_stream", model, {"x-simulate-stream-error": "true"})),
        (0.04, Planned("sdk_chat", model, {"x-simulate-status": "500"})),
        (0.04, Planned("sdk_chat", model, {"x-simulate-status": "429"})),
        (0.08, Planned("sdk_models")),
        (0.08, Planned("sdk_model", rng.choice((*CHAT_MODELS, "no-such-model")))),
        (0.05, Planned("http", method="POST", path="/api/chat", body={"model": model, "message": "hello"})),
        (0.03, Planned("http", path=f"/api/models/{model}")),
        (0.05, Planned("http", path="/does/not/exist")),
    )
    return rng.choices([p for _, p in mix], weights=[w for w, _ in mix])[0]


def send(client: openai.OpenAI, base_url: str, planned: Planned, timeout: float) -> tuple[str, tuple[int, int] | None]:
    """Send one request and read its whole answer; its status (or what happened) and the usage seen."""
    if planned.kind == "http":
        return _send_http(base_url, planned, timeout), None
    try:
        return _send_sdk(client, planned, timeout)
    except openai.APIStatusError as exc:
        return str(exc.status_code), None
    except openai.APITimeoutError:
        return "error:Timeout", None
    except openai.APIConnectionError as exc:
        return f"error:{type(exc.__cause__ or exc).__name__}", None


def _send_sdk(client: openai.OpenAI, planned: Planned, timeout: float) -> tuple[str, tuple[int, int] | None]:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": f"Say hello to {planned.model}"}]
    if planned.kind == "sdk_chat":
        completion = client.chat.completions.create(
            model=planned.model, messages=messages, extra_headers=planned.headers, timeout=timeout
        )
        usage = completion.usage
        return "200", (usage.prompt_tokens, usage.completion_tokens) if usage else None
    if planned.kind == "sdk_stream":
        return _stream(client, planned, messages, timeout)
    if planned.kind == "sdk_models":
        client.models.list(timeout=timeout)
    else:
        client.models.retrieve(planned.model, timeout=timeout)
    return "200", None


def _stream(
    client: openai.OpenAI, planned: Planned, messages: list[ChatCompletionMessageParam], timeout: float
) -> tuple[str, tuple[int, int] | None]:
    stream = client.chat.completions.create(
        model=planned.model, messages=messages, stream=True, stream_options={"include_usage": True},
        extra_headers=planned.headers, timeout=timeout,
    )  # fmt: skip
    usage = None
    with stream:
        try:
            for chunk in stream:
                if planned.hang_up:
                    return "hung_up", None  # leaving the block closes the connection mid-stream
                if chunk.usage is not None:
                    usage = (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
        except (openai.APIError, SDK_HTTP_ERROR):
            return "broken_stream", None  # the gateway reported the provider's broken stream, or aborted
    return "200", usage


def _send_http(base_url: str, planned: Planned, timeout: float) -> str:
    """A plain HTTP request with the standard library: its status, or an error kind."""
    data = None
    headers = {"Accept": "application/json"}
    if planned.body is not None:
        data = json.dumps(planned.body).encode("utf-8")
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(base_url + planned.path, data=data, method=planned.method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            response.read()
            return str(response.status)
    except urllib.error.HTTPError as exc:
        exc.read()
        exc.close()
        return str(exc.code)
    except http.client.IncompleteRead:
        return "broken_stream"
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"error:{type(reason).__name__}"


def is_loopback_url(url: str) -> bool:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return False
    host = parsed.hostname
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(base_url: str, total: int, concurrency: int, max_seconds: float, seed: int | None, progress: bool) -> Tally:
    """Send up to ``total`` requests from ``concurrency`` threads, stopping at ``max_seconds``."""
    tally = Tally()
    deadline = time.monotonic() + max_seconds
    rng = random.Random(seed)
    plans = [plan(rng) for _ in range(total)]
    next_index = iter(range(total))
    index_lock = threading.Lock()
    # One SDK client for every thread (it is thread-safe and pools connections); no
    # retries, so every outcome is the gateway's own answer to one request.
    client = openai.OpenAI(
        base_url=base_url + "/v1", api_key="unused-by-the-example", max_retries=0, timeout=REQUEST_TIMEOUT,
        http_client=openai.DefaultHttpxClient(trust_env=False),  # loopback: no proxy from the environment
    )  # fmt: skip

    def worker() -> None:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            with index_lock:
                i = next(next_index, None)
            if i is None:
                return
            tally.add(*send(client, base_url, plans[i], min(REQUEST_TIMEOUT, remaining)))

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        if progress:
            draw_progress(tally.done, total)
        time.sleep(0.1)
    if progress:
        draw_progress(tally.done, total)
        sys.stderr.write("\n")
    client.close()
    return tally


def draw_progress(done: int, total: int, width: int = 40) -> None:
    filled = width * done // total if total else width
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    sys.stderr.flush()


def is_failure(outcome: str) -> bool:
    """Whether an outcome from ``send`` is a failure: a 5xx, a broken stream or no answer.

    Outcomes are statuses ("200"), or what happened instead ("hung_up": we left on
    purpose; "broken_stream"; "error:<kind>")."""
    if outcome.isdigit():
        return int(outcome) >= 500
    return outcome != "hung_up"


def summary(tally: Tally, elapsed: float) -> str:
    lines = ["requests by status:"]
    for outcome, count in sorted(tally.statuses.items()):
        lines.append(f"  {outcome:>24}: {count}")
    errors = sum(n for outcome, n in tally.statuses.items() if is_failure(outcome))
    rate = tally.done / elapsed if elapsed > 0 else 0.0
    lines.append(f"sent: {tally.done}  failed (5xx, broken stream or no answer): {errors}")
    lines.append(f"tokens (the SDK's usage): input {tally.input_tokens}, output {tally.output_tokens}")
    lines.append(f"elapsed: {elapsed:.2f}s  rate: {rate:.1f} req/s")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m example_app.traffic", description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="gateway base URL (loopback only)")
    parser.add_argument("--requests", type=int, default=500, help="requests to send (1..100000)")
    parser.add_argument("--concurrency", type=int, default=8, help="parallel senders (1..64)")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="stop sending after this long")
    parser.add_argument("--seed", type=int, default=None, help="seed of the traffic mix, for repeatable runs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    args = parser.parse_args(argv)
    if not is_loopback_url(args.url):
        parser.error(f"refusing {args.url!r}: only http(s) URLs on a loopback address are allowed")
    if not 1 <= args.requests <= 100_000:
        parser.error("--requests must be between 1 and 100000")
    if not 1 <= args.concurrency <= 64:
        parser.error("--concurrency must be between 1 and 64")
    if not 0 < args.max_seconds <= 3600:
        parser.error("--max-seconds must be in (0, 3600]")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    tally = run(
        args.url.rstrip("/"),
        args.requests,
        args.concurrency,
        args.max_seconds,
        args.seed,
        progress=not args.no_progress,
    )
    print(summary(tally, time.monotonic() - start))
    return 0 if tally.done == args.requests else 1


if __name__ == "__main__":
    sys.exit(main())
