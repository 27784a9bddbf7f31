"""A small "extra networks" panel: the LoRAs and embeddings on disk; a click adds one to a prompt.

Clicking a LoRA appends `<lora:NAME:1>` to the prompt box, clicking an embedding appends its name (the
way A1111's cards do); 🔄 scans the folders again. Build it inside a generation tab:

    with gr.Accordion("LoRA / Embeddings", open=False):
        build_networks_panel(ctx, tab.prompt)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import gradio as gr

from modules.context import AppContext
from modules.networks.files import list_embeddings, list_loras

REFRESH = "\U0001f504"  # 🔄
DEFAULT_LORA_WEIGHT = 1


@dataclass
class NetworksPanel:
    loras: gr.Dataset
    embeddings: gr.Dataset
    refresh: gr.Button


def lora_samples(ctx: AppContext) -> list[list[str]]:
    return [[f.name] for f in list_loras(ctx.paths.lora_dir)]


def embedding_samples(ctx: AppContext) -> list[list[str]]:
    return [[f.name] for f in list_embeddings(ctx.paths.embeddings_dir)]


def insert_tag(prompt: str | None, tag: str) -> str:
    """`prompt` with `tag` appended (separated by a comma and a space unless the prompt is empty);
    a tag already in the prompt is not added twice."""
    prompt = prompt or ""
    if re.search(rf"(?<![\w-]){re.escape(tag)}(?![\w-])", prompt):
        return prompt
    stripped = prompt.rstrip()
    if not stripped:
        return tag
    separator = " " if stripped.endswith(",") else ", "
    return stripped + separator + tag


def lora_tag(name: str, weight: float = DEFAULT_LORA_WEIGHT) -> str:
    return f"<lora:{name}:{weight:g}>"


def _value(sample: object) -> str:
    # gr.Dataset hands over the clicked sample as its list of values.
    if isinstance(sample, list | tuple):
        return str(sample[0]) if sample else ""
    return str(sample or "")


def build_networks_panel(ctx: AppContext, prompt: gr.Textbox, elem_prefix: str = "networks") -> NetworksPanel:
    """The panel's components inside the open layout, wired to add tags to `prompt`."""
    with gr.Row():
        gr.Markdown(f"LoRAs in `{ctx.paths.lora_dir}`, embeddings in `{ctx.paths.embeddings_dir}`: "
                    "click one to add it to the prompt.")
        refresh = gr.Button(REFRESH, size="sm", min_width=40, scale=0, elem_id=f"{elem_prefix}_refresh")
    hidden = gr.Textbox(visible=False, render=False)
    loras = gr.Dataset(label="LoRA", components=[hidden], samples=lora_samples(ctx), samples_per_page=40,
                       elem_id=f"{elem_prefix}_lora", layout="gallery")
    embeddings = gr.Dataset(label="Textual inversion", components=[hidden], samples=embedding_samples(ctx),
                            samples_per_page=40, elem_id=f"{elem_prefix}_embeddings", layout="gallery")

    def add_lora(sample: object, text: str | None) -> str:
        name = _value(sample)
        return insert_tag(text, lora_tag(name)) if name else (text or "")

    def add_embedding(sample: object, text: str | None) -> str:
        name = _value(sample)
        return insert_tag(text, name) if name else (text or "")

    def on_refresh() -> tuple[gr.Dataset, gr.Dataset]:
        return gr.Dataset(samples=lora_samples(ctx)), gr.Dataset(samples=embedding_samples(ctx))

    quiet = {"concurrency_limit": None, "show_progress": "hidden", "api_visibility": "undocumented"}
    loras.click(add_lora, inputs=[loras, prompt], outputs=prompt, **quiet)
    embeddings.click(add_embedding, inputs=[embeddings, prompt], outputs=prompt, **quiet)
    refresh.click(on_refresh, inputs=None, outputs=[loras, embeddings], **quiet)
    return NetworksPanel(loras=loras, embeddings=embeddings, refresh=refresh)
