"""The extra networks one generation uses: LoRAs its prompts tag, embeddings its prompts name.

`prepare` runs before anything is computed, so an unknown or broken file stops the request with a
message that names it; `PromptNetworks.applied` then wraps the generation (text encoding included)
and `infotext_fields` gives A1111's `Lora hashes` / `TI hashes` entries.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from modules.models.load import SDModel
from modules.networks import lora as lora_mod
from modules.networks.embeddings import load_embeddings
from modules.networks.files import NetworkFile, find_lora, list_embeddings
from modules.text.embeddings import EmbeddingVectors
from modules.text.prompt_parser import extract_lora_tags, parse_prompt_attention
from modules.text.tokenizer import get_tokenizer


@dataclass
class PromptNetworks:
    loras: list[tuple[lora_mod.LoraNetwork, float]] = field(default_factory=list)
    embeddings: dict[str, EmbeddingVectors] = field(default_factory=dict)
    embedding_hashes: dict[str, str] = field(default_factory=dict)

    @contextmanager
    def applied(self, model: SDModel) -> Iterator[None]:
        """The LoRAs merged into `model` for the duration of the block (restored exactly afterwards)."""
        with lora_mod.applied(model, self.loras):
            yield

    def infotext_fields(self, used_embeddings: set[str] | None = None) -> dict[str, str]:
        fields: dict[str, str] = {}
        names: dict[str, str] = {}
        for network, _ in self.loras:
            names.setdefault(network.name, network.shorthash)
        if names:
            fields["Lora hashes"] = ", ".join(f"{name}: {short}" for name, short in names.items())
        used = [n for n in self.embedding_hashes if used_embeddings and n in used_embeddings]
        if used:
            fields["TI hashes"] = ", ".join(f"{name}: {self.embedding_hashes[name]}" for name in used)
        return fields


def _token_runs(prompt: str) -> list[list[int]]:
    tokenizer = get_tokenizer()
    text = extract_lora_tags(prompt)[0]
    return [tokenizer.tokenize_fragment(f.text) for f in parse_prompt_attention(text) if not f.is_break]


def _contains(runs: list[list[int]], ids: list[int]) -> bool:
    n = len(ids)
    return bool(ids) and any(run[i:i + n] == ids for run in runs for i in range(len(run) - n + 1))


def named_embeddings(prompts: Sequence[str], files: Sequence[NetworkFile]) -> list[NetworkFile]:
    """The embedding files whose names appear (as tokens, the way the encoder matches them) in `prompts`."""
    tokenizer = get_tokenizer()
    runs = [run for prompt in dict.fromkeys(prompts) for run in _token_runs(prompt)]
    return [f for f in files if _contains(runs, tokenizer.tokenize_fragment(f.name))]


def prepare(prompts: Sequence[str], model: SDModel, lora_dir: Path | None,
            embeddings_dir: Path | None) -> PromptNetworks:
    """Load what `prompts` (positive and negative) ask for; a UserError names any unknown or broken file."""
    result = PromptNetworks()
    loaded: dict[str, lora_mod.LoraNetwork] = {}
    for prompt in dict.fromkeys(prompts):
        for name, weight in extract_lora_tags(prompt)[1]:
            file = find_lora(lora_dir, name)
            if file.name not in loaded:
                loaded[file.name] = lora_mod.load_lora(file)
            result.loras.append((loaded[file.name], weight))
    files = named_embeddings(prompts, list_embeddings(embeddings_dir)) if embeddings_dir else []
    if files:
        result.embeddings, result.embedding_hashes = load_embeddings(files, model.arch.text_encoders)
    return result
