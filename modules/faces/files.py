"""Where the face restoration models are, as A1111 users have them.

GFPGAN: a `.pth` / `.safetensors` whose name contains "GFPGAN" in `models/GFPGAN` (GFPGANv1.4.pth is
the usual one); CodeFormer: any such file in `models/Codeformer` (codeformer-v0.1.0.pth). The face
detector (facexlib's RetinaFace, `detection_Resnet50_Final.pth`) and face parser
(`parsing_parsenet.pth`) are looked for in `models/facedetection`, then in the two folders above,
where A1111 keeps them. Nothing is ever downloaded: a missing file is named in the message.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SUFFIXES = (".pth", ".safetensors")
DETECTOR_FILE = "detection_Resnet50_Final.pth"
PARSER_FILE = "parsing_parsenet.pth"
RESTORERS = ("CodeFormer", "GFPGAN")  # A1111's order in the settings' radio and /face-restorers


@dataclass(frozen=True)
class FaceFolders:
    gfpgan: Path
    codeformer: Path
    detection: Path

    @classmethod
    def under(cls, data_dir: Path) -> FaceFolders:
        models = data_dir / "models"
        return cls(gfpgan=models / "GFPGAN", codeformer=models / "Codeformer", detection=models / "facedetection")

    def folder(self, name: str) -> Path:
        return self.gfpgan if name == "GFPGAN" else self.codeformer


@dataclass(frozen=True)
class RestorerFiles:
    """The files one restorer needs; `missing` says what to put where (empty when all are there)."""

    name: str
    model: Path | None
    detector: Path | None
    parser: Path | None
    missing: str = ""

    @property
    def available(self) -> bool:
        return not self.missing


def _model_file(name: str, folder: Path) -> Path | None:
    if not folder.is_dir():
        return None
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES
                   and p.name not in (DETECTOR_FILE, PARSER_FILE))
    if name == "GFPGAN":
        files = [p for p in files if "gfpgan" in p.name.lower()]
    return files[-1] if files else None  # sorted names: GFPGANv1.4 after GFPGANv1.3


def _helper_file(folders: FaceFolders, file_name: str) -> Path | None:
    for folder in (folders.detection, folders.gfpgan, folders.codeformer):
        if (folder / file_name).is_file():
            return folder / file_name
    return None


def find_restorer_files(name: str, folders: FaceFolders) -> RestorerFiles:
    """The files of restorer `name` ("GFPGAN" or "CodeFormer") and, when some are missing, what to do."""
    model = _model_file(name, folders.folder(name))
    detector = _helper_file(folders, DETECTOR_FILE)
    parser = _helper_file(folders, PARSER_FILE)
    needs = []
    if model is None:
        example = "GFPGANv1.4.pth" if name == "GFPGAN" else "codeformer-v0.1.0.pth"
        needs.append(f"the {name} model ({example}) into {folders.folder(name)}")
    if detector is None:
        needs.append(f"the face detector {DETECTOR_FILE} into {folders.detection}")
    if parser is None:
        needs.append(f"the face parser {PARSER_FILE} into {folders.detection}")
    missing = f"{name} is not available: put {' and '.join(needs)} (nothing is downloaded)." if needs else ""
    return RestorerFiles(name=name, model=model, detector=detector, parser=parser, missing=missing)
