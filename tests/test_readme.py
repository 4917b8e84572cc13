"""The README runs: every Python block and every shell command in it is executed here.

Python blocks run as they are, each in a fresh interpreter with no GATEWAYZ_* variables
(what a new user pasting them gets). Shell commands run literally, in order, against the
example gateway on 127.0.0.1:8000 where they need it (the README's own address): each
command is recognised by a handler below, and a command no handler knows fails the test,
so a new README command cannot go unexecuted. The only commands not run are those that
run this test suite itself (listed in ``RUN_ELSEWHERE``, with the reason).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from servers import REPO_ROOT, http

pytestmark = pytest.mark.slow

README = REPO_ROOT / "README.md"
EXAMPLE_URL = "http://127.0.0.1:8000"
RUN_ELSEWHERE = {
    "bash scripts/test.sh": "it is the command that runs this test (CI runs exactly it)",
    "python -m pytest tests/test_prometheus.py -q": "that test module runs in the same suite as this test",
    # The wheel commands install into an environment: tests/test_wheel.py runs them in a fresh venv.
    "python3 -m pip wheel --no-deps -w dist .": "tests/test_wheel.py builds the wheel (in a copy of the repository)",
    'python3 -m pip install "$(ls dist/flask_gatewayz_metrics-*.whl)[example]"': "tests/test_wheel.py, fresh venv",
    "python3 -m example_app": "tests/test_wheel.py runs it from the wheel alone, outside the repository",
}


@dataclass(frozen=True)
class Block:
    language: str
    line: int
    text: str


def readme_blocks(language: str) -> list[Block]:
    """Fenced code blocks of ``language`` in the README, with their first line number."""
    blocks, current, start, lang = [], [], 0, None
    for number, line in enumerate(README.read_text(encoding="utf-8").splitlines(), 1):
        fence = re.match(r"^\s*```(\w*)\s*$", line)
        if fence and lang is None:
            lang, start, current = fence.group(1), number + 1, []
        elif fence:
            if lang == language:
                blocks.append(Block(lang, start, "\n".join(current) + "\n"))
            lang = None
        elif lang is not None:
            current.append(line)
    return blocks


def shell_commands() -> list[tuple[int, str]]:
    """Every command line of the README's bash blocks (comments stripped), in order."""
    commands = []
    for block in readme_blocks("bash"):
        for offset, line in enumerate(block.text.splitlines()):
            command = re.sub(r"\s+#\s.*$", "", line).strip()
            if command and not command.startswith("#"):
                commands.append((block.line + offset, command))
    return commands


def clean_env() -> dict[str, str]:
    """The environment without our variables; this Python's scripts (gunicorn, uwsgi,
    waitress-serve, flask) first on PATH, as in an activated virtual environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAYZ_", "GATEWAY_", "PROMETHEUS_"))}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


@pytest.mark.parametrize("block", readme_blocks("python"), ids=lambda b: f"line{b.line}")
def test_python_block_runs(block: Block, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """A README Python block runs as written in a fresh interpreter (with the example running if it calls it)."""
    if re.search(r"\b(127\.0\.0\.1|localhost):8000\b", block.text):
        request.getfixturevalue("example").ensure()
    result = subprocess.run(
        [sys.executable, "-c", block.text], check=False, cwd=tmp_path, env=clean_env(),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, f"README line {block.line}:\n{result.stderr}"


class Example:
    """The example gateway on 127.0.0.1:8000, (re)started by a README command when needed."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, command: str) -> None:
        self.stop()
        deadline = time.monotonic() + 20  # the last server's processes may still be leaving
        while not _port_free(8000) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _port_free(8000), "port 8000 is in use: the README's address must be free for this test"
        self.starts += 1
        log = self.tmp_path / f"server-{self.starts}.log"
        env = clean_env() | {"GATEWAY_SIMULATED_LATENCY_SCALE": "0.02"}
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                ["bash", "-c", command], cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"{command!r} exited:\n{log.read_text()}"
            try:
                if http("GET", EXAMPLE_URL + "/healthz", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        pytest.fail(f"{command!r} did not serve on port 8000 in time")

    def ensure(self) -> None:
        if self.process is None or self.process.poll() is not None:
            self.start("bash scripts/run_example.sh")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.process = None


@pytest.fixture
def example(tmp_path: Path) -> Iterator[Example]:
    server = Example(tmp_path)
    yield server
    server.stop()


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _run(command: str, timeout: float = 120) -> str:
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command], check=False, cwd=REPO_ROOT, env=clean_env(),
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert result.returncode == 0, f"{command!r} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _serve(example: Example, command: str) -> None:
    """A command that starts a server: it must serve the example and merged metrics."""
    example.start(command)
    status, body = http("GET", EXAMPLE_URL + "/metrics")
    assert status == 200 and b"http_requests_total" in body


def _against_example(example: Example, command: str) -> None:
    example.ensure()
    output = _run(command)
    assert output.strip(), f"{command!r} printed nothing"
    if "traffic" in command:
        assert re.search(r"^sent: \d+", output, re.M), output


def _plain(example: Example, command: str) -> None:
    if "localhost:8000" in command:
        example.ensure()
    _run(command)


HANDLERS: list[tuple[str, Callable[[Example, str], None]]] = [
    (r"^bash scripts/run_example\.sh\b", _serve),
    (r"^gunicorn\b", _serve),
    (r"^uwsgi\b", _serve),
    (r"^waitress-serve\b", _serve),
    (r"^flask --app \S+ run\b", _serve),
    (r"^python3? -c .*\.run\(", _serve),
    (r"\bpromtool\b", _plain),  # also `curl ... | promtool check metrics`: silent when clean
    (r"^curl\b", _against_example),
    (r"^python3? -m example_app\.traffic\b", _against_example),
]


def test_every_shell_command_runs(example: Example) -> None:
    """Each README shell command runs as written (servers it starts serve the example)."""
    ran = 0
    for line, command in shell_commands():
        if command in RUN_ELSEWHERE:
            continue
        handler = next((h for pattern, h in HANDLERS if re.search(pattern, command)), None)
        assert handler is not None, f"README line {line}: no handler runs {command!r}; add one to this test"
        handler(example, command)
        ran += 1
    assert ran >= 10
