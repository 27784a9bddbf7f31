"""The /sdapi/v1 listing routes: upscalers, latent modes, LoRAs, embeddings, scripts and the
things this program does not have (hypernetworks, face restorers), all in A1111's answer shapes.

Every listing answers, with an empty list when its folder is empty or missing. Files are rescanned
on each request, so the refresh routes only have to succeed.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter
from safetensors import safe_open

from modules.api.controlnet import SCRIPT_TITLE as CONTROLNET
from modules.api.mapping import IMG2IMG_SCRIPTS
from modules.api.models import LoraItem, ScriptsList
from modules.context import AppContext
from modules.errors import UserError
from modules.networks.embeddings import for_model, read_embedding
from modules.networks.files import NetworkFile, list_embeddings, list_loras, read_tensors
from modules.scripts.registry import scripts_for

log = logging.getLogger(__name__)


def lora_metadata(file: NetworkFile) -> dict[str, Any]:
    """The training metadata in a .safetensors header (A1111 shows it); {} for other files or on error."""
    if not file.is_safetensors:
        return {}
    try:
        with safe_open(str(file.path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:  # noqa: BLE001 - a damaged file is listed without metadata, not a 500
        log.warning("LoRA %s: cannot read its metadata (%s)", file.path.name, exc)
        return {}


def embedding_entry(file: NetworkFile) -> dict[str, Any]:
    """A1111's per-embedding record: step, sd_checkpoint, sd_checkpoint_name, shape (width), vectors."""
    data, _ = read_tensors(file.path, "embedding")
    vectors = read_embedding(file)
    first = next(iter(vectors.values()))
    step = data.get("step")
    return {"step": step if isinstance(step, int) else None,
            "sd_checkpoint": data.get("sd_checkpoint") if isinstance(data.get("sd_checkpoint"), str) else None,
            "sd_checkpoint_name": data.get("sd_checkpoint_name") if isinstance(data.get("sd_checkpoint_name"), str) else None,
            "shape": int(sum(v.shape[1] for v in vectors.values())), "vectors": int(first.shape[0])}


def list_embedding_entries(ctx: AppContext) -> dict[str, dict[str, dict[str, Any]]]:
    """{"loaded": ..., "skipped": ...}: loaded = usable with the loaded model (all readable ones
    while no model is loaded), skipped = the wrong width for it or unreadable."""
    # The model in memory, without loading one (and without waiting for a running generation).
    model = getattr(ctx.registry, "_current", None)
    specs = model.arch.text_encoders if model is not None else None
    loaded: dict[str, dict[str, Any]] = {}
    skipped: dict[str, dict[str, Any]] = {}
    for file in list_embeddings(ctx.paths.embeddings_dir):
        try:
            entry = embedding_entry(file)
        except UserError as exc:
            log.warning("Embedding %s skipped: %s", file.name, exc)
            skipped[file.name] = {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                                  "shape": None, "vectors": None}
            continue
        fits = specs is None or for_model(file.name, read_embedding(file), specs) is not None
        (loaded if fits else skipped)[file.name] = entry
    return {"loaded": loaded, "skipped": skipped}


def add_listing_routes(router: APIRouter, ctx: AppContext) -> None:
    """Add the listing routes to the /sdapi/v1 `router`."""

    @router.get("/upscalers")
    def get_upscalers() -> list[dict[str, Any]]:
        return [{"name": u.name, "model_name": u.name if u.kind == "model" else None,
                 "model_path": str(u.path) if u.path else None, "model_url": None,
                 "scale": float(u.scale if u.kind == "model" else 4)}
                for u in ctx.upscalers.pixel_upscalers()]

    @router.get("/latent-upscale-modes")
    def get_latent_upscale_modes() -> list[dict[str, str]]:
        return [{"name": u.name} for u in ctx.upscalers.latent_upscalers()]

    @router.get("/realesrgan-models")
    def get_realesrgan_models() -> list[dict[str, Any]]:
        folder = ctx.paths.upscaler_dirs[1]
        return [{"name": u.name, "path": str(u.path), "scale": u.scale}
                for u in ctx.upscalers.model_upscalers() if u.path and folder in u.path.parents]

    @router.get("/hypernetworks")
    def get_hypernetworks() -> list[dict[str, Any]]:
        return []  # hypernetworks are not supported

    @router.get("/face-restorers")
    def get_face_restorers() -> list[dict[str, Any]]:
        """A1111's {name, cmd_dir} for CodeFormer and GFPGAN, with whether its files are there and, if
        not, which file to put where."""
        return [{"name": f.name, "cmd_dir": str(ctx.faces.folders.folder(f.name)), "available": f.available,
                 "message": f.missing} for f in ctx.faces.listing()]

    @router.get("/loras", response_model=list[LoraItem])
    def get_loras() -> list[LoraItem]:
        items = []
        for file in list_loras(ctx.paths.lora_dir):
            metadata = lora_metadata(file)
            items.append(LoraItem(name=file.name, alias=metadata.get("ss_output_name") or file.name,
                                  path=str(file.path), metadata=metadata))
        return items

    @router.post("/refresh-loras")
    def refresh_loras() -> None:
        return None  # the folder is read on every request

    @router.get("/embeddings")
    def get_embeddings() -> dict[str, Any]:
        return list_embedding_entries(ctx)

    @router.post("/refresh-embeddings")
    def refresh_embeddings() -> None:
        return None  # the folder is read on every request

    @router.post("/refresh-upscalers")
    def refresh_upscalers() -> None:
        ctx.upscalers.refresh()

    # A1111 lists always-on scripts too (lowercased titles, after the built-in ones): clients look for
    # "controlnet" there to know the ControlNet extension's units are understood.
    @router.get("/scripts", response_model=ScriptsList)
    def get_scripts() -> ScriptsList:
        return ScriptsList(txt2img=[s.name for s in scripts_for("txt2img")] + [CONTROLNET],
                           img2img=[s.name for s in scripts_for("img2img")] + list(IMG2IMG_SCRIPTS) + [CONTROLNET])

    @router.get("/script-info")
    def get_script_info() -> list[dict[str, Any]]:
        infos = [s.info(mode) for mode in ("txt2img", "img2img") for s in scripts_for(mode)]
        infos += [{"name": name, "is_alwayson": False, "is_img2img": True, "args": []} for name in IMG2IMG_SCRIPTS]
        infos += [{"name": CONTROLNET, "is_alwayson": True, "is_img2img": img2img, "args": []} for img2img in (False, True)]
        return infos
