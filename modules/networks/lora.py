"""LoRA files: which model layer each key belongs to, and merging them into a model for one generation.

Key formats read (the layer name, then what the tensor is):
    kohya / A1111   lora_unet_<path>.lora_down.weight / .lora_up.weight / .alpha   (lora_te_, lora_te1_, lora_te2_)
                    where <path> is the diffusers module path (down_blocks_0_attentions_0_...) or the
                    original LDM one (input_blocks_1_1_...), dots written as underscores
    diffusers/peft  unet.<path>.lora_A.weight / .lora_B.weight   (text_encoder., text_encoder_2.)
    old diffusers   unet.<path>.processor.to_q_lora.down.weight, text_encoder.<path>.lora_linear_layer.up.weight

A layer's change is W += weight · (alpha / rank) · up @ down (alpha absent: scale 1), for linear layers
and convolutions alike (a conv's down may be k×k, its up is 1×1). `applied` merges the changes into the
weights in place and, on leaving, copies back the saved originals, so the model is bit-for-bit what it
was: a generation without the tag (or at weight 0, which merges nothing) equals the base model's exactly.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from modules.errors import UserError
from modules.models.convert import UNET_PREFIX, key_rules
from modules.models.load import SDModel
from modules.models.placement import stored_weight
from modules.networks.files import NetworkFile, lora_hash, read_tensors

log = logging.getLogger(__name__)


@dataclass
class LoraLayer:
    down: torch.Tensor | None = None
    up: torch.Tensor | None = None
    alpha: float | None = None

    @property
    def rank(self) -> int:
        assert self.down is not None
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return self.alpha / self.rank if self.alpha is not None else 1.0

    def delta(self, shape: torch.Size) -> torch.Tensor:
        """The full-size change (float32) for a weight of `shape`, before the user's weight."""
        assert self.down is not None and self.up is not None
        up, down = self.up.float().flatten(1), self.down.float().flatten(1)
        if up.shape[1] != down.shape[0] or up.shape[0] * down.shape[1] != math.prod(shape):
            raise ValueError(f"up {tuple(self.up.shape)} and down {tuple(self.down.shape)} do not make a "
                             f"change of shape {tuple(shape)}")
        return (up @ down).reshape(shape) * self.scale


@dataclass
class LoraNetwork:
    """A LoRA file's layers by their (file) name, with its hash and metadata."""

    name: str
    path: Path
    layers: dict[str, LoraLayer]
    metadata: dict[str, str] = field(default_factory=dict)
    hash: str = ""

    @property
    def shorthash(self) -> str:
        return self.hash[:12]


# Key suffix → (layer name transform, part). Order matters: the longer, more specific forms first.
_KEY_FORMS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^(?P<name>.+)\.lora_down\.weight$"), "down"),
    (re.compile(r"^(?P<name>.+)\.lora_up\.weight$"), "up"),
    (re.compile(r"^(?P<name>.+)\.lora_A(?:\.default)?\.weight$"), "down"),
    (re.compile(r"^(?P<name>.+)\.lora_B(?:\.default)?\.weight$"), "up"),
    (re.compile(r"^(?P<base>.+)\.processor\.(?P<proj>to_q|to_k|to_v|to_out)_lora\.down\.weight$"), "down"),
    (re.compile(r"^(?P<base>.+)\.processor\.(?P<proj>to_q|to_k|to_v|to_out)_lora\.up\.weight$"), "up"),
    (re.compile(r"^(?P<name>.+)\.lora_linear_layer\.down\.weight$"), "down"),
    (re.compile(r"^(?P<name>.+)\.lora_linear_layer\.up\.weight$"), "up"),
    (re.compile(r"^(?P<name>.+)\.alpha$"), "alpha"),
)
# Other adapter kinds (LyCORIS LoHa/LoKr/Tucker, DoRA, full diffs, ...): named so the user knows why.
_UNSUPPORTED = re.compile(r"\.(hada_|lokr_|lora_mid|dora_scale|oft_|diff|diff_b|w_norm|b_norm|bias_indices)")


