"""The preprocessors that need annotator weights, run through `controlnet_aux` from local files only.

Nothing is downloaded: a module is usable when every weight file it needs lies in the annotator
folder (`models/ControlNet/annotators/` by default), under the file name that A1111's ControlNet
extension and controlnet_aux use. The detectors are built from those paths directly (never from a
hub repository name), so controlnet_aux never reaches its download code. `torch.load` keeps its
default `weights_only=True`, so a weight file cannot run code.

The caller hands in the image already brought to the processor resolution and padded to multiples
of 64 (`model_free.resize_with_pad`); the detectors are asked for exactly that size, so their own
resizing does nothing and the maps line up with the extension's.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from modules.controlnet.model_free import hwc3
from modules.errors import UserError

_MIDAS = ("dpt_hybrid-midas-501f0c75.pt",)
_HED = ("ControlNetHED.pth",)
_PIDI = ("table5_pidinet.pth",)
_BODY, _HAND, _FACE = "body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"

# module name (the extension's key) -> weight files it needs
WEIGHT_FILES: dict[str, tuple[str, ...]] = {
    "depth": _MIDAS,
    "normal_map": _MIDAS,
    "depth_leres": ("res101.pth",),
    "depth_leres++": ("res101.pth", "latest_net_G.pth"),
    "hed": _HED,
    "hed_safe": _HED,
    "scribble_hed": _HED,
    "pidinet": _PIDI,
    "pidinet_safe": _PIDI,
    "pidinet_scribble": _PIDI,
    "lineart": ("sk_model.pth",),
    "lineart_coarse": ("sk_model2.pth",),
    "lineart_anime": ("netG.pth",),
    "normal_bae": ("scannet.pt",),
    "openpose": (_BODY,),
    "openpose_hand": (_BODY, _HAND),
    "openpose_face": (_BODY, _FACE),
    "openpose_faceonly": (_BODY, _FACE),
    "openpose_full": (_BODY, _HAND, _FACE),
    "mlsd": ("mlsd_large_512_fp32.pth",),
}

# Listed (clients ask for them by name) but not run, whatever files are present.
UNSUPPORTED: dict[str, str] = {
    "depth_leres++": "depth_leres++ is not supported: controlnet_aux builds its boosting network from "
                     "options parsed off the command line and writes files beside it; use depth_leres.",
}

_cache: dict[tuple[tuple[str, ...], str], Any] = {}
_lock = threading.Lock()


def missing_files(name: str, annotator_dir: Path) -> list[str]:
    return [f for f in WEIGHT_FILES.get(name, ()) if not (Path(annotator_dir) / f).is_file()]


def controlnet_aux_available() -> bool:
    # Looked up, not imported: importing controlnet_aux takes seconds, listing the modules must not.
    return importlib.util.find_spec("controlnet_aux") is not None


def unavailable_reason(name: str, label: str, annotator_dir: Path) -> str:
    """Why `name` cannot run now ('' when it can): a missing file names the file and the folder."""
    if name in UNSUPPORTED:
        return UNSUPPORTED[name]
    missing = missing_files(name, annotator_dir)
    if missing:
        files = ", ".join(missing)
        return (f"The preprocessor {label} needs the annotator weight file(s) {files}: put them into "
                f"{annotator_dir} (nothing is downloaded).")
    if not controlnet_aux_available():
        return (f"The preprocessor {label} needs the Python package controlnet_aux: "
                "install the project's dependencies (pip install -e .).")
    return ""


def _torch_load(path: Path) -> Any:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def _lineart(path: Path) -> Any:
    from controlnet_aux.lineart import Generator, LineartDetector

    # Built here with one network: controlnet_aux's own loader insists on both line-art files.
    model = Generator(3, 1, 3)
    model.load_state_dict(_torch_load(path))
    model.eval()
    return LineartDetector(model, model)


def _leres(path: Path) -> Any:
    from controlnet_aux.leres import LeresDetector
    from controlnet_aux.leres.leres.multi_depth_model_woauxi import RelDepthModel

    state = _torch_load(path)["depth_model"]
    model = RelDepthModel(backbone="resnext101")
    model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()}, strict=True)
    model.eval()
    # Without boosting the second (pix2pix) network is never used.
    return LeresDetector(model, None)


def _openpose(paths: dict[str, Path]) -> Any:
    from controlnet_aux.open_pose import OpenposeDetector
    from controlnet_aux.open_pose.body import Body
    from controlnet_aux.open_pose.face import Face
    from controlnet_aux.open_pose.hand import Hand

    hand = Hand(str(paths[_HAND])) if _HAND in paths else None
    face = Face(str(paths[_FACE])) if _FACE in paths else None
    return OpenposeDetector(Body(str(paths[_BODY])), hand, face)


def _build(name: str, annotator_dir: Path) -> Any:
    paths = {f: Path(annotator_dir) / f for f in WEIGHT_FILES[name]}
    folder = str(annotator_dir)
    if name in ("depth", "normal_map"):
        from controlnet_aux.midas import MidasDetector

        return MidasDetector.from_pretrained(folder, filename=_MIDAS[0])
    if name in ("hed", "hed_safe", "scribble_hed"):
        from controlnet_aux.hed import HEDdetector

        return HEDdetector.from_pretrained(folder, filename=_HED[0])
    if name.startswith("pidinet"):
        from controlnet_aux.pidi import PidiNetDetector

        return PidiNetDetector.from_pretrained(folder, filename=_PIDI[0])
    if name in ("lineart", "lineart_coarse"):
        return _lineart(next(iter(paths.values())))
    if name == "lineart_anime":
        from controlnet_aux.lineart_anime import LineartAnimeDetector

        return LineartAnimeDetector.from_pretrained(folder, filename="netG.pth")
    if name == "normal_bae":
        from controlnet_aux.normalbae import NormalBaeDetector

        return NormalBaeDetector.from_pretrained(folder, filename="scannet.pt")
    if name.startswith("openpose"):
        return _openpose(paths)
    if name == "mlsd":
        from controlnet_aux.mlsd import MLSDdetector

        return MLSDdetector.from_pretrained(folder, filename="mlsd_large_512_fp32.pth")
    if name == "depth_leres":
        return _leres(paths["res101.pth"])
    raise KeyError(name)


def _detector(name: str, annotator_dir: Path) -> Any:
    # Modules that read the same files share one detector (softedge_hed, its safe and scribble forms).
    key = (WEIGHT_FILES[name], str(Path(annotator_dir).resolve()))
    with _lock:
        if key not in _cache:
            _cache[key] = _build(name, annotator_dir)
        return _cache[key]


def unload_annotators() -> None:
    """Drop every loaded detector (their weights are freed with them)."""
    with _lock:
        _cache.clear()


# module name -> how its detector is called: (keyword arguments from thresholds A/B, result picker)
_OPENPOSE_PARTS = {
    "openpose": (True, False, False),
    "openpose_hand": (True, True, False),
    "openpose_face": (True, False, True),
    "openpose_faceonly": (False, False, True),
    "openpose_full": (True, True, True),
}


def _call_kwargs(name: str, threshold_a: float, threshold_b: float) -> dict[str, Any]:
    if name == "normal_map":
        return {"depth_and_normal": True, "bg_th": threshold_a}
    if name in ("hed_safe", "pidinet_safe"):
        return {"safe": True}
    if name == "lineart_coarse":
        return {"coarse": True}
    if name == "depth_leres":
        return {"thr_a": threshold_a, "thr_b": threshold_b, "boost": False}
    if name == "mlsd":
        return {"thr_v": threshold_a, "thr_d": threshold_b}
    if name in _OPENPOSE_PARTS:
        body, hand, face = _OPENPOSE_PARTS[name]
        return {"include_body": body, "include_hand": hand, "include_face": face}
    return {}


def run_annotator(name: str, label: str, padded: np.ndarray, threshold_a: float, threshold_b: float,
                  annotator_dir: Path) -> np.ndarray:
    """The map of a weight-needing module for an image already resized and padded (HxWx3 uint8)."""
    reason = unavailable_reason(name, label, annotator_dir)
    if reason:
        raise UserError(reason)
    detector: Callable[..., Any] = _detector(name, annotator_dir)
    size = min(padded.shape[:2])
    kwargs = _call_kwargs(name, threshold_a, threshold_b)
    result = detector(padded, detect_resolution=size, image_resolution=size, output_type="np", **kwargs)
    if name == "normal_map":
        result = result[1]  # (depth, normal)
    result = np.asarray(result)
    if result.dtype != np.uint8:
        result = result.clip(0, 255).astype(np.uint8)
    return hwc3(result)
