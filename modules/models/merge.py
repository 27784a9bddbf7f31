"""Checkpoint Merger, as the best-known web UI merges: weighted sum or add difference of two or
three checkpoints of one architecture, written as a new file.

Its rules: only keys with "model" in their name are merged (every weight of a checkpoint), the text
encoder's position ids are kept from A, keys missing from B stay A's; "Add difference" adds
M * (B - C), and keys of B missing from C add nothing. An inpainting model (9 input channels) merged
with a normal one keeps its extra channels and merges the 4 they share; it must be A. The result is
named like theirs ("0.7(a) + 0.3(b)", "a + 0.5(b - c)", ".inpainting" added), with the recipe in
the safetensors metadata (`sd_merge_recipe`, `sd_merge_models`).

Unlike loading a checkpoint, merging reads the inputs tensor by tensor from memory-mapped files, so
merging two SDXL files holds about one file's worth of tensors (the result) in memory, not three.
The result is written to a temporary file and renamed, and an existing file is never replaced
unless asked.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from modules.errors import UserError
from modules.models.detect import beside_yaml, detect_config
from modules.models.discovery import HashCache
from modules.models.load import read_state_dict
from modules.models.registry import ModelRegistry

log = logging.getLogger(__name__)

METHODS = ("No interpolation", "Weighted sum", "Add difference")
CONFIG_SOURCES = ("A, B or C", "B", "C", "Don't")
FORMATS = ("safetensors", "ckpt")
_KEEP_FROM_A = ("cond_stage_model.transformer.text_model.embeddings.position_ids",)
_VAE_PREFIX = "first_stage_model."


@dataclass(frozen=True)
class MergeRequest:
    primary: Path
    secondary: Path | None = None
    tertiary: Path | None = None
    method: str = "Weighted sum"
    multiplier: float = 0.3
    save_as_half: bool = False
    custom_name: str = ""
    checkpoint_format: str = "safetensors"
    config_source: str = "A, B or C"
    bake_in_vae: Path | None = None
    discard_weights: str = ""  # a regular expression: matching keys are left out
    save_metadata: bool = True
    add_merge_recipe: bool = True
    overwrite: bool = False


# safetensors dtype names (the format's header) -> torch dtypes.
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


class _Tensors:
    """A checkpoint's tensors read one at a time.

    A .safetensors file is read with plain reads at the offsets its header gives, so only the
    tensor being merged is in memory (a memory map would keep every page it touched resident);
    a .ckpt is read whole (weights only), its format has no such index.
    """

    def __init__(self, path: Path, stack: ExitStack) -> None:
        self.path = path
        if path.suffix.lower() == ".safetensors":
            handle = stack.enter_context(open(path, "rb"))
            header, self._data_start = _safetensors_header(handle, path)
            self.metadata = dict(header.pop("__metadata__", None) or {})
            self._entries = header
            self.keys = list(header)
            self.shapes = {k: tuple(v["shape"]) for k, v in header.items()}
            self._file = handle
            self._get: Callable[[str], torch.Tensor] = self._read
        else:
            self._entries = None
            state, self.metadata = read_state_dict(path)  # weights only, memory-mapped where possible
            self.keys = list(state)
            self._get = state.__getitem__
            self.shapes = {k: tuple(v.shape) for k, v in state.items()}

    def _read(self, key: str) -> torch.Tensor:
        entry = self._entries[key]
        begin, end = entry["data_offsets"]
        self._file.seek(self._data_start + begin)
        data = bytearray(self._file.read(end - begin))
        if entry["dtype"] not in _DTYPES:
            raise UserError(f"{self.path.name}: tensor {key} has type {entry['dtype']}, which merging does not handle.")
        dtype = _DTYPES[entry["dtype"]]
        if not data:
            return torch.empty(entry["shape"], dtype=dtype)
        return torch.frombuffer(data, dtype=dtype).reshape(entry["shape"])

    def dtype(self, key: str) -> torch.dtype:
        if self._entries is not None:
            name = self._entries[key]["dtype"]
            if name not in _DTYPES:
                raise UserError(f"{self.path.name}: tensor {key} has type {name}, which merging does not handle.")
            return _DTYPES[name]
        return self._get(key).dtype

    def __contains__(self, key: str) -> bool:
        return key in self.shapes

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._get(key)


def _safetensors_header(handle: Any, path: Path) -> tuple[dict[str, Any], int]:
    try:
        size = int.from_bytes(handle.read(8), "little")
        if not 0 < size < 100_000_000:
            raise ValueError(f"header size {size}")
        header = json.loads(handle.read(size))
        if not isinstance(header, dict):
            raise ValueError("header is not a mapping")
    except (ValueError, OSError) as exc:
        raise UserError(f"{path.name} is not a readable .safetensors file ({exc}).") from exc
    return header, 8 + size


def _family(tensors: _Tensors) -> str:
    config, _ = detect_config(tensors.shapes, tensors.path.name, tensors.metadata)
    # Inpainting and normal models of one family merge (the shared channels); v and epsilon SD 2.x too.
    name = config.stem.replace("-inpainting", "").replace("-inference", "")
    return {"v1": "SD 1.x", "v2": "SD 2.x", "v2-v": "SD 2.x", "sd_xl_base": "SDXL", "sd_xl_refiner": "SDXL refiner"}.get(
        name, name)


def _check(req: MergeRequest) -> None:
    if req.method not in METHODS:
        raise UserError(f"Unknown interpolation method {req.method!r}; use one of: {', '.join(METHODS)}.")
    if req.method != "No interpolation" and req.secondary is None:
        raise UserError(f"{req.method} needs a secondary model (B).")
    if req.method == "Add difference" and req.tertiary is None:
        raise UserError("Add difference needs a tertiary model (C): the result is A + M × (B − C).")
    if not isinstance(req.multiplier, int | float) or not math.isfinite(req.multiplier):
        raise UserError(f"The multiplier must be a number, got {req.multiplier!r}.")
    if req.checkpoint_format not in FORMATS:
        raise UserError(f"Unknown checkpoint format {req.checkpoint_format!r}; use safetensors or ckpt.")
    if req.config_source not in CONFIG_SOURCES:
        raise UserError(f"Unknown config source {req.config_source!r}; use one of: {', '.join(CONFIG_SOURCES)}.")
    if req.discard_weights:
        try:
            re.compile(req.discard_weights)
        except re.error as exc:
            raise UserError(f"Discard weights: {req.discard_weights!r} is not a regular expression ({exc}).") from exc
    if req.custom_name and (Path(req.custom_name).name != req.custom_name or req.custom_name.startswith(".")):
        raise UserError(f"Custom name {req.custom_name!r}: give a file name without folders.")


def _default_name(req: MergeRequest) -> str:
    a, m = req.primary.stem, req.multiplier
    if req.method == "Weighted sum":
        assert req.secondary is not None
        return f"{round(1 - m, 2)}({a}) + {round(m, 2)}({req.secondary.stem})"
    if req.method == "Add difference":
        assert req.secondary is not None and req.tertiary is not None
        return f"{a} + {round(m, 2)}({req.secondary.stem} - {req.tertiary.stem})"
    return a


def _combine(method: str, a: torch.Tensor, b: torch.Tensor, m: float) -> torch.Tensor:
    # In float32 whatever the files hold; the result takes A's dtype again.
    a32, b32 = a.float(), b.float()
    merged = (1 - m) * a32 + m * b32 if method == "Weighted sum" else a32 + m * b32
    return merged.to(a.dtype)


def _merged_keys(a: _Tensors, b: _Tensors | None) -> list[str]:
    """A's keys that take part in the merge (checked for fitting shapes: a UserError otherwise)."""
    if b is None:
        return []
    keys = [k for k in a.keys if "model" in k and k in b and k not in _KEEP_FROM_A]
    for key in keys:
        _fits(key, a.shapes[key], b.shapes[key])
    return keys


