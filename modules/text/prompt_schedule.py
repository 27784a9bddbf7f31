"""Prompt editing and alternation, the A1111 syntax that changes the prompt while sampling.

    [from:to:when]   `from` until step `when`, then `to`     [to:when]   nothing, then `to`
    [from::when]     `from` until step `when`, then nothing  [a|b|c]     a, b, c, a, ... one per step

`when` >= 1 is a step number, below 1 a fraction of the steps (0.5 of 20 steps = step 10): `from` is
used for steps 1..when, `to` from step when+1 on. Everything nests (`[a:[b|c]:0.5]`, `[(red:1.2):blue:3]`);
round brackets and `[word]` without `:`/`|` are emphasis and stay in the text for `prompt_parser`,
so emphasis, BREAK, embeddings and `<lora:…>` tags work inside every variant.

`prompt_schedule(prompt, steps)` gives [(until_step, text)]: `text` is the plain prompt for the
steps after the previous entry up to `until_step` (1-based, inclusive). `PromptSchedules` encodes
each distinct text once and hands the sampling loop the conditioning for each step.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

import torch

from modules.text.conditioning import CHUNK_IDS, Conditioning, PromptEncoder

_TOKEN = re.compile(r"\\.|[\[\]()|:]|[^\\\[\]()|:]+|\\", re.DOTALL)
_NUMBER = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*$")


@dataclass(frozen=True)
class _Scheduled:
    before: tuple[_Node, ...]
    after: tuple[_Node, ...]
    when: float


@dataclass(frozen=True)
class _Alternate:
    options: tuple[tuple[_Node, ...], ...]


_Node = Union[str, _Scheduled, _Alternate]  # noqa: UP007 - a runtime alias used in the dataclasses above


class _Parser:
    """Recursive descent over the tokens; anything that is not editing syntax stays literal text."""

    def __init__(self, prompt: str) -> None:
        self.tokens = _TOKEN.findall(prompt)
        self.pos = 0

    def parse(self) -> list[_Node]:
        nodes: list[_Node] = []
        while self.pos < len(self.tokens):
            nodes.extend(self._element(closers=()))
        return nodes

    def _element(self, closers: tuple[str, ...]) -> list[_Node]:
        """One token or bracketed group; a closer that belongs to an outer group is not consumed."""
        token = self.tokens[self.pos]
        if token in closers:
            return []
        self.pos += 1
        if token == "[":
            return self._square()
        if token == "(":
            return self._round()
        return [token]  # text, an escape, a stray ")" / "]", or ":" / "|" outside square brackets

    def _sequence(self, stops: tuple[str, ...]) -> list[_Node]:
        """Elements up to (not including) one of `stops` or the end."""
        nodes: list[_Node] = []
        while self.pos < len(self.tokens) and self.tokens[self.pos] not in stops:
            nodes.extend(self._element(closers=stops))
        return nodes

    def _round(self) -> list[_Node]:
        # Emphasis: kept literally, but parsed so that its ":1.2" does not split an outer [a:b:c].
        inner = self._sequence(stops=(")",))
        if self.pos < len(self.tokens):
            self.pos += 1
            return ["(", *inner, ")"]
        return ["(", *inner]

    def _square(self) -> list[_Node]:
        parts: list[list[_Node]] = [self._sequence(stops=("]", ":", "|"))]
        separators: list[str] = []
        while self.pos < len(self.tokens) and self.tokens[self.pos] in (":", "|"):
            separators.append(self.tokens[self.pos])
            self.pos += 1
            parts.append(self._sequence(stops=("]", ":", "|")))
        closed = self.pos < len(self.tokens)
        if closed:
            self.pos += 1
            node = _editing_node(parts, separators)
            if node is not None:
                return [node]
        literal: list[_Node] = ["["]
        for index, part in enumerate(parts):
            if index:
                literal.append(separators[index - 1])
            literal.extend(part)
        if closed:
            literal.append("]")
        return literal


def _editing_node(parts: list[list[_Node]], separators: list[str]) -> _Node | None:
    if separators and all(s == "|" for s in separators):
        return _Alternate(tuple(tuple(p) for p in parts))
    if separators and all(s == ":" for s in separators) and len(parts) in (2, 3):
        last = parts[-1]
        match = _NUMBER.match(last[0]) if len(last) == 1 and isinstance(last[0], str) else None
        if match:
            before, after = (parts[0], parts[1]) if len(parts) == 3 else ([], parts[0])
            return _Scheduled(tuple(before), tuple(after), float(match.group(1)))
    return None  # "[word]" emphasis, "[a:b]" and friends: literal text for prompt_parser


def _when_step(when: float, steps: int) -> int:
    return min(steps, int(when * steps) if when < 1 else int(when))


def _boundaries(nodes: Sequence[_Node], steps: int, out: set[int]) -> None:
    for node in nodes:
        if isinstance(node, _Scheduled):
            step = _when_step(node.when, steps)
            if step >= 1:
                out.add(step)
            _boundaries(node.before, steps, out)
            _boundaries(node.after, steps, out)
        elif isinstance(node, _Alternate):
            out.update(range(1, steps + 1))
            return


def _render(nodes: Sequence[_Node], step: int, steps: int) -> str:
    parts: list[str] = []
    for node in nodes:
        if isinstance(node, _Scheduled):
            chosen = node.before if step <= _when_step(node.when, steps) else node.after
            parts.append(_render(chosen, step, steps))
        elif isinstance(node, _Alternate):
            parts.append(_render(node.options[(step - 1) % len(node.options)], step, steps))
        else:
            parts.append(node)
    return "".join(parts)


def prompt_schedule(prompt: str, steps: int) -> list[tuple[int, str]]:
    """[(until_step, text)] for `steps` sampling steps; one entry for a prompt without editing syntax."""
    steps = max(1, steps)
    nodes = _Parser(prompt).parse()
    ends: set[int] = {steps}
    _boundaries(nodes, steps, ends)
    schedule: list[tuple[int, str]] = []
    for end in sorted(ends):
        text = _render(nodes, end, steps)
        if schedule and schedule[-1][1] == text:
            schedule[-1] = (end, text)  # neighbouring steps with the same text are one entry
        else:
            schedule.append((end, text))
    return schedule


def text_at(schedule: Sequence[tuple[int, str]], step: int) -> str:
    """The text for 0-based sampling step `step`."""
    for end, text in schedule:
        if step + 1 <= end:
            return text
    return schedule[-1][1]


class StepConditioning:
    """(positive, negative) conditioning per sampling step of one pass, batched and CFG-ready."""

    def __init__(self, owner: PromptSchedules, steps: int) -> None:
        self.owner = owner
        self.steps = steps
        self.positive = prompt_schedule(owner.prompt, steps)
        self.negative = prompt_schedule(owner.negative_prompt, steps)
        # SDXL zeroes the negative side only when every text it goes through in this pass is empty, as
        # A1111 checks the texts of one prompt's schedule: "[:ugly:0.5]" encodes its first half as "".
        self.zero_negative = owner.encoder.zeroes_empty_negative and all(text == "" for _, text in self.negative)

    @property
    def changes(self) -> bool:
        return len(self.positive) > 1 or len(self.negative) > 1

    def texts(self, step: int) -> tuple[str, str]:
        return text_at(self.positive, step), text_at(self.negative, step)

    def at(self, step: int) -> tuple[Conditioning, Conditioning]:
        """The conditioning for 0-based step `step`; the same objects while the texts stay the same."""
        return self.owner.pair(*self.texts(step), zero_negative=self.zero_negative)


class PromptSchedules:
    """Encodes the texts a prompt and a negative prompt go through, each distinct text once."""

    def __init__(self, encoder: PromptEncoder, prompt: str, negative_prompt: str, batch_size: int,
                 clip_skip: int = 1) -> None:
        self.encoder = encoder
        self.prompt = prompt
        self.negative_prompt = negative_prompt
        self.batch_size = batch_size
        self.clip_skip = clip_skip
        self._texts: dict[str, Conditioning] = {}
        self._pairs: dict[tuple[str, str], tuple[Conditioning, Conditioning]] = {}
        self._passes: dict[int, StepConditioning] = {}
        self._empty: Conditioning | None = None
        self.encoded: list[str] = []  # distinct texts in the order they were encoded (tests read it)

    def for_steps(self, steps: int) -> StepConditioning:
        if steps not in self._passes:
            self._passes[steps] = StepConditioning(self, steps)
        return self._passes[steps]

    def _encode(self, text: str) -> Conditioning:
        if text not in self._texts:
            self._texts[text] = self.encoder.encode([text], clip_skip=self.clip_skip)
            self.encoded.append(text)
        return self._texts[text]

    def _padded(self, cond: Conditioning, chunks: int) -> Conditioning:
        # Missing chunks are empty-prompt chunks, exactly what `encode(min_chunks=...)` appends.
        have = cond.context.shape[1] // CHUNK_IDS
        if have >= chunks:
            return cond
        if self._empty is None:
            self._empty = self.encoder.encode([""], clip_skip=self.clip_skip)
        pad = self._empty.context.expand(cond.context.shape[0], -1, -1)
        return Conditioning(torch.cat([cond.context, *[pad] * (chunks - have)], dim=1), cond.pooled)

    def pair(self, positive: str, negative: str, zero_negative: bool = False) -> tuple[Conditioning, Conditioning]:
        """CFG-ready (positive, negative); `zero_negative` gives all-zero negative conditioning (SDXL's
        empty negative prompt) instead of encoding `negative`."""
        key = (positive, negative, zero_negative)
        if key not in self._pairs:
            cond = self._encode(positive)
            chunks = cond.context.shape[1] // CHUNK_IDS
            if zero_negative:
                # Padded with zeros, not with "" chunks: all-zero keys and values make cross-attention's
                # output the same at any length, so this equals A1111's default (unpadded) pass and sgm's.
                uncond = self.encoder.zeros(1, chunks)
            else:
                uncond = self._encode(negative)
                chunks = max(chunks, uncond.context.shape[1] // CHUNK_IDS)
            self._pairs[key] = (self._batched(self._padded(cond, chunks)),
                                self._batched(self._padded(uncond, chunks)))
        return self._pairs[key]

    def _batched(self, cond: Conditioning) -> Conditioning:
        n = self.batch_size
        pooled = None if cond.pooled is None else cond.pooled.expand(n, -1)
        return Conditioning(cond.context.expand(n, -1, -1), pooled)
