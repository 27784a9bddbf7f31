"""Seconds per denoising step: this project's processing layer vs a plain diffusers pipeline.

    ./venv/bin/python scripts/benchmark_processing.py [--steps 4] [--sizes 256,512] [--dtype fp32|bf16]
                                                      [--repeats 2] [--workdir DIR] [--json out.json] [--threads N]

One run does everything offline: it builds full-size SD 1.5 modules with random weights from
configs/v1-inference.yaml (seeded), saves them once as a single-file checkpoint in the original LDM
layout (fp16, ~2 GB; reused when --workdir already holds it), loads that file through the product's
registry, and then, per image size, times

  ours       processing.run.generate (Euler, CFG 7) via the registry, and
  diffusers  StableDiffusionPipeline (EulerDiscreteScheduler, CFG 7) built from the very same
             loaded modules, with a CLIPTokenizer whose vocab.json / merges.txt are written from the
             BPE file that ships with open_clip (nothing is downloaded).

Both do CFG as one UNet call on a batch of 2 per step. Per-step time is taken between consecutive
step callbacks, so text encoding and VAE decoding are excluded (they are timed on their own and
reported separately) and the first step, which pays one-off costs, is a warm-up that is not counted:
each run does --steps + 1 steps. The two sides take turns (--repeats runs each, ABBA order) so that
other load on the machine falls on both alike. Needs ~8 GB of RAM in fp32; takes minutes on a CPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

for _key, _value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
                     "DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1"}.items():
    os.environ[_key] = _value  # before diffusers / transformers read them at import

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline  # noqa: E402
from open_clip.tokenizer import SimpleTokenizer, default_bpe  # noqa: E402
from transformers import CLIPTokenizer  # noqa: E402

from modules.devices import DevicePolicy  # noqa: E402
from modules.models.arch import load_ldm_config  # noqa: E402
from modules.models.build import build_text_encoder, build_unet, build_vae  # noqa: E402
from modules.models.discovery import HashCache  # noqa: E402
from modules.models.load import SDModel, save_checkpoint  # noqa: E402
from modules.models.registry import ModelRegistry  # noqa: E402
from modules.processing.control import GenerationControl, ProgressState  # noqa: E402
from modules.processing.params import Txt2ImgParams  # noqa: E402
from modules.processing.run import decode_latents, generate  # noqa: E402
from modules.text.conditioning import PromptEncoder  # noqa: E402

log = logging.getLogger("benchmark")

PROMPT = "a photograph of an astronaut riding a horse on the moon, detailed, sharp focus"
NEGATIVE = "blurry, low quality"
CFG = 7.0
SEED = 1234
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# ------------------------------------------------------------------------------------------ weights

def make_checkpoint(workdir: Path, seed: int) -> Path:
    """Random full-size SD 1.5 weights from the real config, saved once in the original layout."""
    path = workdir / f"sd15-random-seed{seed}.safetensors"
    if path.is_file():
        log.info("Reusing %s", path)
        return path
    arch = load_ldm_config(REPO / "configs" / "v1-inference.yaml")
    start = time.perf_counter()
    torch.manual_seed(seed)
    model = SDModel(arch=arch, unet=build_unet(arch).eval(), vae=build_vae(arch).eval(),
                    text_encoders=[build_text_encoder(spec).eval() for spec in arch.text_encoders])
    count = sum(p.numel() for m in (model.unet, model.vae, *model.text_encoders) for p in m.parameters())
    log.info("Built random SD 1.5 modules (%.0fM parameters) in %.0fs", count / 1e6, time.perf_counter() - start)
    start = time.perf_counter()
    save_checkpoint(model, path, dtype=torch.float16)  # fp16 keeps the file at ~2 GB, like the released one
    log.info("Saved %s (%.2f GB) in %.0fs", path, path.stat().st_size / 1e9, time.perf_counter() - start)
    return path


def clip_tokenizer(folder: Path) -> CLIPTokenizer:
    """transformers' CLIPTokenizer from vocab.json / merges.txt written out of open_clip's BPE file.

    Both come from the same 49408-token OpenAI CLIP vocabulary; open_clip only spells the two special
    tokens differently, so they are renamed to the names transformers (and the released SD files) use.
    """
    bpe = SimpleTokenizer(default_bpe(), context_length=None)
    rename = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {rename.get(token, token): index for token, index in bpe.encoder.items()}
    merges = [pair for pair, _ in sorted(bpe.bpe_ranks.items(), key=lambda item: item[1])]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(p) for p in merges) + "\n",
                                       encoding="utf-8")
    tokenizer = CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"),
                              model_max_length=77)
    # Same ids as the product's tokenizer, or the two sides would not encode the same prompt.
    expected = [49406, *bpe.encode(PROMPT), 49407]
    got = tokenizer(PROMPT).input_ids
    if got != expected:
        raise RuntimeError(f"CLIPTokenizer from open_clip's BPE gives other ids: {got[:8]}... vs {expected[:8]}...")
    return tokenizer


# ------------------------------------------------------------------------------------------ timing

def _stamp() -> tuple[float, float]:
    # Wall time, and CPU time of this process: on a shared machine the wall time also counts the
    # time other programs held the cores, the CPU time counts only the work done (with --threads 1
    # it is close to what a quiet machine would show).
    return time.perf_counter(), time.process_time()


def _per_step(stamps: list[tuple[float, float]]) -> dict[str, list[float]]:
    """Step durations from when each step ended; the first step (warm-up) has no start and drops out."""
    pairs = list(zip(stamps, stamps[1:], strict=False))
    return {"steps_s": [b[0] - a[0] for a, b in pairs], "steps_cpu_s": [b[1] - a[1] for a, b in pairs]}


def _timed(fn: Any, times: int = 3) -> float:
    """Median wall time of `fn()`: short calls are easily disturbed by other processes."""
    samples = []
    for _ in range(times):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary over repeated runs: per-step median over every timed step of every run."""
    steps = [s for run in runs for s in run["steps_s"]]
    cpu = [s for run in runs for s in run["steps_cpu_s"]]
    summary: dict[str, Any] = {"s_per_step": statistics.median(steps), "mean_s_per_step": statistics.fmean(steps),
                               "cpu_s_per_step": statistics.median(cpu), "steps_s": [round(s, 4) for s in steps],
                               "steps_cpu_s": [round(s, 4) for s in cpu]}
    for key in ("text_encode_s", "vae_decode_s", "total_s"):
        summary[key] = round(statistics.median(run[key] for run in runs), 4)
    return summary


