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

# The Prometheus server and promtool (Debian package) for the tests that use them.
if ! command -v promtool >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
fi

python3 -m ruff check .
python3 -m mypy flask_gatewayz_metrics
python3 -m pytest "$@"
