"""Which VAE a generation uses: A1111's rule (sd_vae.resolve_vae: --vae-path, then the setting when it
overrides per-model preferences, the checkpoint's user metadata, a VAE named after the checkpoint, the
setting), applied per request (override_settings) and taken back afterwards, with "VAE"/"VAE hash" in the
infotext."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from modules.context import AppContext, Paths
from modules.errors import UserError
from modules.models.discovery import CheckpointInfo
from modules.models.vae_choice import VaeChoice, resolve_vae
from modules.processing.infotext import infotext_to_params, parse_infotext
from modules.processing.params import Txt2ImgParams
from tests.tiny_models import CPU, write_tiny_checkpoint, write_tiny_vae


def _info(path: Path) -> CheckpointInfo:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return CheckpointInfo(path=path, root=path.parent)


@pytest.fixture
def folder(tmp_path: Path) -> dict[str, object]:
    ckpt = tmp_path / "Stable-diffusion" / "anime.safetensors"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    vaes = [_info(tmp_path / "VAE" / name) for name in ("anime-vae.safetensors", "mse.safetensors", "other.pt")]
    return {"ckpt": ckpt, "vaes": vaes, "dir": tmp_path / "VAE"}


def test_the_rule_in_a1111s_order(folder: dict[str, object]) -> None:
    ckpt, vaes, vae_dir = folder["ckpt"], folder["vaes"], folder["dir"]
    assert isinstance(ckpt, Path) and isinstance(vaes, list) and isinstance(vae_dir, Path)

    def pick(**kw: object) -> str | None:
        found = resolve_vae(ckpt, vaes, VaeChoice(**kw)).path  # type: ignore[arg-type]
        return found.name if found else None

    # Automatic: a VAE whose file name starts with the checkpoint's name ("found near the checkpoint").
    assert pick() == "anime-vae.safetensors"
    # A named VAE overrides it while sd_vae_overrides_per_model_preferences is on (the default) ...
    assert pick(sd_vae="mse.safetensors") == "mse.safetensors"
    assert pick(sd_vae="None") is None
    # ... and is only the last resort when it is off.
    assert pick(sd_vae="mse.safetensors", overrides_per_model=False) == "anime-vae.safetensors"
    # The checkpoint's user metadata (<name>.json beside it, field "vae") comes before the near one.
    ckpt.with_suffix(".json").write_text(json.dumps({"description": "", "vae": "other.pt"}))
    assert pick() == "other.pt"
    assert pick(sd_vae="mse.safetensors", overrides_per_model=False) == "other.pt"
    assert pick(sd_vae="mse.safetensors") == "mse.safetensors"
    ckpt.with_suffix(".json").write_text(json.dumps({"vae": "None"}))
    assert pick() is None
    ckpt.with_suffix(".json").write_text(json.dumps({"vae": "Automatic"}))  # no preference
    assert pick() == "anime-vae.safetensors"
    # --vae wins over everything.
    assert pick(sd_vae="mse.safetensors", forced=vae_dir / "other.pt") == "other.pt"
    # Nothing near, nothing named: the checkpoint's own VAE.
    assert resolve_vae(ckpt, vaes[1:], VaeChoice()).path is None
    with pytest.raises(UserError, match="'gone.safetensors' is not in the VAE folder"):
        pick(sd_vae="gone.safetensors")


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> AppContext:
    home = tmp_path_factory.mktemp("vae-choice")
    write_tiny_checkpoint(home / "models" / "Stable-diffusion", "sd1", stem="tiny", seed=1)
    write_tiny_vae(home / "models" / "VAE" / "mse.safetensors", seed=2)
    return AppContext.create(Paths.make(data_dir=home), CPU)


def _picture(ctx: AppContext, **overrides: object) -> tuple[np.ndarray, dict[str, str]]:
    result = ctx.generate(Txt2ImgParams(prompt="a dot", steps=2, seed=3, width=64, height=64, save=False,
                                        override_settings=dict(overrides)))
    return np.asarray(result.images[0], dtype=np.int16), parse_infotext(result.infotexts[0])[2]


def test_a_request_uses_its_vae_and_the_next_one_gets_the_checkpoints_back(ctx: AppContext) -> None:
    own, own_fields = _picture(ctx)
    assert "VAE" not in own_fields and "VAE hash" not in own_fields
    other, fields = _picture(ctx, sd_vae="mse.safetensors")
    assert np.abs(other - own).max() > 8  # another decoder: other pixels
    vae_file = ctx.paths.vae_dir / "mse.safetensors"
    assert fields["VAE"] == "mse.safetensors"
    assert fields["VAE hash"] == ctx.registry.hashes.sha256(vae_file)[:10]
    # The infotext's VAE is pasted back as that request's setting.
    assert infotext_to_params(fields)["sd_vae"] == "mse.safetensors"
    again, _ = _picture(ctx)
    assert np.array_equal(again, own)  # the checkpoint's own weights were put back exactly
    _, hidden = _picture(ctx, sd_vae="mse.safetensors", add_vae_hash_to_info=False, add_vae_name_to_info=False)
    assert "VAE" not in hidden and "VAE hash" not in hidden
    with pytest.raises(UserError, match="not in the VAE folder"):
        _picture(ctx, sd_vae="missing.safetensors")
    assert np.array_equal(_picture(ctx)[0], own)  # the refused request changed nothing


def test_a_vae_beside_the_checkpoint_is_listed_as_a_vae_and_picked_automatically(ctx: AppContext) -> None:
    own, _ = _picture(ctx)
    beside = ctx.paths.ckpt_dirs[0] / "tiny.vae.safetensors"
    write_tiny_vae(beside, seed=4)
    try:
        ctx.registry.refresh()
        assert beside.name in [info.path.name for info in ctx.registry.vaes]
        assert beside.name not in [info.path.name for info in ctx.registry.checkpoints]
        near, fields = _picture(ctx)
        assert fields["VAE"] == "tiny.vae.safetensors" and np.abs(near - own).max() > 8
        # A chosen VAE overrides it, unless the setting says per-model preferences win.
        _, chosen = _picture(ctx, sd_vae="mse.safetensors")
        assert chosen["VAE"] == "mse.safetensors"
        _, kept = _picture(ctx, sd_vae="mse.safetensors", sd_vae_overrides_per_model_preferences=False)
        assert kept["VAE"] == "tiny.vae.safetensors"
    finally:
        beside.unlink()
        ctx.registry.refresh()
    assert np.array_equal(_picture(ctx)[0], own)


def test_forced_vae_wins_over_the_settings(ctx: AppContext) -> None:
    ctx.forced_vae = ctx.paths.vae_dir / "mse.safetensors"
    try:
        _, fields = _picture(ctx, sd_vae="None")
        assert fields["VAE"] == "mse.safetensors"
    finally:
        ctx.forced_vae = None
    assert "VAE" not in _picture(ctx)[1]


def test_options_api_switches_the_vae_of_the_loaded_model(ctx: AppContext) -> None:
    from fastapi.testclient import TestClient

    from modules.api import create_api

    own, _ = _picture(ctx)
    client = TestClient(create_api(ctx))
    try:
        assert client.post("/sdapi/v1/options", json={"sd_vae": "mse.safetensors"}).status_code == 200
        assert ctx.registry.current().vae_path == ctx.paths.vae_dir / "mse.safetensors"  # at once, as A1111
        assert client.get("/sdapi/v1/options").json()["sd_vae"] == "mse.safetensors"
        _, fields = _picture(ctx)
        assert fields["VAE"] == "mse.safetensors"
        refused = client.post("/sdapi/v1/options", json={"sd_vae": "nowhere.pt"})
        assert refused.status_code == 400 and "nowhere.pt" in refused.text
    finally:
        assert client.post("/sdapi/v1/options", json={"sd_vae": "Automatic"}).status_code == 200
    assert ctx.registry.current().vae_path is None
    assert np.array_equal(_picture(ctx)[0], own)


def test_a_vae_file_that_does_not_fit_is_refused_and_changes_nothing(ctx: AppContext) -> None:
    from safetensors.torch import load_file, save_file

    from modules.errors import CheckpointError

    own, _ = _picture(ctx)
    bad = ctx.paths.vae_dir / "bad.safetensors"
    state = load_file(str(ctx.paths.vae_dir / "mse.safetensors"))
    key = sorted(k for k in state if k.startswith("decoder.") and k.endswith(".weight"))[-1]
    state[key] = state[key][..., :1].contiguous()  # one tensor of the wrong shape, late in the file
    save_file(state, str(bad))
    ctx.registry.refresh()
    try:
        with pytest.raises(CheckpointError, match="bad.safetensors does not fit this model's VAE"):
            _picture(ctx, sd_vae="bad.safetensors")
    finally:
        bad.unlink()
        ctx.registry.refresh()
    assert np.array_equal(_picture(ctx)[0], own)