def time_ours(registry: ModelRegistry, model: SDModel, size: int, steps: int) -> dict[str, Any]:
    stamps: list[tuple[float, float]] = []

    def on_step(state: ProgressState) -> None:
        stamps.append(_stamp())

    params = Txt2ImgParams(prompt=PROMPT, negative_prompt=NEGATIVE, sampler="Euler", steps=steps + 1, cfg_scale=CFG,
                           seed=SEED, width=size, height=size, save=False)
    start = time.perf_counter()
    generate(params, registry, None, GenerationControl(on_step=on_step))
    total = time.perf_counter() - start
    # Text encoding and VAE decoding on their own, with the same code generate() uses.
    encoder = PromptEncoder(model.arch.text_encoders, model.text_encoders)
    encode = _timed(lambda: encoder.encode_for_cfg([PROMPT], [NEGATIVE]))
    latents = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(SEED))
    decode = _timed(lambda: decode_latents(model, latents), 1)
    return {**_per_step(stamps), "text_encode_s": encode, "vae_decode_s": decode, "total_s": total}


def time_diffusers(pipe: StableDiffusionPipeline, size: int, steps: int) -> dict[str, Any]:
    stamps: list[tuple[float, float]] = []

    def on_step(pipeline: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        stamps.append(_stamp())
        return kwargs

    start = time.perf_counter()
    with torch.no_grad():
        out = pipe(PROMPT, negative_prompt=NEGATIVE, height=size, width=size, num_inference_steps=steps + 1,
                   guidance_scale=CFG, generator=torch.Generator().manual_seed(SEED), output_type="latent",
                   callback_on_step_end=on_step)
    total = time.perf_counter() - start  # without the VAE decode (output_type="latent")
    with torch.no_grad():
        encode = _timed(lambda: pipe.encode_prompt(PROMPT, torch.device("cpu"), 1, True, NEGATIVE))
        latents = out.images[:1] / pipe.vae.config.scaling_factor
        decode = _timed(lambda: pipe.vae.decode(latents), 1)
    return {**_per_step(stamps), "text_encode_s": encode, "vae_decode_s": decode, "total_s": total + decode}


# ------------------------------------------------------------------------------------------ main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="timed steps per run (one warm-up step is added)")
    parser.add_argument("--sizes", default="256,512", help="comma-separated square image sizes (multiples of 8)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="precision of the UNet and text encoder")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="folder for the ~2 GB checkpoint, kept and reused (default: a temporary folder)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the random weights")
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs per side and size, alternating which side goes first (ABBA), so a busy "
                             "machine slows both alike; the median step over all runs is reported")
    args = parser.parse_args(argv)
    try:
        args.size_list = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sizes: {args.sizes!r} is not a comma-separated list of numbers")
    if not args.size_list or any(s < 64 or s % 8 for s in args.size_list):
        parser.error("--sizes: every size must be a multiple of 8, at least 64")
    if args.steps < 1 or args.repeats < 1:
        parser.error("--steps and --repeats must be 1 or more")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    temp = None
    if args.workdir is None:
        temp = Path(tempfile.mkdtemp(prefix="sd-benchmark-"))
    workdir = (args.workdir or temp).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        checkpoint = make_checkpoint(workdir, args.seed)
        gc.collect()
        dtype = DTYPES[args.dtype]
        registry = ModelRegistry([checkpoint.parent], [], DevicePolicy.cpu(dtype), HashCache(None))
        registry.add_file(checkpoint)
        start = time.perf_counter()
        model = registry.current()  # load_checkpoint under the hood
        log.info("Loaded through the registry in %.0fs (%s)", time.perf_counter() - start, model.config_reason)
        registry.short_hash()  # hash the 2 GB file now, not inside the first timed generation
        # The diffusers pipeline gets the same module objects: same weights, same dtype, no second copy.
        pipe = StableDiffusionPipeline(
            vae=model.vae, text_encoder=model.text_encoders[0], tokenizer=clip_tokenizer(workdir / "tokenizer"),
            unet=model.unet, scheduler=EulerDiscreteScheduler(**model.arch.scheduler_config, steps_offset=1),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        results = []
        for size in args.size_list:
            runs: dict[str, list[dict[str, Any]]] = {"ours": [], "diffusers": []}
            for repeat in range(args.repeats):
                order = ("ours", "diffusers") if repeat % 2 == 0 else ("diffusers", "ours")
                for side in order:
                    log.info("%dx%d, run %d/%d: %s", size, size, repeat + 1, args.repeats, side)
                    run = (time_ours(registry, model, size, args.steps) if side == "ours"
                           else time_diffusers(pipe, size, args.steps))
                    runs[side].append(run)
            ours, theirs = _merge(runs["ours"]), _merge(runs["diffusers"])
            results.append({"size": size, "ours": ours, "diffusers": theirs,
                            "ratio": ours["s_per_step"] / theirs["s_per_step"],
                            "cpu_ratio": ours["cpu_s_per_step"] / theirs["cpu_s_per_step"]})
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)

    report = {
        "steps": args.steps, "repeats": args.repeats, "dtype": args.dtype, "sampler": "Euler", "cfg_scale": CFG, "batch_per_unet_call": 2,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "load_average": os.getloadavg(), "results": results,
    }
    print(f"SD 1.5 random weights, {args.dtype}, CPU, {torch.get_num_threads()} threads, Euler, CFG {CFG} "
          f"(UNet batch 2), median of {args.repeats}x{args.steps} steps, each run after 1 warm-up step")
    print(f"{'size':>9}  {'ours s/step':>11}  {'diffusers s/step':>16}  {'ratio':>6}  {'CPU s/step ours/diff':>21}  "
          f"{'CPU ratio':>9}  {'text enc ours/diff s':>20}  {'VAE decode ours/diff s':>22}")
    for r in results:
        o, d = r["ours"], r["diffusers"]
        print(f"{r['size']:>4}x{r['size']:<4}  {o['s_per_step']:>11.3f}  {d['s_per_step']:>16.3f}  {r['ratio']:>6.3f}  "
              f"{o['cpu_s_per_step']:>10.3f} / {d['cpu_s_per_step']:<8.3f}  {r['cpu_ratio']:>9.3f}  "
              f"{o['text_encode_s']:>9.3f} / {d['text_encode_s']:<8.3f}  {o['vae_decode_s']:>10.3f} / {d['vae_decode_s']:<9.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
