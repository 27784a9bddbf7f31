"""POST /sdapi/v1/checkpoint-merger: the Checkpoint Merger over HTTP.

The body takes the fields of the best-known web UI's merger under its argument names
(primary_model_name, secondary_model_name, tertiary_model_name, interp_method, multiplier,
save_as_half, custom_name, checkpoint_format, config_source, bake_in_vae, discard_weights,
save_metadata, add_merge_recipe), plus `overwrite`. The new checkpoint is listed at once
(/sdapi/v1/sd-models). Mistakes answer 400 naming the field; nothing is written then.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from modules.api.auth import Credentials, auth_dependency
from modules.api.routes import PREFIX, ApiRoute
from modules.context import AppContext
from modules.models.merge import CONFIG_SOURCES, merge_checkpoints, request_from_names


class MergeBody(BaseModel):
    primary_model_name: str
    secondary_model_name: str | None = None
    tertiary_model_name: str | None = None
    interp_method: str = "Weighted sum"
    multiplier: float = 0.3
    save_as_half: bool = False
    custom_name: str = ""
    checkpoint_format: str = "safetensors"
    config_source: int | str = Field(0, description='0 "A, B or C", 1 "B", 2 "C", 3 "Don\'t" (or the label)')
    bake_in_vae: str | None = "None"
    discard_weights: str = ""
    save_metadata: bool = True
    add_merge_recipe: bool = True
    overwrite: bool = False


class MergeAnswer(BaseModel):
    info: str
    name: str  # the new checkpoint's name in the list
    filename: str


def build_merge_router(ctx: AppContext, credentials: Credentials) -> APIRouter:
    dependencies = [Depends(auth_dependency(credentials))] if credentials else []
    router = APIRouter(prefix=PREFIX, route_class=ApiRoute, dependencies=dependencies, tags=["sdapi"])

    @router.post("/checkpoint-merger", response_model=MergeAnswer)
    def merge(body: MergeBody) -> MergeAnswer:
        source = body.config_source
        if isinstance(source, int) and 0 <= source < len(CONFIG_SOURCES):
            source = CONFIG_SOURCES[source]
        request = request_from_names(
            ctx.registry, body.primary_model_name, body.secondary_model_name, body.tertiary_model_name,
            body.bake_in_vae, method=body.interp_method, multiplier=body.multiplier, save_as_half=body.save_as_half,
            custom_name=body.custom_name, checkpoint_format=body.checkpoint_format, config_source=str(source),
            discard_weights=body.discard_weights, save_metadata=body.save_metadata,
            add_merge_recipe=body.add_merge_recipe, overwrite=body.overwrite)
        path = merge_checkpoints(request, ctx.registry.checkpoint_dirs[0], ctx.registry.hashes)
        ctx.registry.refresh()
        info = next(i for i in ctx.registry.checkpoints if i.path.resolve() == path.resolve())
        return MergeAnswer(info=f"Checkpoint saved to {path}", name=info.name, filename=str(path))

    return router
