"""The one application context: paths, settings, device policy, models and the running job.

Created once in webui.py (or by a test) and passed to the UI, the API and the command line. Nothing
else in the program holds mutable state that others import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from modules.controlnet.discovery import controlnet_dirs
from modules.controlnet.registry import ControlNetRegistry
from modules.controlnet.units import unit_count, validate_units
from modules.devices import DevicePolicy
from modules.errors import UserError
from modules.faces.files import FaceFolders
from modules.faces.restore import FaceRestorers, FaceStep
from modules.images import FORMATS
from modules.models.discovery import HashCache
from modules.models.registry import ModelRegistry
from modules.models.vae_choice import VaeChoice
from modules.options import Options, OptionsStore
from modules.processing.control import GenerationControl
from modules.processing.output import OutputSettings, extras_dir, output_settings
from modules.processing.params import GenerationParams
from modules.processing.run import GenerationResult, ImageHook, generate
from modules.processing.token_merging import token_merging_ratios
from modules.queue.runner import QueueRunner
from modules.sampling.samplers import SamplerSettings
from modules.sampling.schedules import ScheduleSettings
from modules.styles import StyleStore
from modules.upscalers import UpscalerRegistry

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Paths:
    """Where things live. `data_dir` holds user data (models, outputs, config); code stays in ROOT."""

    data_dir: Path
    ckpt_dirs: tuple[Path, ...]
    outdir: Path
    controlnet_extra_dir: Path | None = None  # --controlnet-dir

    @classmethod
    def make(cls, data_dir: Path | None = None, ckpt_dir: Path | None = None, outdir: Path | None = None,
             controlnet_dir: Path | None = None) -> Paths:
        data = (data_dir or ROOT).resolve()
        dirs = [data / "models" / "Stable-diffusion"]
        if data != ROOT:  # the embedded default model ships in the code folder
            dirs.append(ROOT / "models" / "Stable-diffusion")
        if ckpt_dir:
            dirs.insert(0, ckpt_dir.resolve())
        return cls(data_dir=data, ckpt_dirs=tuple(dirs), outdir=(outdir or data / "outputs").resolve(),
                   controlnet_extra_dir=controlnet_dir.resolve() if controlnet_dir else None)

    @property
    def controlnet_dir(self) -> Path:
        """models/ControlNet in the data folder (its `annotators/` holds the preprocessors' weights)."""
        return self.data_dir / "models" / "ControlNet"

    @property
    def controlnet_dirs(self) -> tuple[Path, ...]:
        """Every folder ControlNet files are looked for in: --controlnet-dir, the data folder's, and the
        code folder's, where the embedded default model's ControlNet ships."""
        dirs = controlnet_dirs(self.data_dir, self.controlnet_extra_dir)
        shipped = ROOT / "models" / "ControlNet"
        return tuple(dirs if shipped in dirs else [*dirs, shipped])

    @property
    def vae_dir(self) -> Path:
        return self.data_dir / "models" / "VAE"

    @property
    def lora_dir(self) -> Path:
        return self.data_dir / "models" / "Lora"

    @property
    def upscaler_dirs(self) -> tuple[Path, ...]:
        """Upscaler model files (ESRGAN, RealESRGAN, SwinIR, ...), as A1111's folders."""
        return (self.data_dir / "models" / "ESRGAN", self.data_dir / "models" / "RealESRGAN")

    @property
    def embeddings_dir(self) -> Path:
        return self.data_dir / "embeddings"

    @property
    def extensions_dir(self) -> Path:
        return self.data_dir / "extensions"

    @property
    def config_file(self) -> Path:
        return self.data_dir / "config.json"

    @property
    def styles_file(self) -> Path:
        return self.data_dir / "styles.csv"

    @property
    def cache_file(self) -> Path:
        return self.data_dir / "cache.json"


@dataclass
class AppContext:
    paths: Paths
    policy: DevicePolicy
    options: OptionsStore
    registry: ModelRegistry
    control: GenerationControl = field(default_factory=GenerationControl)
    image_hooks: list[ImageHook] = field(default_factory=list)
    styles: StyleStore = field(default_factory=StyleStore)  # styles.csv in the data folder
    upscalers: UpscalerRegistry = field(default_factory=UpscalerRegistry)
    controlnets: ControlNetRegistry = field(default_factory=lambda: ControlNetRegistry([]))
    faces: FaceRestorers = field(default_factory=lambda: FaceRestorers(FaceFolders.under(ROOT)))
    queue: QueueRunner | None = None  # the durable job queue, opened by the API layer (api/jobs.open_queue)
    forced_vae: Path | None = None  # --vae: used with every checkpoint, whatever the settings say

    @classmethod
    def create(cls, paths: Paths, policy: DevicePolicy) -> AppContext:
        options = OptionsStore(paths.config_file)
        registry = ModelRegistry(list(paths.ckpt_dirs), [paths.vae_dir], policy, HashCache(paths.cache_file))
        control = GenerationControl(preview_every=options.options.show_progress_every_n_steps
                                    if options.options.live_previews_enable else 0)
        upscalers = UpscalerRegistry(list(paths.upscaler_dirs), policy.device,
                                     policy.dtype if policy.device.type == "cuda" else torch.float32)
        return cls(paths=paths, policy=policy, options=options, registry=registry, control=control,
                   upscalers=upscalers, styles=StyleStore(paths.styles_file),
                   controlnets=ControlNetRegistry(list(paths.controlnet_dirs)),
                   faces=FaceRestorers(FaceFolders.under(paths.data_dir), policy.device))

    @property
    def outdir(self) -> Path:
        """The outputs folder (`--outdir`, else outputs/ in the data folder) that the defaults live under."""
        return self.paths.outdir

    def output(self, mode: str, options: Options | None = None) -> OutputSettings:
        """Where and how a request of `mode` saves (the Saving / Paths / Infotext settings in force)."""
        return output_settings(options or self.options.options, mode, self.paths.outdir, self.paths.data_dir)

    @property
    def extras_dir(self) -> Path:
        return extras_dir(self.options.options, self.paths.outdir, self.paths.data_dir)

    def generate(self, params: GenerationParams, on_saved: Callable[[Path, str], None] | None = None) -> GenerationResult:
        """The one entry for the UI, the API and the CLI: generation through the processing layer,
        one request at a time on the device (the registry's lock queues the others)."""
        options = self.options.effective(params.override_settings)  # refuses bad overrides first
        validate_units(params.controlnet_units, unit_count(options))  # the ControlNet units setting
        if options.samples_format.lower().lstrip(".") not in FORMATS:
            raise UserError(f"The setting samples_format is {options.samples_format!r}; use one of "
                            f"{', '.join(FORMATS)}.")
        self.registry.set_vae_tiling(self.policy.vae_tiling or options.vae_tiling)
        faces = self.face_step(params, options)
        if not options.samples_save:  # A1111's "Always save all generated images" off
            params = replace(params, save=False)
        first, hires_ratio = token_merging_ratios(options, params.override_settings, params.mode != "txt2img")
        sampling = replace(sampler_settings(options), token_merging=first, token_merging_hr=hires_ratio)
        return generate(self.styles.apply_to(params), self.registry, None, self.control, self.image_hooks,
                        lora_dir=self.paths.lora_dir, embeddings_dir=self.paths.embeddings_dir,
                        upscalers=self.upscalers, sampling=sampling, controlnets=self.controlnets,
                        auto_vae_precision=options.auto_vae_precision, restore_faces=faces,
                        output=self.output(params.mode, options), on_saved=on_saved,
                        vae=self.vae_choice(options))

    def vae_choice(self, options: Options | None = None) -> VaeChoice:
        """What picks the VAE under `options` (the saved settings when not given)."""
        options = options or self.options.options
        return VaeChoice(sd_vae=options.sd_vae or "Automatic",
                         overrides_per_model=options.sd_vae_overrides_per_model_preferences, forced=self.forced_vae)

    def face_step(self, params: GenerationParams, options: Options) -> FaceStep | None:
        """The face restoration a request asks for (its own fields, else the settings), checked now:
        a restorer whose files are missing is refused before anything runs."""
        wanted = options.face_restoration if params.restore_faces is None else params.restore_faces
        if not wanted:
            return None
        weight = options.code_former_weight if params.codeformer_weight is None else params.codeformer_weight
        return self.faces.step(params.face_restorer or options.face_restoration_model, weight,
                               options.face_restoration_unload)


def sampler_settings(options: Options) -> SamplerSettings:
    """The sampler settings of the options in force for one request."""
    return SamplerSettings(
        eta_noise_seed_delta=options.eta_noise_seed_delta, sgm_noise_multiplier=options.sgm_noise_multiplier,
        always_discard_next_to_last_sigma=options.always_discard_next_to_last_sigma,
        img2img_fix_steps=options.img2img_fix_steps, initial_noise_multiplier=options.initial_noise_multiplier,
        eta_ancestral=options.eta_ancestral, eta_ddim=options.eta_ddim, randn_source=options.randn_source,
        img2img_upscaler=options.upscaler_for_img2img or "", s_churn=options.s_churn, s_tmin=options.s_tmin,
        s_tmax=options.s_tmax, s_noise=options.s_noise,
        schedule=ScheduleSettings(rho=options.rho, beta_alpha=options.beta_dist_alpha,
                                  beta_beta=options.beta_dist_beta))
