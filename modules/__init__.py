"""Local Stable Diffusion web UI: the Python package behind webui.py."""
