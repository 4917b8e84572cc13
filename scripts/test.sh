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

# The suite again under the other supported Pythons (python3 above is 3.11), each in its own
# virtual environment kept in a cache directory (uWSGI compiles once per environment). They
# come from pyenv (CI's machines have them there); a missing one fails the run, never skips.
# GATEWAYZ_TEST_PYTHONS (default "3.10 3.13") lists them; set it empty to run 3.11 only.
cache="${GATEWAYZ_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/flask_gatewayz_metrics-test}"
find_python() {  # prints the path of an interpreter of version $1 (e.g. 3.10), or nothing
    local candidate
    for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$1".*/bin/python"$1" "$(command -v "python$1" || true)"; do
        if [ -x "$candidate" ] && "$candidate" -c 'import sys, venv; sys.exit(0)' >/dev/null 2>&1; then
            echo "$candidate"
            return
        fi
    done
}
for version in ${GATEWAYZ_TEST_PYTHONS-3.10 3.13}; do
    interpreter="$(find_python "$version")"
    if [ -z "$interpreter" ]; then
        echo "scripts/test.sh: Python $version not found (looked in ${PYENV_ROOT:-$HOME/.pyenv}/versions/$version.* and on PATH);" \
            "install it with pyenv, or set GATEWAYZ_TEST_PYTHONS to the versions to test" >&2
        exit 1
    fi
    venv="$cache/venv-$version"
    if ! "$venv/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != tuple(map(int, sys.argv[1].split("."))))' \
            "$version" >/dev/null 2>&1; then
        rm -rf "$venv"
        "$interpreter" -m venv "$venv"
    fi
    echo "=== Python $version: $("$venv/bin/python" --version) in $venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[test]'
    "$venv/bin/python" -m pytest "$@"
done
