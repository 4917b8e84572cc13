#!/usr/bin/env bash
# Installs the package and gunicorn, then serves the example gateway with 4 workers
# on 127.0.0.1:8000 (metrics at /metrics). Extra arguments go to gunicorn.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet --disable-pip-version-check -e . gunicorn
exec python3 -m gunicorn -c conf/gunicorn.conf.py "$@" example_app.app:app
