"""Prompt matrix: "a cat|in a hat|at night" → the first part with every subset of the others
(2^(n-1) pictures), in a grid labelled with the parts each column and row adds.

Arguments (A1111's order): put_at_start, different_seeds, prompt_type ("positive" / "negative"),
variations_delimiter ("comma" / "space"), margin_size.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from modules.errors import UserError
from modules.images import make_grid
from modules.processing.params import GenerationParams
from modules.processing.run import GenerationResult
from modules.sampling.noise import resolve_seed
from modules.scripts.base import Script, ScriptArg
from modules.scripts.grid import labelled_grid

if TYPE_CHECKING:
    from modules.context import AppContext

MAX_PARTS = 9  # 256 pictures


def combinations(text: str, put_at_start: bool = False, delimiter: str = ", ") -> tuple[list[str], list[str]]:
    """(the optional parts, the prompt for each subset): subset i holds part j when bit j of i is set."""
    parts = [p.strip() for p in text.split("|")]
    base, extras = parts[0], parts[1:]
    prompts = []
    for i in range(2 ** len(extras)):
        chosen = [p for j, p in enumerate(extras) if i >> j & 1]
        pieces = [*chosen, base] if put_at_start else [base, *chosen]
        prompts.append(delimiter.join(p for p in pieces if p))
    return extras, prompts


class PromptMatrix(Script):
    title = "Prompt matrix"
    args = (
        ScriptArg("put_at_start", "Put variable parts at start of prompt", "bool", False),
        ScriptArg("different_seeds", "Use different seed for each picture", "bool", False),
        ScriptArg("prompt_type", "Select prompt", "choice", "positive", ("positive", "negative")),
        ScriptArg("variations_delimiter", "Select joining char", "choice", "comma", ("comma", "space")),
        ScriptArg("margin_size", "Grid margins (px)", "int", 0, minimum=0, maximum=500, step=2),
    )

    def run(self, ctx: AppContext, params: GenerationParams, args: dict[str, Any]) -> GenerationResult:
        negative = args["prompt_type"] == "negative"
        text = params.negative_prompt if negative else params.prompt
        if "|" not in text:
            raise UserError(f"Prompt matrix: separate the parts of the {args['prompt_type']} prompt with |, "
                            "e.g. 'a cat|wearing a hat|at night'.")
        extras, prompts = combinations(text, args["put_at_start"], ", " if args["variations_delimiter"] == "comma" else " ")
        if len(extras) > MAX_PARTS:
            raise UserError(f"Prompt matrix: {len(extras)} optional parts make {len(prompts)} pictures; "
                            f"use at most {MAX_PARTS}.")
        seed = resolve_seed(params.seed)
        result = GenerationResult(images=[], infotexts=[], seeds=[], params=params)
        for i, prompt in enumerate(prompts):
            one = replace(params, seed=seed + i if args["different_seeds"] else seed, save_grid=False,
                          **{"negative_prompt" if negative else "prompt": prompt})
            done = ctx.generate(one)
            if not done.images:
                break
            result.images.append(done.images[0] if len(done.images) == 1 else make_grid(done.images))
            result.infotexts.append(done.infotexts[0])
            result.seeds.append(done.seeds[0])
            if done.interrupted:
                break
        result.interrupted = len(result.images) < len(prompts)
        if result.interrupted:
            return result
        # Columns switch the first half of the parts on and off, rows the second half.
        col_bits = (len(extras) + 1) // 2
        cols, rows = 2 ** col_bits, 2 ** (len(extras) - col_bits)
        cells = [[result.images[r * cols + c] for c in range(cols)] for r in range(rows)]
        col_labels = [_label(extras[:col_bits], c) for c in range(cols)]
        row_labels = [_label(extras[col_bits:], r) for r in range(rows)] if rows > 1 else []
        grid = labelled_grid(cells, col_labels, row_labels, args["margin_size"])
        result.images.insert(0, grid)
        result.infotexts.insert(0, result.infotexts[0])
        result.seeds.insert(0, result.seeds[0])
        result.grids = 1
        if params.save:
            result.grid_path = ctx.output(params.mode).save_grid(grid, result.infotexts[0])
        return result


def _label(parts: list[str], bits: int) -> str:
    """The parts a column or row adds, one a line; "-" for none."""
    chosen = [p for j, p in enumerate(parts) if bits >> j & 1]
    return "\n".join(chosen) or "-"
