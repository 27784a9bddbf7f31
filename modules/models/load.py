"""Load a single-file checkpoint into diffusers / transformers modules, and save one back.

Only `.safetensors` (through safetensors) and `torch.load(weights_only=True)` are used to read files:
a pickle that wants to run code is refused before it can.

Memory: safetensors hands out tensors backed by a memory map of the file (nothing is read until
used), and `.ckpt` files are memory-mapped too (`torch.load(mmap=True)`). Each tensor is cast to the
policy's dtype and assigned into modules built on the meta device, and the file's tensor is dropped
right away, so a model is never held twice; where the file already has the wanted dtype the module's
weights *are* the mapped file pages.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import init_empty_weights
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from modules.devices import DevicePolicy
from modules.errors import CheckpointError
from modules.models.arch import ModelArch, load_ldm_config
from modules.models.build import TextEncoder, build_text_encoder, build_unet, build_vae
from modules.models.convert import ldm_to_modules, modules_to_ldm, vae_from_ldm
from modules.models.detect import beside_yaml, detect_config
from modules.models.placement import offloaded_weights, place_model, weights_device

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


@dataclass
class SDModel:
    """A loaded checkpoint: its modules, architecture and where it came from."""

    arch: ModelArch
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoders: list[TextEncoder]
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    path: Path | None = None
    config_reason: str = ""
    vae_path: Path | None = None  # a separate VAE file in use, if any
    policy: DevicePolicy | None = None  # the device policy it was loaded with (per model size)

    def module_states(self) -> dict[str, dict[str, torch.Tensor]]:
        states = {"unet": self.unet.state_dict(), "vae": self.vae.state_dict()}
        for i, enc in enumerate(self.text_encoders):
            states[f"text_encoder_{i}"] = enc.state_dict()
        return states


def read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a checkpoint file; `CheckpointError` naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = dict(f.metadata() or {})
            return load_file(str(path)), metadata
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path.name} is not a readable .safetensors file ({exc}). "
                                  "It may be truncated: download it again.") from exc
    if suffix in PICKLE_SUFFIXES:
        try:
            obj = _torch_load(path)
        except pickle.UnpicklingError as exc:
            raise CheckpointError(
                f"Refused to load {path.name}: it contains Python objects other than tensors, which could run "
                "code on this machine. Only plain weights are loaded (torch.load weights_only=True). "
                "Use a .safetensors version of this model."
            ) from exc
        except Exception as exc:  # noqa: BLE001 - torch raises many types for garbage; all mean "not a checkpoint"
            raise CheckpointError(f"{path.name} is not a readable checkpoint ({exc}). "
                                  "It may be truncated or not a model file: download it again.") from exc
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict):
            raise CheckpointError(f"{path.name} holds a {type(obj).__name__}, not a dictionary of weights.")
        return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}, {}
    raise CheckpointError(f"{path.name}: unsupported file type {suffix!r}; use .safetensors or .ckpt.")


def _torch_load(path: Path) -> object:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):  # legacy (pre-zip) checkpoints cannot be mapped; read them whole
            raise
        return torch.load(str(path), map_location="cpu", weights_only=True)


def resolve_arch(
    path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str], config: Path | None = None
) -> tuple[ModelArch, str]:
    """Config order: an explicit config, a same-named .yaml beside the file, else detection."""
    if config is None:
        config = beside_yaml(path)
        if config is not None:
            return load_ldm_config(config), f"config {config.name} beside the checkpoint"
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        config, reason = detect_config(shapes, path.name, metadata)
        return load_ldm_config(config), f"detected {reason} → configs/{config.name}"
    return load_ldm_config(config), f"config {config}"


def _materialise(module: torch.nn.Module, state: dict[str, torch.Tensor], dtype: torch.dtype,
                 device: torch.device, name: str, source: str) -> torch.nn.Module:
    # Emptied as it goes: each source tensor is released once its cast copy exists (a no-op cast
    # keeps the very same, memory-mapped tensor).
    cast = {}
    for key in list(state):
        value = state.pop(key)
        cast[key] = value.to(device=device, dtype=dtype) if value.is_floating_point() else value.to(device)
        del value
    result = module.load_state_dict(cast, strict=False, assign=True)
    # Persistent keys only: buffers that are not saved (e.g. position_ids) were built real.
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if missing or result.unexpected_keys:
        raise CheckpointError(f"{source}: the {name} weights do not fit its architecture; missing "
                              f"{missing[:5]}, unexpected {result.unexpected_keys[:5]}.")
    return module.to(device).eval().requires_grad_(False)


def build_model(arch: ModelArch, modules: dict[str, dict[str, torch.Tensor]], policy: DevicePolicy,
                source: str = "checkpoint") -> SDModel:
    """Modules for `arch` filled from converted state dicts (emptied on the way: each tensor is
    released once placed); parameters are never allocated twice. Memory format, offloading and
    compilation follow in `placement.place_model`."""
    parameters = sum(t.numel() for state in modules.values() for t in state.values())
    policy = policy.for_model(parameters)
    device = weights_device(policy)
    with init_empty_weights(include_buffers=False):
        unet, vae = build_unet(arch), build_vae(arch)
        encoders = [build_text_encoder(spec) for spec in arch.text_encoders]
    unet = _materialise(unet, modules["unet"], policy.dtype, device, "UNet", source)
    vae = _materialise(vae, modules["vae"], policy.vae_dtype, device, "VAE", source)
    encoders = [
        _materialise(enc, modules[f"text_encoder_{i}"], policy.dtype, device, f"text encoder {i}", source)
        for i, enc in enumerate(encoders)
    ]
    return SDModel(arch=arch, unet=unet, vae=vae, text_encoders=encoders, policy=policy)


def load_checkpoint(path: str | Path, policy: DevicePolicy, config: Path | None = None) -> SDModel:
    """Load a single-file checkpoint (any supported architecture) strictly onto the policy's device."""
    path = Path(path)
    state, metadata = read_state_dict(path)
    arch, reason = resolve_arch(path, state, metadata, config)
    modules, extras = ldm_to_modules(state, arch, source=path.name)
    del state
    model = build_model(arch, modules, policy, source=path.name)
    model.extras, model.path, model.config_reason = extras, path, reason
    return place_model(model, model.policy or policy)


