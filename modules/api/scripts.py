"""`script_name` / `script_args` on txt2img and img2img for the scripts in modules/scripts.

The outpainting scripts stay in mapping.py (they only change the params); every other name must be
one of modules/scripts' registry, else the answer is A1111's 422 naming it and listing the scripts.
"""

from __future__ import annotations

from typing import Any

from modules.api.mapping import IMG2IMG_SCRIPTS, ApiError
from modules.api.models import GenerationRequest
from modules.errors import UserError
from modules.scripts.base import Script
from modules.scripts.registry import find_script


def take_script(req: GenerationRequest, mode: str) -> tuple[GenerationRequest, Script | None, dict[str, Any]]:
    """(the request without the script for mapping.py, the script, its checked arguments).

    Requests without a script, or with an outpainting script, come back unchanged with no script.
    """
    key = (req.script_name or "").strip().lower()
    if not key or key == "none" or (mode == "img2img" and key in IMG2IMG_SCRIPTS):
        return req, None, {}
    others = tuple(IMG2IMG_SCRIPTS) if mode == "img2img" else ()
    try:
        script = find_script(req.script_name or "", mode, others)
    except UserError as exc:
        raise ApiError(422, str(exc)) from exc
    args = script.parse_args(req.script_args)  # malformed arguments: UserError → 400
    return req.model_copy(update={"script_name": None, "script_args": []}), script, args
