"""Soak: the example gateway under gunicorn with concurrent clients for a while.

Duration comes from ``GATEWAYZ_SOAK_SECONDS`` (default 20 s, what ``.ci/run`` runs);
``bash scripts/soak.sh`` runs it for 180 s. Loopback only, bounded in time and count.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from servers import http, scrape

pytestmark = pytest.mark.slow

SOAK_SECONDS = float(os.environ.get("GATEWAYZ_SOAK_SECONDS", "20"))
CLIENTS = 6
MAX_REQUESTS = 200_000
RSS_GROWTH_LIMIT_KIB = 8 * 1024
MODELS = ("gpt-4", "claude-3-haiku", "gemini-1.5-pro")


def worker_pids(master: int) -> list[int]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return sorted(int(pid) for pid in children)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def directory_bytes(path: Path) -> int:
    """Bytes of data in the metrics directory: what each worker file holds (its header's
    ``used``), not what it has reserved (files grow by doubling, so their allocated size
    jumps whenever a new record or bucket block crosses a power of two), plus every other
    file's allocated size."""
    total = 0
    for p in path.iterdir():
        if not p.is_file():
            continue
        if p.suffix == ".gwzm":
            with p.open("rb") as f:
                header = f.read(16)
            if len(header) == 16:
                total += struct.unpack_from("<Q", header, 8)[0]
                continue
        total += p.stat().st_blocks * 512
    return total


def request_for(i: int) -> tuple[str, str, dict[str, Any] | None]:
    """A deterministic mix: chats (some failing, some streamed), model listings, details, unknown paths."""
    kind = i % 10
    if kind < 6:
        status = 500 if i % 50 == 0 else 429 if i % 50 == 1 else 200
        body = {"model": MODELS[i % 3], "message": f"soak {i}", "simulate_status": status, "stream": kind == 5}
        return "POST", "/api/chat", body
    if kind < 8:
        return "GET", "/api/models", None
    if kind == 8:
        return "GET", "/api/models/gpt-4", None
    return "GET", f"/no/such/path/{i}", None


def test_soak_totals_exact_rss_and_directory_flat(start_gunicorn: Any) -> None:
    """Minutes of concurrent mixed traffic: no metric-caused errors, RSS and directory flat, totals exact."""
    server = start_gunicorn()
    sent: Counter[tuple[str, int]] = Counter()
    failures: list[str] = []
    lock = threading.Lock()
    counter = iter(range(MAX_REQUESTS))
    warm_until = time.monotonic() + min(5.0, SOAK_SECONDS / 4)
    stop_at = time.monotonic() + SOAK_SECONDS
    baseline: dict[str, Any] = {}

    def client() -> None:
        while time.monotonic() < stop_at:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            method, path, body = request_for(i)
            try:
                status, _ = http(method, server.url + path, body)
            except OSError as exc:
                with lock:
                    failures.append(repr(exc))
                continue
            endpoint = {"/api/models/gpt-4": "/api/models/<model_id>"}.get(path, path)
            if path.startswith("/no/"):
                endpoint = "unmatched"
            with lock:
                sent[endpoint, status] += 1

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    time.sleep(max(0.0, warm_until - time.monotonic()))
    baseline["rss"] = {pid: rss_kib(pid) for pid in worker_pids(server.process.pid)}
    baseline["dir"] = directory_bytes(server.metrics_dir)
    for t in threads:
        t.join(timeout=SOAK_SECONDS + 30)
    assert not any(t.is_alive() for t in threads)
    assert not failures, failures[:5]

    unexpected = {key: n for key, n in sent.items() if key[1] >= 500 and key[1] != 500}
    assert not unexpected, f"errors not asked for: {unexpected}"
    total = sum(sent.values())
    assert total >= 100 * SOAK_SECONDS / 20  # the server really was under load

    growth = {
        pid: rss_kib(pid) - before for pid, before in baseline["rss"].items() if Path(f"/proc/{pid}").exists()
    }
    directory_after = directory_bytes(server.metrics_dir)
    print(  # shown with -s: what scripts/soak.sh reports
        f"\nsoak: {total} requests in {SOAK_SECONDS:.0f} s ({total / SOAK_SECONDS:.0f}/s), "
        f"worker RSS growth after warm-up {sorted(growth.values())} KiB, "
        f"metrics directory {baseline['dir'] // 1024} -> {directory_after // 1024} KiB"
    )
    for pid, kib in growth.items():  # workers still serving since the baseline
        assert kib <= RSS_GROWTH_LIMIT_KIB, f"worker {pid} RSS grew by {kib} KiB"
    assert directory_after <= baseline["dir"] * 1.1 + 64 * 1024

    samples = scrape(server.url)
    for (endpoint, status), count in sent.items():
        key = ("http_response_status_total", (("endpoint", endpoint), ("status", str(status))))
        assert samples.get(key) == count, (endpoint, status, samples.get(key), count)
    requests = sum(
        v for (name, labels), v in samples.items()
        if name == "http_requests_total" and dict(labels)["endpoint"] != "/healthz"  # readiness probes
    )
    assert requests == total
