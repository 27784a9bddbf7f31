"""What a processing-level script is: a name, the modes it serves, typed arguments, and `run`.

A script replaces one plain generation with several (X/Y/Z plot, prompt matrix) or with a
different pipeline (SD upscale). The API passes its arguments as A1111's positional `script_args`
list (or, here, a dict by argument key); the UI passes the values of its controls in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modules.errors import UserError
from modules.processing.params import GenerationParams
from modules.processing.run import GenerationResult

if TYPE_CHECKING:
    from modules.context import AppContext


@dataclass(frozen=True)
class ScriptArg:
    """One argument: `kind` is "str", "int", "float", "bool", "list" or "choice" (then `choices`)."""

    key: str
    label: str
    kind: str
    default: Any
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None

    def parse(self, value: Any, script: str) -> Any:
        where = f"{script}: {self.label} ({self.key})"
        if self.kind == "bool":
            if isinstance(value, bool) or value in (0, 1):
                return bool(value)
            raise UserError(f"{where} must be true or false, got {value!r}.")
        if self.kind in ("int", "float"):
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise UserError(f"{where} must be a number, got {value!r}.")
            try:
                number = float(value)
            except ValueError as exc:
                raise UserError(f"{where} must be a number, got {value!r}.") from exc
            if self.kind == "int":
                if number != int(number):
                    raise UserError(f"{where} must be a whole number, got {value!r}.")
                number = int(number)
            if (self.minimum is not None and number < self.minimum) or (self.maximum is not None and number > self.maximum):
                raise UserError(f"{where} must be from {self.minimum} to {self.maximum}, got {value!r}.")
            return number
        if self.kind == "choice":
            if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(self.choices):
                return self.choices[value]  # A1111 sends some dropdowns as their index
            for choice in self.choices:
                if isinstance(value, str) and value.strip().lower() == choice.lower():
                    return choice
            raise UserError(f"{where}: unknown value {value!r}; use one of {', '.join(self.choices)}.")
        if self.kind == "list":  # a dropdown's chosen values
            if value is None or value == "":
                return []
            items = value if isinstance(value, list | tuple) else [value]
            if not all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in items):
                raise UserError(f"{where} must be a list of values, got {value!r}.")
            return [str(v) for v in items]
        if value is None:
            return ""
        if not isinstance(value, str | int | float):
            raise UserError(f"{where} must be text, got {value!r}.")
        return str(value)

    def info(self) -> dict[str, Any]:
        """A1111's /script-info entry for this argument."""
        return {"label": self.label, "value": self.default, "minimum": self.minimum, "maximum": self.maximum,
                "step": self.step, "choices": list(self.choices) or None}


class Script:
    """Subclasses set `title`, `modes`, `args` and implement `run`."""

    title: str = ""
    modes: tuple[str, ...] = ("txt2img", "img2img")
    args: tuple[ScriptArg, ...] = ()

    @property
    def name(self) -> str:
        return self.title.lower()  # how A1111 lists and matches script names

    def parse_args(self, raw: Sequence[Any] | dict[str, Any] | None) -> dict[str, Any]:
        """Positional values (A1111's script_args) or a dict by key → validated values, defaults filled."""
        raw = raw if raw is not None else []
        if isinstance(raw, dict):
            unknown = [k for k in raw if k not in {a.key for a in self.args}]
            if unknown:
                raise UserError(f"{self.title}: unknown script_args {', '.join(map(repr, unknown))}; "
                                f"this script takes {', '.join(a.key for a in self.args)}.")
            values = dict(raw)
        elif isinstance(raw, list | tuple):
            if len(raw) > len(self.args):
                raise UserError(f"{self.title} takes at most {len(self.args)} script_args "
                                f"({', '.join(a.key for a in self.args)}), got {len(raw)}.")
            values = {a.key: v for a, v in zip(self.args, raw, strict=False)}
        else:
            raise UserError(f"{self.title}: script_args must be a list (or an object by name), got {raw!r}.")
        return {a.key: a.parse(values[a.key], self.title) if a.key in values else a.default for a in self.args}

    def run(self, ctx: AppContext, params: GenerationParams, args: dict[str, Any]) -> GenerationResult:
        raise NotImplementedError

    def info(self, mode: str) -> dict[str, Any]:
        return {"name": self.name, "is_alwayson": False, "is_img2img": mode == "img2img",
                "args": [a.info() for a in self.args]}
