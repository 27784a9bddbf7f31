"""ControlNet preprocessors ("modules" in A1111's words): the list, the lookup and the runner.

Names, UI labels, tags, slider ranges and defaults, the list order and the default module of each
control type are those of A1111's ControlNet extension (sd-webui-controlnet), so that its API
clients find the same answers here. The ones that need no weights run on OpenCV (`model_free`),
the others through controlnet_aux from local weight files (`annotators`). `pixel_perfect_resolution`
and `control_types` are the extension's rules for the processor resolution and the type filter.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from modules.controlnet import annotators, model_free
from modules.controlnet.preprocessor_table import MODULES, ModuleInfo, SliderSpec
from modules.errors import UserError

DEFAULT_ANNOTATOR_DIR = Path(__file__).resolve().parents[2] / "models" / "ControlNet" / "annotators"

__all__ = [
    "DEFAULT_ANNOTATOR_DIR", "ModuleInfo", "SliderSpec", "RESIZE_MODES", "control_types", "effective_settings",
    "inpaint_hint", "list_modules", "module_detail", "module_names", "parse_resize_mode",
    "pixel_perfect_resolution", "resolve_module", "run_module",
]

inpaint_hint = model_free.inpaint_hint

RESIZE_MODES = ("Just Resize", "Crop and Resize", "Resize and Fill")
# Older names of the resize modes that the extension still accepts from API clients.
_RESIZE_MODE_ALIASES = {
    "inner fit (scale to fit)": "Crop and Resize",
    "outer fit (shrink to fit)": "Resize and Fill",
    "scale to fit (inner fit)": "Crop and Resize",
    "envelope (outer fit)": "Resize and Fill",
}


def _sorted_modules() -> list[ModuleInfo]:
    """`none` first, then by priority and label, both descending (the extension's sort key)."""
    rest = [m for m in MODULES if m.name != "none"]
    rest.sort(key=lambda m: str(m.priority).zfill(8) + m.label, reverse=True)
    return [m for m in MODULES if m.name == "none"] + rest


def _with_availability(info: ModuleInfo, annotator_dir: Path) -> ModuleInfo:
    if not info.weight_files and info.name not in annotators.UNSUPPORTED:
        return info
    reason = annotators.unavailable_reason(info.name, info.label, annotator_dir)
    return replace(info, available=not reason, unavailable_reason=reason)


def list_modules(annotator_dir: Path | str = DEFAULT_ANNOTATOR_DIR) -> list[ModuleInfo]:
    """Every module in the extension's order, with whether it can run with the files present."""
    return [_with_availability(m, Path(annotator_dir)) for m in _sorted_modules()]


def module_names(alias_names: bool = False) -> list[str]:
    """`/controlnet/module_list`'s `module_list`: names, or UI labels with `alias_names`."""
    return [m.label if alias_names else m.name for m in _sorted_modules()]


def module_detail(alias_names: bool = False,
                  annotator_dir: Path | str = DEFAULT_ANNOTATOR_DIR) -> dict[str, dict[str, Any]]:
    """`/controlnet/module_list`'s `module_detail`: visible sliders per module (plus availability)."""
    detail = {}
    for m in list_modules(annotator_dir):
        detail[m.label if alias_names else m.name] = {
            "model_free": False,
            "sliders": [s.api_json() for s in (m.resolution, m.threshold_a, m.threshold_b) if s.visible],
            "available": m.available,
            "unavailable_reason": m.unavailable_reason,
        }
    return detail


_LOOKUP: dict[str, ModuleInfo] = {}
for _m in MODULES:
    for _key in (_m.name, _m.label, *_m.aliases):
        _LOOKUP[_key.lower()] = _m


def resolve_module(name: str | None) -> ModuleInfo:
    """The module called `name` (its key, UI label or an alias, any case); None or '' is `none`."""
    if name is None or not str(name).strip():
        return _LOOKUP["none"]
    found = _LOOKUP.get(str(name).strip().lower())
    if found is None:
        known = ", ".join(module_names())
        raise UserError(f"Unknown ControlNet preprocessor (module) {name!r}: use one of {known} "
                        "(or a UI label, e.g. 'invert (from white bg & black line)').")
    return found


def effective_settings(info: ModuleInfo, resolution: float = -1, threshold_a: float = -1,
                       threshold_b: float = -1, pixel_perfect: bool = False) -> tuple[int, float, float]:
    """Resolution and thresholds as the module will use them.

    As in the extension, a value outside its slider's range (so -1 above all) means the slider's
    default. Out-of-range values are not an error there either: clients such as webuiapi send
    threshold_a=64 with every unit, whatever the module. A pixel-perfect resolution (positive) is
    used as it is: the extension sets it after the range check.
    """
    def pick(value: float, spec: SliderSpec) -> float:
        value = float(value)
        return spec.value if value < spec.minimum or value > spec.maximum else value

    res = int(resolution) if pixel_perfect and resolution >= 1 else int(pick(resolution, info.resolution))
    return res, pick(threshold_a, info.threshold_a), pick(threshold_b, info.threshold_b)


def _as_array(image: Any, what: str) -> np.ndarray:
    if isinstance(image, Image.Image):
        if image.mode not in ("RGB", "RGBA", "L"):
            image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
        return np.asarray(image).copy()
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise UserError(f"The ControlNet {what} must be 8-bit (uint8), got {image.dtype}: "
                            "convert it with (array * 255).clip(0, 255).astype('uint8') first.")
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise UserError(f"The ControlNet {what} must be HxW, HxWx1, HxWx3 or HxWx4, got shape "
                            f"{image.shape}.")
        if min(image.shape[:2]) == 0:
            raise UserError(f"The ControlNet {what} is empty (shape {image.shape}).")
        return image
    raise UserError(f"The ControlNet {what} must be a PIL image or a numpy array, got {type(image).__name__}.")


def _mask_array(mask: Any, shape: tuple[int, ...]) -> np.ndarray:
    arr = _as_array(mask, "mask")
    if arr.ndim == 3:
        arr = arr[:, :, :3].max(axis=2) if arr.shape[2] >= 3 else arr[:, :, 0]
    if arr.shape != shape[:2]:
        raise UserError(f"The ControlNet mask is {arr.shape[1]}x{arr.shape[0]} but the image is "
                        f"{shape[1]}x{shape[0]}: give a mask of the image's size.")
    return arr


def run_module(name: str, image: Image.Image | np.ndarray, resolution: float = -1,
               threshold_a: float = -1, threshold_b: float = -1, mask: Image.Image | np.ndarray | None = None,
               seed: int = 0, annotator_dir: Path | str = DEFAULT_ANNOTATOR_DIR,
               pixel_perfect: bool = False) -> np.ndarray:
    """The detected map of `image` by module `name`, as HxWxC uint8 (C = 3; 4 for the inpaint modules).

    -1 (or any value outside a slider's range) means the module's default; with `pixel_perfect`
    the resolution (from `pixel_perfect_resolution`) is taken as it is. Maps come back at the
    processor resolution (shorter side = resolution), except `none`/`invert`/`inpaint*` (the
    image's own size), `tile_resample` (the image's size divided by the rate) and the recolor
    modules (the image's size). `seed` drives `shuffle` (the extension seeds it with
    `(seed + subseed) & 0xFFFFFFFF`). The inpaint modules carry the mask (255 = repaint) in alpha;
    `inpaint_hint` turns that into the control hint with masked pixels at -1.
    """
    info = resolve_module(name)
    img = _as_array(image, "image")
    res, a, b = effective_settings(info, resolution, threshold_a, threshold_b, pixel_perfect)
    key = info.name
    if key in ("inpaint", "inpaint_only"):
        return model_free.inpaint_rgba(img, None if mask is None else _mask_array(mask, img.shape))
    if key == "none":
        return model_free.identity(img).copy()
    if key == "invert":
        return model_free.invert(img)
    if key == "canny":
        return model_free.canny(img, res, a, b)
    if key == "scribble_xdog":
        return model_free.scribble_xdog(img, res, a)
    if key == "threshold":
        return model_free.threshold(img, res, a)
    if key == "lineart_standard":
        return model_free.lineart_standard(img, res)
    if key == "tile_resample":
        return model_free.tile_resample(img, a)
    if key == "blur_gaussian":
        return model_free.blur_gaussian(img, res, a)
    if key == "recolor_luminance":
        return model_free.recolor_luminance(img, a)
    if key == "recolor_intensity":
        return model_free.recolor_intensity(img, a)
    if key == "shuffle":
        return model_free.shuffle(img, res, int(seed))
    # Weight-needing modules: the extension pads to 64 before the network and crops after.
    folder = Path(annotator_dir)
    reason = annotators.unavailable_reason(key, info.label, folder)
    if reason:
        raise UserError(reason)
    padded, remove_pad = model_free.resize_with_pad(img, res)
    detected = remove_pad(annotators.run_annotator(key, info.label, padded, a, b, folder))
    if key in ("scribble_hed", "pidinet_scribble"):
        # The extension turns the soft edges into strokes after cropping the padding away.
        detected = model_free.soft_edge_to_scribble(detected)
    return detected


def parse_resize_mode(value: str | int) -> str:
    """A resize mode given as a name, an old alias or a number (0, 1, 2; 3 = Just Resize) as its name."""
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        if value == 3:  # A1111's "Just resize (latent upscale)"
            return RESIZE_MODES[0]
        if 0 <= value < len(RESIZE_MODES):
            return RESIZE_MODES[value]
    elif isinstance(value, str):
        text = value.strip()
        for mode in RESIZE_MODES:
            if text.lower() == mode.lower():
                return mode
        if text.lower() in _RESIZE_MODE_ALIASES:
            return _RESIZE_MODE_ALIASES[text.lower()]
        if text.isdigit():
            return parse_resize_mode(int(text))
    raise UserError(f"Unknown ControlNet resize_mode {value!r}: use one of {', '.join(RESIZE_MODES)} "
                    "(or 0, 1, 2).")


def pixel_perfect_resolution(image_hw: tuple[int, int], target_hw: tuple[int, int],
                             resize_mode: str | int = "Crop and Resize") -> int:
    """The processor resolution that gives one map pixel per generated pixel (the extension's rule).

    With k = target/image per axis, the image's shorter side times min(k) for Resize and Fill (the
    whole image fits inside) or max(k) for Just Resize and Crop and Resize (the target is covered).
    """
    mode = parse_resize_mode(resize_mode)
    raw_h, raw_w = (int(v) for v in image_hw)
    target_h, target_w = (int(v) for v in target_hw)
    if min(raw_h, raw_w, target_h, target_w) <= 0:
        raise UserError(f"Pixel perfect needs positive sizes, got image {raw_w}x{raw_h} and "
                        f"target {target_w}x{target_h}.")
    k_h = float(target_h) / float(raw_h)
    k_w = float(target_w) / float(raw_w)
    k = min(k_h, k_w) if mode == "Resize and Fill" else max(k_h, k_w)
    return int(np.round(k * float(min(raw_h, raw_w))))


# Words that also select a type's models (the extension's filter aliases).
_FILTER_ALIASES = {
    "instructp2p": ["ip2p"], "segmentation": ["seg"], "normalmap": ["normal"],
    "t2i-adapter": ["t2i_adapter", "t2iadapter", "t2ia"], "ip-adapter": ["ip_adapter", "ipadapter"],
    "openpose": ["openpose", "densepose"], "instant-id": ["instant_id", "instantid"],
    "scribble": ["sketch"], "tile": ["blur"],
}
# Types a "union" ControlNet serves, so its files are listed under them too.
_UNION_TAGS = {"openpose", "depth", "softedge", "scribble", "canny", "lineart", "mlsd", "normalmap",
               "segmentation", "inpaint", "tile"}


def _type_filters(tag: str) -> set[str]:
    tag = tag.lower()
    return {tag, *_FILTER_ALIASES.get(tag, []), *(["union"] if tag in _UNION_TAGS else [])}


def _one_type(tag: str, models: list[str]) -> dict[str, Any]:
    ordered = _sorted_modules()
    if tag == "All":
        return {"module_list": [m.label for m in ordered], "model_list": models,
                "default_option": "none", "default_model": "None"}
    modules = [m.label for m in ordered if tag in m.tags or m.label == "none"]
    filters = _type_filters(tag)
    chosen = [x for x in models if x.lower() == "none" or any(f in x.lower() for f in filters)]
    default_model = "None"
    if len(chosen) > 1:
        # The first file after None, unless a ControlNet 1.1 file ("11" in its name) is there.
        default_model = next((x for x in chosen if "11" in x.split("[")[0]), chosen[1])
    return {"module_list": modules, "model_list": chosen,
            "default_option": modules[1] if len(modules) > 1 else modules[0],
            "default_model": default_model}


def control_types(model_names: list[str] | tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """`/controlnet/control_types`' inner dict: per type, its modules (UI labels), models, defaults.

    `model_names` are the ControlNet model names as listed ("name [hash]"); "None" is put first.
    """
    models = ["None"] + [m for m in model_names if m != "None"]
    tags = sorted({t for m in MODULES for t in m.tags})
    return {tag: _one_type(tag, models) for tag in ["All", *tags]}