def _fits(key: str, a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """True when A has B's shape; False for A's 9-channel inpainting input with B's 4 channels."""
    if a == b:
        return True
    same_but_channels = len(a) == len(b) == 4 and a[:1] + a[2:] == b[:1] + b[2:]
    if same_but_channels and a[1] == 4 and b[1] == 9:
        raise UserError("When merging an inpainting model with a normal one, A must be the inpainting model.")
    if same_but_channels and a[1] == 9 and b[1] == 4:
        return False
    raise UserError(f"{key}: A has shape {a} and B {b}; these checkpoints cannot be merged.")


def _merge_tensor(key: str, req: MergeRequest, a: _Tensors, b: _Tensors, c: _Tensors | None) -> torch.Tensor:
    theta, other = a[key], b[key]
    if c is not None:  # add difference: B - C, or nothing where C lacks the key
        other = other.float() - c[key].float() if key in c else torch.zeros_like(other, dtype=torch.float32)
    if _fits(key, a.shapes[key], b.shapes[key]):
        return _combine(req.method, theta, other, req.multiplier)
    merged = theta.clone()  # an inpainting A keeps its mask and masked-picture channels
    merged[:, :4] = _combine(req.method, theta[:, :4], other, req.multiplier)
    return merged


def _vae_weights(path: Path) -> dict[str, torch.Tensor]:
    state, _ = read_state_dict(path)
    return {k: v for k, v in state.items() if not k.startswith("loss")}


@contextmanager
def _opened(req: MergeRequest) -> Iterator[tuple[_Tensors, _Tensors | None, _Tensors | None]]:
    with ExitStack() as stack:
        a = _Tensors(req.primary, stack)
        b = _Tensors(req.secondary, stack) if req.method != "No interpolation" and req.secondary else None
        c = _Tensors(req.tertiary, stack) if req.method == "Add difference" and req.tertiary else None
        yield a, b, c


def _recipe(req: MergeRequest, hashes: HashCache, inpainting: bool, metadata: dict[str, str]) -> dict[str, str]:
    used = [p for p in (req.primary, req.secondary if req.method != "No interpolation" else None,
                        req.tertiary if req.method == "Add difference" else None) if p is not None]
    recipe = {
        "type": "webui", "primary_model_hash": hashes.sha256(req.primary),
        "secondary_model_hash": hashes.sha256(used[1]) if len(used) > 1 else None,
        "tertiary_model_hash": hashes.sha256(used[2]) if len(used) > 2 else None,
        "interp_method": req.method, "multiplier": req.multiplier, "save_as_half": req.save_as_half,
        "custom_name": req.custom_name, "config_source": CONFIG_SOURCES.index(req.config_source),
        "bake_in_vae": req.bake_in_vae.name if req.bake_in_vae else "None",
        "discard_weights": req.discard_weights, "is_inpainting": inpainting, "is_instruct_pix2pix": False,
    }
    models: dict[str, Any] = {}
    for path, source in zip(used, _sources_metadata(used), strict=True):
        models[hashes.sha256(path)] = {"name": path.name, "legacy_hash": _legacy_hash(path),
                                       "sd_merge_recipe": source.get("sd_merge_recipe")}
        models.update(json.loads(source.get("sd_merge_models", "{}") or "{}"))
    return {**metadata, "sd_merge_recipe": json.dumps(recipe), "sd_merge_models": json.dumps(models)}


def _sources_metadata(paths: list[Path]) -> list[dict[str, str]]:
    out = []
    for path in paths:
        if path.suffix.lower() == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                out.append(dict(f.metadata() or {}))
        else:
            out.append({})
    return out


def _legacy_hash(path: Path) -> str:
    """The old 8-digit model hash: sha256 of 64 KiB from offset 1 MiB."""
    import hashlib

    with open(path, "rb") as f:
        f.seek(0x100000)
        return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]


