"""ControlNet: model files (discovery, safe reading, layout detection, strict loading, export).

`discovery` finds the files, `spec` says what a file is (`ControlNetInfo`), `keys` maps its keys,
`load` builds and fills diffusers' `ControlNetModel` and writes it back, `compat` checks that a
ControlNet fits the loaded checkpoint.
"""
