"""Per-request overhead of the Flask integrations, in-process (no network, no server).

Usage: python benchmarks/bench_flask_overhead.py [--quick]

Each variant is a Flask app with the same view, ``POST /api/chat/<int:x>`` returning a
small JSON body. A request is a call of the WSGI app with a copy of an environ prebuilt
by ``werkzeug.test.EnvironBuilder`` (fresh ``wsgi.input`` per call); the body is
consumed and the iterable closed, as a WSGI server would.

Variants (all in this process unless noted):

* bare Flask
* prometheus_flask_exporter ``PrometheusMetrics(app, group_by="url_rule")``, single-process
* prometheus_flask_exporter in multiprocess mode: a subprocess with
  ``PROMETHEUS_MULTIPROC_DIR`` set before prometheus_client is imported, which also
  runs its own bare app so its overhead is measured against a bare app of the same process
* ``GatewayzMetrics(app)`` with ``GATEWAYZ_METRICS_DIR`` = a temporary directory
* the same, with the view calling ``label_request(provider="openai", model="gpt-4")``
* bare Flask with three no-op hooks (before/after/teardown_request): the part of any
  hook-based extension's overhead that is Flask's own dispatch

Repeats are interleaved (every variant once per round, order alternating) and the
overhead of a variant is the median over rounds of (variant - bare of the same round).
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import Peer, median, serve_peer, spread, table

PATH = "/api/chat/42"
BODY = b'{"prompt": "hello", "max_tokens": 16}'


def make_app(kind: str, metrics_dir: str | None = None):  # type: ignore[no-untyped-def]
    from flask import Flask

    app = Flask(f"bench_{kind}")
    labelled = kind == "gatewayz_labelled"

    if labelled:
        from flask_gatewayz_metrics import label_request

        @app.post("/api/chat/<int:x>")
        def chat(x: int):  # type: ignore[no-untyped-def]
            label_request(provider="openai", model="gpt-4")
            return {"id": x, "ok": True}
    else:

        @app.post("/api/chat/<int:x>")
        def chat(x: int):  # type: ignore[no-untyped-def]
            return {"id": x, "ok": True}

    if kind == "pfe":
        from prometheus_flask_exporter import PrometheusMetrics

        app.extensions["bench_pfe"] = PrometheusMetrics(app, group_by="url_rule")
    elif kind in ("gatewayz", "gatewayz_labelled"):
        from flask_gatewayz_metrics import GatewayzMetrics

        app.config["GATEWAYZ_METRICS_DIR"] = metrics_dir
        GatewayzMetrics(app)
    elif kind == "noop_hooks":  # Flask's own cost of dispatching the three hooks we use
        app.before_request(lambda: None)
        app.after_request(lambda response: response)
        app.teardown_request(lambda exc: None)
    elif kind != "bare":
        raise ValueError(kind)
    return app


def make_caller(app):  # type: ignore[no-untyped-def]
    from werkzeug.test import EnvironBuilder

    builder = EnvironBuilder(path=PATH, method="POST", data=BODY, content_type="application/json")
    base = builder.get_environ()
    builder.close()
    statuses: list[str] = []

    def start_response(status, headers, exc_info=None):  # type: ignore[no-untyped-def]
        statuses.append(status)

    def run(n: int) -> float:
        statuses.clear()
        t0 = time.perf_counter()
        for _ in range(n):
            environ = base.copy()
            environ["wsgi.input"] = io.BytesIO(BODY)
            result = app(environ, start_response)
            try:
                b"".join(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        seconds = time.perf_counter() - t0
        if len(statuses) != n or statuses[0] != "200 OK":
            raise RuntimeError(f"unexpected responses: {statuses[:3]}")
        return seconds

    return run


# --------------------------------------------------------------------------- peer
def run_peer() -> None:
    from prometheus_client import values

    runners = {"bare": make_caller(make_app("bare")), "pfe_mp": make_caller(make_app("pfe"))}

    def timed(kind: str, n: int) -> dict[str, object]:
        return {"seconds": runners[kind](n)}

    serve_peer({"timed": timed}, {"multiprocess": getattr(values.ValueClass, "_multiprocess", False)})


# --------------------------------------------------------------------------- main
def main() -> None:
    quick = "--quick" in sys.argv
    n = 1000 if quick else 2000
    rounds = 9 if quick else 25
    tmp = tempfile.mkdtemp(prefix="bench-flask-")
    prom_dir = os.path.join(tmp, "prom")
    os.makedirs(prom_dir)
    peer = Peer(__file__, {"PROMETHEUS_MULTIPROC_DIR": prom_dir})
    try:
        assert peer.info["multiprocess"] is True, peer.info
        local = {
            "bare": make_caller(make_app("bare")),
            "pfe": make_caller(make_app("pfe")),
            "noop_hooks": make_caller(make_app("noop_hooks")),
            "gatewayz": make_caller(make_app("gatewayz", os.path.join(tmp, "g1"))),
            "gatewayz_labelled": make_caller(make_app("gatewayz_labelled", os.path.join(tmp, "g2"))),
        }
        # (name, key, peer kind or None for this process)
        cases = [
            ("bare Flask", "bare", None),
            ("Flask + prometheus_flask_exporter (single-process)", "pfe", None),
            ("Flask + 3 no-op hooks (before/after/teardown_request)", "noop_hooks", None),
            ("Flask + GatewayzMetrics", "gatewayz", None),
            ("Flask + GatewayzMetrics + label_request(provider, model)", "gatewayz_labelled", None),
            ("bare Flask (in the multiprocess subprocess)", "bare_mp", "bare"),
            ("Flask + prometheus_flask_exporter (multiprocess, subprocess)", "pfe_mp", "pfe_mp"),
        ]
        for _, key, peer_kind in cases:  # warm-up
            if peer_kind is None:
                local[key](300)
            else:
                peer.ask(case="timed", kind=peer_kind, n=300)
        us: dict[str, list[float]] = {key: [] for _, key, _ in cases}
        for r in range(rounds):
            for _, key, peer_kind in cases if r % 2 == 0 else cases[::-1]:
                if peer_kind is None:
                    seconds = local[key](n)
                else:
                    seconds = float(peer.ask(case="timed", kind=peer_kind, n=n)["seconds"])  # type: ignore[arg-type]
                us[key].append(seconds / n * 1e6)
        # sanity: our apps recorded every request
        from flask_gatewayz_metrics import MetricsCollector

        counts = {}
        for kind, sub in (("gatewayz", "g1"), ("gatewayz_labelled", "g2")):
            reader = MetricsCollector(os.path.join(tmp, sub))
            snap = reader.snapshot()
            counts[kind] = (snap.total_requests, sum(t.count for t in snap.requests.by_provider.values()))
            reader.close()
    finally:
        peer.close()
        shutil.rmtree(tmp, ignore_errors=True)

    def overhead(kind: str, bare: str) -> list[float]:
        return [v - b for v, b in zip(us[kind], us[bare], strict=True)]

    bare_of = {
        "pfe": "bare", "noop_hooks": "bare", "gatewayz": "bare", "gatewayz_labelled": "bare", "pfe_mp": "bare_mp",
    }
    ovh = {kind: overhead(kind, bare) for kind, bare in bare_of.items()}
    med_ovh = {k: median(v) for k, v in ovh.items()}

    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs\n")
    print(f"## Flask per-request cost (median of {rounds} interleaved rounds x {n:,} requests, µs/request)\n")
    rows = []
    for name, key, _ in cases:
        o = f"{med_ovh[key]:.1f}" if key in med_ovh else "-"
        o_min = f"{min(us[key]) - min(us[bare_of[key]]):.1f}" if key in bare_of else "-"
        rows.append((name, f"{median(us[key]):.1f}", spread(us[key]), o, o_min))
    print(table(["variant", "median µs/req", "min..max", "overhead µs (paired median)", "overhead (min - min)"], rows))
    ours = med_ovh["gatewayz"]
    ours_l = med_ovh["gatewayz_labelled"]
    print("\nRatios (same run):")
    print(table(["ratio", "value"], [
        ("ours / prometheus_flask_exporter single-process", f"{ours / med_ovh['pfe']:.2f}"),
        ("ours / prometheus_flask_exporter multiprocess", f"{ours / med_ovh['pfe_mp']:.2f}"),
        ("ours+label_request / pfe single-process", f"{ours_l / med_ovh['pfe']:.2f}"),
        ("ours+label_request / pfe multiprocess", f"{ours_l / med_ovh['pfe_mp']:.2f}"),
    ]))
    for label, peer_kind in (("single-process", "pfe"), ("multiprocess", "pfe_mp")):
        worst = max(ours, ours_l) / med_ovh[peer_kind]
        verdict = "MET" if worst <= 1 / 3 else "NOT met"
        print(f"Target overhead <= 1/3 of prometheus_flask_exporter ({label}): {verdict} (worst ratio {worst:.2f})")
    print(f"\nSanity: recorded (requests, provider-labelled) = {counts}")


if __name__ == "__main__":
    if "--peer" in sys.argv:
        run_peer()
    else:
        main()
