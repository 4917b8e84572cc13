#!/usr/bin/env bash
# Run every benchmark in sequence (each takes up to ~3 minutes). Pass --quick for a
# shorter, noisier run. Output is markdown tables; redirect to a file to keep it.
# bench_wrk.py (gunicorn + wrk, ~4 minutes), bench_flask_instructions.py and
# bench_cache_misses.py (valgrind, ~10 minutes each) run separately: see benchmarks/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"

echo "# Machine"
echo "nproc: $(nproc)"
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "Python: $("$PY" -c 'import sys; print(sys.version.split()[0])')"
"$PY" - <<'PYEOF'
from importlib.metadata import version
for name in ("flask", "werkzeug", "prometheus_client", "prometheus_flask_exporter", "flask_gatewayz_metrics"):
    print(f"{name}: {version(name)}")
PYEOF
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"

for bench in bench_record bench_scrape bench_steady_scrape bench_generations bench_flask_overhead; do
    echo
    echo "# ${bench}"
    "$PY" "benchmarks/${bench}.py" "$@"
done
