# Sourced by webui.sh and scripts/setup_and_test.sh: make sure venv/ exists and holds PyTorch and
# this project (with EXTRAS, e.g. "test"); sets VENV_PY.
#
# Installs run only when pyproject.toml, TORCH_COMMAND or the Python version changed, or when
# extras are asked for that are not installed yet (a hash of them is kept in venv/.setup-stamp;
# delete it to force a reinstall). TORCH_COMMAND runs with the venv's interpreter
# ("python -m pip install ..."), so another CUDA build can be chosen.
#
# TORCH_COMMAND defaults to what scripts/torch_choice.py picks for this machine.
# SKIP_INSTALL=1 uses VENV_DIR as it is and installs nothing: for a venv you manage yourself, e.g.
# one shared by several checkouts (VENV_DIR=/path/to/venv SKIP_INSTALL=1 ./webui.sh).
PYTHON="${PYTHON:-python3}"
VENV_DIR="${VENV_DIR:-venv}"
EXTRAS="${EXTRAS:-}"
SKIP_INSTALL="${SKIP_INSTALL:-}"
TORCH_COMMAND="${TORCH_COMMAND:-}"

if [ -n "$SKIP_INSTALL" ] && [ ! -x "$VENV_DIR/bin/python" ]; then
    echo "SKIP_INSTALL is set but $VENV_DIR/bin/python does not exist: set VENV_DIR to your venv." >&2
    exit 1
fi
if [ -z "$SKIP_INSTALL" ]; then
    # The Python version is checked and the PyTorch build chosen (a TORCH_COMMAND you set wins).
    TORCH_COMMAND="$("$PYTHON" scripts/torch_choice.py)" || exit 1
fi
if [ ! -x "$VENV_DIR/bin/python" ]; then
    echo "Creating $VENV_DIR/ with $("$PYTHON" --version 2>&1)" >&2
    "$PYTHON" -m venv "$VENV_DIR"
fi
VENV_PY="$VENV_DIR/bin/python"
_stamp="$VENV_DIR/.setup-stamp"
_wanted="$( { sha256sum pyproject.toml requirements-nodeps.txt; printf '%s\n' "$TORCH_COMMAND"; "$VENV_PY" --version 2>&1; } | sha256sum | cut -d' ' -f1)"
_have="$(sed -n 1p "$_stamp" 2>/dev/null || true)"
_have_extras="$(sed -n 2p "$_stamp" 2>/dev/null || true)"
if [ -z "$SKIP_INSTALL" ] && { [ "$_have" != "$_wanted" ] || { [ -n "$EXTRAS" ] && [ "$_have_extras" != "$EXTRAS" ]; }; }; then
    echo "Installing PyTorch: $TORCH_COMMAND" >&2
    eval "\"\$VENV_PY\" -m $TORCH_COMMAND"
    echo "Installing the project${EXTRAS:+ with [$EXTRAS]}" >&2
    "$VENV_PY" -m pip install -e ".${EXTRAS:+[$EXTRAS]}"
    "$VENV_PY" -m pip install --no-deps -r requirements-nodeps.txt
    # Written only after both installs succeeded, so a failed install is retried next time.
    printf '%s\n%s\n' "$_wanted" "${EXTRAS:-$_have_extras}" > "$_stamp"
fi
