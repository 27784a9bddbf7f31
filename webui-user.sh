#!/usr/bin/env bash
# Your settings for webui.sh (this file is read by it; edit freely).

# Extra flags for webui.py, e.g. "--listen --api --port 7861". See: python webui.py --help
export COMMANDLINE_ARGS="${COMMANDLINE_ARGS:-}"

# How PyTorch is installed on the first run. The default is a CUDA build that also runs on the CPU.
# export TORCH_COMMAND="pip install torch==2.14.1 torchvision==0.29.1"

# export PYTHON=python3.11
# export VENV_DIR=venv
# Use VENV_DIR as it is, installing nothing (a venv you manage yourself or share between checkouts):
# export SKIP_INSTALL=1
