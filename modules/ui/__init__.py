"""The Gradio web UI. webui.py calls `launch(ctx, args)`; tests and tools may call `build_ui(ctx)`.

Gradio's usage analytics (and the version check that comes with them) are switched off before
gradio is imported anywhere in this package: the UI is local and makes no network calls.
"""

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

from modules.ui.app import build_ui  # noqa: E402
from modules.ui.extensions_tab import ui_hooks as extension_hooks  # noqa: E402
from modules.ui.hooks import ExtraTab, ScriptControls, ScriptHook  # noqa: E402
from modules.ui.server import launch, parse_auth  # noqa: E402

__all__ = ["ExtraTab", "ScriptControls", "ScriptHook", "build_ui", "extension_hooks", "launch", "parse_auth"]
