"""Streamed bodies, labels, own routes and the in-flight gauge: each request recorded once.

Same method as test_responses.py: Flask's test client, numbers read back from ``/metrics``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Response, stream_with_context
from recorded import dropped, in_flight, make, recorded, same, scrape
from responses_app import Boom, create_app

from flask_gatewayz_metrics import GatewayzMetrics, label_request


# ------------------------------------------------------------ streamed bodies
def test_generator_failing_mid_stream_is_an_error(metrics_dir: str) -> None:
    """An unlabelled generator that fails after its first chunk: one 200, counted as an error."""
    client = create_app(GATEWAYZ_METRICS_DIR=metrics_dir).test_client()
    response = client.get("/stream-fails")
    with pytest.raises(Boom):
        response.get_data()
    response.close()
    got = scrape(client)
    assert same(recorded(got), [("/stream-fails", "GET", "200", True)])
    assert in_flight(got) == 0


def test_generator_failing_before_first_chunk_is_a_500(metrics_dir: str) -> None:
    """A body that fails before yielding anything leaves the server to answer 500."""
    app = make(metrics_dir)

    def chunks() -> Iterator[str]:
        raise Boom("no first chunk")
        yield ""  # pragma: no cover

    app.add_url_rule("/s", "s", lambda: Response(chunks()))
    client = app.test_client()
    with pytest.raises(Boom):
        client.get("/s")
    assert same(recorded(scrape(client)), [("/s", "GET", "500", True)])
    assert in_flight(scrape(client)) == 0


def test_labelled_stream_failing_records_stream_error(metrics_dir: str) -> None:
    """A labelled failing stream: the request is an error and the stream's outcome is error."""
    app = make(metrics_dir)

    def chunks() -> Iterator[str]:
        yield "x"
        raise Boom("upstream dropped")

    def view() -> Response:
        label_request(provider="openai", model="gpt-4")
        return Response(chunks())

    app.add_url_rule("/chat", "chat", view)
    client = app.test_client()
    with pytest.raises(Boom):
        client.get("/chat").get_data()
    got = scrape(client)
    assert same(recorded(got), [("/chat", "GET", "200", True)])
    assert in_flight(got) == 0
    assert got[("llm_streams_total", (("model", "gpt-4"), ("outcome", "error"), ("provider", "openai")))] == 1
    assert got[("provider_errors_total", (("provider", "openai"),))] == 1


def test_label_request_inside_stream_with_context_body(metrics_dir: str) -> None:
    """label_request in a stream_with_context body labels the request and its stream."""
    client = create_app(GATEWAYZ_METRICS_DIR=metrics_dir).test_client()
    assert client.get("/labelled-in-body").get_data() == b"alabelled"
    got = scrape(client)
    assert same(recorded(got), [("/labelled-in-body", "GET", "200", False)])
    assert in_flight(got) == 0
    assert got[("provider_requests_total", (("provider", "openai"),))] == 1
    assert got[("llm_streams_total", (("model", "gpt-4"), ("outcome", "completed"), ("provider", "openai")))] == 1
    assert got[("llm_time_to_first_chunk_seconds_count", (("model", "gpt-4"), ("provider", "openai")))] == 1


def test_label_request_in_plain_generator_and_call_on_close(metrics_dir: str) -> None:
    """label_request works in a plain generator body too, and not after the request."""
    app = make(metrics_dir)

    def chunks() -> Iterator[str]:
        yield "a"
        label_request(model="claude-3")
        yield "b"

    app.add_url_rule("/g", "g", lambda: Response(chunks()))
    client = app.test_client()
    assert client.get("/g").get_data() == b"ab"
    assert label_request(provider="late") is False
    got = scrape(client)
    assert got[("model_requests_total", (("model", "claude-3"),))] == 1
    assert ("provider_requests_total", (("provider", "late"),)) not in got


def test_label_request_in_hooks_error_handlers_and_teardown(metrics_dir: str) -> None:
    """label_request from after_request, an errorhandler and teardown_request is applied."""
    app = make(metrics_dir, PROPAGATE_EXCEPTIONS=False)
    app.after_request(lambda r: (r.status_code == 200 and label_request(provider="from-hook"), r)[1])
    app.teardown_request(lambda e: label_request(model="from-teardown") and None)

    def fail() -> str:
        raise ValueError("x")

    def handler(e: Exception) -> tuple[str, int]:
        label_request(provider="from-handler")
        return "handled", 502

    app.add_url_rule("/ok", "ok", lambda: "ok")
    app.add_url_rule("/fail", "fail", fail)
    app.register_error_handler(ValueError, handler)
    client = app.test_client()
    assert client.get("/ok").status_code == 200
    assert client.get("/fail").status_code == 502
    got = scrape(client)
    assert same(recorded(got), [("/ok", "GET", "200", False), ("/fail", "GET", "502", True)])
    assert got[("provider_requests_total", (("provider", "from-hook"),))] == 1
    assert got[("provider_requests_total", (("provider", "from-handler"),))] == 1
    assert got[("model_requests_total", (("model", "from-teardown"),))] == 2
    assert in_flight(got) == 0