def _layer_name(match: re.Match[str]) -> str:
    if "proj" in match.groupdict():
        proj = match.group("proj")
        return f"{match.group('base')}.{'to_out.0' if proj == 'to_out' else proj}"
    return match.group("name")


def parse_layers(state: dict[str, torch.Tensor], source: str) -> dict[str, LoraLayer]:
    """Group a LoRA state dict's tensors by layer; a UserError for adapter kinds not supported here."""
    layers: dict[str, LoraLayer] = {}
    unknown: list[str] = []
    for key, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            continue
        for pattern, part in _KEY_FORMS:
            match = pattern.match(key)
            if match:
                layer = layers.setdefault(_layer_name(match), LoraLayer())
                if part == "alpha":
                    layer.alpha = float(tensor.float().reshape(-1)[0])
                else:
                    setattr(layer, part, tensor)
                break
        else:
            unknown.append(key)
    if unknown:
        kinds = sorted({m.group(1).rstrip("_") for k in unknown if (m := _UNSUPPORTED.search(k))})
        detail = f"it uses {', '.join(kinds)} layers (LyCORIS/DoRA kinds)" if kinds else (
            f"{len(unknown)} key(s) are not LoRA weights, e.g. {', '.join(sorted(unknown)[:3])}")
        raise UserError(f"{source} is not a LoRA this program can apply: {detail}. Only plain LoRA "
                        "(lora_down/lora_up or lora_A/lora_B) files are supported.")
    incomplete = [name for name, layer in layers.items() if layer.down is None or layer.up is None]
    if incomplete:
        raise UserError(f"{source} is incomplete: layer {incomplete[0]} lacks its "
                        f"{'down' if layers[incomplete[0]].down is None else 'up'} weight. Download it again.")
    if not layers:
        raise UserError(f"{source} holds no LoRA weights.")
    return layers


def load_lora(file: NetworkFile) -> LoraNetwork:
    """Read and check a LoRA file; every problem is a UserError naming the file."""
    state, metadata = read_tensors(file.path, "LoRA")
    source = f"The LoRA file {file.path.name}"
    layers = parse_layers(state, source)
    return LoraNetwork(name=file.name, path=file.path, layers=layers, metadata=metadata,
                       hash=lora_hash(file, metadata))


# ------------------------------------------------------------------------------------------ naming

def _canonical_text_path(module_path: str) -> str:
    # transformers 5's CLIPTextModel has no `.text_model`, CLIPTextModelWithProjection has; files
    # always say text_model.
    return "text_model." + module_path.removeprefix("text_model.")


def text_encoder_prefixes(n_encoders: int, index: int) -> tuple[str, str]:
    """(kohya prefix, diffusers prefix) of text encoder `index` in a model with `n_encoders`."""
    kohya = "lora_te_" if n_encoders == 1 else f"lora_te{index + 1}_"
    return kohya, "text_encoder." if index == 0 else f"text_encoder_{index + 1}."


def kohya_name(prefix: str, module_path: str) -> str:
    """kohya's layer name: the module path with dots as underscores after the prefix."""
    return prefix + module_path.replace(".", "_")


def layer_table(model: SDModel) -> dict[str, tuple[torch.nn.Module, str]]:
    """Every name a LoRA file may give a patchable layer → (the module, its readable path)."""
    table: dict[str, tuple[torch.nn.Module, str]] = {}
    unet_modules = dict(model.unet.named_modules())
    for path, module in unet_modules.items():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            table[kohya_name("lora_unet_", path)] = (module, f"unet.{path}")
            table[f"unet.{path}"] = (module, f"unet.{path}")
    # The original (LDM/SGM) names kohya uses for SDXL and older tools for SD1, from the checkpoint table.
    for rule in key_rules(model.arch):
        hf_key = rule.hf_keys[0]
        if rule.module != "unet" or not hf_key.endswith(".weight"):
            continue
        module = unet_modules.get(hf_key.removesuffix(".weight"))
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            ldm_path = rule.ldm_key.removeprefix(UNET_PREFIX).removesuffix(".weight")
            table[kohya_name("lora_unet_", ldm_path)] = (module, f"unet.{hf_key.removesuffix('.weight')}")
    for index, encoder in enumerate(model.text_encoders):
        kohya, diffusers = text_encoder_prefixes(len(model.text_encoders), index)
        for path, module in encoder.named_modules():
            if isinstance(module, torch.nn.Linear):
                canonical = _canonical_text_path(path)
                readable = f"text_encoder_{index}.{canonical}"
                table[kohya_name(kohya, canonical)] = (module, readable)
                table[diffusers + canonical] = (module, readable)
                table[diffusers + canonical.removeprefix("text_model.")] = (module, readable)
    return table


