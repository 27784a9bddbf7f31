# Sourced by webui.sh and scripts/setup_and_test.sh: make sure the virtual environment exists and
# holds this project's dependencies; sets VENV_PY. Re-installs only when pyproject.toml changed.
PYTHON="${PYTHON:-python3}"
VENV_DIR="${VENV_DIR:-venv}"
TORCH_COMMAND="${TORCH_COMMAND:-pip install torch==2.14.1 torchvision==0.29.1}"
EXTRAS="${EXTRAS:-}"
if [ ! -x "$VENV_DIR/bin/python" ]; then
    echo "Creating the virtual environment in $VENV_DIR"
    "$PYTHON" -m venv "$VENV_DIR"
fi
VENV_PY="$VENV_DIR/bin/python"
stamp="$VENV_DIR/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)${EXTRAS:+-$EXTRAS}"
if [ ! -f "$stamp" ]; then
    if ! "$VENV_PY" -c "import torch" 2>/dev/null; then
        echo "Installing PyTorch: $TORCH_COMMAND"
        "$VENV_PY" -m $TORCH_COMMAND
    fi
    echo "Installing the project and its dependencies"
    "$VENV_PY" -m pip install -e ".${EXTRAS:+[$EXTRAS]}"
    rm -f "$VENV_DIR"/.installed-*
    touch "$stamp"
fi
