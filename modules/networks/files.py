"""LoRA and embedding files on disk: listing, lookup by name, safe reading, A1111's hashes."""

from __future__ import annotations

import hashlib
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from modules.errors import UserError
from modules.models.discovery import list_model_files

LORA_SUFFIXES = (".safetensors", ".pt", ".ckpt")
EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin")


@dataclass(frozen=True)
class NetworkFile:
    """One file in a networks folder; `name` is what a prompt calls it (the file name without suffix)."""

    name: str
    path: Path

    @property
    def is_safetensors(self) -> bool:
        return self.path.suffix.lower() == ".safetensors"


def list_files(folder: Path | None, suffixes: tuple[str, ...]) -> list[NetworkFile]:
    """Files under `folder` (sub-folders too, hidden files skipped), sorted by name."""
    if folder is None:
        return []
    found: dict[str, NetworkFile] = {}
    # The first file of a name wins (the shallowest, then alphabetical), as in A1111.
    for info in sorted(list_model_files([folder], suffixes), key=lambda i: (i.name.count("/"), i.name)):
        found.setdefault(info.stem, NetworkFile(info.stem, info.path))
    return sorted(found.values(), key=lambda f: f.name.lower())


def list_loras(folder: Path | None) -> list[NetworkFile]:
    return list_files(folder, LORA_SUFFIXES)


def list_embeddings(folder: Path | None) -> list[NetworkFile]:
    return list_files(folder, EMBEDDING_SUFFIXES)


def find_lora(folder: Path | None, name: str) -> NetworkFile:
    """The LoRA a prompt names; a UserError naming it and listing the available ones otherwise."""
    files = list_loras(folder)
    for candidates in ([f for f in files if f.name == name], [f for f in files if f.name.lower() == name.lower()]):
        if candidates:
            return candidates[0]
    available = ", ".join(f.name for f in files) or "none"
    where = folder if folder is not None else "the Lora folder"
    raise UserError(f"Unknown LoRA {name!r} in the prompt (<lora:{name}:...>). Available: {available}. "
                    f"Put LoRA files into {where}, or fix the name.")


def read_tensors(path: Path, what: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The contents and metadata of a .safetensors or torch file, read without running any code.

    A torch file may hold nested dicts (embeddings do); a safetensors file gives flat tensors. Any
    failure is a UserError that names the file and says what to do.
    """
    if not path.is_file():
        raise UserError(f"The {what} file {path} does not exist.")
    if path.suffix.lower() == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = dict(f.metadata() or {})
            return load_file(str(path)), metadata
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise UserError(f"The {what} file {path.name} cannot be read ({exc}). It may be truncated or "
                            "damaged: download it again or remove it.") from exc
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(f"Refused to load the {what} file {path.name}: it holds Python objects other than "
                        "tensors, which could run code on this machine. Use a .safetensors version.") from exc
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds of errors for garbage
        raise UserError(f"The {what} file {path.name} cannot be read ({exc}). It may be truncated or "
                        "damaged: download it again or remove it.") from exc
    if not isinstance(obj, dict):
        raise UserError(f"The {what} file {path.name} holds a {type(obj).__name__}, not a dictionary of weights.")
    return obj, {}


def addnet_hash(path: Path) -> str:
    """sha256 of a .safetensors file's tensor data (everything after the header): A1111's LoRA hash,
    which stays the same when only the metadata changes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        header = f.read(8)
        if len(header) != 8:
            raise UserError(f"{path.name} is too short to be a .safetensors file.")
        f.seek(8 + struct.unpack("<Q", header)[0])
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def lora_hash(file: NetworkFile, metadata: dict[str, str]) -> str:
    """The full hash A1111 shows for a LoRA: the one the trainer stored, else the addnet hash of a
    .safetensors file, else the whole file's sha256."""
    stored = metadata.get("sshs_model_hash")
    if stored:
        return stored
    return addnet_hash(file.path) if file.is_safetensors else file_sha256(file.path)

