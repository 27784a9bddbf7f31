"""Find checkpoints and VAE files in their folders, with names and lazily cached hashes."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
VAE_SUFFIXES = (".safetensors", ".ckpt", ".pt")


class HashCache:
    """sha256 of model files, stored in a JSON file and reused while size and mtime are unchanged.

    A 7 GB checkpoint takes tens of seconds to hash, so it is hashed once, when a hash is first asked for.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, object]] = {}
        if path and path.is_file():
            try:
                self._entries = json.loads(path.read_text(encoding="utf-8")).get("hashes-sha256", {})
            except (OSError, ValueError):
                self._entries = {}  # a damaged cache is only a cache: start again

    def sha256(self, file: Path) -> str:
        stat = file.stat()
        key = str(file.resolve())
        with self._lock:
            entry = self._entries.get(key)
            if entry and entry.get("mtime") == stat.st_mtime and entry.get("size") == stat.st_size:
                return str(entry["sha256"])
        digest = hashlib.sha256()
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        value = digest.hexdigest()
        with self._lock:
            self._entries[key] = {"mtime": stat.st_mtime, "size": stat.st_size, "sha256": value}
            self._save()
        return value

    def _save(self) -> None:
        if not self.path:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"hashes-sha256": self._entries}, indent=1), encoding="utf-8")
        os.replace(tmp, self.path)


@dataclass(frozen=True)
class CheckpointInfo:
    """A model file found in a models folder."""

    path: Path
    root: Path

    @property
    def name(self) -> str:
        """Path relative to its folder, with forward slashes: `sub/model.safetensors`."""
        return self.path.relative_to(self.root).as_posix()

    @property
    def stem(self) -> str:
        return self.path.stem

    @property
    def config(self) -> Path | None:
        from modules.models.detect import beside_yaml

        return beside_yaml(self.path)

    def short_hash(self, cache: HashCache) -> str:
        """First 10 hex digits of the file's sha256 (the `Model hash` users know)."""
        return cache.sha256(self.path)[:10]

    def title(self, cache: HashCache | None = None) -> str:
        return f"{self.name} [{self.short_hash(cache)}]" if cache else self.name


def list_model_files(folders: list[Path], suffixes: tuple[str, ...]) -> list[CheckpointInfo]:
    """Every model file under `folders` (sub-folders included), sorted by name, hidden files skipped."""
    found: dict[Path, CheckpointInfo] = {}
    for root in folders:
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for filename in filenames:
                path = Path(dirpath) / filename
                if filename.startswith(".") or path.suffix.lower() not in suffixes:
                    continue
                found.setdefault(path.resolve(), CheckpointInfo(path=path, root=root))
    return sorted(found.values(), key=lambda info: info.name.lower())


def list_checkpoints(folders: list[Path]) -> list[CheckpointInfo]:
    return list_model_files(folders, CHECKPOINT_SUFFIXES)


def list_vaes(folders: list[Path]) -> list[CheckpointInfo]:
    return list_model_files(folders, VAE_SUFFIXES)
