"""Face restoration with GFPGAN or CodeFormer, as A1111 runs it.

The faces are found, aligned to FFHQ's 512 px template and pasted back with facexlib's
`FaceRestoreHelper` (RetinaFace detector, ParseNet face mask), the restoration networks are built by
spandrel (GFPGAN) and spandrel's extra architectures (CodeFormer) from weights read with safetensors
or `torch.load(weights_only=True)`. facexlib would download its detector when the file is missing:
its model constructors are replaced here by ones that load the user's files, so it never does.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
from PIL import Image

from modules.errors import UserError
from modules.faces.files import RESTORERS, FaceFolders, RestorerFiles, find_restorer_files
from modules.networks.files import read_tensors

FACE_SIZE = 512
DETECT_RESIZE = 640  # A1111: faces are detected on the picture scaled so that its short side is 640
EYE_DISTANCE_MIN = 5  # A1111: faces whose eyes are closer than this many pixels are left alone


def _weights(path: Path, what: str) -> dict[str, torch.Tensor]:
    state, _ = read_tensors(path, what)
    for key in ("params_ema", "params", "state_dict"):  # how the released files wrap their weights
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    # Released detector files were saved from DataParallel: "module." before every key.
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def load_detector(path: Path, device: torch.device) -> torch.nn.Module:
    from facexlib.detection.retinaface import RetinaFace

    with warnings.catch_warnings():  # facexlib builds its ResNet with torchvision's retired `pretrained=False`
        warnings.simplefilter("ignore", UserWarning)
        model = RetinaFace(network_name="resnet50", half=False, device=device)
    _load_strict(model, _weights(path, "face detector"), path)
    return model.eval()


def load_parser(path: Path, device: torch.device) -> torch.nn.Module:
    from facexlib.parsing.parsenet import ParseNet

    model = ParseNet(in_size=512, out_size=512, parsing_ch=19)
    _load_strict(model, _weights(path, "face parser"), path)
    return model.eval().to(device)


def _load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UserError(f"{path.name} does not fit {type(model).__name__} ({str(exc).splitlines()[0]}); "
                        "use the released file.") from exc


def load_restorer_net(name: str, path: Path, device: torch.device) -> torch.nn.Module:
    """GFPGAN or CodeFormer from `path`, built by spandrel; a UserError when the file is something else."""
    import spandrel
    import spandrel_extra_arches

    spandrel_extra_arches.install(ignore_duplicates=True)  # CodeFormer lives in the extra architectures
    try:
        descriptor = spandrel.ModelLoader().load_from_state_dict(_weights(path, f"{name} model"))
    except spandrel.UnsupportedModelError as exc:
        raise UserError(f"{path.name} is not a {name} model that spandrel knows; use the released file.") from exc
    if descriptor.architecture.id != name:
        raise UserError(f"{path.name} is a {descriptor.architecture.name} model, not {name}; put it elsewhere.")
    return descriptor.model.eval().to(device)


class FaceRestorer:
    """One restorer with its detector and parser, loaded on first use."""

    def __init__(self, files: RestorerFiles, device: torch.device) -> None:
        self.files = files
        self.device = device
        self._net: torch.nn.Module | None = None
        self._helper: Any = None

    def _load(self) -> None:
        if self._net is not None:
            return
        if not self.files.available:
            raise UserError(self.files.missing)
        import facexlib.utils.face_restoration_helper as helper_module

        assert self.files.model and self.files.detector and self.files.parser
        detector = load_detector(self.files.detector, self.device)
        parser = load_parser(self.files.parser, self.device)
        with mock.patch.object(helper_module, "init_detection_model", lambda *a, **k: detector), \
                mock.patch.object(helper_module, "init_parsing_model", lambda *a, **k: parser):
            self._helper = helper_module.FaceRestoreHelper(
                1, face_size=FACE_SIZE, crop_ratio=(1, 1), det_model="retinaface_resnet50", save_ext="png",
                use_parse=True, device=self.device)
        self._net = load_restorer_net(self.files.name, self.files.model, self.device)

    @property
    def helper(self) -> Any:
        self._load()
        return self._helper

    def _restore_face(self, face: torch.Tensor, codeformer_weight: float) -> torch.Tensor:
        assert self._net is not None
        if self.files.name == "CodeFormer":
            return self._net(face, weight=codeformer_weight, adain=True)[0]
        return self._net(face, return_rgb=False)[0]

    @torch.inference_mode()
    def restore(self, image: Image.Image, codeformer_weight: float = 0.5) -> Image.Image:
        """`image` with every face found restored (A1111's restore_with_face_helper)."""
        import cv2

        self._load()
        helper = self._helper
        bgr = np.asarray(image.convert("RGB"))[:, :, ::-1].copy()
        helper.clean_all()
        try:
            helper.read_image(bgr)
            helper.get_face_landmarks_5(only_center_face=False, resize=DETECT_RESIZE,
                                        eye_dist_threshold=EYE_DISTANCE_MIN)
            helper.align_warp_face()
            if not helper.cropped_faces:
                return image.convert("RGB")
            for crop in helper.cropped_faces:
                rgb = cv2.cvtColor(crop.astype(np.float32) / 255.0, cv2.COLOR_BGR2RGB)
                x = torch.from_numpy(rgb.transpose(2, 0, 1)).unsqueeze(0) * 2.0 - 1.0  # normalised to [-1, 1]
                out = self._restore_face(x.to(self.device), codeformer_weight).float().cpu()
                out = ((out.squeeze(0).clamp(-1, 1) + 1) / 2).numpy().transpose(1, 2, 0)
                helper.add_restored_face((cv2.cvtColor(out, cv2.COLOR_RGB2BGR) * 255.0).astype(np.uint8))
            helper.get_inverse_affine(None)
            pasted = helper.paste_faces_to_input_image()
        finally:
            helper.clean_all()
        return Image.fromarray(np.ascontiguousarray(pasted[:, :, ::-1]))

    def to(self, device: torch.device) -> None:
        """Move the loaded networks (A1111's face_restoration_unload sends them to the CPU after use)."""
        if self._net is not None:
            self._net.to(device)
            self._helper.face_det.to(device)
            self._helper.face_det.device = device
            self._helper.face_parse.to(device)
            self._helper.device = device

    def face_boxes(self, image: Image.Image) -> list[tuple[float, float, float, float]]:
        """The boxes (x1, y1, x2, y2) of the faces `restore` would work on."""
        helper = self.helper
        helper.clean_all()
        try:
            helper.read_image(np.asarray(image.convert("RGB"))[:, :, ::-1].copy())
            helper.get_face_landmarks_5(only_center_face=False, resize=DETECT_RESIZE,
                                        eye_dist_threshold=EYE_DISTANCE_MIN)
            return [tuple(float(v) for v in face[:4]) for face in helper.det_faces]
        finally:
            helper.clean_all()


@dataclass(frozen=True)
class FaceStep:
    """Face restoration as one generation applies it to each picture: `name` goes into the infotext."""

    name: str
    run: Callable[[Image.Image], Image.Image]


class FaceRestorers:
    """The restorers the user's files allow; each loaded once, on first use."""

    def __init__(self, folders: FaceFolders, device: torch.device | str = "cpu") -> None:
        self.folders = folders
        self.device = torch.device(device)
        self._lock = threading.Lock()
        self._loaded: dict[str, FaceRestorer] = {}

    def files(self, name: str) -> RestorerFiles:
        return find_restorer_files(self.check_name(name), self.folders)

    def listing(self) -> list[RestorerFiles]:
        return [find_restorer_files(name, self.folders) for name in RESTORERS]

    @staticmethod
    def check_name(name: str) -> str:
        for known in RESTORERS:
            if name.lower() == known.lower():
                return known
        raise UserError(f"Unknown face restorer {name!r}; use one of {', '.join(RESTORERS)}.")

    def check_available(self, name: str) -> str:
        """The restorer's canonical name; a UserError saying which file to put where when it cannot run."""
        files = self.files(name)
        if not files.available:
            raise UserError(files.missing)
        return files.name

    def get(self, name: str) -> FaceRestorer:
        files = self.files(name)
        with self._lock:
            loaded = self._loaded.get(files.name)
            if loaded is None or loaded.files != files:  # new files since: load again
                loaded = self._loaded[files.name] = FaceRestorer(files, self.device)
            return loaded

    def restore(self, image: Image.Image, name: str, codeformer_weight: float = 0.5, unload: bool = False) -> Image.Image:
        """`image` with its faces restored by `name`; `unload` moves the networks to the CPU afterwards."""
        restorer = self.get(name)
        restorer.to(self.device)
        try:
            return restorer.restore(image, codeformer_weight)
        finally:
            if unload and self.device.type != "cpu":
                restorer.to(torch.device("cpu"))

    def step(self, name: str, codeformer_weight: float, unload: bool = False) -> FaceStep:
        """What generation calls on each picture (the restorer checked now, loaded on first use)."""
        name = self.check_available(name)
        return FaceStep(name, lambda image: self.restore(image, name, codeformer_weight, unload))
