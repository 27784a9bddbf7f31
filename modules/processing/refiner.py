"""The SDXL refiner (A1111 1.6+): a second checkpoint denoises the last part of the steps.

The latents carry over unchanged at the switch; the refiner's own text encoders encode the same
prompts (SDXL's refiner has only the OpenCLIP-G tower and its own size/aesthetic time ids, which
the sampling loop builds per model). Any checkpoint with the same latent space can refine.
"""

from __future__ import annotations

from dataclasses import dataclass

from modules.errors import UserError
from modules.models.load import SDModel, load_checkpoint
from modules.models.registry import ModelRegistry
from modules.processing.params import GenerationParams

NO_REFINER = ("", "None")  # what clients send for "no refiner"


@dataclass
class Refiner:
    model: SDModel
    name: str
    short_hash: str
    switch_at: float

    def switch_step(self, run_steps: int) -> int:
        """The first 0-based step the refiner denoises (run_steps when it never does)."""
        return min(run_steps, int(self.switch_at * run_steps + 1e-9))

    def infotext_fields(self) -> dict[str, object]:
        title = f"{self.name} [{self.short_hash}]" if self.short_hash else self.name
        return {"Refiner": title, "Refiner switch at": self.switch_at}


def wanted(params: GenerationParams) -> bool:
    return bool(params.refiner_checkpoint) and params.refiner_checkpoint not in NO_REFINER


def check(registry: ModelRegistry, params: GenerationParams) -> None:
    """Refuse an unknown refiner before any work starts."""
    if wanted(params):
        try:
            registry.find(str(params.refiner_checkpoint))
        except UserError as exc:
            raise UserError(f"Refiner: {exc}") from exc


def load(registry: ModelRegistry, params: GenerationParams, base: SDModel) -> Refiner | None:
    """The refiner for this request: the loaded model itself when it is the same checkpoint, else the
    registry's second model (loaded once, kept for the following requests)."""
    if not wanted(params):
        return None
    info = registry.find(str(params.refiner_checkpoint))
    model = base if info == registry.current_info else registry.secondary(info, load_checkpoint)
    if model.arch.is_inpainting != base.arch.is_inpainting:
        raise UserError(f"Refiner {info.name} is {'an' if model.arch.is_inpainting else 'not an'} inpainting "
                        "checkpoint and the base model is not the same kind; pick a refiner of the same kind.")
    return Refiner(model=model, name=info.stem, short_hash=registry.short_hash(info),
                   switch_at=params.refiner_switch_at)
