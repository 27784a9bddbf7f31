"""User settings persisted in `config.json` (the Settings tab and the API's /options edit them)."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from modules.errors import UserError


@dataclass
class Options:
    """Settings with their defaults. Field names follow the API's option keys where one exists."""

    sd_model_checkpoint: str = ""  # last selected checkpoint title/name
    sd_vae: str = "Automatic"
    # On: a VAE chosen in sd_vae wins over a checkpoint's own preference (its user metadata, a VAE named
    # after it); Automatic always lets those choose. Off: the setting is the last resort (A1111's rule).
    sd_vae_overrides_per_model_preferences: bool = True
    add_vae_name_to_info: bool = True
    add_vae_hash_to_info: bool = True
    default_sampler: str = "DPM++ 2M"
    default_scheduler: str = "Automatic"
    default_steps: int = 20
    CLIP_stop_at_last_layers: int = 1  # A1111's name for CLIP skip
    # Saving (A1111's keys). samples_save off: generated pictures are shown, not written.
    samples_save: bool = True
    samples_format: str = "png"
    samples_filename_pattern: str = "[seed]"
    save_images_add_number: bool = True  # the NNNNN- before the pattern (off: a clash gets "-1", never overwrites)
    grid_save: bool = False
    jpeg_quality: int = 80  # JPEG and WebP quality, 1-100
    # Paths (relative ones are in the data folder). outdir_samples, when set, takes every generated
    # picture directly, as A1111; otherwise each tab's folder, and empty means outputs/<mode>-images.
    outdir_samples: str = ""
    outdir_txt2img_samples: str = ""
    outdir_img2img_samples: str = ""  # img2img, inpaint and outpaint (A1111's img2img tab)
    outdir_extras_samples: str = ""
    outdir_grids: str = ""
    outdir_txt2img_grids: str = ""
    outdir_img2img_grids: str = ""
    outdir_save: str = ""  # the results' Save button; empty: log/images
    # Infotext: written into the files, and with which model fields.
    enable_pnginfo: bool = True
    add_model_hash_to_info: bool = True
    add_model_name_to_info: bool = True
    # The API returns the grid first when a request makes several pictures (and saves them).
    return_grid: bool = True
    # The UI: send the seed / the picture's size with "Send to" from a result gallery; show no pictures.
    send_seed: bool = True
    send_size: bool = True
    do_not_show_images: bool = False
    # img2img: the noise added to the picture is multiplied by this (A1111's "Noise multiplier for img2img").
    initial_noise_multiplier: float = 1.0
    # Token merging (tomesd): the share of tokens merged in full-resolution self-attention; faster, less
    # detail. 0 = off; img2img's and the hires. fix pass's own ratios fall back to token_merging_ratio.
    token_merging_ratio: float = 0.0
    token_merging_ratio_img2img: float = 0.0
    token_merging_ratio_hr: float = 0.0
    # img2img: the upscaler that enlarges a picture smaller than the size asked (empty: Lanczos).
    upscaler_for_img2img: str = ""
    live_previews_enable: bool = True
    # Decode latents in tiles at every size (less memory; --vae-tiling forces it on).
    vae_tiling: bool = False
    show_progress_every_n_steps: int = 2
    # Sampler parameters (A1111's keys): they change pictures, and infotexts record them.
    eta_noise_seed_delta: int = 0  # ENSD: ancestral step noise from seed + this (31337 is common)
    # Where noise comes from: GPU (the device's generator on CUDA, else the CPU's), CPU (the same pictures on
    # every device), NV (an NVIDIA GPU's numbers computed anywhere: pictures made with GPU there).
    randn_source: str = "GPU"
    sgm_noise_multiplier: bool = False  # start from noise * sqrt(1 + sigma_0^2), as the SGM code
    always_discard_next_to_last_sigma: bool = False
    eta_ancestral: float = 1.0  # Euler a's step noise (0 = none); a request's `eta` wins
    eta_ddim: float = 0.0  # DDIM's eta (0 = deterministic); a request's `eta` wins
    # Euler's sigma churn (k-diffusion's): noise added before each step within [s_tmin, s_tmax] (0 = no limit).
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = 0.0
    s_noise: float = 1.0
    rho: float = 0.0  # Karras / Polyexponential rho; 0 = the schedule's own (7 / 1)
    beta_dist_alpha: float = 0.6  # Beta schedule
    beta_dist_beta: float = 0.6
    # img2img runs exactly its steps (at the end of a schedule stretched to steps / strength), as hires. fix.
    img2img_fix_steps: bool = False
    # Decode again in fp32 when a reduced-precision VAE decode gives NaN/inf (A1111's
    # "Automatically revert VAE to 32-bit floats").
    auto_vae_precision: bool = True
    # ControlNet units offered in each tab and accepted per request (the extension's setting, default 3).
    control_net_unit_count: int = 3
    # Face restoration (A1111's keys): on for every generation, which model, CodeFormer's weight
    # (0 = strongest effect, 1 = weakest), and whether the models leave the device after each use.
    face_restoration: bool = False
    face_restoration_model: str = "CodeFormer"
    code_former_weight: float = 0.5
    face_restoration_unload: bool = False
    # The job queue: how often a job is tried when the server stops during it, and whether the queue
    # starts paused after such a stop (so that a job that crashes the server can be looked at first).
    queue_max_attempts: int = 3
    queue_paused_after_crash: bool = False
    disabled_extensions: list[str] = field(default_factory=list)
    extension_settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# Bounds and choices of the options that have them; checked for the Settings tab, POST /options and
