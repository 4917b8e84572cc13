"""The built wheel holds everything: the README's wheel commands work in a fresh venv, away from the repository.

The README's "From the wheel alone" block is executed: its build command in a copy of
the repository (with ``--no-build-isolation`` added, so no index is needed: the
``test`` extra brings setuptools), the install into a fresh virtual environment outside
the repository, and its run command from an empty temporary directory. Offline: the
wheel is installed with ``--no-deps`` and the third-party dependencies it declares
(``flask`` ..., the ``example`` extra's ``gunicorn``, ``httpx``, ``openai``) are read
from this test environment's site-packages, appended to the fresh venv's path after its
own (``pip check`` there proves the declared requirements are met); our own modules,
``flask_gatewayz_metrics`` and ``example_app``, come from the wheel alone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest
from servers import REPO_ROOT, http

pytestmark = pytest.mark.slow
URL = "http://127.0.0.1:8000"
IGNORED = shutil.ignore_patterns(
    ".git", "build", "dist", "*.egg-info", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".venv*"
)


def readme_wheel_commands() -> list[str]:
    """The commands of the README's bash block that follows the "From the wheel alone" heading."""
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### From the wheel alone", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [re.sub(r"\s+#\s.*$", "", line).strip() for line in block.splitlines() if line.strip()]


def test_wheel_alone_runs_the_example(tmp_path: Path) -> None:
    """Built wheel -> fresh venv outside the repo -> `python3 -m example_app` from a temp dir serves the gateway."""
    build, install, run = readme_wheel_commands()
    assert build == "python3 -m pip wheel --no-deps -w dist ."
    assert install.startswith("python3 -m pip install ") and install.endswith('[example]"'), install
    assert run == "python3 -m example_app"

    # Build, in a copy of the repository (a build leaves build/ and *.egg-info behind).
    source = tmp_path / "source"
    shutil.copytree(REPO_ROOT, source, ignore=IGNORED)
    subprocess.run(
        [sys.executable, *build.split()[1:], "--no-build-isolation", "--no-index"], cwd=source, check=True,
        capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = (source / "dist").glob("flask_gatewayz_metrics-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("flask_gatewayz_metrics/py.typed", "flask_gatewayz_metrics/static/dashboard.js",
                   "flask_gatewayz_metrics/static/uPlot.iife.min.js", "flask_gatewayz_metrics/gunicorn_conf.py",
                   "example_app/__main__.py", "example_app/simulator.py"):  # fmt: skip
        assert needed in names, needed
    assert not any(name.startswith(("tests/", "benchmarks/", "conf/")) for name in names)

    # Install into a fresh venv outside the repository (dependencies: see the module docstring).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python3"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", f"{wheel}[example]"],
        check=True, timeout=120,
    )  # fmt: skip
    own = Path(subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                       text=True).strip())  # fmt: skip
    (own / "zz_test_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    # The venv's own (older, bundled) setuptools would shadow this environment's, which
    # its test tools require (grpcio-tools): let the environment's one be seen.
    subprocess.run([str(python), "-m", "pip", "uninstall", "--quiet", "--yes", "setuptools"], check=True, timeout=60)
    checked = subprocess.run([str(python), "-m", "pip", "check"], check=False, capture_output=True, text=True,
                             timeout=60)  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr

    # Run the README's command from an empty directory, the repository nowhere on the path.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAYZ_", "GATEWAY_", "PYTHON"))}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", GATEWAY_SIMULATED_LATENCY_SCALE="0.02")
    where = subprocess.check_output(
        ["python3", "-c", "import flask_gatewayz_metrics as f, example_app as e; print(f.__file__); print(e.__file__)"],
        cwd=elsewhere, env=env, text=True,
    )  # fmt: skip
    assert all(line.startswith(str(own)) for line in where.split()), where
    log = tmp_path / "example.log"
    with log.open("wb") as out:
        process = subprocess.Popen(run.split(), cwd=elsewhere, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"not serving on {URL}:\n{log.read_text()}"
            try:
                if http("GET", URL + "/healthz", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        chat = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]}
        status, body = http("POST", URL + "/v1/chat/completions", chat, timeout=30)
        assert status == 200, body
        assert json.loads(body)["usage"]["prompt_tokens"] > 0
        status, body = http("GET", URL + "/metrics")
        assert status == 200
        assert b'http_requests_total{endpoint="/v1/chat/completions",method="POST"} 1.0' in body
        assert b'llm_tokens_total{direction="input",model="gpt-4o",provider="openai"}' in body
        assert http("GET", URL + "/metrics/dashboard")[0] == 200
        assert http("GET", URL + "/metrics/dashboard/dashboard.js")[0] == 200  # static files are in the wheel
    finally:
        process.send_signal(signal.SIGTERM)  # as a service manager stops it: gunicorn, then the simulator
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    assert process.returncode == 0, log.read_text()
