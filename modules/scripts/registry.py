"""The scripts by name, for the API's `script_name` and the UI's Script dropdown."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from modules.errors import UserError
from modules.processing.params import GenerationParams
from modules.processing.run import GenerationResult
from modules.scripts.base import Script
from modules.scripts.prompt_matrix import PromptMatrix
from modules.scripts.sd_upscale import SDUpscale
from modules.scripts.xyz_plot import XYZPlot

if TYPE_CHECKING:
    from modules.context import AppContext

SCRIPTS: tuple[Script, ...] = (XYZPlot(), PromptMatrix(), SDUpscale())


def scripts_for(mode: str) -> list[Script]:
    """The scripts a tab offers: txt2img, or img2img (inpaint and outpaint use img2img's)."""
    mode = "img2img" if mode in ("img2img", "inpaint", "outpaint") else mode
    return [s for s in SCRIPTS if mode in s.modes]


def find_script(name: str, mode: str, others: tuple[str, ...] = ()) -> Script:
    """The script called `name` (A1111 titles, any case); a UserError naming it and listing the
    available ones (`others`: script names handled elsewhere, e.g. the outpainting scripts)."""
    key = name.strip().lower()
    for script in scripts_for(mode):
        if script.name == key:
            return script
    available = [s.title for s in scripts_for(mode)] + list(others)
    raise UserError(f"Script not found: {name!r}; {mode} scripts: {', '.join(available)}.")


def run_script(ctx: AppContext, script: Script, params: GenerationParams, args: dict[str, Any]) -> GenerationResult:
    """Run `script`, holding the device for all its generations (other requests wait, not interleave)."""
    params = params.validate()
    with ctx.registry.lock:
        return script.run(ctx, params, args)
