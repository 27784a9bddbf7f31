"""The CLIP BPE tokenizer, offline.

Every Stable Diffusion text encoder (OpenAI CLIP ViT-L for SD1/SDXL, OpenCLIP ViT-H / bigG for SD2/SDXL)
uses the same 49408-token BPE vocabulary. The vocabulary file ships inside the `open_clip` package, so
no download is ever needed; `open_clip`'s `SimpleTokenizer` is OpenAI's reference implementation
(ftfy + HTML unescape, whitespace collapsing, lower-casing), which is what the original SD code used.
"""

from __future__ import annotations

from functools import lru_cache

from open_clip.tokenizer import SimpleTokenizer, default_bpe

BOS_ID = 49406  # <|startoftext|>
EOS_ID = 49407  # <|endoftext|>
VOCAB_SIZE = 49408


class ClipTokenizer:
    """Thin wrapper that exposes only what the text layer needs, without BOS/EOS handling.

    Chunking, BOS/EOS and padding belong to `conditioning.py`, because they depend on the
    encoder (pad token) and on the prompt's BREAKs; this class only turns text into BPE ids.
    """

    def __init__(self) -> None:
        # context_length=None: we never use SimpleTokenizer.__call__ (which truncates to 77).
        self._bpe = SimpleTokenizer(default_bpe(), context_length=None)
        if (self._bpe.sot_token_id, self._bpe.eot_token_id) != (BOS_ID, EOS_ID):
            # A different vocabulary file would silently shift every id the models were trained on.
            raise RuntimeError("open_clip's BPE vocabulary does not have the CLIP special-token ids")

    def tokenize_fragment(self, text: str) -> list[int]:
        """BPE ids of `text`, cleaned and lower-cased like CLIP; no BOS/EOS."""
        return list(self._bpe.encode(text))

    def decode(self, ids: list[int]) -> str:
        """Text of `ids`; word ends become spaces, so the result has a trailing space."""
        return str(self._bpe.decode(ids))

    def token_id(self, token: str) -> int:
        """Id of one vocabulary entry, e.g. ",</w>" (a word-final comma)."""
        return int(self._bpe.encoder[token])


@lru_cache(maxsize=1)
def get_tokenizer() -> ClipTokenizer:
    """The shared tokenizer; built once because reading the 260k BPE merges takes a moment."""
    return ClipTokenizer()


def tokenize_fragment(text: str) -> list[int]:
    """BPE ids of `text` with the shared tokenizer; no BOS/EOS."""
    return get_tokenizer().tokenize_fragment(text)
