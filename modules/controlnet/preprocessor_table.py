"""The table of ControlNet preprocessors: names, UI labels, tags, sliders, as A1111's extension has them.

`name` is the key the extension's API lists and accepts (`/controlnet/module_list`), `label` the
name its UI shows (`?alias_names=true`); both are accepted. Tags decide the control types, the
priority the list order and each type's default module. Slider values are the extension's; a
hidden slider keeps the extension's placeholder range (0 to 1, value 0.5), which matters because a
value outside a slider's range falls back to its default.
"""

from __future__ import annotations

from dataclasses import dataclass

from modules.controlnet.annotators import WEIGHT_FILES


@dataclass(frozen=True)
class SliderSpec:
    label: str
    minimum: float
    maximum: float
    value: float
    step: float
    visible: bool = True

    def api_json(self) -> dict[str, float | str]:
        """As the extension's `module_detail` lists a slider."""
        return {"name": self.label, "value": self.value, "min": self.minimum, "max": self.maximum,
                "step": self.step}


@dataclass(frozen=True)
class ModuleInfo:
    name: str
    label: str
    tags: tuple[str, ...] = ()
    priority: int = 0
    resolution: SliderSpec = SliderSpec("Resolution", 64, 2048, 512, 8)
    threshold_a: SliderSpec = SliderSpec("EMPTY_LABEL", 0.0, 1.0, 0.5, 0.01, False)
    threshold_b: SliderSpec = SliderSpec("EMPTY_LABEL", 0.0, 1.0, 0.5, 0.01, False)
    weight_files: tuple[str, ...] = ()
    accepts_mask: bool = False
    available: bool = True
    unavailable_reason: str = ""

    @property
    def aliases(self) -> tuple[str, ...]:
        """Other accepted spellings besides `name` (the UI label when it differs)."""
        return (self.label,) if self.label != self.name else ()

    @property
    def needs_weights(self) -> bool:
        return bool(self.weight_files)


_HIDDEN = SliderSpec("EMPTY_LABEL", 0.0, 1.0, 0.5, 0.01, False)


def _slider(label: str, minimum: float, maximum: float, value: float, step: float = 0.01) -> SliderSpec:
    return SliderSpec(label, minimum, maximum, value, step)


def _m(name: str, label: str | None = None, tags: tuple[str, ...] = (), priority: int = 0,
       a: SliderSpec = _HIDDEN, b: SliderSpec = _HIDDEN, **extra: object) -> ModuleInfo:
    return ModuleInfo(name=name, label=label or name, tags=tags, priority=priority, threshold_a=a,
                      threshold_b=b, weight_files=WEIGHT_FILES.get(name, ()), **extra)  # type: ignore[arg-type]


_LERES_A = _slider("Remove Near %", 0, 100, 0, 0.1)
_LERES_B = _slider("Remove Background %", 0, 100, 0, 0.1)
_GAMMA = _slider("Gamma Correction", 0.1, 2.0, 1.0, 0.001)

# In the extension's registration order; the list order comes from `priority` and `label`.
MODULES: tuple[ModuleInfo, ...] = (
    # `none`, the inpaint pair and shuffle override the resolution slider (hidden, or fixed at 512
    # for shuffle); `none` keeps the visible class default, as the extension lists it.
    _m("none", priority=10),
    _m("canny", tags=("Canny",), priority=100,
       a=_slider("Low Threshold", 1, 255, 100, 1), b=_slider("High Threshold", 1, 255, 200, 1)),
    _m("invert", "invert (from white bg & black line)", ("Canny", "Lineart", "Scribble", "MLSD"), 20,
       resolution=_HIDDEN),
    _m("blur_gaussian", tags=("Tile",), a=_slider("Sigma", 0.01, 64.0, 9.0)),
    _m("scribble_xdog", tags=("Scribble",), a=_slider("XDoG Threshold", 1, 64, 32)),
    _m("shuffle", tags=("Shuffle",), resolution=SliderSpec("EMPTY_LABEL", 0.0, 1.0, 512, 0.01, False)),
    _m("inpaint", "inpaint_global_harmonious", ("Inpaint",), 0, resolution=_HIDDEN, accepts_mask=True),
    _m("inpaint_only", tags=("Inpaint",), priority=100, resolution=_HIDDEN, accepts_mask=True),
    # The extension's "legacy" modules: their resolution slider is the visible 64..2048 default.
    _m("depth_leres", tags=("Depth",), a=_LERES_A, b=_LERES_B),
    _m("depth_leres++", tags=("Depth",), a=_LERES_A, b=_LERES_B),
    _m("depth", "depth_midas", ("Depth",), 100),
    _m("lineart_anime", tags=("Lineart",)),
    _m("lineart_coarse", tags=("Lineart",)),
    _m("lineart", "lineart_realistic", ("Lineart",)),
    _m("lineart_standard", "lineart_standard (from white bg & black line)", ("Lineart",), 100),
    _m("mlsd", tags=("MLSD",), priority=100, a=_slider("MLSD Value Threshold", 0.01, 2.0, 0.1),
       b=_slider("MLSD Distance Threshold", 0.01, 20.0, 0.1)),
    _m("normal_bae", tags=("NormalMap",), priority=100),
    _m("normal_map", "normal_midas", ("NormalMap",), a=_slider("Normal Background Threshold", 0.0, 1.0, 0.4)),
    _m("openpose", tags=("OpenPose",)),
    _m("openpose_face", tags=("OpenPose",)),
    _m("openpose_faceonly", tags=("OpenPose",)),
    _m("openpose_full", tags=("OpenPose",), priority=100),
    _m("openpose_hand", tags=("OpenPose",)),
    _m("recolor_intensity", tags=("Recolor",), a=_GAMMA),
    _m("recolor_luminance", tags=("Recolor",), priority=100, a=_GAMMA),
    _m("scribble_hed", tags=("Scribble",)),
    _m("pidinet_scribble", "scribble_pidinet", ("Scribble",), 100),
    _m("hed", "softedge_hed", ("SoftEdge",)),
    _m("hed_safe", "softedge_hedsafe", ("SoftEdge",)),
    _m("pidinet", "softedge_pidinet", ("SoftEdge",), 100),
    _m("pidinet_safe", "softedge_pidisafe", ("SoftEdge",)),
    _m("threshold", a=_slider("Binarization Threshold", 0, 255, 127)),
    _m("tile_resample", tags=("Tile",), priority=100, a=_slider("Down Sampling Rate", 1.0, 8.0, 1.0)),
)
