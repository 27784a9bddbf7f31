"""Extra networks used from prompts: LoRA files (`<lora:NAME:WEIGHT>`) and textual-inversion embeddings.

files.py      find them in their folders, read them safely, hash them as A1111 does
lora.py       LoRA key names (kohya LDM / diffusers, peft) → model layers; merge for one generation, restore exactly
embeddings.py embedding files (SD1 .pt, safetensors emb_params, SDXL clip_l/clip_g) → vectors per text encoder
prompt.py     what one generation needs: the LoRAs and embeddings its prompts name, and their infotext
"""
