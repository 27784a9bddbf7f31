"""ControlNet.

Model files: `discovery` finds them, `spec` says what a file is (`ControlNetInfo`), `keys` maps its
keys, `load` builds and fills diffusers' `ControlNetModel` and writes it back, `compat` checks that a
ControlNet fits the loaded checkpoint. Preprocessors live in `preprocessors` and the modules it uses.
"""
