"""Which VAE a checkpoint is used with, by A1111's rule (its `sd_vae.resolve_vae`).

In order: the command line's VAE (`--vae`) wins; then, when "Selected VAE overrides per-model
preferences" is on and the setting names a VAE (or None), the setting; then the checkpoint's own
preference (the `vae` field of the user metadata file `<checkpoint>.json` beside it); then a VAE
whose file name starts with the checkpoint's name ("found near the checkpoint", unless the setting
overrides it); and last the setting itself. "Automatic" that finds nothing, and "None", mean the
VAE baked into the checkpoint.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from modules.errors import UserError
from modules.models.discovery import CheckpointInfo

log = logging.getLogger(__name__)

AUTOMATIC = ("Automatic", "auto", "")  # "auto" from old config files


@dataclass(frozen=True)
class VaeChoice:
    """The settings (and switch) that pick a VAE, for one request."""

    sd_vae: str = "Automatic"
    overrides_per_model: bool = True  # A1111's sd_vae_overrides_per_model_preferences
    forced: Path | None = None  # --vae: this file for every checkpoint

    @property
    def automatic(self) -> bool:
        return self.sd_vae in AUTOMATIC


@dataclass(frozen=True)
class VaeResolution:
    path: Path | None  # None: the checkpoint's own VAE
    source: str  # why, for the log


def _by_name(vaes: list[CheckpointInfo], name: str) -> Path | None:
    for info in vaes:
        if name in (info.name, info.path.name, info.stem):
            return info.path
    return None


def _from_setting(choice: VaeChoice, vaes: list[CheckpointInfo]) -> VaeResolution | None:
    if choice.sd_vae == "None":
        return VaeResolution(None, "None in settings")
    found = _by_name(vaes, choice.sd_vae)
    if found is not None:
        return VaeResolution(found, "specified in settings")
    if not choice.automatic:
        raise UserError(f"The VAE {choice.sd_vae!r} is not in the VAE folder; choose Automatic, None or one of: "
                        f"{', '.join(info.name for info in vaes) or 'none found'} (then press refresh).")
    return None


def user_metadata_vae(checkpoint: Path) -> str | None:
    """The `vae` of the checkpoint's user metadata file (`<name>.json` beside it), if any."""
    meta = checkpoint.with_suffix(".json")
    if not meta.is_file():
        return None
    try:
        value = json.loads(meta.read_text(encoding="utf-8")).get("vae")
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("Ignoring %s: %s", meta, exc)
        return None
    return value if isinstance(value, str) and value else None


def resolve_vae(checkpoint: Path, vaes: list[CheckpointInfo], choice: VaeChoice) -> VaeResolution:
    """The VAE file to use with `checkpoint` (None: its own), from the VAEs listed and `choice`."""
    if choice.forced is not None:
        return VaeResolution(choice.forced, "from the command line")
    if choice.overrides_per_model and not choice.automatic:
        return _from_setting(choice, vaes) or VaeResolution(None, "not found")
    preferred = user_metadata_vae(checkpoint)
    if preferred is not None and preferred != "Automatic":
        if preferred == "None":
            return VaeResolution(None, "None in the checkpoint's user metadata")
        found = _by_name(vaes, preferred)
        if found is not None:
            return VaeResolution(found, "from the checkpoint's user metadata")
    stem = checkpoint.name.rsplit(".", 1)[0]
    if not choice.overrides_per_model or choice.automatic:
        for info in vaes:
            if info.path.name.startswith(stem):
                return VaeResolution(info.path, "found near the checkpoint")
    return _from_setting(choice, vaes) or VaeResolution(None, "the checkpoint's own")
