"""Textual-inversion embeddings inside prompts: find their names among the tokens, splice in their vectors.

An embedding is a named list of vectors in a text encoder's input space. Where its name's tokens appear
in a prompt, A1111 puts one placeholder per vector in their place (so a 3-vector embedding uses 3 of the
chunk's 75 tokens) and, when the encoder looks the tokens up, replaces the placeholders' rows with the
vectors. This module does the same: `EmbeddingTable.splice` turns token ids into groups, where an
embedding is a group of placeholder ids (`PLACEHOLDER_BASE + row`), and `EmbeddingTable.hooked` swaps
those rows in with a forward hook on the encoder's token-embedding layer for one forward pass. The
encoders themselves are never modified, so a prompt without embedding names encodes exactly as before.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from modules.errors import UserError
from modules.text.tokenizer import get_tokenizer

# Placeholder ids lie far above any vocabulary; row r of the table is PLACEHOLDER_BASE + r.
PLACEHOLDER_BASE = 1 << 30
# A placeholder becomes this real id for the lookup (its row is then overwritten). Not EOS: SDXL's
# pooled output is taken at the first EOS, which must stay where the prompt ends.
_STAND_IN_ID = 0


@dataclass(frozen=True)
class EmbeddingVectors:
    """One embedding ready for a model: `vectors[i]` is [n, width of text encoder i], same n for all."""

    name: str
    vectors: tuple[torch.Tensor, ...]

    @property
    def count(self) -> int:
        return int(self.vectors[0].shape[0])


class EmbeddingTable:
    """The embeddings usable with one model, indexed for matching and for the lookup hook."""

    def __init__(self, embeddings: Mapping[str, EmbeddingVectors], max_vectors: int = 75) -> None:
        tokenizer = get_tokenizer()
        self.used: set[str] = set()  # names found in prompts since creation (for the infotext)
        # first token id -> [(name's token ids, name, first row)], longest names first so that
        # "style-long" wins over "style" at the same place, as in A1111.
        self._by_first: dict[int, list[tuple[tuple[int, ...], str, int]]] = {}
        rows: list[list[torch.Tensor]] = []
        self._count: dict[str, int] = {}
        for name, emb in embeddings.items():
            ids = tuple(tokenizer.tokenize_fragment(name))
            if not ids:
                continue
            if emb.count > max_vectors:
                raise UserError(f"Embedding {name!r} has {emb.count} vectors; a prompt chunk holds at most "
                                f"{max_vectors}.")
            if not rows:
                rows = [[] for _ in emb.vectors]
            if len(emb.vectors) != len(rows):
                raise ValueError("every embedding needs one vector set per text encoder")
            start = sum(int(r.shape[0]) for r in rows[0])
            for i, vec in enumerate(emb.vectors):
                rows[i].append(vec.detach().float().cpu())
            self._by_first.setdefault(ids[0], []).append((ids, name, start))
            self._count[name] = emb.count
        for options in self._by_first.values():
            options.sort(key=lambda option: -len(option[0]))
        self._tables = [torch.cat(parts) for parts in rows]

    def __bool__(self) -> bool:
        return bool(self._by_first)

    def splice(self, tokens: Sequence[int]) -> list[list[int]]:
        """`tokens` as groups: `[id]` for an ordinary token, the placeholder ids of an embedding for its name."""
        groups: list[list[int]] = []
        i = 0
        while i < len(tokens):
            for ids, name, start in self._by_first.get(tokens[i], ()):
                if tuple(tokens[i:i + len(ids)]) == ids:
                    groups.append([PLACEHOLDER_BASE + start + k for k in range(self._count[name])])
                    self.used.add(name)
                    i += len(ids)
                    break
            else:
                groups.append([tokens[i]])
                i += 1
        return groups

    @contextmanager
    def hooked(self, encoder: torch.nn.Module, index: int, ids: torch.Tensor) -> Iterator[torch.Tensor]:
        """For one forward of text encoder `index`: yields `ids` with placeholders made lookup-safe,
        while a hook puts the embedding vectors into the token-embedding output at their places."""
        mask = ids >= PLACEHOLDER_BASE
        if not bool(mask.any()):
            yield ids
            return
        rows = (ids[mask] - PLACEHOLDER_BASE).cpu()
        table = self._tables[index]

        def replace(_module: torch.nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            output = output.clone()
            output[mask.to(output.device)] = table[rows].to(output.device, output.dtype)
            return output

        handle = encoder.get_input_embeddings().register_forward_hook(replace)
        try:
            yield torch.where(mask, torch.full_like(ids, _STAND_IN_ID), ids)
        finally:
            handle.remove()

