"""Training and evaluation of the embedded default model's ControlNet (scripts/train_default_controlnet.py)."""
