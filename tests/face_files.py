"""Random-weight face restoration files of the real architectures (GFPGAN v1.4 "clean", CodeFormer,
RetinaFace ResNet-50, ParseNet), written where A1111 users keep them, in the released files' layouts
(CodeFormer's weights under "params_ema", the detector's with DataParallel's "module." prefix)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch


def _random_(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in model.state_dict().items():
        if value.is_floating_point() and value.ndim > 1:
            value = torch.randn(value.shape, generator=gen) * (0.5 / max(1, value[0].numel()) ** 0.5)
        state[key] = value.clone()
    return state


def write_face_files(data_dir: Path, seed: int = 0) -> dict[str, Path]:
    """models/GFPGAN/GFPGANv1.4.pth, models/Codeformer/codeformer-v0.1.0.pth and the detector and parser
    in models/facedetection; returns their paths by name."""
    from facexlib.detection.retinaface import RetinaFace
    from facexlib.parsing.parsenet import ParseNet
    from spandrel.architectures.GFPGAN import GFPGAN
    from spandrel_extra_arches.architectures.CodeFormer import CodeFormer

    models = data_dir / "models"
    paths = {"GFPGAN": models / "GFPGAN" / "GFPGANv1.4.pth",
             "CodeFormer": models / "Codeformer" / "codeformer-v0.1.0.pth",
             "detector": models / "facedetection" / "detection_Resnet50_Final.pth",
             "parser": models / "facedetection" / "parsing_parsenet.pth"}
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    gfpgan = GFPGAN(out_size=512, num_style_feat=512, channel_multiplier=2, decoder_load_path=None, fix_decoder=False,
                    num_mlp=8, input_is_latent=True, different_w=True, narrow=1, sft_half=True)
    torch.save({"params_ema": _random_(gfpgan, seed)}, paths["GFPGAN"])
    del gfpgan
    codeformer = CodeFormer(dim_embd=512, n_head=8, n_layers=9, codebook_size=1024, latent_size=256,
                            connect_list=["32", "64", "128", "256"], fix_modules=["quantize", "generator"])
    torch.save({"params_ema": _random_(codeformer, seed + 1)}, paths["CodeFormer"])
    del codeformer
    with warnings.catch_warnings():  # facexlib passes torchvision's retired `pretrained=False`
        warnings.simplefilter("ignore", UserWarning)
        detector = RetinaFace(network_name="resnet50", half=False, device=torch.device("cpu"))
    torch.save({f"module.{k}": v for k, v in _random_(detector, seed + 2).items()}, paths["detector"])
    parser = ParseNet(in_size=512, out_size=512, parsing_ch=19)
    state = _random_(parser, seed + 3)
    # Class 1 (skin) wins everywhere, so that the paste mask covers the face crop as a trained parser's would.
    state["out_mask_conv.conv2d.bias"] = torch.nn.functional.one_hot(torch.tensor(1), 19).float() * 100.0
    torch.save(state, paths["parser"])
    return paths