# ------------------------------------------------------------------------------------------ merging

@dataclass(frozen=True)
class BoundLayer:
    module: torch.nn.Module
    layer: LoraLayer


def bind(network: LoraNetwork, model: SDModel, table: dict[str, tuple[torch.nn.Module, str]] | None = None,
         ) -> list[BoundLayer]:
    """The model layers `network` changes. Names this model lacks are skipped with a warning (A1111
    does the same); none matching at all, or a shape that does not fit, is a UserError."""
    table = table if table is not None else layer_table(model)
    bound: list[BoundLayer] = []
    missing: list[str] = []
    for name, layer in network.layers.items():
        entry = table.get(name)
        if entry is None:
            missing.append(name)
            continue
        module, readable = entry
        try:
            _check_shape(layer, module.weight.shape)
        except ValueError as exc:
            raise UserError(f"LoRA {network.name} does not fit this model at {readable}: {exc}. It was made "
                            f"for a different kind of model ({_family_hint(network)}).") from exc
        bound.append(BoundLayer(module, layer))
    if not bound:
        raise UserError(f"LoRA {network.name} changes no layer of this model ({model.arch.family}): its "
                        f"layer names (e.g. {', '.join(sorted(missing)[:2])}) belong to a different kind of "
                        f"model ({_family_hint(network)}).")
    if missing:
        log.warning("LoRA %s: %d of its %d layers are not in this model and were skipped (e.g. %s)",
                    network.name, len(missing), len(network.layers), sorted(missing)[0])
    return bound


def _check_shape(layer: LoraLayer, shape: torch.Size) -> None:
    assert layer.down is not None and layer.up is not None
    up_rows, up_rank = layer.up.shape[0], math.prod(layer.up.shape[1:])
    down_rank, down_cols = layer.down.shape[0], math.prod(layer.down.shape[1:])
    if up_rank != down_rank or up_rows * down_cols != math.prod(shape) or up_rows != shape[0]:
        raise ValueError(f"up {tuple(layer.up.shape)} and down {tuple(layer.down.shape)} do not make a "
                         f"change of shape {tuple(shape)}")


def _family_hint(network: LoraNetwork) -> str:
    base = network.metadata.get("ss_base_model_version") or network.metadata.get("modelspec.architecture")
    return f"the file says {base}" if base else "e.g. SD 1.x vs SDXL"


@contextmanager
def applied(model: SDModel, networks: Sequence[tuple[LoraNetwork, float]]) -> Iterator[None]:
    """Merge `(network, weight)` pairs into the model's weights until the block ends.

    The original of every touched weight is copied (to the CPU, to spare GPU memory) before the first
    change and copied back at the end, also after an error or an interrupt: bit-exact restoration,
    which subtracting the changes again would not give in half precision. Weight 0 merges nothing.
    """
    saved: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    table = layer_table(model) if any(w != 0 for _, w in networks) else {}
    try:
        with torch.no_grad():
            for network, weight in networks:
                if weight == 0:
                    continue
                for item in bind(network, model, table):
                    param = stored_weight(item.module)
                    if id(param) not in saved:
                        saved[id(param)] = (param, param.detach().to("cpu", copy=True))
                    delta = item.layer.delta(param.shape).to(param.device)
                    param.copy_((param.float() + weight * delta).to(param.dtype))
        yield
    finally:
        with torch.no_grad():
            for param, original in saved.values():
                param.copy_(original)
