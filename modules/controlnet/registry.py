"""The ControlNet files the program knows and the few models it keeps loaded between requests.

One `ControlNetRegistry` lives beside the checkpoint registry (in the app context). Loading a
ControlNet costs as much as reading a UNet encoder, so the last few used stay in memory, keyed by
file (and its modification time), the config they were built with (which may take the
checkpoint's attention heads), device and dtype. A changed file or another checkpoint family
loads anew.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from modules.controlnet.compat import fit_to_checkpoint
from modules.controlnet.discovery import ControlNetFile, find_controlnet, list_controlnets
from modules.controlnet.load import LoadedControlNet, controlnet_from_state
from modules.controlnet.preprocessors import DEFAULT_ANNOTATOR_DIR
from modules.controlnet.spec import ControlNetInfo, describe_controlnet
from modules.errors import UserError
from modules.models.arch import ModelArch
from modules.models.load import read_state_dict

log = logging.getLogger(__name__)

# One per unit of the default three; more would keep gigabytes of unused weights.
DEFAULT_CACHE_SIZE = 3
_DESCRIBED = 64


class ControlNetRegistry:
    def __init__(self, folders: list[Path], cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self.folders = [Path(f) for f in folders]
        self.cache_size = max(0, int(cache_size))
        self.files: list[ControlNetFile] = []
        self._cache: OrderedDict[tuple[Any, ...], LoadedControlNet] = OrderedDict()
        self._described: dict[tuple[str, int], ControlNetInfo] = {}
        self.lock = threading.RLock()
        self.refresh()

    @property
    def annotator_dir(self) -> Path:
        """Where preprocessors find their weight files: the `annotators/` folder of the first model
        folder that has one (--controlnet-dir, the data folder's, the code folder's), else the first's."""
        for folder in self.folders:
            if (folder / "annotators").is_dir():
                return folder / "annotators"
        return self.folders[0] / "annotators" if self.folders else DEFAULT_ANNOTATOR_DIR

    def refresh(self) -> list[ControlNetFile]:
        """Scan the folders again (files dropped in after start-up appear)."""
        self.files = list_controlnets(self.folders)
        return self.files

    def titles(self) -> list[str]:
        """`name [hash]` of every file, as the extension lists models."""
        return [f.title() for f in self.files]

    def find(self, name: str, where: str = "ControlNet") -> ControlNetFile:
        """The file a unit names (title, stem or relative name; the bracketed hash is not compared)."""
        found = find_controlnet(self.files, name)
        if found is None:
            self.refresh()  # a file added since the last scan
            found = find_controlnet(self.files, name)
        if found is None:
            known = ", ".join(f.model_name for f in self.files) or "none: the folder is empty"
            folders = ", ".join(str(f) for f in self.folders)
            raise UserError(f"{where}: unknown ControlNet model {name!r}. Known models: {known}. "
                            f"Put the file in {folders} (and refresh the list).")
        return found

    def load(self, file: ControlNetFile, arch: ModelArch, checkpoint_name: str, device: torch.device,
             dtype: torch.dtype) -> LoadedControlNet:
        """The ControlNet of `file`, built to fit the checkpoint (`UserError` when it cannot)."""
        path = file.path
        with self.lock:
            stamp = (str(path.resolve()), path.stat().st_mtime_ns)
            state = None
            info = self._described.get(stamp)
            if info is None:
                state, _ = read_state_dict(path)
                info = describe_controlnet({k: tuple(v.shape) for k, v in state.items()}, path)
                self._described[stamp] = info
                if len(self._described) > _DESCRIBED:  # descriptions are small; bound them anyway
                    self._described.pop(next(iter(self._described)))
            info = fit_to_checkpoint(info, arch, checkpoint_name)
            key = (*stamp, info.config_items, str(device), dtype)
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            if state is None:
                state, _ = read_state_dict(path)
            log.info("Loading ControlNet %s (%s, %s)", path.name, info.family_name, info.config_source)
            model = controlnet_from_state(state, info, device, dtype, source=path.name)
            loaded = LoadedControlNet(info, model, path)
            if self.cache_size:
                self._cache[key] = loaded
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
            return loaded

    def clear(self) -> None:
        """Drop every loaded ControlNet (to free memory)."""
        with self.lock:
            self._cache.clear()
            self._described.clear()
