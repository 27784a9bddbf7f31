"""Prompt styles: named prompt / negative-prompt pairs kept in `styles.csv` in the data folder.

The file has A1111's columns `name,prompt,negative_prompt`. A style's text containing `{prompt}`
has the user's prompt put in its place; otherwise the style is appended after ", ". The file is
read again whenever it changes on disk, so styles edited by hand appear without a restart.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from modules.errors import UserError

PLACEHOLDER = "{prompt}"


@dataclass(frozen=True)
class PromptStyle:
    name: str
    prompt: str = ""
    negative_prompt: str = ""


def merge(style_text: str, prompt: str) -> str:
    """`prompt` with one style's text applied (A1111's rule)."""
    if not style_text:
        return prompt
    if PLACEHOLDER in style_text:
        return style_text.replace(PLACEHOLDER, prompt)
    return f"{prompt}, {style_text}" if prompt else style_text


class StyleStore:
    """The styles of one `styles.csv` (none when `path` is None or the file does not exist)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._stamp: tuple[float, int] | None = None
        self._styles: dict[str, PromptStyle] = {}

    def _reload(self) -> None:
        if self.path is None or not self.path.is_file():
            self._styles, self._stamp = {}, None
            return
        stat = self.path.stat()
        stamp = (stat.st_mtime, stat.st_size)
        if stamp == self._stamp:
            return
        styles: dict[str, PromptStyle] = {}
        try:
            with self.path.open(newline="", encoding="utf-8-sig") as handle:
                for row in csv.DictReader(handle, skipinitialspace=True):
                    name = (row.get("name") or "").strip()
                    if name:
                        styles[name] = PromptStyle(name, row.get("prompt") or "", row.get("negative_prompt") or "")
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise UserError(f"{self.path} cannot be read as a styles file (name,prompt,negative_prompt): {exc}") from exc
        self._styles, self._stamp = styles, stamp

    def styles(self) -> list[PromptStyle]:
        self._reload()
        return list(self._styles.values())

    def names(self) -> list[str]:
        return [style.name for style in self.styles()]

    def get(self, name: str) -> PromptStyle:
        self._reload()
        if name not in self._styles:
            known = ", ".join(self._styles) or f"none ({self.path or 'styles.csv'} has no styles)"
            raise UserError(f"Unknown style {name!r}; known styles: {known}.")
        return self._styles[name]

    def apply(self, names: list[str] | tuple[str, ...], prompt: str, negative_prompt: str) -> tuple[str, str]:
        """(prompt, negative prompt) with the named styles applied in order."""
        for name in names:
            style = self.get(name)
            prompt = merge(style.prompt, prompt)
            negative_prompt = merge(style.negative_prompt, negative_prompt)
        return prompt, negative_prompt

    def apply_to(self, params: Any) -> Any:
        """A params dataclass with its `styles` applied to its prompts (and the list kept for the record)."""
        if not params.styles:
            return params
        names = params.styles
        if isinstance(names, str) or not all(isinstance(n, str) for n in names):
            raise UserError(f"styles must be a list of style names, got {names!r}.")
        prompt, negative = self.apply(list(names), params.prompt, params.negative_prompt)
        changes: dict[str, Any] = {"prompt": prompt, "negative_prompt": negative, "styles": ()}
        if getattr(params, "hr_prompt", ""):  # a separate hires prompt gets the styles too, as in A1111
            changes["hr_prompt"] = self.apply(list(names), params.hr_prompt, "")[0]
        if getattr(params, "hr_negative_prompt", ""):
            changes["hr_negative_prompt"] = self.apply(list(names), "", params.hr_negative_prompt)[1]
        return replace(params, **changes)
