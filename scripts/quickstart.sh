#!/usr/bin/env bash
# Sets up the runtime environment on first use (.venv, CPU build of torch 2.13.0), then runs the
# main job: examples/quickstart.py, which asks the bundled demo model (models/qwen2vl-demo) the
# bundled example questions, offline. Extra arguments go to that script (--model DIR or a Hub id
# for a real model; --image PATH --prompt TEXT for your own question).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${QWEN2VL_VENV:-.venv}"
source scripts/pip_quiet.sh
if ! "$venv/bin/python" -c "import qwen2vl" >/dev/null 2>&1; then
    echo "setting up $venv (CPU torch 2.13.0 + qwen2vl) ..."
    python3 -m venv "$venv"
    pip_quiet "$venv" torch==2.13.0
    pip_quiet "$venv" -e .
    "$venv/bin/python" -c "import qwen2vl"
fi
exec "$venv/bin/python" examples/quickstart.py "$@"
