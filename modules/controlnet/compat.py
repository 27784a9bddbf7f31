"""Does a ControlNet fit the loaded checkpoint? Its residuals are added to the UNet's skip connections,
so the base family, the level widths, the res blocks per level and the text context must all match."""

from __future__ import annotations

from dataclasses import replace

from modules.controlnet.spec import FAMILY_NAMES, ControlNetInfo
from modules.errors import UserError
from modules.models.arch import ModelArch


def check_compatible(info: ControlNetInfo, arch: ModelArch, checkpoint_name: str = "") -> None:
    """Raise `UserError` naming both models when the ControlNet cannot drive the checkpoint's UNet."""
    checkpoint = f"the loaded checkpoint '{checkpoint_name}'" if checkpoint_name else "the loaded checkpoint"
    family = FAMILY_NAMES.get(arch.family, arch.family)
    if info.family != arch.family:
        raise UserError(
            f"ControlNet '{info.name}' is for {info.family_name} but {checkpoint} is {family}. "
            f"Choose a ControlNet made for {family}, or load an {info.family_name} checkpoint."
        )
    unet = arch.unet
    differences = []
    if tuple(unet["block_out_channels"]) != info.block_out_channels:
        differences.append(f"level widths {info.block_out_channels} vs {tuple(unet['block_out_channels'])}")
    if int(unet["layers_per_block"]) != int(info.config["layers_per_block"]):
        differences.append(f"res blocks per level {info.config['layers_per_block']} vs {unet['layers_per_block']}")
    if int(unet["cross_attention_dim"]) != info.context_dim:
        differences.append(f"text context width {info.context_dim} vs {unet['cross_attention_dim']}")
    if differences:
        raise UserError(
            f"ControlNet '{info.name}' does not fit {checkpoint} although both are {family}: "
            f"{'; '.join(differences)} (ControlNet vs checkpoint). Choose a ControlNet trained for this checkpoint."
        )


def fit_to_checkpoint(info: ControlNetInfo, arch: ModelArch, checkpoint_name: str = "") -> ControlNetInfo:
    """`check_compatible`, then, where the heads were guessed (no .yaml), the checkpoint's own heads.

    A ControlNet is a copy of its base UNet's encoder, so the base's head count is the right one; the
    weights alone cannot tell it.
    """
    check_compatible(info, arch, checkpoint_name)
    if not info.heads_guessed:
        return info
    config = info.config
    heads = arch.unet["attention_head_dim"]
    config["attention_head_dim"] = tuple(heads) if isinstance(heads, (list, tuple)) else heads
    return replace(info, config_items=tuple(sorted(config.items())), heads_guessed=False,
                   config_source=info.config_source + ", heads from the checkpoint")
