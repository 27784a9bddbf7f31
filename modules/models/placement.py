"""Put a freshly loaded model where the device policy wants it, and decode latents within memory.

- memory format: channels-last weights for the UNet and the VAE where that was measured faster;
- `--medvram`: each whole part (text encoders, UNet, VAE) moves to the device only while it runs,
  the previous part moving back (accelerate's `cpu_offload_with_hook`, chained in use order);
- `--lowvram`: every layer's weights stay in CPU memory and visit the device only for their own
  forward (accelerate's `cpu_offload`, i.e. sequential offloading);
- `--compile`: the UNet goes through `torch.compile` (the first generation per size pays for it);
- VAE decoding tiles (diffusers' `tiled_decode`) when tiling is switched on or the picture is large.

On a CPU-only machine the offloading hooks have the CPU as their execution device: no copies are
made, but the very same hooks run, which is what the tests exercise.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from accelerate import cpu_offload, cpu_offload_with_hook

from modules.devices import DevicePolicy

if TYPE_CHECKING:  # load.py calls into this module
    from modules.models.load import SDModel

log = logging.getLogger(__name__)

# Above this many latent pixels (a 1024×1024 picture for SD's 8× VAE) the decoder's activations
# grow past several GB, so the decode tiles automatically; `--vae-tiling` tiles at every size.
AUTO_TILE_LATENT_PIXELS = 128 * 128


def place_model(model: SDModel, policy: DevicePolicy) -> SDModel:
    """Apply the policy's memory format, offloading and compilation to a just-built model (in place)."""
    if policy.channels_last:
        model.unet.to(memory_format=torch.channels_last)
        model.vae.to(memory_format=torch.channels_last)
    if policy.vae_tiling:
        model.vae.enable_tiling()
    parts: list[torch.nn.Module] = [*model.text_encoders, model.unet, model.vae]
    if policy.offload == "medvram":
        hooks = []
        for part in parts:
            _, hook = cpu_offload_with_hook(part, policy.device, prev_module_hook=hooks[-1] if hooks else None)
            hooks.append(hook)
        # Closing the circle: the next request's text encoding sends the VAE back as well.
        hooks[0].hook.prev_module_hook = hooks[-1]
    elif policy.offload == "lowvram":
        for part in parts:
            cpu_offload(part, execution_device=policy.device)
    if policy.compile:
        # In place (nn.Module.compile), so the UNet keeps its type, weights and LoRA merging.
        model.unet.compile()
        log.info("The UNet will be compiled with torch.compile during the first generation (slow once).")
    return model


def offloaded_weights(module: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The CPU state dict that --lowvram's layer hooks load `module`'s weights from, keyed like
    `module.state_dict()`; None when `module` is not offloaded layer by layer. Its parameters are meta
    tensors then, so anything that changes weights (LoRA merges, a separate VAE file) changes these."""
    for sub in module.modules():
        weights_map = _hook_weights(sub)
        if weights_map is not None:
            return getattr(weights_map, "dataset", weights_map)
    return None


def stored_weight(module: torch.nn.Module) -> torch.Tensor:
    """The tensor that holds `module`'s weight: the parameter itself, or, under --lowvram (the parameter
    is a meta tensor), the CPU copy its offloading hook loads for each forward."""
    weight = module.weight
    if weight.device.type != "meta":
        return weight
    weights_map = _hook_weights(module)
    if weights_map is None:
        raise RuntimeError(f"{type(module).__name__} has no weights here (meta device, no offload hook)")
    return weights_map["weight"]


def _hook_weights(module: torch.nn.Module) -> Any:
    """The weights map of accelerate's offloading hook on `module` itself (None without one)."""
    return getattr(getattr(module, "_hf_hook", None), "weights_map", None)


def weights_device(policy: DevicePolicy) -> torch.device:
    """Where a model's weights are loaded to: the CPU when they are offloaded, else the device."""
    return policy.offload_device if policy.offload != "none" else policy.device


def decode(vae: torch.nn.Module, z: torch.Tensor, auto_precision: bool = True) -> torch.Tensor:
    """VAE decode of unscaled latents (any dtype: cast to the VAE's), tiled when tiling is on or the
    latents are large.

    `auto_precision` is A1111's "Automatically revert VAE to 32-bit floats" (`auto_vae_precision`,
    on by default): when a VAE in fp16/bf16 decodes to NaN or inf (SDXL's original VAE overflows in
    fp16), it is converted to fp32 for as long as its model stays loaded and the decode is redone from
    `z` as given. Off, the reduced-precision result is returned as it is.
    """
    dtype = vae_dtype(vae)
    x = _decode(vae, z.to(dtype))
    if not auto_precision or dtype == torch.float32 or bool(torch.isfinite(x).all()):
        return x
    log.warning("The VAE produced NaN/inf in %s; it is converted to 32-bit floats for this model and the "
                "picture decoded again. --no-half-vae starts with a 32-bit VAE; the setting 'Automatically "
                "revert VAE to 32-bit floats' switches this off.", str(dtype).removeprefix("torch."))
    # `float()` rather than `to(torch.float32)`: the same cast without diffusers' warning about casting
    # with `to()`. Under --lowvram the parameters are meta tensors; accelerate's hook casts the CPU copies
    # it loads to the parameter's dtype, so they arrive in fp32 too.
    vae.float()
    return _decode(vae, z.float())


def vae_dtype(vae: torch.nn.Module) -> torch.dtype:
    """The dtype the VAE computes in (its parameters', meta tensors included)."""
    return next(vae.parameters()).dtype


def _decode(vae: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    # Always through `vae.decode`: diffusers runs it through accelerate's offloading hooks, and sends
    # it to `tiled_decode` itself when tiling is enabled and the latents exceed one tile.
    if getattr(vae, "use_tiling", True) or z.shape[-1] * z.shape[-2] <= AUTO_TILE_LATENT_PIXELS:
        return vae.decode(z).sample
    vae.enable_tiling()
    try:
        return vae.decode(z).sample
    finally:
        vae.disable_tiling()
