#!/usr/bin/env bash
# Installs everything the test suite needs, then runs lint, type checks and all tests.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

# uWSGI (in the test extra) is compiled by pip: it needs a C compiler and Python's headers.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && { ! command -v gcc >/dev/null 2>&1 ||
        [ ! -f "$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ]; }; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc python3-dev >/dev/null
fi

python3 -m pip install --quiet --disable-pip-version-check -e '.[test,dev]'

# Debian packages the tests use: the Prometheus server and promtool, curl and jq (the
# README's shell commands are executed by tests/test_readme.py), and Chromium with its
# driver (the dashboard is tested in a real headless browser).
missing=()
for tool in promtool:prometheus curl:curl jq:jq chromium:chromium chromedriver:chromium-driver; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool##*:}")
done
if [ "${#missing[@]}" -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python3 -m ruff check .
python3 -m mypy flask_gatewayz_metrics
python3 -m pytest "$@"
