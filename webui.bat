@echo off
rem Set up (first run) and start the web UI; settings come from webui-user.bat.
cd /d "%~dp0"
if not defined PYTHON set PYTHON=python
if not defined VENV_DIR set VENV_DIR=%~dp0venv
rem Checks the Python version and picks the PyTorch build: the CUDA build when an NVIDIA GPU is
rem found (nvidia-smi), else the CPU build; a TORCH_COMMAND set in webui-user.bat wins.
%PYTHON% scripts\torch_choice.py > "%TEMP%\sd-webui-torch-command.txt" || goto :error
set /p TORCH_COMMAND=<"%TEMP%\sd-webui-torch-command.txt"

if not exist "%VENV_DIR%\Scripts\python.exe" (
    echo Creating the virtual environment in %VENV_DIR%
    %PYTHON% -m venv "%VENV_DIR%" || goto :error
)
set VENV_PY=%VENV_DIR%\Scripts\python.exe
rem SKIP_INSTALL=1: use VENV_DIR as it is and install nothing (a venv you manage yourself).
if not defined SKIP_INSTALL if not exist "%VENV_DIR%\.installed" (
    "%VENV_PY%" -c "import torch" 2>NUL || "%VENV_PY%" -m %TORCH_COMMAND% || goto :error
    "%VENV_PY%" -m pip install -e . || goto :error
    "%VENV_PY%" -m pip install --no-deps -r requirements-nodeps.txt || goto :error
    echo done> "%VENV_DIR%\.installed"
)
"%VENV_PY%" webui.py %COMMANDLINE_ARGS% %*
pause
exit /b

:error
echo Setting up failed; see the messages above.
pause
exit /b 1
