"""The Settings tab's sections, in the order and under the titles of the best-known web UI's
Settings page; each entry is an option of modules/options.py with its label and control."""

from __future__ import annotations

from dataclasses import dataclass

from modules.faces.files import RESTORERS
from modules.images import FORMATS
from modules.processing.params import MAX_STEPS


@dataclass(frozen=True)
class Setting:
    key: str
    label: str
    choices: tuple[str, ...] = ()  # a dropdown; empty: checkbox (bool), number or text by the option's type
    minimum: float | None = None  # a slider when both bounds are given
    maximum: float | None = None
    step: float = 1
    info: str | None = None


@dataclass(frozen=True)
class Section:
    title: str
    settings: tuple[Setting, ...]


FOLDER_INFO = "empty: outputs/<mode>-images in the data folder; relative folders are in the data folder"

SECTIONS: tuple[Section, ...] = (
    Section("Saving images/grids", (
        Setting("samples_save", "Always save all generated images"),
        Setting("samples_format", "File format for images", choices=FORMATS),
        Setting("samples_filename_pattern", "Images filename pattern",
                info="after the number, e.g. [seed]-[prompt_words]"),
        Setting("save_images_add_number", "Add number to filename when saving"),
        Setting("grid_save", "Always save all generated image grids"),
        Setting("jpeg_quality", "Quality for saved jpeg and webp images", minimum=1, maximum=100),
        Setting("enable_pnginfo", "Save text information about generation parameters as chunks to png files"),
    )),
    Section("Paths for saving", (
        Setting("outdir_samples", "Output directory for images; if empty, defaults to three directories below",
                info="set: every generated picture goes straight here"),
        Setting("outdir_txt2img_samples", "Output directory for txt2img images", info=FOLDER_INFO),
        Setting("outdir_img2img_samples", "Output directory for img2img images", info="img2img, inpaint, outpaint"),
        Setting("outdir_extras_samples", "Output directory for images from extras tab"),
        Setting("outdir_grids", "Output directory for grids; if empty, defaults to two directories below"),
        Setting("outdir_txt2img_grids", "Output directory for txt2img grids"),
        Setting("outdir_img2img_grids", "Output directory for img2img grids"),
        Setting("outdir_save", "Directory for saving images using the Save button", info="empty: log/images"),
    )),
    Section("Stable Diffusion", (
        Setting("default_sampler", "Default sampling method"),
        Setting("default_scheduler", "Default schedule type"),
        Setting("default_steps", "Default sampling steps", minimum=1, maximum=MAX_STEPS),
        Setting("CLIP_stop_at_last_layers", "Clip skip", minimum=1, maximum=12),
        Setting("token_merging_ratio", "Token merging ratio", minimum=0.0, maximum=0.9, step=0.1,
                info="0 = off; faster, less detail"),
        Setting("token_merging_ratio_img2img", "Token merging ratio for img2img", minimum=0.0, maximum=0.9, step=0.1,
                info="only applies if non-zero; overrides the above"),
        Setting("token_merging_ratio_hr", "Token merging ratio for high-res pass", minimum=0.0, maximum=0.9,
                step=0.1, info="only applies if non-zero; overrides the above"),
    )),
    Section("VAE", (
        Setting("sd_vae", "SD VAE", info="Automatic = a VAE named after the checkpoint, else its own; None = its own"),
        Setting("sd_vae_overrides_per_model_preferences", "Selected VAE overrides per-model preferences",
                info="off: a checkpoint's .json preference or a VAE named after it wins"),
        Setting("auto_vae_precision", "Automatically revert VAE to 32-bit floats",
                info="when a reduced-precision decode gives NaN"),
        Setting("vae_tiling", "Decode images in tiles at every size", info="less memory; large pictures always are"),
    )),
    Section("img2img", (
        Setting("initial_noise_multiplier", "Noise multiplier for img2img", minimum=0.0, maximum=1.5, step=0.001),
        Setting("img2img_fix_steps", "With img2img, do exactly the amount of steps the slider specifies"),
        Setting("upscaler_for_img2img", "Upscaler for img2img", info="enlarges smaller pictures; empty = Lanczos"),
    )),
    Section("Face restoration", (
        Setting("face_restoration", "Restore faces", info="for every generation, unless a request says otherwise"),
        Setting("face_restoration_model", "Face restoration model", choices=RESTORERS),
        Setting("code_former_weight", "CodeFormer weight", minimum=0.0, maximum=1.0, step=0.01,
                info="0 = maximum effect; 1 = minimum effect"),
        Setting("face_restoration_unload", "Move face restoration model from VRAM into RAM after processing"),
    )),
    Section("Infotext", (
        Setting("add_model_hash_to_info", "Add model hash to infotext"),
        Setting("add_model_name_to_info", "Add model name to infotext"),
        Setting("add_vae_hash_to_info", "Add VAE hash to infotext"),
        Setting("add_vae_name_to_info", "Add VAE name to infotext"),
    )),
    Section("User interface", (
        Setting("return_grid", "Show grid in gallery", info="the API returns the grid first"),
        Setting("do_not_show_images", "Do not show any images in gallery", info="they are still saved"),
        Setting("send_seed", "Send seed when sending prompt or image to other interface"),
        Setting("send_size", "Send size when sending prompt or image to another interface"),
    )),
    Section("Live previews", (
        Setting("live_previews_enable", "Show live previews of the created image"),
        Setting("show_progress_every_n_steps", "Live preview display period", minimum=1, maximum=32,
                info="in sampling steps"),
    )),
    Section("Sampler parameters", (
        Setting("eta_ddim", "Eta for DDIM", minimum=0.0, maximum=1.0, step=0.01, info="noise multiplier; 0 = deterministic"),
        Setting("eta_ancestral", "Eta for Euler a", minimum=0.0, maximum=1.0, step=0.01,
                info="noise multiplier for the ancestral steps; 0 = plain Euler"),
        Setting("s_churn", "sigma churn", minimum=0.0, maximum=100.0, step=0.01, info="Euler: noise added per step"),
        Setting("s_tmin", "sigma tmin", minimum=0.0, maximum=10.0, step=0.01, info="Euler: churn from this sigma"),
        Setting("s_tmax", "sigma tmax", minimum=0.0, maximum=999.0, step=0.01, info="Euler: churn up to it; 0 = inf"),
        Setting("s_noise", "sigma noise", minimum=0.0, maximum=1.1, step=0.001, info="Euler: the churn noise's scale"),
        Setting("eta_noise_seed_delta", "Eta noise seed delta", info="ENSD; 31337 is common"),
        Setting("randn_source", "Random number generator source", choices=("GPU", "CPU", "NV"),
                info="NV: an NVIDIA GPU's noise on any machine; CPU: the same pictures on every device"),
        Setting("always_discard_next_to_last_sigma", "Always discard next-to-last sigma"),
        Setting("sgm_noise_multiplier", "SGM noise multiplier"),
        Setting("rho", "Schedule rho", info="0 = the schedule's own"),
        Setting("beta_dist_alpha", "Beta scheduler - alpha"),
        Setting("beta_dist_beta", "Beta scheduler - beta"),
    )),
    Section("Queue", (
        Setting("queue_max_attempts", "Attempts per job when the server stops while it runs", minimum=1, maximum=10),
        Setting("queue_paused_after_crash", "Start the queue paused after the server stopped unexpectedly"),
    )),
    Section("ControlNet", (
        Setting("control_net_unit_count", "Multi-ControlNet: ControlNet unit number", minimum=1, maximum=10),
    )),
)


def setting_keys() -> list[str]:
    return [setting.key for section in SECTIONS for setting in section.settings]
