# Sourced by quickstart.sh and test.sh: pip_quiet VENV ARGS... runs `pip install ARGS` in VENV quietly.
# pip's own exit status decides (the callers set pipefail); only pip's "WARNING: Location" lines,
# which this machine's pip configuration prints for every install, are dropped.
pip_quiet() {
    local venv="$1"
    shift
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }
}
