"""Textual-inversion embedding files → vectors for the loaded model's text encoders.

Formats read (all without running code: safetensors, or torch.load with weights_only=True):
    A1111 / SD 1.x  .pt   {'string_to_param': {'*': tensor[n, dim]}, 'name': ..., 'step': ...}
    A1111           .safetensors {'emb_params': tensor[n, dim]}
    diffusers       .bin / .safetensors  {'<token>': tensor[dim] or [n, dim]}   (one tensor)
    SDXL            .safetensors {'clip_l': [n, 768], 'clip_g': [n, 1280]}
An embedding is used only with the model it fits (the vector width of every text encoder); others are
skipped with a message in the log, as in A1111.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from modules.errors import UserError
from modules.models.arch import TextEncoderSpec
from modules.networks.files import NetworkFile, file_sha256, read_tensors
from modules.text.embeddings import EmbeddingVectors

log = logging.getLogger(__name__)


def read_embedding(file: NetworkFile) -> dict[str, torch.Tensor]:
    """The vectors of an embedding file: {"": [n, dim]} or, for SDXL, {"clip_l": ..., "clip_g": ...}."""
    data, _ = read_tensors(file.path, "embedding")
    source = f"The embedding file {file.path.name}"
    if "clip_l" in data and "clip_g" in data:
        return {"clip_l": _matrix(data["clip_l"], source), "clip_g": _matrix(data["clip_g"], source)}
    if isinstance(data.get("string_to_param"), dict) and data["string_to_param"]:
        return {"": _matrix(next(iter(data["string_to_param"].values())), source)}
    if "emb_params" in data:
        return {"": _matrix(data["emb_params"], source)}
    tensors = [v for v in data.values() if isinstance(v, torch.Tensor)]
    if len(tensors) == 1:
        return {"": _matrix(tensors[0], source)}
    raise UserError(f"{source} is not a textual-inversion embedding (expected string_to_param, emb_params, "
                    f"clip_l/clip_g or a single tensor; found {', '.join(list(map(str, data))[:5])}).")


def _matrix(value: Any, source: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.ndim not in (1, 2) or value.numel() == 0:
        raise UserError(f"{source} does not hold a vector or a [vectors, width] matrix.")
    return value.detach().float().reshape(-1, value.shape[-1])


def for_model(name: str, vectors: dict[str, torch.Tensor], specs: Sequence[TextEncoderSpec]
              ) -> EmbeddingVectors | None:
    """The embedding as one vector set per text encoder of the model, or None when it does not fit."""
    widths = [spec.hidden_size for spec in specs]
    if "" in vectors and len(specs) == 1 and vectors[""].shape[1] == widths[0]:
        return EmbeddingVectors(name, (vectors[""],))
    if "clip_l" in vectors and len(specs) == 2:
        parts = (vectors["clip_l"], vectors["clip_g"])
        if [p.shape[1] for p in parts] == widths and parts[0].shape[0] == parts[1].shape[0]:
            return EmbeddingVectors(name, parts)
    return None


def load_embeddings(files: Sequence[NetworkFile], specs: Sequence[TextEncoderSpec]
                    ) -> tuple[dict[str, EmbeddingVectors], dict[str, str]]:
    """The embeddings among `files` that fit the model, and each one's short hash (A1111's 12 digits)."""
    found: dict[str, EmbeddingVectors] = {}
    hashes: dict[str, str] = {}
    for file in files:
        emb = for_model(file.name, read_embedding(file), specs)
        if emb is None:
            widths = "/".join(str(s.hidden_size) for s in specs)
            log.warning("Embedding %s does not fit this model (text encoder width %s); it is not used.",
                        file.name, widths)
            continue
        found[file.name] = emb
        hashes[file.name] = file_sha256(file.path)[:12]
    return found, hashes
