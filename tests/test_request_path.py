"""The request path's shortcuts keep its behaviour: the streamed check after Flask's
``process_response``, and the one bucket search for every latency histogram."""

from __future__ import annotations

import time
from collections.abc import Iterator

from flask import Flask, Response, request
from prometheus_client.parser import text_string_to_metric_families
from servers import free_port

from flask_gatewayz_metrics import GatewayzMetrics, MetricsCollector, label_request
from flask_gatewayz_metrics.exposition import PrometheusExporter
from flask_gatewayz_metrics.storage import kinds, layout


def _value(body: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def test_hook_registered_before_the_extension_may_stream(metrics_dir: str) -> None:
    """An ``after_request`` hook registered before the extension (Flask runs it after the
    extension's own check used to run) that swaps in a streamed body: the request is still
    timed until that body is over, not recorded when Flask returns."""
    app = Flask(__name__)
    app.config["GATEWAYZ_METRICS_DIR"] = metrics_dir

    def slow_body() -> Iterator[bytes]:
        for _ in range(3):
            time.sleep(0.05)
            yield b"chunk"

    @app.after_request
    def stream_instead(response: Response) -> Response:
        return Response(slow_body()) if request.path == "/swap" else response

    GatewayzMetrics(app)

    @app.get("/swap")
    def swap() -> str:
        return "plain"

    client = app.test_client()
    response = client.get("/swap")
    text = client.get("/metrics").get_data(as_text=True)
    assert _value(text, "http_requests_total", endpoint="/swap") is None  # not over yet
    assert response.get_data() == b"chunk" * 3
    response.close()
    text = client.get("/metrics").get_data(as_text=True)
    assert _value(text, "http_requests_total", endpoint="/swap") == 1.0
    assert (_value(text, "http_request_duration_seconds_sum", endpoint="/swap") or 0.0) >= 0.15


def test_every_latency_histogram_gets_the_searched_bucket(metrics_dir: str) -> None:
    """A labelled request's latency lands in the same bucket of the request, provider,
    http.server and gen_ai.server histograms as a search of each bound set would give,
    at and around every bound."""
    from bisect import bisect_left

    collector = MetricsCollector(metrics_dir)
    latencies = sorted({
        value
        for bound in (*kinds.HISTOGRAM_BOUNDS, *kinds.HTTP_SERVER_BOUNDS, *kinds.GEN_AI_DURATION_BOUNDS)
        for value in (bound, bound * 0.999, bound * 1.001)
    })
    try:
        for latency in latencies:
            collector.observe_request("/chat", "POST", latency, 200, "openai", "gpt-4o")
        snap = collector.snapshot()
    finally:
        collector.close()
    request = snap.merged.total("request", ("/chat", "POST", "200", "0"))
    provider = snap.merged.total("provider", ("openai", "200", "0"))
    http_server = snap.merged.total("http_server_buckets", ("/chat", "POST", "200", "0"))
    gen_ai = snap.merged.total("gen_ai_server_duration", ("chat", "openai", "gpt-4o", ""))
    assert request is not None and provider is not None and http_server is not None and gen_ai is not None

    def expected(bounds: tuple[float, ...]) -> list[float]:
        counts = [0.0] * (len(bounds) + 1)
        for latency in latencies:
            counts[bisect_left(bounds, latency)] += 1.0
        return counts

    assert request[kinds.REQ_BUCKETS :] == expected(kinds.HISTOGRAM_BOUNDS)
    assert provider[kinds.REQ_BUCKETS :] == expected(kinds.HISTOGRAM_BOUNDS)
    assert http_server == expected(kinds.HTTP_SERVER_BOUNDS)
    assert gen_ai[1:] == expected(kinds.GEN_AI_DURATION_BOUNDS)


def test_labelled_flask_request_fills_every_histogram_once(metrics_dir: str) -> None:
    """Through Flask, one labelled request counts once in each latency histogram."""
    app = Flask(__name__)
    app.config["GATEWAYZ_METRICS_DIR"] = metrics_dir
    GatewayzMetrics(app)

    @app.post("/v1/chat/completions")
    def chat() -> dict[str, bool]:
        label_request(provider="openai", model="gpt-4o")
        return {"ok": True}

    assert app.test_client().post("/v1/chat/completions").status_code == 200
    text = PrometheusExporter(app.extensions["gatewayz_metrics"].collector).export()
    assert _value(text, "http_request_duration_seconds_count", endpoint="/v1/chat/completions") == 1.0
    assert _value(text, "provider_request_duration_seconds_count", provider="openai") == 1.0
    assert _value(text, "http_server_request_duration_seconds_count", http_route="/v1/chat/completions") == 1.0
    assert _value(text, "gen_ai_server_request_duration_seconds_count", gen_ai_provider_name="openai") == 1.0
    assert _value(text, "gen_ai_server_request_duration_seconds_bucket", le="+Inf") == 1.0


def test_bucket_position_from_the_sketch_index_equals_a_search() -> None:
    """``union_positions`` (plus the step down where bounds lie inside the bucket) gives
    ``bisect_left`` of the bounds for any latency, also with several configured bounds
    inside one sketch bucket."""
    import math
    import random
    from bisect import bisect_left

    from flask_gatewayz_metrics import sketch
    from flask_gatewayz_metrics.request_path import union_positions

    rng = random.Random(12)
    for union in (
        tuple(sorted({*kinds.HISTOGRAM_BOUNDS, *kinds.HTTP_SERVER_BOUNDS, *kinds.GEN_AI_DURATION_BOUNDS})),
        (1e-7, 0.1, 0.1001, 0.1002, 0.5, 3600.0 * 10),
    ):
        positions = union_positions(union)
        assert len(positions) == layout.SLOT_HEADER + sketch.BUCKET_COUNT
        latencies = [0.0, sketch.LOWEST, sketch.HIGHEST, sketch.HIGHEST * 2, layout.MAX_SECONDS]
        latencies += [x for b in union for x in (b, math.nextafter(b, 0.0), math.nextafter(b, math.inf))]
        latencies += [rng.random() * 10 ** rng.uniform(-7, 5) for _ in range(20_000)]
        for latency in latencies:
            position = positions[layout.SLOT_HEADER + sketch.bucket_index(latency)]
            if position < 0:
                position = ~position
                while position and latency <= union[position - 1]:
                    position -= 1
            assert position == bisect_left(union, latency), latency
        assert sum(p < 0 for p in positions) <= len(union)  # a step down only where a bound lies inside


def test_close_configured_bounds_get_the_searched_bucket(metrics_dir: str) -> None:
    """Configured bounds closer than a sketch bucket: each latency still lands where a
    search of the bounds puts it."""
    from bisect import bisect_left

    bounds = (0.1, 0.1001, 0.1002, 0.5)
    collector = MetricsCollector(metrics_dir, buckets=bounds)
    latencies = [0.0999, 0.1, 0.10005, 0.1001, 0.10015, 0.1002, 0.10025, 0.3, 0.5, 0.7]
    try:
        for latency in latencies:
            collector.observe_request("/chat", "POST", latency, 200)
        snap = collector.snapshot()
    finally:
        collector.close()
    record = snap.merged.total("request", ("/chat", "POST", "200", "0"))  # the merge keeps its own bounds
    assert record is not None
    expected = [0.0] * (len(bounds) + 1)
    for latency in latencies:
        expected[bisect_left(bounds, latency)] += 1.0
    assert record[kinds.REQ_BUCKETS :] == expected


def test_own_routes_one_rule_for_recording_and_the_port(metrics_dir: str) -> None:
    """``OwnRoutes`` takes the URL prefix and everything under it (prefix "/": the metrics
    blueprint's routes), and the metrics port serves what the same object accepts."""
    from flask_gatewayz_metrics.request_timing import OwnRoutes

    app = Flask("own")
    app.config.update(GATEWAYZ_METRICS_DIR=metrics_dir, GATEWAYZ_METRICS_URL_PREFIX="/metrics")
    GatewayzMetrics(app)
    own = GatewayzMetrics.of(app).own_routes
    assert isinstance(own, OwnRoutes)
    assert [own(p) for p in ("/metrics", "/metrics/", "/metrics/json", "/metrics/a/b")] == [True] * 4
    assert [own(p) for p in ("/metricsx", "/api/metrics", "/", "", "/metric")] == [False] * 5

    root = Flask("own_root")
    root.config.update(GATEWAYZ_METRICS_DIR=metrics_dir + "/root", GATEWAYZ_METRICS_URL_PREFIX="/")
    GatewayzMetrics(root)
    own = GatewayzMetrics.of(root).own_routes
    assert own is not None
    assert own("/") and own("/json") and own("/health")
    assert not own("/api/chat") and not own("/jsonx")

    ported = Flask("ported")
    ported.config.update(GATEWAYZ_METRICS_DIR=metrics_dir + "/port", GATEWAYZ_METRICS_PORT=free_port())
    GatewayzMetrics(ported)
    state = GatewayzMetrics.of(ported)
    try:
        assert state.port is not None and state.port.is_metrics_path is state.own_routes
    finally:
        if state.port is not None:
            state.port.close()


def test_status_line_cache_parses_like_int() -> None:
    """The status-line cache gives ``int(line[:3])``; None (never started) 500, malformed 0."""
    from flask_gatewayz_metrics import request_timing

    assert request_timing._status_code("201 Created") == 201
    assert request_timing._STATUS_CODES["201 Created"] == 201
    assert request_timing._status_code(None) == 500
    assert request_timing._status_code("abc") == 0
    assert "abc" not in request_timing._STATUS_CODES


def test_a_status_is_checked_whether_or_not_its_combination_is_cached(metrics_dir: str) -> None:
    """The request path checks a status's range only for a combination it has not cached
    (a cached one was valid): an out-of-range int is dropped after valid requests of the
    same labels as before them, and a status that merely equals a valid code (a float, a
    bool, a string) is never recorded under the cached one."""
    collector = MetricsCollector(metrics_dir)
    for status in (600, 200, 600, 99, 200.0, True, "200", 200):
        collector.observe_request("/a", "GET", 0.1, status)  # type: ignore[arg-type]
    document = collector.to_dict()
    assert document["storage"]["dropped"] == {"invalid_status": 6}
    assert document["endpoints"]["/a"]["requests"] == 2
    collector.close()


def test_an_int_subclass_status_is_recorded_as_its_value(metrics_dir: str) -> None:
    """``http.HTTPStatus`` (an ``IntEnum``, which Flask takes as a view's status) counts as
    its code everywhere: requests (``record_request``, ``observe_request``, which
    ``track_request`` calls) and provider calls with their error counts; nothing is
    dropped, so provider errors never outnumber provider requests."""
    from http import HTTPStatus

    collector = MetricsCollector(metrics_dir)
    collector.record_request("/a", "GET", 0.1, HTTPStatus.OK)
    collector.observe_request("/a", "GET", 0.1, HTTPStatus.CREATED)
    collector.record_provider_call("openai", "gpt-4o", 0.2, status_code=HTTPStatus.SERVICE_UNAVAILABLE)
    # No status at all (a time-out): an error by ``error``, counted like one with a status.
    collector.record_provider_call("google", "gemini", 30.0, status_code=None, error=True, error_type="timeout")
    document = collector.to_dict()
    assert document["storage"]["dropped"] == {}
    assert document["endpoints"]["/a"]["requests"] == 2
    google = document["providers"]["google"]
    assert google["requests"] == 1 and google["errors"] == 1
    provider = document["providers"]["openai"]
    assert provider["requests"] == 1 and provider["errors"] == 1
    collector.close()


def test_a_window_slot_never_moves_back_to_an_older_interval(metrics_dir: str) -> None:
    """Two threads at a slot boundary: A reads the time (slot N) and is held up; B reads a
    time of slot N + 1 and records. Each request's time is read under the writer's lock,
    so B waits for A instead of A later writing slot N over B's newer slot (with one slot
    per window that emptied it: the window showed 0 requests, not B's 1)."""
    import threading

    start = 1_000_000.0
    names = {"A": start + 0.9, "B": start + 1.1}  # slot N and slot N + 1 (1 s slots)
    b_may_start, b_done = threading.Event(), threading.Event()

    def clock() -> float:
        name = threading.current_thread().name
        value = names.pop(name, start + 1.2)  # each thread's first reading is its own
        if name == "A" and value == start + 0.9:
            b_may_start.set()
            b_done.wait(0.5)  # B runs now unless A holds the writer's lock
        return value

    collector = MetricsCollector(metrics_dir, window_seconds=1.0, window_slots=1, clock=clock)
    names["MainThread"] = start + 0.1
    collector.record_request("/a", "GET", 0.01, 200)  # the records exist, slot N holds 1

    def a() -> None:
        collector.record_request("/a", "GET", 0.01, 200)

    def b() -> None:
        b_may_start.wait(5)
        collector.record_request("/a", "GET", 0.01, 200)
        b_done.set()

    threads = [threading.Thread(target=a, name="A"), threading.Thread(target=b, name="B")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert collector.to_dict()["endpoints"]["/a"]["window"]["requests"] == 1  # B's, in slot N + 1
    # The wall clock set back by less than a window: the request adds to the newer slot.
    names["MainThread"] = start + 0.5
    collector.record_request("/a", "GET", 0.01, 200)
    assert collector.to_dict()["endpoints"]["/a"]["window"]["requests"] == 2
    collector.close()


def test_odd_responses_are_judged_by_what_the_server_sends(metrics_dir: str) -> None:
    """A status code of four digits is not its first three ("2000 UNKNOWN" is dropped as
    invalid, not counted as a 200); a body whose ``len()`` raises is served as without
    the extension (and timed); ``label_request`` from a context copied during a request
    returns False once that request is recorded (its labels could no longer count)."""
    import contextvars

    app = Flask(__name__)
    app.config["GATEWAYZ_METRICS_DIR"] = metrics_dir
    GatewayzMetrics(app)
    saved: dict[str, contextvars.Context] = {}

    class Rows:
        def __iter__(self) -> Iterator[bytes]:
            return iter([b"row1\n", b"row2\n"])

        def __len__(self) -> int:
            return -1  # noqa: PLE0303  # deliberately: len() raises ValueError

    @app.get("/s/<int:code>")
    def status(code: int) -> Response:
        response = Response("x")
        response.status_code = code
        return response

    @app.get("/rows")
    def rows() -> Response:
        saved["context"] = contextvars.copy_context()
        return Response(Rows())  # type: ignore[arg-type]

    client = app.test_client()
    for code in (1000, 2000, 5000, 200):
        client.get(f"/s/{code}")
    assert client.get("/rows").get_data() == b"row1\nrow2\n"
    assert saved["context"].run(label_request, "openai", "gpt-4o") is False
    document = app.extensions["gatewayz_metrics"].collector.to_dict()
    assert document["storage"]["dropped"] == {"invalid_status": 3}
    assert document["endpoints"]["/s/<int:code>"]["requests"] == 1
    assert document["endpoints"]["/rows"]["requests"] == 1
    assert document["providers"] == {}


def test_a_str_subclass_label_is_recorded_as_its_plain_text(metrics_dir: str) -> None:
    """A label that is a ``str`` subclass, even one whose ``__hash__`` is None (a
    mutable str-like wrapper), counts as its plain text; the request was lost before
    (an internal error), where an unusable label drops only that label."""

    class Unhashable(str):
        __hash__ = None  # type: ignore[assignment]

    collector = MetricsCollector(metrics_dir)
    collector.record_request("/chat", "POST", 0.1, 200, provider=Unhashable("openai"), model="gpt")
    collector.record_request("/chat", "POST", 0.1, 200, provider=["openai"], model="gpt")  # type: ignore[arg-type]
    document = collector.to_dict()
    assert document["endpoints"]["/chat"]["requests"] == 2
    assert document["providers"]["openai"]["requests"] == 1
    assert document["storage"]["dropped"] == {"invalid_label": 1}
    collector.close()


def test_an_invalid_status_is_dropped_once_with_a_tenant(metrics_dir: str) -> None:
    """A response with status 600 from a request with a tenant header counts one
    ``invalid_status`` drop, as without a tenant (the tenant's own record was dropped
    and counted a second time)."""
    app = Flask(__name__)
    app.config["GATEWAYZ_METRICS_DIR"] = metrics_dir
    app.config["GATEWAYZ_METRICS_TENANT_HEADERS"] = {"team": "X-Team"}
    GatewayzMetrics(app)
    app.add_url_rule("/odd", "odd", lambda: Response("x", status=600))
    client = app.test_client()
    client.get("/odd", headers={"X-Team": "search"})
    client.get("/odd")
    assert app.extensions["gatewayz_metrics"].collector.to_dict()["storage"]["dropped"] == {"invalid_status": 2}


def test_a_mounted_apps_requests_are_not_counted_under_the_parents_routes(metrics_dir: str) -> None:
    """``DispatcherMiddleware`` installed on the parent's ``wsgi_app`` before the extension:
    a request it hands to the mounted app has its path rewritten (``/sub/x`` -> ``/x``),
    and was counted under the parent's own ``/x``. It is ``unmatched`` for the parent."""
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    parent, child = Flask("parent"), Flask("child")
    parent.add_url_rule("/x", "x", lambda: "parent x")
    child.add_url_rule("/x", "x", lambda: "child x")
    parent.config["GATEWAYZ_METRICS_DIR"] = metrics_dir
    parent.wsgi_app = DispatcherMiddleware(parent.wsgi_app, {"/sub": child})  # type: ignore[method-assign]
    GatewayzMetrics(parent)
    client = parent.test_client()
    assert client.get("/x").get_data() == b"parent x"
    assert client.get("/sub/x").get_data() == b"child x"
    endpoints = parent.extensions["gatewayz_metrics"].collector.to_dict()["endpoints"]
    assert endpoints["/x"]["requests"] == 1
    assert endpoints["unmatched"]["requests"] == 1
