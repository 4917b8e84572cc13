#!/usr/bin/env bash
# The soak test at full length: the example gateway under gunicorn (4 workers) with
# concurrent clients on 127.0.0.1 for GATEWAYZ_SOAK_SECONDS (default here: 180 s).
# CI runs the same test for 20 s as part of scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
GATEWAYZ_SOAK_SECONDS="${GATEWAYZ_SOAK_SECONDS:-180}" exec python3 -m pytest tests/test_soak.py -q -s "$@"
