@echo off
rem Your settings; double-click this file to start the web UI.
rem Extra flags for webui.py, e.g. --listen --api. See: venv\Scripts\python webui.py --help
set COMMANDLINE_ARGS=
rem How PyTorch is installed on the first run. Left unset, the CUDA build is chosen when an NVIDIA
rem GPU is found and the CPU build otherwise; set it for another build, e.g.:
rem set TORCH_COMMAND=pip install torch==2.14.1 torchvision==0.29.1 --extra-index-url https://download.pytorch.org/whl/cu126
rem set PYTHON=python

call webui.bat