def test_stream_closed_early_is_not_an_error(metrics_dir: str) -> None:
    """A client that hangs up mid-stream: recorded as its status, no error; labelled: disconnect."""
    app = make(metrics_dir)

    def chunks() -> Iterator[str]:
        label_request(provider="anthropic")
        while True:
            yield "tick"

    app.add_url_rule("/forever", "forever", lambda: Response(stream_with_context(chunks())))
    client = app.test_client()
    response = client.get("/forever")
    assert in_flight(scrape(client)) == 1
    response.close()
    got = scrape(client)
    assert same(recorded(got), [("/forever", "GET", "200", False)])
    assert in_flight(got) == 0
    outcome = ("llm_streams_total", (("model", "unknown"), ("outcome", "client_disconnect"), ("provider", "anthropic")))
    assert got[outcome] == 1
    assert in_flight(got) == 0


def test_head_of_streamed_and_file_routes(metrics_dir: str) -> None:
    """HEAD of a generator route and of send_file: one request each, nothing left in flight."""
    client = create_app(GATEWAYZ_METRICS_DIR=metrics_dir).test_client()
    assert client.head("/stream").status_code == 200
    assert client.head("/file").status_code == 200
    got = scrape(client)
    assert same(recorded(got), [("/file", "HEAD", "200", False), ("/stream", "HEAD", "200", False)])
    assert in_flight(got) == 0


# -------------------------------------------------------- labels and own routes
@pytest.mark.parametrize("bad", ["", 42, ["x"], {"a": 1}])
def test_bad_provider_label_drops_only_that_part(metrics_dir: str, bad: Any) -> None:
    """A bad provider label is dropped and counted; the request and its model still count."""
    app = make(metrics_dir)

    def view() -> str:
        label_request(provider=bad, model="gpt-4")
        return "ok"

    app.add_url_rule("/chat", "chat", view)
    client = app.test_client()
    for _ in range(2):
        assert client.get("/chat").status_code == 200
    got = scrape(client)
    assert same(recorded(got), [("/chat", "GET", "200", False)] * 2)
    assert in_flight(got) == 0
    assert got[("model_requests_total", (("model", "gpt-4"),))] == 2
    assert not any(k[0] == "provider_requests_total" and v for k, v in got.items())
    assert dropped(got, "invalid_label") == 2


def test_own_routes_never_recorded(metrics_dir: str) -> None:
    """Scrapes, GET /metrics/reset (405) and 404s under the prefix are not traffic."""
    client = make(metrics_dir).test_client()
    assert client.get("/metrics/reset").status_code == 405
    assert client.get("/metrics/nope").status_code == 404
    assert client.get("/metrics/json").status_code == 200
    assert client.head("/metrics").status_code == 200
    got = scrape(client)
    assert same(recorded(got), [])
    assert in_flight(got) == 0


def test_own_routes_recorded_when_asked(metrics_dir: str) -> None:
    """With RECORD_OWN_ROUTES, GET /metrics/reset is a 405 under its route template."""
    client = make(metrics_dir, GATEWAYZ_METRICS_RECORD_OWN_ROUTES=True).test_client()
    assert client.get("/metrics/reset").status_code == 405
    got = scrape(client)
    by_method, by_status = recorded(got)
    assert ("/metrics/reset", "GET", False) in by_method
    assert ("/metrics/reset", "405") in by_status


@pytest.mark.parametrize("prefix", ["/", "/metrics", "/ops/metrics/"])
def test_in_flight_during_a_request_for_any_prefix(metrics_dir: str, prefix: str) -> None:
    """Inside a view the request counts as in flight (1), whatever the URL prefix; the
    metrics routes under that prefix are neither recorded nor in flight."""
    app = make(metrics_dir, GATEWAYZ_METRICS_URL_PREFIX=prefix)
    collector = GatewayzMetrics.of(app).collector
    app.add_url_rule("/api/work", "work", lambda: str(collector.snapshot().in_flight))
    client = app.test_client()
    assert client.get("/api/work").get_data() == b"1.0"
    assert client.get(prefix.rstrip("/") + "/json").status_code == 200
    assert client.get(prefix.rstrip("/") + "/health").status_code == 200
    got = scrape(client, prefix)
    assert same(recorded(got), [("/api/work", "GET", "200", False)])
    assert in_flight(got) == 0


def test_in_flight_right_after_reset(metrics_dir: str) -> None:
    """A reset while a request runs: the gauge still shows it, and returns to 0 after."""
    app = make(metrics_dir, GATEWAYZ_METRICS_RESET_TOKEN="t")
    app.add_url_rule("/s", "s", lambda: Response(iter(["a", "b", "c"])))
    client = app.test_client()
    running = client.get("/s")
    assert in_flight(scrape(client)) == 1
    assert client.post("/metrics/reset", headers={"Authorization": "Bearer t"}).status_code == 200
    assert in_flight(scrape(client)) == 1
    assert running.get_data() == b"abc"
    running.close()
    got = scrape(client)
    assert in_flight(got) == 0
    assert same(recorded(got), [("/s", "GET", "200", False)])
    assert in_flight(got) == 0
