"""LoRA training on a folder of the user's own captioned pictures (data, train loop, kohya export, CLI)."""
