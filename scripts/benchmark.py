"""Speed and memory of this product's processing layer vs a plain diffusers pipeline, and of the
embedded default model: seconds per denoising step, seconds per VAE decode, seconds to load the
checkpoint, and peak memory (RSS; CUDA peak allocated on a GPU).

    ./venv/bin/python scripts/benchmark.py [--sizes 256,512] [--steps 4] [--precisions fp32,bf16]
        [--sides ours,diffusers,default] [--workdir DIR] [--json out.json] [--compare old.json]
        [--threads N] [--checkpoint FILE]

One run does everything offline. It builds full-size SD 1.5 modules with random weights from
configs/v1-inference.yaml (seeded) and saves them once as a single-file checkpoint in the original
LDM layout (fp16, ~2 GB; reused when --workdir already holds it). Then every configuration (side ×
precision × size) runs in a fresh subprocess, so that its peak RSS is its own:

  ours       the registry loads the file with the device policy of `--precision full` (fp32) or
             `--precision bf16` (what "auto" picks on a bf16 CPU), and processing.run.generate runs
             Euler, CFG 7 (one UNet call on a batch of 2 per step);
  diffusers  StableDiffusionPipeline (EulerDiscreteScheduler, CFG 7) on the same weights loaded as
             plain modules in that dtype (no channels-last, no offloading, no compile), with a
             CLIPTokenizer written from open_clip's BPE file (nothing is downloaded);
  default    the embedded default model (models/Stable-diffusion/default-shapes.safetensors) through
             the product at its native 128×128, also timing a first full 20-step image after load.

Per-step time is taken between consecutive step callbacks: text encoding and VAE decoding are
excluded (the decode is timed on its own) and the first step, which pays one-off costs, is not
counted: each run does --steps + 1 steps. The table shows the ratios ours/diffusers at the same
precision and ours/diffusers-fp32 (the plain pipeline's default). `--compare old.json` adds the
change against an earlier run's JSON. `--checkpoint FILE` benchmarks another single-file checkpoint
instead of the random SD 1.5 (a tiny test model makes a quick smoke run).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
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

from modules.devices import DevicePolicy, configure_threads, cpu_has_bf16  # noqa: E402
from modules.models.arch import load_ldm_config  # noqa: E402
from modules.models.build import build_text_encoder, build_unet, build_vae  # noqa: E402
from modules.models.discovery import HashCache  # noqa: E402
from modules.models.load import SDModel, load_checkpoint, save_checkpoint  # noqa: E402
from modules.models.registry import DEFAULT_MODEL_STEM, ModelRegistry  # noqa: E402
from modules.processing.control import GenerationControl, ProgressState  # noqa: E402
from modules.processing.params import Txt2ImgParams  # noqa: E402
from modules.processing.run import decode_latents, generate  # noqa: E402

log = logging.getLogger("benchmark")

PROMPT = "a photograph of an astronaut riding a horse on the moon, detailed, sharp focus"
NEGATIVE = "blurry, low quality"
CFG = 7.0
SEED = 1234
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DEFAULT_MODEL = REPO / "models" / "Stable-diffusion" / f"{DEFAULT_MODEL_STEM}.safetensors"
SIDES = ("ours", "diffusers", "default")


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


# ------------------------------------------------------------------------------------------ one configuration

def _peaks() -> dict[str, float]:
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    scale = 1 if sys.platform == "darwin" else 1024
    peaks = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20}
    if torch.cuda.is_available():
        peaks["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return peaks


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _policy(precision: str) -> DevicePolicy:
    return DevicePolicy.from_flags(None, precision="full" if precision == "fp32" else precision)


def _steps_from(stamps: list[float]) -> list[float]:
    """Step durations from when each step ended; the first step (warm-up) has no start and drops out."""
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def run_ours(checkpoint: Path, precision: str, size: int, steps: int, first_image: bool) -> dict[str, Any]:
    policy = _policy(precision)
    registry = ModelRegistry([checkpoint.parent], [], policy, HashCache(None))
    info = registry.add_file(checkpoint)
    start = time.perf_counter()
    model = registry.load(info)
    load_s = time.perf_counter() - start
    result: dict[str, Any] = {"load_s": load_s, "policy": (model.policy or policy).describe()}
    if first_image:
        # What a user waits for after start-up: a whole 20-step image at the native size.
        params = Txt2ImgParams(prompt="a red circle on a blue background", steps=20, seed=SEED, save=False)
        start = time.perf_counter()
        generate(params, registry)
        result["first_image_s"] = time.perf_counter() - start
    stamps: list[float] = []

    def on_step(state: ProgressState) -> None:
        _sync()
        stamps.append(time.perf_counter())

    params = Txt2ImgParams(prompt=PROMPT, negative_prompt=NEGATIVE, sampler="Euler", steps=steps + 1, cfg_scale=CFG,
                           seed=SEED, width=size, height=size, save=False)
    generate(params, registry, None, GenerationControl(on_step=on_step))
    latents = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(SEED))
    start = time.perf_counter()
    decode_latents(model, latents)
    result["vae_decode_s"] = time.perf_counter() - start
    result["steps_s"] = _steps_from(stamps)
    return result


def run_diffusers(checkpoint: Path, precision: str, size: int, steps: int, workdir: Path) -> dict[str, Any]:
    device = _policy(precision).device
    plain = DevicePolicy(device=device, dtype=DTYPES[precision], vae_dtype=DTYPES[precision])
    start = time.perf_counter()
    model = load_checkpoint(checkpoint, plain)
    pipe = StableDiffusionPipeline(
        vae=model.vae, text_encoder=model.text_encoders[0], tokenizer=clip_tokenizer(workdir / "tokenizer"),
        unet=model.unet, scheduler=EulerDiscreteScheduler(**model.arch.scheduler_config, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    load_s = time.perf_counter() - start
    pipe.set_progress_bar_config(disable=True)
    stamps: list[float] = []

    def on_step(pipeline: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        _sync()
        stamps.append(time.perf_counter())
        return kwargs

    with torch.no_grad():
        out = pipe(PROMPT, negative_prompt=NEGATIVE, height=size, width=size, num_inference_steps=steps + 1,
                   guidance_scale=CFG, generator=torch.Generator().manual_seed(SEED), output_type="latent",
                   callback_on_step_end=on_step)
        latents = out.images[:1] / pipe.vae.config.scaling_factor
        start = time.perf_counter()
        pipe.vae.decode(latents)
        _sync()
        decode_s = time.perf_counter() - start
    return {"load_s": load_s, "vae_decode_s": decode_s, "steps_s": _steps_from(stamps), "policy": plain.describe()}


def child(args: argparse.Namespace) -> int:
    """One configuration in this (fresh) process; prints one JSON line."""
    side, precision, size = args.child
    configure_threads(args.threads)
    if side == "diffusers":
        result = run_diffusers(args.checkpoint, precision, int(size), args.steps, args.workdir)
    else:
        checkpoint = DEFAULT_MODEL if side == "default" else args.checkpoint
        result = run_ours(checkpoint, precision, int(size), args.steps, first_image=side == "default")
    steps = result["steps_s"]
    result.update(side=side, precision=precision, size=int(size), threads=torch.get_num_threads(),
                  s_per_step=statistics.median(steps) if steps else float("nan"), **_peaks())
    print("RESULT " + json.dumps(result), flush=True)
    return 0


# ------------------------------------------------------------------------------------------ main

def configurations(args: argparse.Namespace) -> list[tuple[str, str, int]]:
    runs = []
    for precision in args.precision_list:
        for size in args.size_list:
            for side in ("ours", "diffusers"):
                if side in args.side_list:
                    runs.append((side, precision, size))
        if "default" in args.side_list:
            runs.append(("default", precision, 128))
    return runs


def run_child(args: argparse.Namespace, config: tuple[str, str, int], checkpoint: Path, workdir: Path) -> dict:
    side, precision, size = config
    command = [sys.executable, str(Path(__file__).resolve()), "--child", side, precision, str(size),
               "--steps", str(args.steps), "--checkpoint", str(checkpoint), "--workdir", str(workdir)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    log.info("%s %s %dx%d ...", side, precision, size, size)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        log.error("%s %s %d failed:\n%s", side, precision, size, done.stderr[-3000:])
        return {"side": side, "precision": precision, "size": size, "error": done.stderr[-500:]}
    return json.loads(lines[-1].removeprefix("RESULT "))


def _key(r: dict) -> tuple[str, str, int]:
    return r["side"], r["precision"], r["size"]


def print_report(report: dict, old: dict | None) -> None:
    rows = {_key(r): r for r in report["results"] if "error" not in r}
    before = {_key(r): r for r in (old or {}).get("results", []) if "error" not in r}
    print(f"CPU: {report['cpu']}, {report['threads']} threads, bf16 native: {report['cpu_bf16']}; "
          f"CUDA: {report['cuda']}; Euler, CFG {CFG} (UNet batch 2); median of {report['steps']} steps after 1 warm-up")
    head = (f"{'side':<9} {'prec':<4} {'size':>4}  {'s/step':>7}  {'VAE dec s':>9}  {'load s':>7}  "
            f"{'peak RSS MB':>11}  {'CUDA MB':>8}  {'first img s':>11}")
    if before:
        head += f"  {'s/step old':>10}  {'new/old':>7}"
    print(head)
    for r in report["results"]:
        if "error" in r:
            print(f"{r['side']:<9} {r['precision']:<4} {r['size']:>4}  FAILED")
            continue
        line = (f"{r['side']:<9} {r['precision']:<4} {r['size']:>4}  {r['s_per_step']:>7.3f}  "
                f"{r['vae_decode_s']:>9.3f}  {r['load_s']:>7.2f}  {r['peak_rss_mb']:>11.0f}  "
                f"{r.get('cuda_peak_mb', float('nan')):>8.0f}  {r.get('first_image_s', float('nan')):>11.2f}")
        prev = before.get(_key(r))
        if prev:
            line += f"  {prev['s_per_step']:>10.3f}  {r['s_per_step'] / prev['s_per_step']:>7.2f}"
        print(line)
    print("ratios (ours / diffusers; below 1 = ours faster or smaller)")
    for (side, precision, size), r in rows.items():
        if side != "ours":
            continue
        for base_precision in dict.fromkeys((precision, "fp32")):
            base = rows.get(("diffusers", base_precision, size))
            if base:
                print(f"  ours {precision} vs diffusers {base_precision} at {size}: s/step "
                      f"{r['s_per_step'] / base['s_per_step']:.2f}, VAE decode {r['vae_decode_s'] / base['vae_decode_s']:.2f}, "
                      f"peak RSS {r['peak_rss_mb'] / base['peak_rss_mb']:.2f}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="timed steps per run (one warm-up step is added)")
    parser.add_argument("--sizes", default="256,512", help="comma-separated square image sizes (multiples of 8)")
    parser.add_argument("--precisions", default=None,
                        help="comma-separated, of fp32,bf16 (default: fp32, and bf16 where the CPU or GPU has it)")
    parser.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated, of {','.join(SIDES)}")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="folder for the ~2 GB checkpoint, kept and reused (default: a temporary folder)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="benchmark this file instead of random SD 1.5")
    parser.add_argument("--json", type=Path, default=None, help="write the results to this JSON file")
    parser.add_argument("--compare", type=Path, default=None, help="an earlier run's JSON to compare with")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the usable cores)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the random weights")
    parser.add_argument("--child", nargs=3, metavar=("SIDE", "PRECISION", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        args.size_list = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sizes: {args.sizes!r} is not a comma-separated list of numbers")
    if not args.size_list or any(s < 64 or s % 8 for s in args.size_list):
        parser.error("--sizes: every size must be a multiple of 8, at least 64")
    if args.precisions is None:
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported() or cpu_has_bf16()
        args.precisions = "fp32,bf16" if bf16 else "fp32"
    args.precision_list = [p.strip() for p in args.precisions.split(",") if p.strip()]
    args.side_list = [s.strip() for s in args.sides.split(",") if s.strip()]
    if bad := [p for p in args.precision_list if p not in DTYPES]:
        parser.error(f"--precisions: unknown {bad}; use fp32 and/or bf16")
    if bad := [s for s in args.side_list if s not in SIDES]:
        parser.error(f"--sides: unknown {bad}; use {', '.join(SIDES)}")
    if args.steps < 1:
        parser.error("--steps must be 1 or more")
    if args.compare is not None and not args.compare.is_file():
        parser.error(f"--compare: {args.compare} is not a file")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if args.child:
        return child(args)
    temp = tempfile.TemporaryDirectory(prefix="sd-benchmark-") if args.workdir is None else None
    workdir = (args.workdir or Path(temp.name)).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        needs_file = {"ours", "diffusers"} & set(args.side_list)
        checkpoint = args.checkpoint or (make_checkpoint(workdir, args.seed) if needs_file else DEFAULT_MODEL)
        clip_tokenizer(workdir / "tokenizer")  # written once, read by the diffusers children
        results = [run_child(args, config, checkpoint.resolve(), workdir) for config in configurations(args)]
    finally:
        if temp is not None:
            temp.cleanup()
    report = {
        "checkpoint": "random SD 1.5" if args.checkpoint is None else str(args.checkpoint),
        "steps": args.steps, "sampler": "Euler", "cfg_scale": CFG, "batch_per_unet_call": 2,
        "torch": torch.__version__, "threads": configure_threads(args.threads),
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(), "cpu_bf16": cpu_has_bf16(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "load_average": os.getloadavg(), "results": results,
    }
    old = json.loads(args.compare.read_text(encoding="utf-8")) if args.compare else None
    print_report(report, old)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
        print(f"wrote {args.json}")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
