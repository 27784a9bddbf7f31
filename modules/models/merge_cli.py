"""`webui.py merge`: the Checkpoint Merger from the command line; prints the new file's path.

Light at import (the parser is built before any flag is parsed): the merge itself is imported when
the command runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modules.context import AppContext

COMMAND = "merge"
_HELP = "merge two or three checkpoints into a new one (the Checkpoint Merger)"
METHODS = ("No interpolation", "Weighted sum", "Add difference")  # as modules.models.merge.METHODS
CONFIG_SOURCES = ("A, B or C", "B", "C", "Don't")


def add_merge_parser(subparsers: argparse._SubParsersAction,
                     parents: Sequence[argparse.ArgumentParser] = ()) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(COMMAND, help=_HELP, parents=list(parents),
                                   description=_HELP + ". Weighted sum: A * (1 - M) + B * M; Add difference: "
                                   "A + (B - C) * M. The result goes into the first checkpoint folder.")
    g = parser.add_argument_group("merge options")
    g.add_argument("--primary", "-a", required=True, metavar="NAME", help="model A: a name from the checkpoint list")
    g.add_argument("--secondary", "-b", metavar="NAME", help="model B")
    g.add_argument("--tertiary", "-c", metavar="NAME", help="model C (Add difference)")
    g.add_argument("--method", default="Weighted sum", metavar="METHOD",
                   help=f"{', '.join(METHODS)} (default: Weighted sum)")
    g.add_argument("--multiplier", "-m", type=float, default=0.3, metavar="M", help="M (default: 0.3)")
    g.add_argument("--name", default="", help="file name without extension (default: from the recipe, "
                   "e.g. '0.7(a) + 0.3(b)')")
    g.add_argument("--format", choices=("safetensors", "ckpt"), default="safetensors",
                   help="file format (default: safetensors)")
    g.add_argument("--half", action="store_true", help="save 32-bit weights as 16-bit")
    g.add_argument("--config-from", default="A, B or C", metavar="SOURCE",
                   help=f"copy the .yaml config from: {', '.join(CONFIG_SOURCES)} (default: A, B or C)")
    g.add_argument("--bake-in-vae", metavar="NAME", help="a VAE from models/VAE to put into the result")
    g.add_argument("--discard-weights", default="", metavar="REGEX", help="leave out weights whose names match")
    g.add_argument("--no-metadata", action="store_true", help="write no metadata (no merge recipe)")
    g.add_argument("--overwrite", action="store_true", help="replace a file of the same name")
    parser.set_defaults(mode=COMMAND)
    return parser


def run_merge(ctx: AppContext, args: argparse.Namespace) -> int:
    from modules.models.merge import merge_checkpoints, request_from_names

    registry = ctx.registry
    request = request_from_names(
        registry, args.primary, args.secondary, args.tertiary, args.bake_in_vae, method=args.method,
        multiplier=args.multiplier, save_as_half=args.half, custom_name=args.name, checkpoint_format=args.format,
        config_source=args.config_from, discard_weights=args.discard_weights, save_metadata=not args.no_metadata,
        overwrite=args.overwrite)
    path = merge_checkpoints(request, registry.checkpoint_dirs[0], registry.hashes)
    print(path, file=sys.stdout)
    return 0
