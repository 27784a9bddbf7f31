"""ControlNet.

Model files: `discovery` finds them, `spec` says what a file is (`ControlNetInfo`), `keys` maps its
keys, `load` builds and fills diffusers' `ControlNetModel` and writes it back, `compat` checks that a
ControlNet fits the loaded checkpoint. Preprocessors live in `preprocessors` and the modules it uses.
In generation: `units` holds a unit's settings (`ControlUnit`), `registry` keeps the files and the
loaded models, `hint` fits a detected map to the picture, `apply` prepares the units of a request and
gives the UNet its residuals per step, `restore` is inpaint_only's picture restore, `infotext`
writes and reads the `ControlNet N` fields.
"""
