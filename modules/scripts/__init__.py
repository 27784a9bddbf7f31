"""Processing-level scripts (X/Y/Z plot, prompt matrix, SD upscale): see base.py and registry.py."""
