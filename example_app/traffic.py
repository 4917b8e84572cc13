"""Drive mixed traffic at a locally running gateway, so its metrics have something to show.

    python -m example_app.traffic --url http://127.0.0.1:8000 --requests 500 --concurrency 8

Standard library only (urllib and threads). The run is bounded both in requests and in
time (``--max-seconds``), and only loopback URLs are accepted: this is a load generator,
and pointing it at someone else's server by mistake must be impossible.
"""

from __future__ import annotations

import argparse
import http.client
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

CHAT_MODELS = ("gpt-4", "gpt-4o", "gpt-3.5-turbo", "claude-3-opus", "claude-3-haiku", "gemini-1.5-pro")
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
REQUEST_TIMEOUT = 30.0


@dataclass(frozen=True)
class Planned:
    """One request to send: method, path, and JSON body (None for GET)."""

    method: str
    path: str
    body: dict[str, object] | None = None
    hang_up: bool = False
    traced: bool = False
    """Close the connection after the first bytes of the answer (a client that leaves mid-stream)."""


@dataclass
class Tally:
    """Outcomes so far, shared by the sender threads (guarded by ``lock``)."""

    statuses: Counter[str] = field(default_factory=Counter)
    done: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, outcome: str) -> None:
        with self.lock:
            self.statuses[outcome] += 1
            self.done += 1


def plan(rng: random.Random) -> Planned:
    """A request drawn from the traffic mix: mostly chat, some listing, some noise."""
    model = rng.choice(CHAT_MODELS)
    mix: tuple[tuple[float, Planned], ...] = (
        (0.40, Planned("POST", "/api/chat", {"model": model, "message": "hello"})),
        (0.10, Planned("POST", "/api/chat", {"model": model, "message": "traced"}, traced=True)),
        (0.08, Planned("POST", "/api/chat", {"model": model, "message": "stream", "stream": True})),
        (0.03, Planned("POST", "/api/chat", {
            "model": model, "message": "a long answer", "stream": True, "stream_chunk_delay_seconds": 0.05,
        }, hang_up=True)),
        (0.02, Planned("POST", "/api/chat", {
            "model": model, "message": "broken stream", "stream": True, "simulate_stream_error": True,
        })),
        (0.05, Planned("POST", "/api/chat", {"message": "fail", "simulate_status": 500})),
        (0.05, Planned("POST", "/api/chat", {"message": "slow down", "simulate_status": 429})),
        (0.10, Planned("GET", "/api/models")),
        (0.10, Planned("GET", f"/api/models/{rng.choice((*CHAT_MODELS, 'no-such-model'))}")),
        (0.05, Planned("GET", "/does/not/exist")),
    )
    return rng.choices([p for _, p in mix], weights=[w for w, _ in mix])[0]


def send(base_url: str, planned: Planned, timeout: float) -> str:
    """Send one request and read its whole body; return its status, or an error kind."""
    data = None
    headers = {"Accept": "application/json, text/event-stream"}
    if planned.traced:
        # A W3C trace context: the gateway keeps its trace id as a latency exemplar.
        headers["traceparent"] = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"
    if planned.body is not None:
        data = json.dumps(planned.body).encode("utf-8")
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(base_url + planned.path, data=data, method=planned.method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            if planned.hang_up:
                response.read(1)
                return "hung_up"
            response.read()
            return str(response.status)
    except urllib.error.HTTPError as exc:
        exc.read()
        exc.close()
        return str(exc.code)
    except http.client.IncompleteRead:
        return "broken_stream"  # the gateway's stream failed after the headers were sent
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

    def worker() -> None:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            with index_lock:
                i = next(next_index, None)
            if i is None:
                return
            tally.add(send(base_url, plans[i], min(REQUEST_TIMEOUT, remaining)))

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
