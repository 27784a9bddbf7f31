@echo off
rem Your settings; double-click this file to start the web UI.
rem Extra flags for webui.py, e.g. --listen --api. See: venv\Scripts\python webui.py --help
set COMMANDLINE_ARGS=
rem How PyTorch is installed on the first run (change for another CUDA build):
rem set TORCH_COMMAND=pip install torch==2.14.1 torchvision==0.29.1
rem set PYTHON=python

call webui.bat
