"""``python3 -m example_app``: the example gateway as ``scripts/run_example.sh`` serves it, from
an installed package alone (``pip install 'flask_gatewayz_metrics[example]'`` or the built
wheel with that extra), no repository needed.

Starts the provider simulator (openai, anthropic, google and a billing API on
127.0.0.1:8101-8104), then gunicorn with the package's own config
(``-c python:flask_gatewayz_metrics.gunicorn_conf``), 4 workers on 127.0.0.1:8000; extra
arguments go to gunicorn (e.g. ``--workers 2``). SIGTERM or SIGINT stop
gunicorn gracefully; the simulator is stopped when gunicorn exits.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from types import FrameType

SIMULATED = {"openai": 8101, "anthropic": 8102, "google": 8103, "stripe": 8104}


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def main(arguments: list[str]) -> int:
    """Run the simulator and the gateway until gunicorn exits; gunicorn's exit status."""
    ports = ",".join(f"{name}={port}" for name, port in SIMULATED.items())
    simulator = subprocess.Popen([sys.executable, "-m", "example_app.simulator", "--ports", ports])
    try:
        deadline = time.monotonic() + 10
        while not _listening(SIMULATED["stripe"]):  # the last one it opens
            if simulator.poll() is not None or time.monotonic() > deadline:
                print("the provider simulator failed to start", file=sys.stderr)
                return 1
            time.sleep(0.1)
        env = dict(os.environ)
        for name, port in SIMULATED.items():
            env.setdefault(f"GATEWAY_{name.upper()}_URL", f"http://127.0.0.1:{port}")
        gunicorn = subprocess.Popen([
            sys.executable, "-m", "gunicorn", "-c", "python:flask_gatewayz_metrics.gunicorn_conf",
            "--workers", "4", "--bind", "127.0.0.1:8000", *arguments, "example_app.app:app",
        ], env=env)  # fmt: skip

        def forward(signum: int, _frame: FrameType | None) -> None:
            gunicorn.send_signal(signum)  # gunicorn's graceful stop; we wait for it below

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        return gunicorn.wait()
    finally:
        simulator.terminate()
        try:
            simulator.wait(timeout=10)
        except subprocess.TimeoutExpired:
            simulator.kill()
            simulator.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