def _copy_config(req: MergeRequest, target: Path) -> Path | None:
    candidates = {"A, B or C": [req.primary, req.secondary, req.tertiary], "B": [req.secondary],
                  "C": [req.tertiary], "Don't": []}[req.config_source]
    for path in candidates:
        config = beside_yaml(path) if path else None
        if config is not None:
            destination = target.with_suffix(".yaml")
            shutil.copyfile(config, destination)
            return destination
    return None


def merge_checkpoints(req: MergeRequest, out_dir: Path, hashes: HashCache,
                      progress: Callable[[int, int], None] | None = None) -> Path:
    """Merge as `req` says and write the result into `out_dir`; the new file's path.

    Every check (methods, inputs, architectures, the target name) happens before any tensor is read.
    """
    _check(req)
    with _opened(req) as (a, b, c):
        families = {p.path.name: _family(p) for p in (a, b, c) if p is not None}
        if len(set(families.values())) > 1:
            listed = ", ".join(f"{name} is {family}" for name, family in families.items())
            raise UserError(f"These checkpoints have different architectures and cannot be merged: {listed}.")
        if c is not None:
            _merged_keys(b, c)  # B - C needs fitting shapes too
        will_be_inpainting = b is not None and _input_channels(a) == 9 and _input_channels(b) == 4
        name = (req.custom_name or _default_name(req)) + (".inpainting" if will_be_inpainting else "")
        target = out_dir / f"{name}.{req.checkpoint_format}"
        if target.exists() and not req.overwrite:
            raise UserError(f"{target.name} already exists in {out_dir}; choose another name or allow overwriting.")
        vae = _vae_weights(req.bake_in_vae) if req.bake_in_vae else None
        baked = [k for k in a.keys if vae is not None and k.startswith(_VAE_PREFIX) and k[len(_VAE_PREFIX):] in vae]
        if vae is not None and not baked:
            raise UserError(f"The VAE {req.bake_in_vae.name} has no weight of this checkpoint's VAE; nothing to bake in.")
        for key in baked:
            if tuple(vae[key[len(_VAE_PREFIX):]].shape) != a.shapes[key]:
                raise UserError(f"The VAE {req.bake_in_vae.name} does not fit: {key} has shape "
                                f"{tuple(vae[key[len(_VAE_PREFIX):]].shape)}, the checkpoint's {a.shapes[key]}.")
        discard = re.compile(req.discard_weights) if req.discard_weights else None
        keys = [k for k in a.keys if discard is None or not discard.search(k)]
        # Every output tensor has A's shape, and A's dtype (fp16 for fp32 when saving as half).
        dtypes = {k: _out_dtype(a.dtype(k), req.save_as_half) for k in keys}
        metadata = {"format": "pt"} if req.save_metadata else {}
        if req.save_metadata and req.add_merge_recipe:
            metadata = _recipe(req, hashes, will_be_inpainting, metadata)
        merging, baked_keys = set(_merged_keys(a, b)), set(baked)

        def produce(index: int, key: str) -> torch.Tensor:
            tensor = _merge_tensor(key, req, a, b, c) if b is not None and key in merging else a[key]
            if vae is not None and key in baked_keys:
                tensor = vae[key[len(_VAE_PREFIX):]]
            if progress is not None:
                progress(index + 1, len(keys))
            return tensor.to(dtypes[key]).contiguous()

        _write(target, req.checkpoint_format, [(k, dtypes[k], a.shapes[k]) for k in keys], produce, metadata)
    config = _copy_config(req, target)
    log.info("Checkpoint merged into %s%s", target, f" (config {config.name})" if config else "")
    return target