def save_checkpoint(model: SDModel, path: str | Path, dtype: torch.dtype | None = None,
                    metadata: dict[str, str] | None = None) -> Path:
    """Write `model` as one LDM-layout .safetensors, atomically (never a half-written file at `path`)."""
    return write_safetensors(modules_to_ldm(model.module_states(), model.arch, model.extras), path, dtype, metadata)


def write_safetensors(state: dict[str, torch.Tensor], path: str | Path, dtype: torch.dtype | None = None,
                      metadata: dict[str, str] | None = None) -> Path:
    """Write tensors (floating ones cast to `dtype` if given) as a .safetensors file, atomically."""
    path = Path(path)
    out = {}
    for key, tensor in state.items():
        tensor = tensor.detach().to("cpu")
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        out[key] = tensor.contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(out, tmp, metadata=metadata)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a model file is an ordinary file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_vae_file(path: str | Path, model: SDModel) -> None:
    """Replace `model`'s VAE weights with those of a separate VAE file (.safetensors/.ckpt/.pt)."""
    path = Path(path)
    state, _ = read_state_dict(path)
    _set_vae_weights(model, vae_from_ldm(state, model.arch, source=path.name), path.name)
    model.vae_path = path


def vae_weights(model: SDModel) -> dict[str, torch.Tensor]:
    """A CPU copy of `model`'s VAE weights as they are now (to put back with `restore_vae_weights`)."""
    offloaded = offloaded_weights(model.vae)
    state = offloaded if offloaded is not None else model.vae.state_dict()
    return {key: value.detach().to("cpu", copy=True) for key, value in state.items()}


def restore_vae_weights(model: SDModel, weights: dict[str, torch.Tensor]) -> None:
    """Put back the VAE weights `vae_weights` copied (the checkpoint's own VAE)."""
    _set_vae_weights(model, weights, "the checkpoint's VAE")
    model.vae_path = None


def _set_vae_weights(model: SDModel, converted: dict[str, torch.Tensor], source: str) -> None:
    expected = {key: tuple(value.shape) for key, value in model.vae.state_dict().items()}
    wrong = [key for key, value in converted.items() if key in expected and tuple(value.shape) != expected[key]]
    if wrong:
        raise CheckpointError(f"{source} does not fit this model's VAE: {wrong[0]} has shape "
                              f"{tuple(converted[wrong[0]].shape)}, the model's {expected[wrong[0]]} "
                              f"({len(wrong)} tensors differ). Is it a VAE for another architecture?")
    offloaded = offloaded_weights(model.vae)
    if offloaded is not None:  # --lowvram: the weights live in the offloading hooks' CPU copy
        expected = set(model.vae.state_dict())
        if set(converted) != expected:
            raise CheckpointError(f"{source} does not fit this model's VAE "
                                  f"({len(set(converted) ^ expected)} keys differ)")
        with torch.no_grad():
            for key, value in converted.items():
                offloaded[key].copy_(value.to(offloaded[key].dtype))
    else:
        param = next(model.vae.parameters())
        model.vae.load_state_dict({k: v.to(param.device, param.dtype) for k, v in converted.items()}, strict=True)
