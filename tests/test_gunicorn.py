"""The example gateway under real gunicorn: several workers, recycled ones, and ``--preload``.

Every scrape may hit a different worker, and each must report the whole server's
totals exactly, including requests served by workers that ``--max-requests`` retired.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from servers import http, scrape, send_concurrently

SEND_TIMEOUT = 40.0
SENDERS = 8
PROVIDER_OF = {"gpt-4": "openai", "claude-3-haiku": "anthropic", "gemini-1.5-pro": "google"}

pytestmark = pytest.mark.slow


def traffic_plan(total: int) -> list[dict[str, Any]]:
    """Chat bodies with known outcomes: 75% succeed, 15% simulate a 500, 10% a 429."""
    models = list(PROVIDER_OF)
    plan = []
    for i in range(total):
        status = 500 if i % 20 < 3 else 429 if i % 20 < 5 else 200
        plan.append({"model": models[i % len(models)], "message": f"request {i}", "simulate_status": status})
    return plan


def send_all(url: str, plan: list[dict[str, Any]], timeout: float = SEND_TIMEOUT) -> Counter[int]:
    """Send every chat body from ``SENDERS`` threads; return the statuses received."""
    return send_concurrently(url, [("POST", "/api/chat", body) for body in plan], SENDERS, timeout)


def expected_totals(plan: list[dict[str, Any]]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    statuses = Counter(str(body["simulate_status"]) for body in plan)
    providers = Counter(PROVIDER_OF[body["model"]] for body in plan)
    provider_errors = Counter(PROVIDER_OF[body["model"]] for body in plan if body["simulate_status"] >= 500)
    chat = (("endpoint", "/api/chat"),)
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {
        ("http_requests_total", (*chat, ("method", "POST"))): float(len(plan)),
        ("http_request_errors_total", (*chat, ("method", "POST"))): float(statuses["500"]),
        ("external_api_calls_total", (("service", "stripe"),)): float(statuses["200"]),
    }
    for code, count in statuses.items():
        out["http_response_status_total", (*chat, ("status", code))] = float(count)
    for provider, count in providers.items():
        out["provider_requests_total", (("provider", provider),)] = float(count)
        out["provider_errors_total", (("provider", provider),)] = float(provider_errors[provider])
    return out


def assert_exact_on_every_worker(url: str, plan: list[dict[str, Any]], scrapes: int = 8) -> None:
    """Several scrapes (likely served by different workers) all report exactly what was sent."""
    expected = expected_totals(plan)
    for _ in range(scrapes):
        samples = scrape(url)
        assert {key: samples.get(key) for key in expected} == expected
        chat_statuses = {
            dict(labels)["status"]: value
            for (name, labels), value in samples.items()
            if name == "http_response_status_total" and dict(labels)["endpoint"] == "/api/chat"
        }
        assert sum(chat_statuses.values()) == len(plan)


def worker_files(metrics_dir: Path) -> list[Path]:
    return sorted(metrics_dir.glob("*.gwzm"))


def test_counts_exact_across_recycled_workers(start_gunicorn: Any) -> None:
    """400 chats over 4 workers recycled every ~40 requests are counted exactly by every scrape."""
    server = start_gunicorn("--max-requests", "40", "--max-requests-jitter", "5")
    plan = traffic_plan(400)
    statuses = send_all(server.url, plan)
    assert statuses == Counter({200: 300, 500: 60, 429: 40})
    assert_exact_on_every_worker(server.url, plan)

    status, body = http("GET", server.url + "/metrics/health")
    health = json.loads(body)
    assert status == 200
    files = health["worker_files"]
    # No worker serves more than 45 requests, so at least 400 / 45 workers wrote a file;
    # the exited ones were folded into the archive (child_exit / scrape compaction), so
    # the directory holds the live workers' files and at most a couple not yet folded.
    assert (server.metrics_dir / "archive.gwza").exists()
    assert 1 <= files["live"] <= 4
    assert files["total"] <= files["live"] + 2
    assert health["storage_problems"] == []
    assert health["total_errors"] == 60
    assert len(worker_files(server.metrics_dir)) <= 4 + 2


def test_preload_gives_each_worker_its_own_file(start_gunicorn: Any) -> None:
    """With --preload, forked workers each write their own file and totals stay exact."""
    server = start_gunicorn("--preload")
    plan = traffic_plan(200)
    statuses = send_all(server.url, plan)
    assert statuses == Counter({200: 150, 500: 30, 429: 20})
    assert_exact_on_every_worker(server.url, plan)

    files = worker_files(server.metrics_dir)
    writer_pids = [int(path.name.split("-")[1]) for path in files]
    assert len(files) >= 2
    assert len(set(writer_pids)) == len(writer_pids), "two files written by one process"
    assert server.process.pid not in writer_pids, "the preloading master wrote a file"
    status, body = http("GET", server.url + "/metrics/json")
    storage = json.loads(body)["storage"]
    assert status == 200
    assert storage["worker_files"] == len(files)
    assert storage["problems"] == []


def test_hundred_generations_cost_nothing(start_gunicorn: Any) -> None:
    """With --max-requests 4, >= 100 workers live and die: totals exact, directory bounded by live workers."""
    server = start_gunicorn("--max-requests", "4")
    plan = traffic_plan(480)
    # 120 worker boots, each importing the example app: a bound for a busy 2-core machine.
    statuses = send_all(server.url, plan, timeout=150.0)
    assert statuses == Counter({200: 360, 500: 72, 429: 48})
    booted = server.log.read_text().count("Booting worker")
    assert booted >= 100, f"only {booted} workers booted"
    assert_exact_on_every_worker(server.url, plan, scrapes=4)
    files = worker_files(server.metrics_dir)
    assert len(files) <= 4 + 2, [f.name for f in files]
    others = {p.name for p in server.metrics_dir.iterdir()} - {f.name for f in files}
    # Hidden names are files being written right now (a new worker's file, the next archive).
    settled = {name for name in others if not name.startswith(".")}
    assert settled <= {"control.gwzc", "archive.gwza", "compaction.lock"}
    assert len(others - settled) <= 2
