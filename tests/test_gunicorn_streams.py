"""Real gunicorn workers: streamed chats and the in-flight gauge merged across workers."""

from __future__ import annotations

import http.client
import json
import socket
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from servers import http as http_call
from servers import start_gateway, stop

from flask_gatewayz_metrics.testing import Samples
from flask_gatewayz_metrics.testing import parse_samples as parse
from flask_gatewayz_metrics.testing import sample_key as key

# --------------------------------------------------------------------------- real gunicorn

def gunicorn_scrape(port: int) -> Samples:
    status, body = http_call("GET", f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    return parse(body.decode("utf-8"))


def open_chat_stream(port: int, body: dict[str, Any]) -> socket.socket:
    """Send a streaming chat on a raw socket; return it once the headers and first SSE chunk arrived."""
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(
            b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
            + payload
        )
        received = b""
        deadline = time.monotonic() + 10
        while b"data: {" not in received and time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        assert received.startswith(b"HTTP/1.1 200"), received[:300]
        assert b"data: {" in received, received[:300]
    except BaseException:
        sock.close()
        raise
    return sock


def read_chat_stream(port: int, body: dict[str, Any]) -> bytes:
    """A whole streaming chat with http.client; a body broken by the server returns what arrived."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request("POST", "/api/chat", body=json.dumps(body), headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 200
        try:
            return response.read()
        except (http.client.IncompleteRead, ConnectionError) as exc:
            return getattr(exc, "partial", b"")
    finally:
        conn.close()


def wait_for(port: int, predicate: Any, timeout: float = 15.0) -> Samples:
    """Scrape until ``predicate(samples)`` holds (bounded); return the last scrape."""
    deadline = time.monotonic() + timeout
    s = gunicorn_scrape(port)
    while not predicate(s) and time.monotonic() < deadline:
        time.sleep(0.1)
        s = gunicorn_scrape(port)
    return s


@pytest.mark.slow
def test_gunicorn_streams_and_in_flight(tmp_path: Path) -> None:
    """Under gunicorn (2 workers): in flight while streaming, client_disconnect on abrupt close, completed, error."""
    server = start_gateway(tmp_path, "streams", workers=2, GATEWAY_SIMULATED_LATENCY_SCALE="0.01")
    port = server.port
    try:
        base = {"provider": "openai", "model": "gpt-4"}
        outcome = {o: key("llm_streams_total", outcome=o, **base) for o in ("completed", "client_disconnect", "error")}
        in_flight = key("http_requests_in_flight")
        message = " ".join(f"word{i}" for i in range(60))  # ~21 chunks: ~6 s if never interrupted

        sock = open_chat_stream(port, {"message": message, "stream": True, "stream_chunk_delay_seconds": 0.3})
        try:
            s = gunicorn_scrape(port)
            assert s[in_flight] >= 1
            assert s.get(outcome["client_disconnect"], 0) == 0
        finally:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, not FIN
            sock.close()
        closed_at = time.monotonic()
        s = wait_for(port, lambda s: s.get(outcome["client_disconnect"]) == 1 and s[in_flight] == 0)
        assert s.get(outcome["client_disconnect"]) == 1, server.log.read_text()[-3000:]
        assert s[in_flight] == 0
        assert time.monotonic() - closed_at < 5  # noticed long before the stream would have ended
        assert s.get(outcome["completed"], 0) == 0

        body = read_chat_stream(port, {"message": "complete me please", "stream": True})
        assert body.rstrip().endswith(b"data: [DONE]")
        s = wait_for(port, lambda s: s.get(outcome["completed"]) == 1, timeout=10)
        assert s.get(outcome["completed"]) == 1

        body = read_chat_stream(port, {"message": message, "stream": True, "simulate_stream_error": True})
        assert b"[DONE]" not in body
        s = wait_for(port, lambda s: s.get(outcome["error"]) == 1 and s[in_flight] == 0, timeout=10)

        for _ in range(4):  # every worker reports the same totals
            assert s[outcome["error"]] == 1
            assert s[outcome["completed"]] == 1
            assert s[outcome["client_disconnect"]] == 1
            assert s[in_flight] == 0
            assert s[key("http_requests_total", endpoint="/api/chat", method="POST")] == 3
            assert s[key("http_request_errors_total", endpoint="/api/chat", method="POST")] == 1
            assert s[key("llm_time_to_first_chunk_seconds_count", **base)] == 3
            assert s[key("llm_stream_duration_seconds_count", **base)] == 3
            s = gunicorn_scrape(port)
    finally:
        stop(server.process)
