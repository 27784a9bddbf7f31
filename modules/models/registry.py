"""Which checkpoint is loaded now: lookup by name, switching, freeing, the default choice.

One `ModelRegistry` lives in the app context. Generation asks it for the current model; the UI
and the API ask it to list, refresh and switch. Loading happens under a lock so two requests never
load two models at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from modules.devices import DevicePolicy, free_memory
from modules.errors import CheckpointError, UserError
from modules.models.discovery import (
    CHECKPOINT_SUFFIXES,
    CheckpointInfo,
    HashCache,
    list_checkpoints,
    list_vaes,
)
from modules.models.load import SDModel, load_checkpoint, load_vae_file, restore_vae_weights, vae_weights
from modules.models.vae_choice import VaeChoice, VaeResolution, resolve_vae

log = logging.getLogger(__name__)

DEFAULT_MODEL_STEM = "default-shapes"


class ModelRegistry:
    def __init__(self, checkpoint_dirs: list[Path], vae_dirs: list[Path], policy: DevicePolicy,
                 hash_cache: HashCache) -> None:
        self.checkpoint_dirs = checkpoint_dirs
        self.vae_dirs = vae_dirs
        self.policy = policy
        self.hashes = hash_cache
        self.lock = threading.RLock()
        self._current: SDModel | None = None
        self._current_info: CheckpointInfo | None = None
        # A separate VAE file swapped into the current model, and the model's own VAE weights (on the
        # CPU) to put back when a request wants those again.
        self._base_vae: dict | None = None
        # A second model used beside the current one (the refiner), kept for the next request.
        self._secondary: tuple[CheckpointInfo, SDModel] | None = None
        self.checkpoints: list[CheckpointInfo] = []
        self.vaes: list[CheckpointInfo] = []
        # Files given by path (--ckpt) that lie outside the folders: listed like the others.
        self._added: list[CheckpointInfo] = []
        self.preferred: CheckpointInfo | None = None  # the --ckpt choice, loaded first
        self.refresh()

    # ------------------------------------------------------------------ listing
    def refresh(self) -> list[CheckpointInfo]:
        """Scan the folders again (files dropped in after start-up appear)."""
        found = list_checkpoints(self.checkpoint_dirs)
        known = {info.path.resolve() for info in found}
        self.checkpoints = found + [info for info in self._added if info.path.resolve() not in known]
        # As A1111: VAEs are the files of the VAE folder and the *.vae.* files among the checkpoints
        # (which are not checkpoints).
        beside = [info for info in found if _is_vae_file(info.path)]
        self.checkpoints = [info for info in self.checkpoints if not _is_vae_file(info.path)]
        self.vaes = list_vaes(self.vae_dirs) + beside
        return self.checkpoints

    def add_file(self, path: Path, prefer: bool = True) -> CheckpointInfo:
        """Register a checkpoint given by path (A1111's `--ckpt`), inside the folders or not.

        A file inside a checkpoint folder keeps its usual name; one elsewhere is listed by its file
        name. `prefer` makes it the model `current()` loads first.
        """
        path = Path(path).expanduser()
        if not path.is_file():
            raise CheckpointError(f"Checkpoint file not found: {path}")
        if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
            raise CheckpointError(f"{path.name}: unsupported file type {path.suffix!r}; use .safetensors or .ckpt.")
        resolved = path.resolve()
        info = next((i for i in self.refresh() if i.path.resolve() == resolved), None)
        if info is None:
            info = CheckpointInfo(path=resolved, root=resolved.parent)
            self._added.append(info)
            self.refresh()
        if prefer:
            self.preferred = info
        return info

    def find(self, name: str) -> CheckpointInfo:
        """A checkpoint by title (`name [hash]`), name, file name, stem or short hash; never a path."""
        name = name.strip()
        if not name:
            raise UserError("No checkpoint name given.")
        bare = name.split(" [")[0] if name.endswith("]") else name
        if ".." in Path(bare).parts or Path(bare).is_absolute() or "\\" in bare:
            raise UserError(f"Checkpoint names are names from the list, not paths: {name!r} was refused.")
        for refresh in (False, True):
            if refresh:
                self.refresh()
            for info in self.checkpoints:
                if bare in (info.name, info.path.name, info.stem, info.name.rsplit(".", 1)[0]):
                    return info
            hashed = name.strip("[]")
            if len(hashed) == 10 and all(c in "0123456789abcdef" for c in hashed.lower()):
                for info in self.checkpoints:
                    if info.short_hash(self.hashes) == hashed.lower():
                        return info
        available = ", ".join(info.name for info in self.checkpoints) or "none"
        raise UserError(f"Unknown checkpoint {name!r}. Available: {available}. "
                        "Put checkpoints into models/Stable-diffusion and press refresh.")

    def default_checkpoint(self) -> CheckpointInfo | None:
        """The --ckpt file if given, else the user's first checkpoint, else the embedded default model."""
        if self.preferred is not None:
            return self.preferred
        user = [i for i in self.checkpoints if i.stem != DEFAULT_MODEL_STEM]
        if user:
            return user[0]
        return self.checkpoints[0] if self.checkpoints else None

    def find_vae(self, name: str) -> CheckpointInfo:
        for info in self.vaes:
            if name in (info.name, info.path.name, info.stem):
                return info
        available = ", ".join(info.name for info in self.vaes) or "none"
        raise UserError(f"Unknown VAE {name!r}. Available: Automatic, None, {available}.")

    # ------------------------------------------------------------------ loading
    @property
    def current_info(self) -> CheckpointInfo | None:
        return self._current_info

    def current(self) -> SDModel:
        """The loaded model, loading the default one on first use."""
        with self.lock:
            if self._current is None:
                info = self.default_checkpoint()
                if info is None:
                    raise UserError("No checkpoint found. Put a .safetensors or .ckpt file into "
                                    f"{self.checkpoint_dirs[0]} and press refresh.")
                self.load(info)
            assert self._current is not None
            return self._current

    def load(self, info_or_name: CheckpointInfo | str) -> SDModel:
        """Switch to a checkpoint (no-op when it is already loaded); the previous one is freed first."""
        info = self.find(info_or_name) if isinstance(info_or_name, str) else info_or_name
        with self.lock:
            if self._current is not None and self._current_info == info:
                return self._current
            previous = self._current
            self._current, self._current_info, self._base_vae = None, None, None
            del previous
            free_memory()
            start = time.perf_counter()
            model = load_checkpoint(info.path, self.policy)
            self._current, self._current_info = model, info
            log.info("Loaded %s in %.1fs on %s (%s)", info.name, time.perf_counter() - start,
                     self.policy.describe(), model.config_reason)
            return model

    def use_vae(self, choice: VaeChoice) -> VaeResolution:
        """Give the current model the VAE that `choice` picks for it (A1111's rule), swapping weights
        only when that differs from the VAE it has now."""
        with self.lock:
            model, info = self.current(), self._current_info
            assert info is not None
            wanted = resolve_vae(info.path, self.vaes, choice)
            if wanted.path == model.vae_path:
                return wanted
            if wanted.path is None:
                assert self._base_vae is not None
                restore_vae_weights(model, self._base_vae)
                log.info("VAE: %s's own", info.name)
            else:
                if self._base_vae is None:
                    self._base_vae = vae_weights(model)
                try:
                    load_vae_file(wanted.path, model)
                except Exception:
                    restore_vae_weights(model, self._base_vae)  # a file that failed half-way leaves nothing
                    raise
                log.info("VAE: %s (%s)", wanted.path.name, wanted.source)
            return wanted

    def set_vae_tiling(self, on: bool) -> None:
        """Tiled VAE decoding at every size, for the loaded models and the ones loaded later."""
        with self.lock:
            if self.policy.vae_tiling == on:
                return
            self.policy = replace(self.policy, vae_tiling=on)
            for model in (self._current, self._secondary[1] if self._secondary else None):
                if model is not None:
                    model.vae.enable_tiling() if on else model.vae.disable_tiling()

    def secondary(self, info: CheckpointInfo, loader: Callable[[Path, DevicePolicy], SDModel] = load_checkpoint
                  ) -> SDModel:
        """A model used beside the current one (the refiner): loaded on first use and kept, so a series
        of refined generations loads it once; asking for another one frees it first."""
        with self.lock:
            if self._secondary is not None and self._secondary[0] == info:
                return self._secondary[1]
            self.drop_secondary()
            model = loader(info.path, self.policy)
            log.info("Loaded %s beside %s", info.name, self._current_info.name if self._current_info else "-")
            self._secondary = (info, model)
            return model

    def drop_secondary(self) -> None:
        with self.lock:
            if self._secondary is not None:
                self._secondary = None
                free_memory()

    def short_hash(self, info: CheckpointInfo | None = None) -> str:
        info = info or self._current_info
        return info.short_hash(self.hashes) if info else ""


def _is_vae_file(path: Path) -> bool:
    return path.name.lower().rsplit(".", 2)[-2:-1] == ["vae"]
