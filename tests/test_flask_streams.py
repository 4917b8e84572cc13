"""Streamed Flask responses: recorded when the body is closed (completed, failed mid-stream,
client gone), with the stream families and the in-flight gauge."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from flask import Flask, Response

from flask_gatewayz_metrics import GatewayzMetrics, MetricsCollector, label_request
from flask_gatewayz_metrics.testing import Samples
from flask_gatewayz_metrics.testing import parse_samples as parse
from flask_gatewayz_metrics.testing import sample_key as key
from flask_gatewayz_metrics.testing import series as named

# --------------------------------------------------------------------------- Flask streams


def stream_app(metrics_dir: str) -> Flask:
    app = Flask(__name__)
    app.config["GATEWAYZ_METRICS_DIR"] = metrics_dir
    GatewayzMetrics(app)

    def slow_chunks(fail: bool = False) -> Iterator[str]:
        time.sleep(0.05)
        yield "data: 0\n\n"
        if fail:
            raise RuntimeError("upstream broke mid-stream")
        for i in range(1, 4):
            time.sleep(0.01)
            yield f"data: {i}\n\n"

    @app.get("/chat/stream")
    def labelled() -> Response:
        label_request(provider="openai", model="gpt-4")
        return Response(slow_chunks(), mimetype="text/event-stream")

    @app.get("/chat/broken")
    def broken() -> Response:
        label_request(provider="openai", model="gpt-4")
        return Response(slow_chunks(fail=True), mimetype="text/event-stream")

    @app.get("/plain/stream")
    def unlabelled() -> Response:
        return Response(slow_chunks(), mimetype="text/event-stream")

    return app


def app_collector(app: Flask) -> MetricsCollector:
    return app.extensions["gatewayz_metrics"].collector  # type: ignore[no-any-return]


def http_scrape(app: Flask) -> Samples:
    response = app.test_client().get("/metrics")
    assert response.status_code == 200
    return parse(response.get_data(as_text=True))


def test_flask_stream_completed(metrics_dir: str) -> None:
    """A fully read labelled stream: outcome completed, first chunk >= 0.05 s, duration >= first chunk."""
    app = stream_app(metrics_dir)
    response = app.test_client().get("/chat/stream")
    assert response.get_data(as_text=True).count("data:") == 4
    response.close()
    s = http_scrape(app)
    base = {"provider": "openai", "model": "gpt-4"}
    assert named(s, "llm_streams_total") == {tuple(sorted({**base, "outcome": "completed"}.items())): 1.0}
    first = s[key("llm_time_to_first_chunk_seconds_sum", **base)]
    duration = s[key("llm_stream_duration_seconds_sum", **base)]
    assert s[key("llm_time_to_first_chunk_seconds_count", **base)] == 1
    assert s[key("llm_stream_duration_seconds_count", **base)] == 1
    assert 0.05 <= first < 5
    assert duration >= first + 0.03  # three more chunks, 10 ms apart
    assert s[key("http_requests_total", endpoint="/chat/stream", method="GET")] == 1
    assert s[key("http_request_errors_total", endpoint="/chat/stream", method="GET")] == 0
    assert s[key("http_requests_in_flight")] == 0


def test_flask_stream_error_mid_stream(metrics_dir: str) -> None:
    """A generator raising mid-stream: outcome error, and the 200 request counted as an HTTP error."""
    app = stream_app(metrics_dir)
    response = app.test_client().get("/chat/broken")
    assert response.status_code == 200
    with pytest.raises(RuntimeError, match="mid-stream"):
        response.get_data()
    response.close()
    s = http_scrape(app)
    base = {"provider": "openai", "model": "gpt-4"}
    assert named(s, "llm_streams_total") == {tuple(sorted({**base, "outcome": "error"}.items())): 1.0}
    assert s[key("http_requests_total", endpoint="/chat/broken", method="GET")] == 1
    assert s[key("http_request_errors_total", endpoint="/chat/broken", method="GET")] == 1
    assert s[key("http_response_status_total", endpoint="/chat/broken", status="200")] == 1
    assert s[key("llm_time_to_first_chunk_seconds_sum", **base)] >= 0.05
    assert s[key("http_requests_in_flight")] == 0


def test_flask_stream_client_disconnect_and_in_flight(metrics_dir: str) -> None:
    """Closed after one chunk: 1 in flight while open (scrape excluded), then 0 and outcome client_disconnect."""
    app = stream_app(metrics_dir)
    collector = app_collector(app)
    response = app.test_client().get("/chat/stream")
    try:
        assert next(response.response) == b"data: 0\n\n"  # type: ignore[call-overload]
        assert collector.to_dict()["in_flight"] == 1
        s = http_scrape(app)
        assert s[key("http_requests_in_flight")] == 1
        assert named(s, "llm_streams_total") == {}
        assert app.test_client().get("/metrics/json").get_json()["in_flight"] == 1
    finally:
        response.close()
    s = http_scrape(app)
    base = {"provider": "openai", "model": "gpt-4"}
    assert named(s, "llm_streams_total") == {tuple(sorted({**base, "outcome": "client_disconnect"}.items())): 1.0}
    assert s[key("http_requests_in_flight")] == 0
    assert collector.to_dict()["in_flight"] == 0
    assert s[key("llm_time_to_first_chunk_seconds_sum", **base)] >= 0.05
    assert s[key("llm_stream_duration_seconds_sum", **base)] >= s[key("llm_time_to_first_chunk_seconds_sum", **base)]
    assert s[key("http_request_errors_total", endpoint="/chat/stream", method="GET")] == 0


def test_flask_unlabelled_stream_records_request_at_close_only(metrics_dir: str) -> None:
    """An unlabelled stream records no stream metrics; its HTTP request is recorded when closed."""
    app = stream_app(metrics_dir)
    response = app.test_client().get("/plain/stream")
    try:
        s = http_scrape(app)
        assert key("http_requests_total", endpoint="/plain/stream", method="GET") not in s
        assert s[key("http_requests_in_flight")] == 1
        assert response.get_data(as_text=True).count("data:") == 4
    finally:
        response.close()
    s = http_scrape(app)
    assert s[key("http_requests_total", endpoint="/plain/stream", method="GET")] == 1
    assert s[key("http_request_duration_seconds_sum", endpoint="/plain/stream", method="GET")] >= 0.08
    assert s[key("http_requests_in_flight")] == 0
    for name in ("llm_streams_total", "llm_stream_duration_seconds_count", "llm_time_to_first_chunk_seconds_count"):
        assert named(s, name) == {}


def test_a_proxied_stream_with_a_length_is_timed_to_its_end(metrics_dir: str) -> None:
    """A streaming proxy's body: a werkzeug ``ClosingIterator`` over the upstream's chunks,
    with the upstream's Content-Length. It is produced as the server reads it, so it is
    timed to its end and counted as a stream (it was taken for a finished error page:
    recorded before the first chunk, its stream never counted). An error page of the same
    shape (``abort``; a routing redirect too) is still recorded at once, and never as a
    stream."""
    from flask import abort
    from werkzeug.wsgi import ClosingIterator

    app = Flask(__name__)
    app.config["GATEWAYZ_METRICS_DIR"] = metrics_dir
    GatewayzMetrics(app)

    @app.get("/proxy")
    def proxy() -> Response:
        label_request("upstream", "m")

        def upstream() -> Iterator[bytes]:
            for _ in range(3):
                time.sleep(0.05)
                yield b"0123456789"

        return Response(ClosingIterator(upstream(), lambda: None), headers={"Content-Length": "30"})

    @app.get("/gone")
    def gone() -> Response:
        label_request("upstream", "m")
        abort(410)

    client = app.test_client()
    response = client.get("/proxy", buffered=False)
    before = http_scrape(app)
    assert before[key("http_requests_in_flight")] == 1
    assert key("http_requests_total", endpoint="/proxy", method="GET") not in before
    assert response.get_data() == b"0123456789" * 3
    response.close()
    assert client.get("/gone").status_code == 410
    after = http_scrape(app)
    assert after[key("http_request_duration_seconds_sum", endpoint="/proxy", method="GET")] >= 0.15
    streams = {dict(labels)["outcome"]: v for (name, labels), v in after.items() if name == "llm_streams_total" and v}
    assert streams == {"completed": 1}
    assert after[key("http_requests_total", endpoint="/gone", method="GET")] == 1
    assert after[key("http_requests_in_flight")] == 0


def test_a_middleware_inside_ours_that_streams_the_body_is_timed_to_its_end(metrics_dir: str) -> None:
    """A middleware installed on ``app.wsgi_app`` before the extension re-chunks Flask's
    complete body as it goes out, and fails after 0.1 s: the request is timed to the end
    of the body the server gets, and counted as an error (it was recorded as Flask's
    finished body: no error, a latency of microseconds)."""
    app = Flask(__name__)
    app.config["GATEWAYZ_METRICS_DIR"] = metrics_dir
    app.add_url_rule("/data", "data", lambda: "x" * 100)
    flask_wsgi = app.wsgi_app

    def rechunking(environ: dict[str, object], start_response: object) -> Iterator[bytes]:
        body = flask_wsgi(environ, start_response)  # type: ignore[arg-type]
        if environ["PATH_INFO"] != "/data":
            return body  # type: ignore[no-any-return]

        def chunks() -> Iterator[bytes]:
            try:
                for chunk in body:
                    time.sleep(0.1)
                    yield chunk[:10]
                    raise RuntimeError("encoder failed")
            finally:
                body.close()  # type: ignore[attr-defined]

        return chunks()

    app.wsgi_app = rechunking  # type: ignore[method-assign,assignment]
    GatewayzMetrics(app)
    response = app.test_client().get("/data", buffered=False)
    with pytest.raises(RuntimeError):
        response.get_data()
    response.close()
    got = http_scrape(app)
    assert got[key("http_request_errors_total", endpoint="/data", method="GET")] == 1
    assert got[key("http_request_duration_seconds_sum", endpoint="/data", method="GET")] >= 0.1
    assert got[key("http_requests_in_flight")] == 0
