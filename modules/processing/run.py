"""One generation, top to bottom: parameters in, images and their infotext out.

`generate` reads in numbered steps: check inputs, prepare pixels, then per batch encode the prompt,
prepare latents, denoise, decode, composite and save. txt2img, img2img, inpaint and outpaint are the
same loop; they differ only in the starting latents and in the mask.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from modules.controlnet.apply import ControlNets, request_controlnets, unit_inputs
from modules.controlnet.display import visible_map
from modules.controlnet.registry import ControlNetRegistry
from modules.devices import execution_device
from modules.errors import UserError
from modules.faces.restore import FaceStep
from modules.images import make_grid, save_image
from modules.models.load import SDModel
from modules.models.placement import decode as vae_decode
from modules.models.registry import ModelRegistry
from modules.models.vae_choice import VaeChoice
from modules.networks.prompt import prepare as prepare_networks
from modules.processing import hires
from modules.processing import inpaint as px
from modules.processing import refiner as refiners
from modules.processing.control import GenerationControl
from modules.processing.infotext import format_infotext
from modules.processing.output import OutputSettings
from modules.processing.params import GenerationParams, Img2ImgParams, InpaintParams, OutpaintParams
from modules.processing.preview import latent_preview
from modules.processing.tiling import circular_padding
from modules.processing.token_merging import token_merging
from modules.sampling.churn import ChurnEulerScheduler
from modules.sampling.k_schedulers import start_noise_scale
from modules.sampling.noise import initial_noise, resolve_seed, step_generators
from modules.sampling.samplers import (
    SamplerSettings,
    draws_step_noise,
    make_scheduler,
    sampler_info,
    scheduler_step,
)
from modules.text.conditioning import Conditioning, PromptEncoder, sdxl_time_ids
from modules.text.prompt_parser import extract_lora_tags
from modules.text.prompt_schedule import PromptSchedules, StepConditioning
from modules.upscalers import UpscalerRegistry

log = logging.getLogger(__name__)


@dataclass
class GenerationResult:
    images: list[Image.Image]
    infotexts: list[str]
    seeds: list[int]
    params: GenerationParams
    paths: list[Path] = field(default_factory=list)
    grid_path: Path | None = None
    interrupted: bool = False
    # How many of `images` are grids placed before the pictures (scripts put theirs first).
    grids: int = 0
    # The maps of the ControlNet units that keep theirs (shown and returned after the pictures, and saved
    # beside them when the pictures are saved).
    detected_maps: list[Image.Image] = field(default_factory=list)
    map_paths: list[Path] = field(default_factory=list)  # where the detected maps were saved


@dataclass
class _Pixels:
    """What the pixel side hands to the latent side for one run."""

    init: Image.Image | None = None  # starting picture at the generation size
    mask: Image.Image | None = None  # hard mask at the generation size (white = repaint)
    blend: Image.Image | None = None  # soft mask for the final composite
    original: Image.Image | None = None  # full picture to paste the result into
    region: tuple[int, int, int, int] | None = None  # "only masked": where the crop came from
    strength: float = 1.0
    latents: torch.Tensor | None = None  # starting latents per image (hires. fix's second pass)


@dataclass
class _Job:
    """What every batch of one request shares: the models, the prompts per pass, hires. fix."""

    model: SDModel
    control: GenerationControl
    prompts: PromptSchedules
    refiner: refiners.Refiner | None = None
    refiner_prompts: PromptSchedules | None = None
    hr: hires.HiresPlan | None = None
    hires_prompts: PromptSchedules | None = None
    upscalers: UpscalerRegistry = field(default_factory=UpscalerRegistry)
    sampling: SamplerSettings = field(default_factory=SamplerSettings)
    auto_vae_precision: bool = True  # redo a NaN/inf fp16/bf16 decode in fp32 (placement.decode)
    controlnets: ControlNets | None = None  # the request's ControlNet units, prepared (controlnet/apply.py)


@dataclass
class _Stage:
    """A model denoising from step `start` on, with its conditioning per step."""

    model: SDModel
    conds: StepConditioning
    start: int = 0


REFINER_LOW_AESTHETIC, REFINER_HIGH_AESTHETIC = 2.5, 6.0

# A hook run on every finished image (extensions: "a step after an image is made").
ImageHook = Callable[[Image.Image, str, GenerationParams], Image.Image | None]


def generate(params: GenerationParams, registry: ModelRegistry, outdir: Path | None = None,
             control: GenerationControl | None = None, image_hooks: list[ImageHook] | None = None,
             lora_dir: Path | None = None, embeddings_dir: Path | None = None,
             upscalers: UpscalerRegistry | None = None, sampling: SamplerSettings | None = None,
             controlnets: ControlNetRegistry | None = None, auto_vae_precision: bool = True,
             restore_faces: FaceStep | None = None, output: OutputSettings | None = None,
             on_saved: Callable[[Path, str], None] | None = None, vae: VaeChoice | None = None) -> GenerationResult:
    """Run one generation request; holds the device for its duration (requests queue on it).

    `<lora:NAME:WEIGHT>` tags load NAME from `lora_dir`, embeddings named in the prompts come from
    `embeddings_dir`; both apply to this request only. Pictures are saved (when `params.save`) as
    `output` says (folders, format, name pattern, infotext), or by default under `outdir`/<mode>-images.
    `on_saved(path, infotext)` is called after each picture is written. `sampling`: the sampler settings in force
    (ENSD, SGM noise multiplier, ...), A1111's defaults when not given. `controlnets`: where the
    ControlNet models of `params.controlnet_units` are found (and kept loaded). `restore_faces`: face
    restoration run on each picture as it is decoded (before the inpaint overlay, as A1111). `vae`: the
    settings that pick the model's VAE (A1111's rule, `models/vae_choice.py`); the checkpoint's own when not given.
    """
    control = control or GenerationControl()
    sampling = sampling or SamplerSettings()
    if output is None and outdir is not None:
        output = OutputSettings(samples_dir=outdir / f"{params.mode}-images", grids_dir=outdir / f"{params.mode}-grids")
    # 1. Check inputs: every user error surfaces here, before anything is computed or written.
    params = params.validate()
    upscalers = upscalers or UpscalerRegistry()
    hires.check(params, upscalers)
    refiners.check(registry, params)
    with registry.lock, ExitStack() as stack:
        model = registry.load(params.checkpoint) if params.checkpoint else registry.current()
        vae_file = registry.use_vae(vae or VaeChoice()).path
        info = registry.current_info
        model_name = info.stem if info else "unknown"
        model_hash = registry.short_hash()
        # A1111's add_model_name_to_info / add_model_hash_to_info: what the infotext names.
        info_name = model_name if output is None or output.model_name_in_info else None
        info_hash = model_hash if output is None or output.model_hash_in_info else None
        vae_fields = _vae_fields(vae_file, registry, output)
        # 2. Pixels: the generation size, the starting image and the mask.
        params, pixels = _prepare_pixels(params, model, _img2img_upscale(upscalers, sampling.img2img_upscaler))
        hr = hires.plan(params, upscalers)
        # 3. Seeds: image i of batch n uses seed + n * batch_size + i.
        seed = resolve_seed(params.seed)
        subseed = resolve_seed(params.subseed) if params.subseed_strength > 0 else -1
        total = params.batch_size * params.batch_count
        seeds = [seed + i for i in range(total)]
        subseeds = [subseed + i for i in range(total)] if subseed >= 0 else None
        # LoRAs and embeddings the prompts name: loaded (or refused) before any work; the LoRAs stay
        # merged until this request ends, text encoding included (text-encoder LoRAs).
        # The hires prompts may name embeddings; their LoRA tags are left to the first prompts (the
        # LoRAs are merged for the whole request, and a tag repeated there must not apply twice).
        hr_prompts = [extract_lora_tags(p)[0] for p in (hr.prompt, hr.negative_prompt)] if hr else []
        networks = prepare_networks([params.prompt, params.negative_prompt, *hr_prompts], model, lora_dir,
                                    embeddings_dir)
        stack.enter_context(networks.applied(model))
        refiner = refiners.load(registry, params, model)
        stack.enter_context(circular_padding(_conv_modules(model, refiner), params.tiling))
        encoder = PromptEncoder(model.arch.text_encoders, model.text_encoders, embeddings=networks.embeddings)
        # Prompts are the same for every batch: each text a prompt goes through is encoded once.
        job = _Job(model=model, control=control, upscalers=upscalers, hr=hr, sampling=sampling,
                   auto_vae_precision=auto_vae_precision,
                   prompts=_schedules(encoder, params, params.prompt, params.negative_prompt), refiner=refiner)
        if hr is not None:
            job.hires_prompts = _schedules(encoder, params, hr.prompt, hr.negative_prompt)
        if refiner is not None:
            job.refiner_prompts = job.prompts if refiner.model is model else _schedules(
                PromptEncoder(refiner.model.arch.text_encoders, refiner.model.text_encoders), params,
                params.prompt, params.negative_prompt)
        extra_fields = {**sampling.infotext_fields(params.sampler, params.schedule_type), **hires.infotext_fields(params, hr),
                        **(refiner.infotext_fields() if refiner else {})}
        if params.tiling:
            extra_fields["Tiling"] = True
        # A1111 writes the ratios in force (the hires one when hires. fix runs).
        if sampling.token_merging:
            extra_fields["Token merging ratio"] = sampling.token_merging
        if hr is not None and sampling.token_merging_hr:
            extra_fields["Token merging ratio hr"] = sampling.token_merging_hr
        if pixels.init is not None and sampling.initial_noise_multiplier != 1.0:
            extra_fields["Noise multiplier"] = sampling.initial_noise_multiplier
        # ControlNet: every unit's model loaded and checked and its map detected, once per request.
        job.controlnets = request_controlnets(
            params, controlnets, model, model_name, (hr.width, hr.height) if hr else None, seed,
            unit_inputs(params, pixels.original, pixels.mask) if isinstance(params, OutpaintParams) else None)
        if job.controlnets is not None:
            extra_fields.update(job.controlnets.infotext_fields())
        result = GenerationResult(images=[], infotexts=[], seeds=[], params=params)
        if job.controlnets is not None:
            result.detected_maps = [visible_map(image) for image, _ in job.controlnets.detected_maps()]
        control.begin(params.batch_count, params.steps)
        try:
            for n in range(params.batch_count):
                if control.interrupted:
                    break
                batch_seeds = seeds[n * params.batch_size:(n + 1) * params.batch_size]
                batch_subseeds = subseeds[n * params.batch_size:(n + 1) * params.batch_size] if subseeds else None
                images = _run_batch(job, params, pixels, batch_seeds, batch_subseeds, n)
                # Prompts are encoded while sampling (per step's text): the embeddings used are known now.
                network_fields = networks.infotext_fields(encoder.embeddings.used if encoder.embeddings else None)
                for i, image in enumerate(images):
                    if restore_faces is not None:
                        image = restore_faces.run(image)
                    if job.controlnets is not None:
                        image = job.controlnets.finish(image)  # inpaint_only's paste, before the overlay
                    image = _finish(image, pixels)
                    # With hires. fix, "Size" is the first pass's, as A1111 writes it.
                    size = (params.width, params.height) if hr is not None else image.size
                    fields = _infotext_fields(params, batch_seeds[i], subseeds and batch_subseeds[i],
                                              info_name, info_hash, size, restore_faces, vae_fields)
                    text = format_infotext(params.prompt, params.negative_prompt,
                                           {**fields, **extra_fields, **network_fields})
                    for hook in image_hooks or []:
                        image = hook(image, text, params) or image
                    result.images.append(image)
                    result.infotexts.append(text)
                    result.seeds.append(batch_seeds[i])
                    if params.save and output is not None:
                        result.paths.append(output.save(image, batch_seeds[i], text))
                        if on_saved is not None:  # the job queue records each picture as it lands
                            on_saved(result.paths[-1], text)
            if params.save and params.save_grid and output is not None and len(result.images) > 1:
                result.grid_path = output.save_grid(make_grid(result.images), result.infotexts[0])
            if params.save and output is not None and result.images:
                # The maps the ControlNet units were asked to keep, saved beside the pictures.
                result.map_paths = [save_image(detected, output.samples_dir, result.seeds[0], None,
                                               pattern=f"[seed]-controlnet-map-{index}")
                                    for index, detected in enumerate(result.detected_maps)]
        finally:
            result.interrupted = control.interrupted
            control.end()
    return result


def _schedules(encoder: PromptEncoder, params: GenerationParams, prompt: str, negative: str) -> PromptSchedules:
    return PromptSchedules(encoder, prompt, negative, params.batch_size, params.clip_skip)


def _conv_modules(model: SDModel, refiner: refiners.Refiner | None) -> list[torch.nn.Module]:
    modules = [model.unet, model.vae]
    if refiner is not None and refiner.model is not model:
        modules += [refiner.model.unet, refiner.model.vae]
    return modules


# ------------------------------------------------------------------------------------------ pixels

def _img2img_upscale(upscalers: UpscalerRegistry, name: str
                     ) -> Callable[[Image.Image, tuple[int, int]], Image.Image] | None:
    """The upscaler that enlarges small img2img pictures (A1111's upscaler_for_img2img; empty/None: Lanczos)."""
    if name in ("", "None"):
        return None
    upscalers.find(name)  # an unknown name is refused before anything runs
    return lambda image, size: upscalers.upscale_image(image, size, name)


def _prepare_pixels(params: GenerationParams, model: SDModel,
                    upscale: Callable[[Image.Image, tuple[int, int]], Image.Image] | None = None,
                    ) -> tuple[GenerationParams, _Pixels]:
    native = model.arch.native_size
    if isinstance(params, OutpaintParams):
        assert params.init_image is not None
        canvas, mask, _ = px.outpaint_canvas(params.init_image.convert("RGB"), params.left, params.right,
                                             params.top, params.bottom, params.fill, max(params.seed, 0))
        params = replace(params, width=canvas.width, height=canvas.height)
        return params, _Pixels(init=canvas, mask=mask, blend=px.soft_mask(mask, params.mask_blur),
                               original=canvas, strength=params.denoising_strength)
    if isinstance(params, Img2ImgParams):
        assert params.init_image is not None
        width = params.width or _round8(params.init_image.width)
        height = params.height or _round8(params.init_image.height)
        params = replace(params, width=width, height=height)
        init = px.resize_image(params.init_image, width, height, params.resize_mode, upscale)
        if not isinstance(params, InpaintParams):
            return params, _Pixels(init=init, strength=params.denoising_strength)
        assert params.mask is not None
        mask = px.binary_mask(params.mask, params.invert_mask)
        mask = mask.resize((width, height), Image.NEAREST) if mask.size != (width, height) else mask
        if mask.getbbox() is None:
            raise UserError("The mask is empty: paint (white) the area to repaint, or use img2img.")
        blend = px.soft_mask(mask, params.mask_blur)
        if params.inpaint_area == "only masked":
            box = px.mask_box(mask, params.only_masked_padding, width, height)
            crop_init = init.crop(box).resize((width, height), Image.LANCZOS)
            crop_mask = mask.crop(box).resize((width, height), Image.NEAREST)
            start = px.fill_masked(crop_init, crop_mask) if params.masked_content == "fill" else crop_init
            return params, _Pixels(init=start, mask=crop_mask, blend=blend, original=init, region=box,
                                   strength=params.denoising_strength)
        start = px.fill_masked(init, mask) if params.masked_content == "fill" else init
        return params, _Pixels(init=start, mask=mask, blend=blend, original=init, strength=params.denoising_strength)
    return params.with_size(params.width or native, params.height or native), _Pixels()


def _round8(value: int) -> int:
    return max(64, min(4096, value - value % 8))


def _finish(image: Image.Image, pixels: _Pixels) -> Image.Image:
    """Put the generated pixels back into the original picture; outside the mask nothing changes."""
    if pixels.original is None or pixels.blend is None:
        return image
    if pixels.region is not None:
        x1, y1, x2, y2 = pixels.region
        patch = pixels.original.copy()
        patch.paste(image.resize((x2 - x1, y2 - y1), Image.LANCZOS), (x1, y1))
        image = patch
    return px.composite(pixels.original, image, pixels.blend)


# ------------------------------------------------------------------------------------------ latents

def _to_tensor(image: Image.Image, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None].to(device=device, dtype=dtype)


def encode_image(model: SDModel, image: Image.Image) -> torch.Tensor:
    """Pixels → scaled latents (the distribution's mean: deterministic for a given picture)."""
    dtype = next(model.vae.parameters()).dtype
    with torch.no_grad():
        dist = model.vae.encode(_to_tensor(image, execution_device(model.vae), dtype)).latent_dist
    return dist.mode().float() * model.arch.scale_factor


def decode_latents(model: SDModel, latents: torch.Tensor, auto_precision: bool = True) -> list[Image.Image]:
    device = execution_device(model.vae)
    images = []
    with torch.no_grad():
        for latent in latents:  # one at a time: the decoder's activations dominate memory
            # float32 in: the decode casts to the VAE's dtype itself, and a fall-back to fp32 then
            # decodes the unrounded latents.
            x = vae_decode(model.vae, (latent[None].float() / model.arch.scale_factor).to(device), auto_precision)
            arr = ((x[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
            images.append(Image.fromarray(arr))
    return images


def _latent_mask(mask: Image.Image, height: int, width: int, device: torch.device) -> torch.Tensor:
    small = mask.resize((width // 8, height // 8), Image.BILINEAR)
    return (torch.from_numpy(np.asarray(small, dtype=np.float32) / 255.0) > 0.0).float()[None, None].to(device)


def _run_batch(job: _Job, params: GenerationParams, pixels: _Pixels, seeds: list[int], subseeds: list[int] | None,
               batch_index: int, second_pass: bool = False) -> list[Image.Image]:
    model, control = job.model, job.control
    device = execution_device(model.unet)
    dtype = next(model.unet.parameters()).dtype
    h, w = params.height // 8, params.width // 8
    batch = len(seeds)
    sampler = sampler_info(params.sampler)
    from_picture = pixels.latents is not None or pixels.init is not None
    fixed_steps = second_pass or job.sampling.img2img_fix_steps
    schedule_steps, run_steps = (_steps_from_picture(params.steps, pixels.strength, sampler.k_diffusion, fixed_steps)
                                 if from_picture else (params.steps, params.steps))
    scheduler = make_scheduler(params.sampler, params.schedule_type, model.arch.scheduler_config,
                               noise_seeds=seeds, is_sdxl=model.arch.is_sdxl, settings=job.sampling)
    scheduler.set_timesteps(schedule_steps, device=device)
    timesteps = scheduler.timesteps
    noise = initial_noise(seeds, (4, h, w), device, torch.float32, subseeds=subseeds,
                          subseed_strength=params.subseed_strength, source=job.sampling.randn_source)
    generators = (step_generators(seeds, (4, h, w), job.sampling.eta_noise_seed_delta, job.sampling.randn_source,
                                  device)
                  if draws_step_noise(params.sampler, job.sampling) else None)

    init_latents = latent_mask = inpaint_extra = None
    if pixels.latents is not None:  # hires. fix: the upscaled first pass, one per image
        init_latents = pixels.latents.to(device)
    elif pixels.init is not None:
        if pixels.strength <= 0.0 and pixels.mask is None:
            return [pixels.init.copy() for _ in seeds]  # strength 0: the input, untouched
        init_latents = encode_image(model, pixels.init).expand(batch, -1, -1, -1)
        if pixels.mask is not None:
            latent_mask = _latent_mask(pixels.mask, params.height, params.width, device)
            content = getattr(params, "masked_content", "original")
            if content == "latent noise":
                init_latents = init_latents * (1 - latent_mask) + noise * latent_mask
            elif content == "latent nothing":
                init_latents = init_latents * (1 - latent_mask)
    if model.arch.is_inpainting:
        inpaint_extra = _inpainting_channels(model, pixels, params, batch, device)

    # Starting point: pure noise, or the init latents noised to where the schedule starts.
    # k-diffusion samplers start from the picture at any strength (picture + noise * sigma), as A1111.
    start = 0
    noised_picture = init_latents is not None and (pixels.strength < 1.0 or sampler.k_diffusion)
    if noised_picture:
        start = (schedule_steps - run_steps) * scheduler.order
        timesteps = timesteps[start:]
        if len(timesteps) == 0 or run_steps == 0:
            return decode_latents(model, init_latents, job.auto_vae_precision)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    if noised_picture:
        if pixels.init is not None and job.sampling.initial_noise_multiplier != 1.0:
            noise = noise * job.sampling.initial_noise_multiplier  # img2img's noise, not the hires pass's (A1111)
        latents = scheduler.add_noise(init_latents, noise, timesteps[:1])
    else:
        latents = noise * start_noise_scale(scheduler, job.sampling.sgm_noise_multiplier)

    # The models and their conditioning per step: prompt editing changes the text at given steps,
    # the refiner takes over the last steps of the first pass.
    prompts = job.hires_prompts if second_pass and job.hires_prompts else job.prompts
    stages = [_Stage(model, prompts.for_steps(run_steps))]
    if job.refiner is not None and job.refiner_prompts is not None and not second_pass:
        stages.append(_Stage(job.refiner.model, job.refiner_prompts.for_steps(run_steps),
                             job.refiner.switch_step(run_steps)))
    unet_inputs: tuple[int, ...] = ()
    context = added = None

    # Denoise.
    control.begin_batch(batch_index, len(timesteps))
    progress = tqdm(total=len(timesteps), desc=f"{params.mode} batch {batch_index + 1}/{params.batch_count}",
                    leave=False, dynamic_ncols=True)
    ratio = job.sampling.token_merging_hr if second_pass else job.sampling.token_merging
    with torch.no_grad(), token_merging([s.model.unet for s in stages], ratio):
        for i, t in enumerate(timesteps):
            if control.should_stop_batch():
                break
            step_index = i * run_steps // len(timesteps)  # samplers of order 2 call the UNet twice a step
            stage = next(s for s in reversed(stages) if step_index >= s.start)
            cond, uncond = stage.conds.at(step_index)
            if unet_inputs != (id(stage), id(cond), id(uncond)):  # rebuilt only when something switches
                unet_inputs = (id(stage), id(cond), id(uncond))
                dtype = next(stage.model.unet.parameters()).dtype
                context, added = _unet_conditioning(stage.model, params, cond, uncond, device, dtype)
            if isinstance(scheduler, ChurnEulerScheduler):  # sigma churn: noise before the model call
                latents, t = scheduler.churn(latents, t, generators)
            x_in = scheduler.scale_model_input(torch.cat([latents, latents]), t)
            if inpaint_extra is not None:
                x_in = torch.cat([x_in, inpaint_extra], dim=1)
            x_in = x_in.to(dtype)
            # ControlNet residuals for the main model's steps only (the refiner gets no control).
            residuals = (job.controlnets.unet_kwargs(x_in, t, context, added, step_index, run_steps, second_pass)
                         if job.controlnets is not None and stage is stages[0] else {})
            out = stage.model.unet(x_in, t, encoder_hidden_states=context, added_cond_kwargs=added,
                                   **residuals).sample
            if job.controlnets is not None and stage is stages[0]:
                out = job.controlnets.after_unet(out, x_in, t, second_pass)  # inpaint_only's restore
            out_uncond, out_cond = out.float().chunk(2)
            guided = out_uncond + params.cfg_scale * (out_cond - out_uncond)
            latents = scheduler_step(scheduler, guided, t, latents, generators)
            if latent_mask is not None and inpaint_extra is None:
                # Ordinary checkpoints inpaint by putting the known area back at the next noise level.
                known = init_latents
                if i + 1 < len(timesteps):
                    known = scheduler.add_noise(init_latents, noise, timesteps[i + 1:i + 2])
                latents = known * (1 - latent_mask) + latents * latent_mask
            progress.update(1)
            step = i + 1
            preview = latent_preview(latents, model.arch) if control.wants_preview(step) else None
            control.report_step(step, preview)
    progress.close()
    if job.hr is not None and not second_pass and not control.should_stop_batch():
        start_latents = hires.upscale(job.hr, latents, job.upscalers,
                                      lambda x: decode_latents(model, x, job.auto_vae_precision), lambda image: encode_image(model, image))
        return _run_batch(job, hires.second_pass_params(params, job.hr),
                          _Pixels(latents=start_latents, strength=job.hr.denoising_strength),
                          seeds, subseeds, batch_index, second_pass=True)
    return decode_latents(model, latents, job.auto_vae_precision)


def _steps_from_picture(steps: int, strength: float, k_diffusion: bool, fixed_steps: bool) -> tuple[int, int]:
    """(steps of the noise schedule, steps run at its end) when starting from a picture.

    For k-diffusion samplers A1111's rule (`setup_img2img_steps`): img2img runs
    int(min(strength, 0.999) * steps) + 1 steps of the `steps`-step schedule; the hires. fix pass (and
    img2img with the setting img2img_fix_steps) asks for its steps, which run at the end of a schedule
    stretched to int(steps / strength) steps.
    Other samplers run int(steps * strength) steps of theirs.
    """
    if strength <= 0:
        return steps, 0
    if not k_diffusion:
        return steps, min(int(steps * strength), steps)
    if fixed_steps:
        return max(int(steps / min(strength, 0.999)), steps), steps
    return steps, int(min(strength, 0.999) * steps) + 1


def _unet_conditioning(model: SDModel, params: GenerationParams, cond: Conditioning, uncond: Conditioning,
                       device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
    """(encoder_hidden_states, added_cond_kwargs) for uncond + cond batched together."""
    batch = cond.context.shape[0]
    added = None
    if model.arch.is_sdxl and cond.pooled is not None and uncond.pooled is not None:
        if model.arch.family == "sdxl_refiner":
            # Size, crop and aesthetic score: A1111's defaults score the negative side 2.5 and the
            # positive 6.0 (sdxl_refiner_low/high_aesthetic_score), as the refiner was trained.
            time_ids = torch.tensor([[params.height, params.width, 0, 0, score] for score in
                                     [REFINER_LOW_AESTHETIC] * batch + [REFINER_HIGH_AESTHETIC] * batch])
        else:
            time_ids = sdxl_time_ids((params.height, params.width), (0, 0), (params.height, params.width))
            time_ids = time_ids[None].expand(2 * batch, -1)
        time_ids = time_ids.to(device, dtype)
        added = {"text_embeds": torch.cat([uncond.pooled, cond.pooled]).to(device, dtype), "time_ids": time_ids}
    return torch.cat([uncond.context, cond.context]).to(device, dtype), added


def _inpainting_channels(model: SDModel, pixels: _Pixels, params: GenerationParams, batch: int,
                         device: torch.device) -> torch.Tensor:
    """The 5 extra input channels of an inpainting UNet: mask + latents of the masked picture.

    Without a mask (txt2img on an inpainting checkpoint) everything is "to be painted" on a grey
    picture, which is what these models were trained with for unconditional areas.
    """
    h, w = params.height, params.width
    if pixels.mask is not None and pixels.init is not None:
        hard = torch.from_numpy(np.asarray(pixels.mask, dtype=np.float32) / 255.0 > 0.5).float()
        arr = np.asarray(pixels.init.convert("RGB"), dtype=np.float32) * (1 - hard.numpy()[..., None])
        masked = Image.fromarray(arr.astype(np.uint8))
        mask = _latent_mask(pixels.mask, h, w, device)
    elif pixels.init is not None:  # img2img on an inpainting model: nothing masked, keep the picture
        masked, mask = pixels.init, torch.zeros(1, 1, h // 8, w // 8, device=device)
    else:
        masked, mask = Image.new("RGB", (w, h), (127, 127, 127)), torch.ones(1, 1, h // 8, w // 8, device=device)
    masked_latents = encode_image(model, masked)
    extra = torch.cat([mask, masked_latents.to(device)], dim=1).expand(batch, -1, -1, -1)
    dtype = next(model.unet.parameters()).dtype
    return torch.cat([extra, extra]).to(dtype)


def _vae_fields(vae_file: Path | None, registry: ModelRegistry, output: OutputSettings | None) -> dict[str, object]:
    """A1111's "VAE hash" and "VAE" fields: written when a separate VAE file is in use."""
    if vae_file is None:
        return {}
    fields: dict[str, object] = {}
    if output is None or output.vae_hash_in_info:
        fields["VAE hash"] = registry.hashes.sha256(vae_file)[:10]
    if output is None or output.vae_name_in_info:
        fields["VAE"] = vae_file.name
    return fields


def _infotext_fields(params: GenerationParams, seed: int, subseed: int | None | bool, model_name: str | None,
                     model_hash: str | None, size: tuple[int, int], faces: FaceStep | None = None,
                     vae_fields: dict[str, object] | None = None) -> dict[str, object]:
    fields: dict[str, object] = {
        "Steps": params.steps,
        "Sampler": params.sampler,
        "Schedule type": params.schedule_type,
        "CFG scale": params.cfg_scale,
        "Seed": seed,
    }
    if faces is not None:
        fields["Face restoration"] = faces.name  # after the seed, as A1111 writes it
    fields["Size"] = f"{size[0]}x{size[1]}"
    if model_hash is not None:
        fields["Model hash"] = model_hash
    if model_name is not None:
        fields["Model"] = model_name
    fields.update(vae_fields or {})
    if isinstance(params, (Img2ImgParams, OutpaintParams)):
        fields["Denoising strength"] = params.denoising_strength
    if isinstance(params, Img2ImgParams) and not isinstance(params, InpaintParams):
        fields["Resize mode"] = params.resize_mode
    if isinstance(params, InpaintParams):
        fields.update({"Mask blur": params.mask_blur, "Masked content": params.masked_content,
                       "Inpaint area": params.inpaint_area})
        if params.inpaint_area == "only masked":
            fields["Masked area padding"] = params.only_masked_padding
    if isinstance(params, OutpaintParams):
        fields.update({"Outpaint": f"{params.left},{params.right},{params.top},{params.bottom}",
                       "Outpaint fill": params.fill, "Mask blur": params.mask_blur})
    if params.clip_skip > 1:
        fields["Clip skip"] = params.clip_skip
    if subseed is not None and subseed is not False and params.subseed_strength > 0:
        fields["Variation seed"] = subseed
        fields["Variation seed strength"] = params.subseed_strength
    if params.batch_size > 1:
        fields["Batch size"] = params.batch_size
    return fields
