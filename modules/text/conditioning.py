"""Prompts to conditioning tensors, the way each architecture's original code (and A1111) does it.

A prompt is parsed for emphasis (`prompt_parser`), tokenized fragment by fragment with a weight per
token, and cut into chunks of 75 tokens. Each chunk becomes 77 ids, `[BOS] tokens [EOS] pad...`,
and goes through every text encoder on its own; the chunks' outputs are concatenated along the
token axis, the encoders' outputs along the feature axis (SDXL: 768 + 1280 = 2048). Emphasis scales
each token's vector by its weight and then restores the chunk's mean, as A1111 does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from modules.devices import execution_device
from modules.models.arch import TextEncoderSpec
from modules.text.embeddings import PLACEHOLDER_BASE, EmbeddingTable, EmbeddingVectors
from modules.text.prompt_parser import extract_lora_tags, parse_prompt_attention
from modules.text.tokenizer import BOS_ID, EOS_ID, get_tokenizer

CHUNK_TOKENS = 75  # prompt tokens per chunk; + BOS + EOS = the encoders' 77 positions
CHUNK_IDS = CHUNK_TOKENS + 2
# A1111's "comma padding backtrack": when a chunk fills up, words after a comma this close to the end
# move to the next chunk so a phrase is not cut in two.
COMMA_BACKTRACK = 20


@dataclass
class Conditioning:
    context: torch.Tensor  # [B, 77 * chunks, D], D = sum of the encoders' widths
    pooled: torch.Tensor | None  # [B, P] from the projection encoder (SDXL), else None


@dataclass
class PromptChunk:
    """Up to 75 prompt tokens (no BOS/EOS) and their emphasis weights."""

    tokens: list[int]
    weights: list[float]


def tokenize_prompt(prompt: str, comma_id: int | None = None,
                    embeddings: EmbeddingTable | None = None) -> tuple[list[PromptChunk], int]:
    """Chunks of `prompt` and the token count A1111 shows (75 per full chunk + the last chunk's).

    Always at least one chunk: an empty prompt is one empty chunk. `comma_id` enables the comma
    backtrack; None looks it up in the shared tokenizer. With `embeddings`, an embedding's name
    becomes its placeholder tokens, kept together in one chunk (as A1111 does).
    """
    tokenizer = get_tokenizer()
    if comma_id is None:
        comma_id = tokenizer.token_id(",</w>")
    chunks: list[PromptChunk] = []
    tokens: list[int] = []
    weights: list[float] = []
    last_comma = -1  # index in `tokens` of the latest comma, -1 if none in this chunk
    counted = 0

    def close_chunk(final: bool = False) -> None:
        nonlocal tokens, weights, last_comma, counted
        # A1111 counts every chunk but the last as full: BREAK "spends" the rest of a chunk.
        counted += len(tokens) if final else CHUNK_TOKENS
        chunks.append(PromptChunk(tokens, weights))
        tokens, weights, last_comma = [], [], -1

    for fragment in parse_prompt_attention(prompt):
        if fragment.is_break:
            close_chunk()
            continue
        fragment_tokens = tokenizer.tokenize_fragment(fragment.text)
        for group in embeddings.splice(fragment_tokens) if embeddings else [[t] for t in fragment_tokens]:
            if len(group) > 1 or group[0] >= PLACEHOLDER_BASE:
                if len(tokens) + len(group) > CHUNK_TOKENS:
                    close_chunk()
                tokens.extend(group)
                weights.extend([fragment.weight] * len(group))
                continue
            token = group[0]
            if token == comma_id:
                last_comma = len(tokens)
            elif len(tokens) == CHUNK_TOKENS and last_comma >= 0 and CHUNK_TOKENS - last_comma <= COMMA_BACKTRACK:
                moved_tokens, moved_weights = tokens[last_comma + 1:], weights[last_comma + 1:]
                del tokens[last_comma + 1:], weights[last_comma + 1:]
                close_chunk()
                tokens, weights = moved_tokens, moved_weights
            if len(tokens) == CHUNK_TOKENS:
                close_chunk()
            tokens.append(token)
            weights.append(fragment.weight)
    if tokens or not chunks:
        close_chunk(final=True)
    return chunks, counted


def chunk_ids(chunk: PromptChunk, pad_with_eos: bool) -> tuple[list[int], list[float]]:
    """The 77 ids fed to an encoder and the weight of each position (1.0 for BOS/EOS/padding)."""
    pad = EOS_ID if pad_with_eos else 0
    ids = [BOS_ID, *chunk.tokens, EOS_ID]
    weights = [1.0, *chunk.weights, 1.0]
    fill = CHUNK_IDS - len(ids)
    return ids + [pad] * fill, weights + [1.0] * fill


def _final_layer_norm(encoder: torch.nn.Module) -> torch.nn.Module:
    # transformers 5: CLIPTextModel *is* the text transformer (no `.text_model`), while
    # CLIPTextModelWithProjection wraps one in `.text_model`. transformers 4 had `.text_model` on both.
    inner = getattr(encoder, "text_model", encoder)
    return inner.final_layer_norm


def apply_emphasis(z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A1111 emphasis on [N, 77, D] chunks with [N, 77] weights: scale tokens, keep each chunk's mean.

    A1111 takes the mean over its whole batch tensor; here it is per chunk, so a prompt's result does
    not depend on the other prompts it is batched with (identical when the batch is one prompt).
    """
    original_mean = z.mean(dim=(1, 2), keepdim=True)
    z = z * weights.unsqueeze(-1)
    new_mean = z.mean(dim=(1, 2), keepdim=True)
    # A zero mean can only come from degenerate weights; leave such a chunk unscaled rather than NaN.
    ratio = torch.where(new_mean != 0, original_mean / new_mean, torch.ones_like(new_mean))
    return z * ratio


class PromptEncoder:
    """Encodes prompts with one or more text encoders (`build_text_encoder(spec)` modules)."""

    def __init__(self, specs: Sequence[TextEncoderSpec], encoders: Sequence[torch.nn.Module],
                 embeddings: Mapping[str, EmbeddingVectors] | None = None) -> None:
        if not specs or len(specs) != len(encoders):
            raise ValueError("PromptEncoder needs one encoder per TextEncoderSpec")
        for spec in specs:
            if spec.max_positions < CHUNK_IDS:
                raise ValueError(f"text encoder has {spec.max_positions} positions, chunks need {CHUNK_IDS}")
        self.specs = tuple(specs)
        self.encoders = tuple(encoders)
        self.comma_id = get_tokenizer().token_id(",</w>")
        # Textual-inversion embeddings by name; `self.embeddings.used` says which prompts used.
        self.embeddings = EmbeddingTable(embeddings) if embeddings else None

    @property
    def zeroes_empty_negative(self) -> bool:
        """Whether an empty negative prompt becomes all-zero conditioning instead of the encoding of "".

        SDXL and its refiner condition through sgm's GeneralConditioner; their original pipeline and
        A1111 (`force_zero_embeddings=['txt']` when every negative text is empty) zero all text
        encoders' outputs, cross-attention context and pooled vector alike. Those checkpoints are
        exactly the ones with a pooled (projection) text tower; SD 1.x / 2.x (LDM) encode "" as text.
        """
        return any(spec.projection for spec in self.specs)

    def zeros(self, batch: int, chunks: int = 1) -> Conditioning:
        """All-zero conditioning shaped like `encode`'s for `batch` prompts of `chunks` chunks."""
        device = execution_device(self.encoders[0])
        # Widths from the specs (the projection is built hidden_size wide), so no encoder pass is needed.
        width = sum(spec.hidden_size for spec in self.specs)
        pooled_width = sum(spec.hidden_size for spec in self.specs if spec.projection)
        return Conditioning(
            context=torch.zeros(batch, chunks * CHUNK_IDS, width, device=device),
            pooled=torch.zeros(batch, pooled_width, device=device) if pooled_width else None,
        )

    def _chunks(self, prompt: str) -> tuple[list[PromptChunk], int]:
        # LoRA tags are instructions for the loader, not text for the model (A1111 strips them too).
        return tokenize_prompt(extract_lora_tags(prompt)[0], self.comma_id, self.embeddings)

    def count_tokens(self, prompt: str) -> tuple[int, int]:
        """(tokens used, token limit = 75 x chunks) for the UI's token counter."""
        chunks, counted = self._chunks(prompt)
        return counted, CHUNK_TOKENS * len(chunks)

    def _layer_from_end(self, spec: TextEncoderSpec, clip_skip: int) -> int:
        # A1111's "Clip skip" only exists for SD1's OpenAI CLIP (last layer + final norm); SD2 and SDXL
        # fix their layer in the model config and ignore the setting.
        if spec.layout == "hf_clip" and spec.final_layer_norm and clip_skip > 1:
            return min(clip_skip, spec.num_layers)  # deeper than the first layer means nothing
        return spec.layer_from_end

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], clip_skip: int = 1, min_chunks: int = 1) -> Conditioning:
        """Conditioning for `prompts`; every prompt gets max(min_chunks, longest prompt's) chunks.

        Shorter prompts are padded with empty chunks (BOS, EOS, padding), as A1111 does in a batch.
        """
        if isinstance(prompts, str):
            raise TypeError("encode() takes a sequence of prompts, not one string")
        if not prompts:
            raise ValueError("encode() needs at least one prompt")
        if clip_skip < 1:
            raise ValueError("clip_skip counts from 1 (the last layer)")
        # Identical prompts (a batch of one prompt, the usual case) are encoded once.
        unique = list(dict.fromkeys(prompts))
        per_prompt = [self._chunks(p)[0] for p in unique]
        n_chunks = max(min_chunks, 1, *(len(c) for c in per_prompt))
        for chunks in per_prompt:
            chunks.extend(PromptChunk([], []) for _ in range(n_chunks - len(chunks)))

        contexts: list[torch.Tensor] = []
        pooled_parts: list[torch.Tensor] = []
        out_device = execution_device(self.encoders[0])
        for index, (spec, encoder) in enumerate(zip(self.specs, self.encoders, strict=True)):
            rows = [chunk_ids(chunk, spec.pad_with_eos) for chunks in per_prompt for chunk in chunks]
            device = execution_device(encoder)
            ids = torch.tensor([r[0] for r in rows], dtype=torch.long, device=device)
            weights = torch.tensor([r[1] for r in rows], dtype=torch.float32, device=device)
            # All chunks of all prompts in one pass: the encoder is causal and unmasked, so chunks
            # do not see each other and batching gives the same result as one chunk at a time.
            with self.embeddings.hooked(encoder, index, ids) if self.embeddings else nullcontext(ids) as ids:
                out = encoder(input_ids=ids, output_hidden_states=True)
            z = out.hidden_states[-self._layer_from_end(spec, clip_skip)]
            if spec.final_layer_norm:
                z = _final_layer_norm(encoder)(z)
            z = z.float()
            if not bool((weights == 1.0).all()):  # keep the unweighted path bit-exact
                z = apply_emphasis(z, weights)
            contexts.append(z.reshape(len(unique), n_chunks * CHUNK_IDS, -1).to(out_device))
            if spec.projection:
                # SDXL's pooled vector: the projected, final-normed last layer at the first EOS of
                # each prompt's first chunk (transformers picks the first 49407 for eos_token_id 49407).
                embeds = getattr(out, "text_embeds", None)
                if embeds is None:
                    raise TypeError("a projection TextEncoderSpec needs a CLIPTextModelWithProjection")
                pooled_parts.append(embeds.float().reshape(len(unique), n_chunks, -1)[:, 0].to(out_device))

        context = torch.cat(contexts, dim=-1)
        pooled = torch.cat(pooled_parts, dim=-1) if pooled_parts else None
        index = torch.tensor([unique.index(p) for p in prompts], device=out_device)
        return Conditioning(
            context=context.index_select(0, index),
            pooled=None if pooled is None else pooled.index_select(0, index),
        )

    def encode_for_cfg(
        self, prompts: Sequence[str], negative_prompts: Sequence[str], clip_skip: int = 1
    ) -> tuple[Conditioning, Conditioning]:
        """(positive, negative) with the same number of chunks, so they can be batched for CFG.

        The shorter side is padded with empty-prompt chunks, as A1111's "pad prompt/negative prompt".
        On SDXL, negative prompts that are all empty give zeros (see `zeroes_empty_negative`).
        """
        n_chunks = max(len(self._chunks(p)[0]) for p in [*prompts, *negative_prompts])
        positive = self.encode(prompts, clip_skip=clip_skip, min_chunks=n_chunks)
        if negative_prompts and self.zeroes_empty_negative and all(p == "" for p in negative_prompts):
            return positive, self.zeros(len(negative_prompts), n_chunks)
        return positive, self.encode(negative_prompts, clip_skip=clip_skip, min_chunks=n_chunks)


def sdxl_time_ids(
    original_size: tuple[int, int], crop_top_left: tuple[int, int], target_size: tuple[int, int]
) -> torch.Tensor:
    """SDXL's size/crop conditioning as 6 numbers: (orig h, orig w, crop top, crop left, target h, target w).

    Sizes are (height, width) and the crop is (top, left), the order of SGM's embedders.
    """
    values = [*original_size, *crop_top_left, *target_size]
    if len(values) != 6:
        raise ValueError("sdxl_time_ids takes three (a, b) pairs")
    return torch.tensor(values, dtype=torch.float32)
