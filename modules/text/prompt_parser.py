"""Prompt syntax that users bring from AUTOMATIC1111's web UI.

Emphasis:
    (word)        weight x 1.1          ((word))      x 1.21
    [word]        weight / 1.1          (word:1.3)    weight x 1.3
    (a (b:1.5) c:1.2)                   nesting multiplies: a 1.2, b 1.8, c 1.2
    \\( \\) \\[ \\] \\\\    literal characters
Unbalanced brackets are tolerated the way A1111 does it: a `)` or `]` with nothing open is plain
text, and brackets still open at the end apply their multiplier to everything after them.
`BREAK` (upper case, a word on its own) ends the current 75-token chunk.

LoRA tags `<lora:NAME>` / `<lora:NAME:WEIGHT>` are removed by `extract_lora_tags` before the rest of
the prompt is parsed; other `<...>` text is left alone.
"""

from __future__ import annotations

import re
from typing import NamedTuple

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1


class Fragment(NamedTuple):
    """A run of prompt text with one weight, or (is_break=True) a chunk break."""

    text: str
    weight: float
    is_break: bool = False


BREAK = Fragment("BREAK", 1.0, is_break=True)

# One alternative per syntactic element; order matters (escapes before brackets, the weighted
# close before a plain close, a lone ":" last so that "a:b" outside a weight stays text).
_TOKEN = re.compile(
    r"""
    \\(?P<escaped>[()\[\]\\])                                   # \( \) \[ \] \\
  | (?P<backslash>\\)                                           # any other backslash
  | (?P<open_round>\()
  | (?P<open_square>\[)
  | :\s*(?P<weight>[+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*\)           # ":1.3)" closes a round bracket
  | (?P<close_round>\))
  | (?P<close_square>\])
  | (?P<text>[^\\()\[\]:]+)
  | (?P<colon>:)
    """,
    re.VERBOSE,
)

# BREAK as a whole word; the whitespace around it belongs to the break, not to the text.
_BREAK = re.compile(r"\s*\bBREAK\b\s*")

_LORA = re.compile(r"<lora:(?P<name>[^:<>]+?)(?::\s*(?P<weight>[+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*)?>")


def parse_prompt_attention(prompt: str) -> list[Fragment]:
    """Split `prompt` into weighted text fragments and BREAK markers (`Fragment.is_break`).

    Neighbouring fragments with equal weights are merged so that text split only by an escape
    (e.g. `\\(foo\\)`) is tokenized as one piece, as A1111 does. Never returns an empty list.
    """
    # Mutable [text, weight] pieces; None stands for a BREAK, which no bracket can weight.
    pieces: list[list | None] = []
    round_open: list[int] = []  # index into `pieces` where each open bracket started
    square_open: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            if piece is not None:
                piece[1] *= factor

    for match in _TOKEN.finditer(prompt):
        kind = match.lastgroup
        if kind == "escaped":
            pieces.append([match.group("escaped"), 1.0])
        elif kind == "backslash":
            continue  # A1111 drops a backslash that escapes nothing
        elif kind == "open_round":
            round_open.append(len(pieces))
        elif kind == "open_square":
            square_open.append(len(pieces))
        elif kind == "weight" and round_open:
            scale_from(round_open.pop(), float(match.group("weight")))
        elif kind == "close_round" and round_open:
            scale_from(round_open.pop(), ROUND_MULTIPLIER)
        elif kind == "close_square" and square_open:
            scale_from(square_open.pop(), SQUARE_MULTIPLIER)
        else:
            # Plain text, a lone ":", or a closing bracket with nothing open (kept literally).
            for index, part in enumerate(_BREAK.split(match.group(0))):
                if index > 0:
                    pieces.append(None)
                pieces.append([part, 1.0])

    # Brackets never closed still emphasise what follows them.
    for start in round_open:
        scale_from(start, ROUND_MULTIPLIER)
    for start in square_open:
        scale_from(start, SQUARE_MULTIPLIER)

    fragments: list[Fragment] = []
    for piece in pieces:
        if piece is None:
            fragments.append(BREAK)
        elif not piece[0]:
            continue
        elif fragments and not fragments[-1].is_break and fragments[-1].weight == piece[1]:
            fragments[-1] = Fragment(fragments[-1].text + piece[0], piece[1])
        else:
            fragments.append(Fragment(piece[0], float(piece[1])))
    return fragments or [Fragment("", 1.0)]


def extract_lora_tags(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """Remove `<lora:NAME>` / `<lora:NAME:WEIGHT>` tags from `prompt`.

    Returns the prompt without them and the (name, weight) pairs in order of appearance; the weight
    defaults to 1.0. Anything else in angle brackets (including a malformed lora tag) stays in the
    prompt, so the user sees it reach the model rather than silently vanish.
    """
    found: list[tuple[str, float]] = []

    def take(match: re.Match[str]) -> str:
        weight = match.group("weight")
        found.append((match.group("name").strip(), 1.0 if weight is None else float(weight)))
        return ""

    return _LORA.sub(take, prompt), found
