#!/usr/bin/env bash
# Sets up the test environment on first use (.venv-test), then runs the whole test suite.
#
# The references the tests compare against (transformers 4.57.1, qwen-vl-utils) need torchvision,
# and torchvision from PyPI only imports beside torch 2.14.1 on this machine, so this environment
# pins torch==2.14.1 torchvision==0.29.1 (about 5.5 GB, a few minutes the first time).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"` for the quick subset.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${QWEN2VL_TEST_VENV:-.venv-test}"
source scripts/pip_quiet.sh
if ! "$venv/bin/python" -c "import qwen2vl, transformers, qwen_vl_utils, torchvision" >/dev/null 2>&1; then
    echo "setting up $venv (torch 2.14.1 + torchvision 0.29.1 + the reference packages) ..."
    python3 -m venv "$venv"
    pip_quiet "$venv" torch==2.14.1 torchvision==0.29.1
    pip_quiet "$venv" -e ".[test]"
    "$venv/bin/python" -c "import qwen2vl, transformers, qwen_vl_utils, torchvision"
fi
exec "$venv/bin/python" -m pytest "$@"