# override_settings alike.
_RANGES: dict[str, tuple[float, float]] = {
    "jpeg_quality": (1, 100), "show_progress_every_n_steps": (1, 1000), "default_steps": (1, 150),
    "CLIP_stop_at_last_layers": (1, 12), "control_net_unit_count": (1, 10), "code_former_weight": (0.0, 1.0),
    "initial_noise_multiplier": (0.0, 1.5), "rho": (0.0, 100.0), "queue_max_attempts": (1, 100),
    "eta_ancestral": (0.0, 1.0), "eta_ddim": (0.0, 1.0), "s_churn": (0.0, 100.0), "s_tmin": (0.0, 10.0),
    "s_tmax": (0.0, 999.0), "s_noise": (0.0, 1.1), "token_merging_ratio": (0.0, 0.9),
    "token_merging_ratio_img2img": (0.0, 0.9), "token_merging_ratio_hr": (0.0, 0.9),
}
_CHOICES: dict[str, tuple[str, ...]] = {
    "samples_format": ("png", "jpg", "jpeg", "webp"), "randn_source": ("GPU", "CPU", "NV"), "face_restoration_model": ("CodeFormer", "GFPGAN"),
}


def _check_value(key: str, value: Any) -> Any:
    if key in _RANGES:
        low, high = _RANGES[key]
        if not low <= value <= high:
            raise UserError(f"Option {key} must be from {low:g} to {high:g}, got {value!r}.")
    if key in _CHOICES:
        for choice in _CHOICES[key]:
            if value.lower().lstrip(".") == choice.lower():
                return choice
        raise UserError(f"Option {key} must be one of {', '.join(_CHOICES[key])}, got {value!r}.")
    return value


def checked_changes(changes: dict[str, Any]) -> dict[str, Any]:
    """`changes` with values in the options' types; a UserError names an unknown key or a bad value."""
    defaults = Options()
    known = {f.name for f in fields(Options)}
    unknown = [k for k in changes if k not in known]
    if unknown:
        raise UserError(f"Unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
    out: dict[str, Any] = {}
    for key, value in changes.items():
        current = getattr(defaults, key)
        if isinstance(current, bool):
            if not isinstance(value, bool):
                raise UserError(f"Option {key} must be true or false, got {value!r}.")
        elif isinstance(current, int):
            if isinstance(value, bool) or not isinstance(value, int):
                raise UserError(f"Option {key} must be a whole number, got {value!r}.")
        elif isinstance(current, float):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise UserError(f"Option {key} must be a number, got {value!r}.")
            value = float(value)
        elif isinstance(current, str) and not isinstance(value, str):
            raise UserError(f"Option {key} must be text, got {value!r}.")
        out[key] = _check_value(key, value)
    return out


class OptionsStore:
    """Options plus their file; writes are atomic so a crash never leaves a broken config.json."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.options = Options()
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise UserError(f"{path} is not valid JSON ({exc}); fix or delete it to start with defaults.") from exc
            known = {f.name for f in fields(Options)}
            for key, value in data.items():
                if key in known:
                    setattr(self.options, key, value)

    def update(self, changes: dict[str, Any], save: bool = True) -> None:
        """Apply changes (unknown keys and values of the wrong type are refused, nothing applied)."""
        changes = checked_changes(changes)
        with self._lock:
            for key, value in changes.items():
                setattr(self.options, key, value)
            if save:
                self.save()

    def effective(self, overrides: dict[str, Any] | None = None) -> Options:
        """A copy of the options with one request's `override_settings` applied (checked)."""
        with self._lock:
            return replace(self.options, **checked_changes(overrides or {}))

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.options.to_dict(), indent=2), encoding="utf-8")
        os.replace(tmp, self.path)
