#!/usr/bin/env bash
# Set up venv/ and run the checks: ruff, then the test suite. This is the README's test command
# and what CI runs (.ci/run).
#
# The first run creates venv/, installs torch (TORCH_COMMAND, as in A1111's launcher, so a CUDA or
# ROCm build can be chosen) and this project with its test extras. Later runs skip installing while
# pyproject.toml, TORCH_COMMAND and the Python version are unchanged (a hash of them is kept in
# venv/.setup-stamp); delete that file to force a reinstall.
#
# Environment: PYTHON (interpreter that creates the venv, default python3), TORCH_COMMAND (default
# "pip install torch==2.14.1 torchvision==0.29.1"). Extra arguments are passed to pytest.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

EXTRAS=test
source ./scripts/ensure_venv.sh
PY="$VENV_PY"

# The browser tests drive Debian's Chromium through Playwright (Playwright's own browser download
# is not used: it needs the network). Installed here when missing and we may use apt.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "Installing Chromium for the browser tests" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

status=0
echo "== ruff check ." >&2
"$PY" -m ruff check . || status=$?

echo "== pytest" >&2
set +e
"$PY" -m pytest -q "$@"
tests=$?
set -e
if [ "$tests" -eq 5 ]; then
    echo "pytest collected no tests: treated as a failure" >&2
    tests=1
fi

if [ "$tests" -ne 0 ]; then
    exit "$tests"
fi
exit "$status"
