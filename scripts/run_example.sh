#!/usr/bin/env bash
# Installs the package with the example's dependencies (httpx, openai, gunicorn), starts
# the provider simulator (openai, anthropic, google and a billing API on 127.0.0.1:8101-8104),
# then serves the example gateway with 4 workers on 127.0.0.1:8000 (metrics at /metrics,
# the OpenAI API at /v1). Extra arguments go to gunicorn. The simulator is stopped when
# gunicorn exits. GATEWAY_SIMULATED_LATENCY_SCALE, GATEWAY_UPSTREAM_ERROR_RATE,
# GATEWAY_BILLING_ERROR_RATE and GATEWAY_SEED shape the simulated providers.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet --disable-pip-version-check -e '.[example]'

ports="openai=8101,anthropic=8102,google=8103,stripe=8104"
python3 -m example_app.simulator --ports "$ports" &
simulator=$!
trap 'kill "$simulator" 2>/dev/null || true; wait "$simulator" 2>/dev/null || true' EXIT
for _ in $(seq 100); do  # up to 10 s for the simulator to listen; fail now if it could not
    kill -0 "$simulator" 2>/dev/null || { echo "the provider simulator failed to start" >&2; exit 1; }
    (exec 3<>/dev/tcp/127.0.0.1/8104) 2>/dev/null && break
    sleep 0.1
done
# A TERM or INT to this script stops gunicorn gracefully; when gunicorn exits, so does the simulator.
gunicorn=
trap '[ -n "$gunicorn" ] && kill -TERM "$gunicorn" 2>/dev/null || true' TERM INT

export GATEWAY_OPENAI_URL=http://127.0.0.1:8101 GATEWAY_ANTHROPIC_URL=http://127.0.0.1:8102
export GATEWAY_GOOGLE_URL=http://127.0.0.1:8103 GATEWAY_STRIPE_URL=http://127.0.0.1:8104
python3 -m gunicorn -c conf/gunicorn.conf.py "$@" example_app.app:app &
gunicorn=$!
status=0
wait "$gunicorn" || status=$?
# A TERM/INT to this script interrupts the first wait: wait for gunicorn's graceful exit.
if kill -0 "$gunicorn" 2>/dev/null; then
    wait "$gunicorn" || status=$?
fi
exit "$status"
