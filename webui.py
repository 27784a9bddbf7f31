"""Entry point: `python webui.py [flags]` starts the web UI (or the API), `python webui.py txt2img ...`
generates from the command line. The flags are AUTOMATIC1111's, so launch scripts carry over.

The program never goes online: the environment below switches off every telemetry and hub lookup
of the libraries used, and it is set before any of them is imported (several read it at import).
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

OFFLINE_ENV = {
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
}
# Forced, not defaulted: a shell that exports HF_HUB_OFFLINE=0 must not make this program go online.
os.environ.update(OFFLINE_ENV)

if TYPE_CHECKING:
    from modules.context import AppContext
    from modules.extensions import LoadedExtensions

log = logging.getLogger("webui")

DEFAULT_PORT = 7860
DEFAULT_API_PORT = 7861  # A1111's port for --nowebui
PRECISION_CHOICES = ("auto", "full", "half", "bf16")  # modules.devices.PRECISIONS, without importing torch


def parse_auth(text: str) -> list[tuple[str, str]]:
    """`user:pass[,user2:pass2]` → [(user, pass), ...]; a password may itself contain ':'."""
    from modules.credentials import parse_credentials
    from modules.errors import UserError

    try:
        pairs = parse_credentials(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if not pairs:
        raise argparse.ArgumentTypeError("give at least one user:password")
    return pairs


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def add_global_flags(parser: argparse.ArgumentParser, suppress: bool = False) -> None:
    """Flags that apply to the web UI and to every sub-command.

    Sub-commands take them too (`webui.py txt2img --ckpt x`); there they default to SUPPRESS so a
    value given before the sub-command is not overwritten by the sub-parser's default.
    """
    g = parser.add_argument_group("models and folders")
    add = _adder(g, suppress)
    add("--ckpt", metavar="PATH_OR_NAME", default=None,
        help="checkpoint to load first: a .safetensors/.ckpt file path, or the name of one in models/Stable-diffusion")
    add("--ckpt-dir", type=Path, default=None, help="extra folder to look for checkpoints in")
    add("--vae", "--vae-path", dest="vae", metavar="PATH_OR_NAME", default=None,
        help="VAE used with every checkpoint, whatever the settings pick: a file path, or the name of one in "
             "models/VAE (A1111's --vae-path)")
    add("--controlnet-dir", type=Path, default=None,
        help="extra folder to look for ControlNet models in (besides models/ControlNet)")
    add("--data-dir", type=Path, default=None,
        help="folder for user data (models/, outputs/, config.json); default: the program folder")
    add("--outdir", type=Path, default=None,
        help="where pictures are saved (default: <data-dir>/outputs; sub-commands: wins over Settings)")
    add("--skip-load-model-at-start", action="store_true", default=False,
        help="do not load a checkpoint when the web UI starts; the first generation loads it")

    g = parser.add_argument_group("device and precision")
    add = _adder(g, suppress)
    add("--device", default=None, metavar="{cpu,cuda,mps}",
        help="where models run (cuda:N picks a GPU); default: CUDA if available, else MPS, else the CPU")
    add("--precision", choices=PRECISION_CHOICES, default="auto",
        help="auto: fp16 on GPUs, bf16 on CPUs with native bf16 (fp32 on others and for small models); "
             "full: fp32; half: fp16; bf16: bfloat16")
    add("--no-half", action="store_true", default=False, help="run everything in fp32 (same as --precision full)")
    add("--no-half-vae", action="store_true", default=False,
        help="keep the VAE in fp32 (fp16 VAEs can overflow into black pictures)")
    add("--medvram", action="store_true", default=False,
        help="save GPU memory: keep only the part of the model in use on the GPU")
    add("--lowvram", action="store_true", default=False,
        help="save more GPU memory than --medvram, at a large speed cost")
    add("--threads", type=_positive_int, default=None, metavar="N",
        help="CPU threads torch uses (default: the cores this process may use)")
    add("--workers", type=_positive_int, default=1, metavar="N",
        help="generation workers on Ray Serve (pip install -e .[ray]): N replicas on this machine, each with "
             "--threads threads (or one GPU with --device cuda), or on the cluster given by --ray")
    add("--ray", default=None, metavar="ADDRESS",
        help="run the workers on an existing Ray cluster (ray start --head ...; e.g. 10.0.0.5:6379)")
    add("--compile", action="store_true", default=False,
        help="compile the UNet with torch.compile (opt-in: the first generation is slow while it compiles)")
    add("--vae-tiling", action="store_true", default=False,
        help="decode pictures in tiles at every size (always done above 1024×1024) to save memory")


def _adder(group: argparse._ArgumentGroup, suppress: bool) -> Callable[..., None]:
    def add(*names: str, **kw: Any) -> None:
        if suppress:
            kw["default"] = argparse.SUPPRESS
        group.add_argument(*names, **kw)

    return add


def add_server_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("web UI and API server")
    g.add_argument("--listen", action="store_true",
                   help="listen on all network interfaces (0.0.0.0) so other computers can connect")
    g.add_argument("--port", type=int, default=None,
                   help=f"server port (default: {DEFAULT_PORT}, or {DEFAULT_API_PORT} with --nowebui)")
    g.add_argument("--api", action="store_true", help="serve the HTTP API (/sdapi/v1/...) next to the web UI")
    g.add_argument("--nowebui", action="store_true", help="serve only the HTTP API, without the web UI")
    g.add_argument("--gradio-auth", type=parse_auth, default=None, metavar="USER:PASS[,U2:P2]",
                   help="require a login for the web UI")
    g.add_argument("--api-auth", type=parse_auth, default=None, metavar="USER:PASS[,U2:P2]",
                   help="require HTTP basic auth for the API")
    g.add_argument("--autolaunch", action="store_true", help="open the web UI in the system's browser on start")


def build_parser() -> argparse.ArgumentParser:
    from modules import cli  # light: no torch until a sub-command runs

    parser = argparse.ArgumentParser(
        prog="webui.py",
        description="Local, offline Stable Diffusion web UI. Without a sub-command it starts the web UI; "
                    "with one it generates from the command line and prints the saved file paths.",
    )
    add_global_flags(parser)
    add_server_flags(parser)
    shared = argparse.ArgumentParser(add_help=False)
    add_global_flags(shared, suppress=True)
    subparsers = parser.add_subparsers(dest="command", title="sub-commands", metavar="{" + ",".join((*cli.MODES, "train-lora", "merge")) + "}")
    cli.add_subcommands(subparsers, parents=[shared])
    return parser


def setup_logging() -> None:
    # stderr: in command-line mode stdout carries only the saved file paths.
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")


def create_context(args: argparse.Namespace) -> AppContext:
    """The one AppContext, from the flags; `--ckpt` (or the last checkpoint chosen in the UI) is
    registered as the model to load first."""
    from modules.context import AppContext, Paths
    from modules.devices import DevicePolicy
    from modules.errors import UserError

    if args.ckpt_dir is not None and not args.ckpt_dir.is_dir():
        raise UserError(f"--ckpt-dir {args.ckpt_dir} is not a folder.")
    if args.data_dir is not None and args.data_dir.exists() and not args.data_dir.is_dir():
        raise UserError(f"--data-dir {args.data_dir} is not a folder.")
    controlnet_dir = getattr(args, "controlnet_dir", None)
    if controlnet_dir is not None and not controlnet_dir.is_dir():
        raise UserError(f"--controlnet-dir {controlnet_dir} is not a folder.")
    paths = Paths.make(args.data_dir, args.ckpt_dir, args.outdir, controlnet_dir)
    policy = DevicePolicy.from_flags(args.device, args.precision, args.no_half, args.no_half_vae,
                                     args.medvram, args.lowvram, compile=args.compile,
                                     vae_tiling=getattr(args, "vae_tiling", False))
    ctx = AppContext.create(paths, policy)
    log.info("Device: %s; data folder: %s", policy.describe(), paths.data_dir)
    if getattr(args, "vae", None):
        ctx.forced_vae = _forced_vae(ctx, args.vae)
    if args.ckpt:
        from modules.cli import resolve_checkpoint

        resolve_checkpoint(ctx.registry, args.ckpt)
    elif ctx.options.options.sd_model_checkpoint:
        # As in A1111, the checkpoint last chosen in the UI comes back after a restart.
        try:
            ctx.registry.preferred = ctx.registry.find(ctx.options.options.sd_model_checkpoint)
        except UserError as exc:
            log.warning("The last used checkpoint is not available (%s); using the default.", exc)
    return ctx


def _forced_vae(ctx: AppContext, value: str) -> Path:
    from modules.errors import UserError

    path = Path(value).expanduser()
    if path.is_file():
        return path.resolve()
    try:
        return ctx.registry.find_vae(value).path
    except UserError as exc:
        raise UserError(f"--vae {value}: no such file, and no VAE of that name in {ctx.paths.vae_dir}. Give the "
                        "path of a .safetensors/.ckpt/.pt VAE file or the name of one in models/VAE.") from exc


def _import_part(name: str, what: str) -> Any:
    """Import an optional part of the program (web UI, API) only when it is used."""
    from modules.errors import UserError

    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            raise UserError(f"{what} ({name.replace('.', '/')}) is not part of this installation. Generate from "
                            "the command line instead, e.g.: python webui.py txt2img --prompt \"a cat\"") from exc
        raise UserError(f"{what} cannot start: {exc}. Reinstall the dependencies: "
                        "./scripts/setup_and_test.sh (or pip install -e .).") from exc
    except ImportError as exc:
        raise UserError(f"{what} cannot start: {exc}. Reinstall the dependencies: "
                        "./scripts/setup_and_test.sh (or pip install -e .).") from exc


def launch(ctx: AppContext, args: argparse.Namespace, extensions: LoadedExtensions | None = None) -> int:
    """Serve the web UI (with the API mounted when --api) or, with --nowebui, the API alone.

    Launchers get the parsed flags: `args.port` is resolved to a number, `args.server_name` is the
    address to bind, `args.gradio_auth` / `args.api_auth` are lists of (user, password) or None.
    """
    from modules.errors import UserError

    args.port = args.port or (DEFAULT_API_PORT if args.nowebui else DEFAULT_PORT)
    args.server_name = "0.0.0.0" if args.listen else "127.0.0.1"
    if args.nowebui:
        part = _import_part("modules.api", "The HTTP API")
    else:
        part = _import_part("modules.ui", "The web UI")
        if args.api:
            # The web UI serves the API on its own port (A1111 does the same); fail early if it is missing.
            _import_part("modules.api", "The HTTP API (--api)")
    # The durable queue (the API, the UI's Enqueue button and Queue tab): opened now, so that an unreadable
    # or locked queue file stops the start with its message; jobs a crash left behind run again. A normal
    # stop is recorded as clean.
    jobs = _import_part("modules.api.jobs", "The job queue")
    if args.workers > 1 or args.ray:
        from modules.workers.ray_serve import RayWorkers

        workers = RayWorkers.start(ctx, args.workers, args.ray, args.threads or 1, args.device, args.precision)
        queue = jobs.open_queue(ctx, workers.execute, args.workers, workers.interrupt, workers.skip)
        atexit.register(workers.shutdown)
    else:
        queue = jobs.open_queue(ctx)
    atexit.register(queue.stop, 5.0)
    if not args.skip_load_model_at_start:
        try:
            ctx.registry.current()
        except UserError as exc:  # the UI still starts: models can be added and refreshed there
            log.warning("No model loaded: %s", exc)
    if args.nowebui:
        part.launch(ctx, args)
    else:  # the extensions' tabs and scripts, and the Extensions tab listing them
        tabs, scripts = part.extension_hooks(extensions) if extensions is not None else ([], [])
        part.launch(ctx, args, extra_tabs=tabs, scripts=scripts)
    return 0


def split_devices(args: argparse.Namespace) -> argparse.Namespace:
    """`--device cuda:0,cuda:1`: one worker per listed device (Ray Serve gives each replica one GPU); this
    process itself uses the first."""
    device = getattr(args, "device", None)
    if device and "," in device:
        devices = [d.strip() for d in device.split(",") if d.strip()]
        args.workers = max(getattr(args, "workers", 1), len(devices))
        args.device = devices[0]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = split_devices(parser.parse_args(argv))
    setup_logging()
    from modules.errors import UserError

    try:
        from modules.devices import configure_threads

        configure_threads(args.threads)
        ctx = create_context(args)
        from modules.extensions import load_extensions

        extensions = load_extensions(ctx)  # their image hooks apply to the command line too
        if args.command:
            from modules import cli

            return cli.run(ctx, args)
        return launch(ctx, args, extensions)
    except UserError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