def _out_dtype(dtype: torch.dtype, half: bool) -> torch.dtype:
    return torch.float16 if half and dtype == torch.float32 else dtype


def _input_channels(tensors: _Tensors) -> int:
    shape = tensors.shapes.get("model.diffusion_model.input_blocks.0.0.weight", (0, 0))
    return shape[1]


_NAMES = {v: k for k, v in _DTYPES.items()}


def _write(target: Path, fmt: str, plan: list[tuple[str, torch.dtype, tuple[int, ...]]],
           produce: Callable[[int, str], torch.Tensor], metadata: dict[str, str]) -> None:
    """Write the tensors `produce` makes, in `plan`'s order, to a temporary file renamed to `target`.

    A .safetensors result is streamed: its header is known from the plan, then each tensor is
    written as it is made and dropped. A .ckpt has no such layout and is built in memory.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.partial")
    try:
        if fmt == "safetensors":
            header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
            offset = 0
            for key, dtype, shape in plan:
                size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
                header[key] = {"dtype": _NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
                offset += size
            encoded = json.dumps(header, separators=(",", ":")).encode()
            encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
            with open(tmp, "wb") as f:
                f.write(len(encoded).to_bytes(8, "little"))
                f.write(encoded)
                for index, (key, _, _) in enumerate(plan):
                    f.write(produce(index, key).reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            state = {key: produce(index, key) for index, (key, _, _) in enumerate(plan)}
            torch.save({"state_dict": state}, tmp)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def request_from_names(registry: ModelRegistry, primary: str, secondary: str | None = None,
                       tertiary: str | None = None, bake_in_vae: str | None = None, **options: Any) -> MergeRequest:
    """A MergeRequest from checkpoint and VAE names as the lists show them ("" / "None" = not given)."""
    def find(name: str | None) -> Path | None:
        return registry.find(name).path if name and name != "None" else None

    if not primary or primary == "None":
        raise UserError("Merging needs a primary model (A).")
    vae = registry.find_vae(bake_in_vae).path if bake_in_vae and bake_in_vae != "None" else None
    return MergeRequest(primary=registry.find(primary).path, secondary=find(secondary), tertiary=find(tertiary),
                        bake_in_vae=vae, **options)
