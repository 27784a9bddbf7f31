#!/usr/bin/env bash
# Set up (first run) and start the web UI. User settings live in webui-user.sh:
#   COMMANDLINE_ARGS   extra flags for webui.py (e.g. "--listen --api")
#   TORCH_COMMAND      how to install PyTorch (another CUDA build, a CPU-only build, ...)
#   PYTHON             the Python to create the virtual environment with
#   VENV_DIR           where the virtual environment lives (default: venv beside this script)
#   SKIP_INSTALL=1     use VENV_DIR as it is, install nothing
set -euo pipefail
cd "$(dirname "$0")"
[ -f webui-user.sh ] && source ./webui-user.sh
source ./scripts/ensure_venv.sh
exec "$VENV_PY" webui.py ${COMMANDLINE_ARGS:-} "$@"
