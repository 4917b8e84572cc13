"""Helpers shared by the benchmark scripts (not a benchmark itself).

Everything here is stdlib only, so a peer subprocess can import it before it imports
``prometheus_client`` (whose multiprocess mode is chosen at import time).
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

HERE = os.path.dirname(os.path.abspath(__file__))

ENDPOINTS = [f"/api/v1/endpoint{i:02d}" for i in range(50)]
PROVIDERS = [f"provider{j}" for j in range(10)]
MODELS = [f"model-{k:02d}" for k in range(20)]
COMBOS = len(ENDPOINTS) * len(PROVIDERS) * len(MODELS)


def combo(i: int) -> tuple[str, str, str]:
    """Label combination of request ``i``: cycles through all 50 x 10 x 20 combinations."""
    i %= COMBOS
    return ENDPOINTS[i % 50], PROVIDERS[(i // 50) % 10], MODELS[(i // 500) % 20]


def latencies(count: int = 4096, seed: int = 42) -> list[float]:
    """Deterministic, varied request latencies (log-normal around ~0.4 s, 1 ms .. 60 s)."""
    import random

    rng = random.Random(seed)
    return [min(60.0, max(0.001, rng.lognormvariate(-1.0, 1.2))) for _ in range(count)]


def rss_kib() -> int:
    """Resident set size of this process in KiB (VmRSS from /proc/self/status)."""
    gc.collect()
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("VmRSS not found")


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float]) -> str:
    """min..max of the repeats, for judging noise."""
    return f"{min(values):.2f}..{max(values):.2f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table (readable on a terminal too)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    out = [line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


class Peer:
    """A long-lived subprocess running ``script --peer``, driven line by line over stdin.

    Lets the parent interleave its own measurements with the peer's (ABAB...), so both
    sides see the same machine noise. Each request is one JSON line, each answer too.
    """

    def __init__(self, script: str, env_extra: dict[str, str], drop_env: Sequence[str] = ()) -> None:
        env = dict(os.environ)
        for name in drop_env:
            env.pop(name, None)
        env.update(env_extra)
        self.proc = subprocess.Popen(
            [sys.executable, script, "--peer"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
            bufsize=1,
        )
        self.info = self._read()

    def ask(self, **request: object) -> dict[str, object]:
        self.send(**request)
        return self._read()

    def send(self, **request: object) -> None:
        """Start a request without waiting for the answer (collect it with ``receive``)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()

    def receive(self) -> dict[str, object]:
        return self._read()

    def _read(self) -> dict[str, object]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"peer subprocess exited (rc={self.proc.wait()})")
        return json.loads(line)  # type: ignore[no-any-return]

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def serve_peer(handlers: dict[str, object], info: dict[str, object]) -> None:
    """Peer side of ``Peer``: answer JSON requests ``{"case": name, ...}`` until EOF."""
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        handler = handlers[request.pop("case")]
        result = handler(**request)  # type: ignore[operator]
        print(json.dumps(result), flush=True)


def unrecorded(collector: object) -> dict[str, int]:
    """Drops the collector could only count in memory (``internal_error`` etc.)."""
    return dict(getattr(collector, "_unrecorded", {}))


class PeerRecorder:
    """prometheus_client metrics equivalent to ours for one simulated worker (peer subprocess only).

    The HTTP, provider and model counters and the two latency histograms, in a throwaway
    registry: with ``PROMETHEUS_MULTIPROC_DIR`` set only the pid files they write matter.
    """

    def __init__(self, buckets: Sequence[float]) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        reg = CollectorRegistry()
        self.req = Counter("http_requests", "r", ["endpoint", "method"], registry=reg)
        self.err = Counter("http_request_errors", "e", ["endpoint", "method"], registry=reg)
        self.status = Counter("http_response_status", "s", ["endpoint", "status"], registry=reg)
        self.dur = Histogram(
            "http_request_duration_seconds", "d", ["endpoint", "method"], buckets=buckets, registry=reg
        )
        self.preq = Counter("provider_requests", "r", ["provider"], registry=reg)
        self.perr = Counter("provider_errors", "e", ["provider"], registry=reg)
        self.pdur = Histogram("provider_request_duration_seconds", "d", ["provider"], buckets=buckets, registry=reg)
        self.mreq = Counter("model_requests", "r", ["model"], registry=reg)
        self.merr = Counter("model_errors", "e", ["model"], registry=reg)

    def record(
        self, endpoint: str, method: str, latency: float, code: int, provider: str | None, model: str | None
    ) -> None:
        failed = 1 if code >= 500 else 0
        self.req.labels(endpoint, method).inc()
        self.err.labels(endpoint, method).inc(failed)
        self.status.labels(endpoint, str(code)).inc()
        self.dur.labels(endpoint, method).observe(latency)
        if provider is not None:
            self.preq.labels(provider).inc()
            self.perr.labels(provider).inc(failed)
            self.pdur.labels(provider).observe(latency)
        if model is not None:
            self.mreq.labels(model).inc()
            self.merr.labels(model).inc(failed)


def peer_scrape() -> tuple[bytes, float]:
    """One prometheus_client multiprocess scrape: the body and the seconds it took."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    t0 = time.perf_counter()
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    body = generate_latest(registry)
    return body, time.perf_counter() - t0
