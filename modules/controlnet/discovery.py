"""Find ControlNet files: `models/ControlNet/` under the data folder (sub-folders allowed) and any
extra folder (`--controlnet-dir`), skipping `annotators/` (preprocessor weights, not ControlNets).

Names follow A1111's ControlNet extension, because API clients and infotexts send them back:
`<file stem> [<hash>]`, where the hash is A1111's legacy 8-digit model hash (sha256 of the 64 KiB
at offset 1 MiB). It reads 64 KiB, so it needs no cache; the full sha256 (`short_hash`, 10 digits)
is there as for checkpoints.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from modules.models.discovery import CheckpointInfo, list_model_files

CONTROLNET_SUFFIXES = (".safetensors", ".pth", ".ckpt")
ANNOTATORS = "annotators"


@dataclass(frozen=True)
class ControlNetFile(CheckpointInfo):
    """A ControlNet file found in a ControlNet folder."""

    @property
    def model_name(self) -> str:
        """The file's stem: what A1111's extension calls the model."""
        return self.path.stem

    def legacy_hash(self) -> str:
        with open(self.path, "rb") as f:
            f.seek(0x100000)
            return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]

    def title(self, cache: object = None) -> str:  # same call shape as CheckpointInfo.title
        """`name [hash]` as the extension lists it, e.g. `control_v11p_sd15_canny [d14c016b]`."""
        return f"{self.model_name} [{self.legacy_hash()}]"


def controlnet_dirs(data_dir: Path, extra_dir: Path | None = None) -> list[Path]:
    """The folders to scan: `extra_dir` (the `--controlnet-dir` option) first, then the data folder's."""
    dirs = [Path(data_dir) / "models" / "ControlNet"]
    if extra_dir is not None:
        dirs.insert(0, Path(extra_dir).expanduser().resolve())
    return dirs


def list_controlnets(folders: list[Path]) -> list[ControlNetFile]:
    """Every ControlNet file under `folders`, sorted by name; `annotators/` at a folder's top is skipped."""
    found = []
    for info in list_model_files(folders, CONTROLNET_SUFFIXES):
        relative = info.path.relative_to(info.root)
        if relative.parts and relative.parts[0] == ANNOTATORS and len(relative.parts) > 1:
            continue
        found.append(ControlNetFile(path=info.path, root=info.root))
    return found


def find_controlnet(files: list[ControlNetFile], query: str) -> ControlNetFile | None:
    """The file a UI or API client means: its title, its stem or its relative name, ignoring case and
    the bracketed hash (a client may send the hash of another copy of the same model)."""
    query = query.strip()
    if not query or query.lower() == "none":
        return None
    for f in files:
        if f.title() == query:
            return f
    bare = query.split(" [")[0].strip().lower()
    for f in files:
        if bare in (f.model_name.lower(), f.name.lower(), Path(f.name).with_suffix("").as_posix().lower()):
            return f
    return None
