"""Extensions: discovery, loading and the small API they register through (docs/extensions.md).

An extension is a folder with an `extension.py` that defines `register(api)`. Folders are looked for
in `extensions-builtin/` beside the program (shipped ones) and in `<data dir>/extensions/` (the
user's). `register` receives an `ExtensionAPI` and adds callbacks: a top-level tab, a script in the
generation tabs, settings, a step run on every finished image. Nothing is monkeypatched; the program
calls what was registered. A broken extension (syntax error, exception in `register`) is reported,
with its error, in the Extensions tab and in the log, and the others load as usual.

This module imports no UI library: the command line and the API load extensions too (their image
hooks apply to every generation); modules/ui/extensions_tab.py turns tabs and scripts into widgets.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modules.errors import UserError

if TYPE_CHECKING:
    from modules.context import AppContext
    from modules.processing.run import ImageHook

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
BUILTIN_DIR = ROOT / "extensions-builtin"
ENTRY_FILE = "extension.py"

LOADED, FAILED, DISABLED = "loaded", "failed", "disabled"


@dataclass(frozen=True)
class TabSpec:
    """A top-level tab: `build(ctx)` runs inside the open tab and creates its components."""

    label: str
    build: Callable[[AppContext], None]
    elem_id: str | None = None


@dataclass(frozen=True)
class ScriptSpec:
    """Controls in every generation tab: `build(mode)` returns a modules.ui.hooks.ScriptControls
    (its inputs and how their values go into the params) or None to stay out of that mode."""

    title: str
    build: Callable[[str], Any]


@dataclass(frozen=True)
class Setting:
    """One extension setting, stored in config.json under `extension_settings["<extension>.<key>"]`.
    `value` always reads the saved value, so a change in the Extensions tab applies at once."""

    extension: str
    key: str
    default: Any
    label: str
    choices: tuple[Any, ...] | None
    read: Callable[[str, Any], Any] = field(repr=False, compare=False)

    @property
    def full_key(self) -> str:
        return f"{self.extension}.{self.key}"

    @property
    def value(self) -> Any:
        return self.read(self.full_key, self.default)


@dataclass
class Extension:
    """One extension folder and what happened when it was loaded."""

    name: str
    path: Path
    builtin: bool
    enabled: bool = True
    status: str = DISABLED
    error: str = ""
    tabs: list[TabSpec] = field(default_factory=list)
    scripts: list[ScriptSpec] = field(default_factory=list)
    settings: list[Setting] = field(default_factory=list)
    image_hooks: list[ImageHook] = field(default_factory=list)


class ExtensionAPI:
    """What `register(api)` receives. Everything an extension adds goes through these methods."""

    def __init__(self, ctx: AppContext, extension: Extension) -> None:
        self.ctx = ctx  # read-only use: paths, options, the model registry
        self._extension = extension

    @property
    def name(self) -> str:
        return self._extension.name

    @property
    def path(self) -> Path:
        """The extension's folder (for its own data files)."""
        return self._extension.path

    def add_tab(self, label: str, build: Callable[[AppContext], None], elem_id: str | None = None) -> None:
        """A top-level tab titled `label`; `build(ctx)` creates its Gradio components inside it."""
        self._extension.tabs.append(TabSpec(label, build, elem_id))

    def add_script(self, title: str, build: Callable[[str], Any]) -> None:
        """An accordion titled `title` in each generation tab. `build(mode)` creates the controls and
        returns `modules.ui.hooks.ScriptControls(inputs, apply)`, or None to skip that mode; `apply(params,
        values)` returns the params to generate with (put your values into `params.extra`)."""
        self._extension.scripts.append(ScriptSpec(title, build))

    def add_setting(self, key: str, default: Any, label: str, choices: list[Any] | None = None) -> Setting:
        """A setting shown in the Extensions tab (a checkbox, number, text box or, with `choices`, a
        dropdown, after the type of `default`); read it with `.value` when you need it."""
        if not re.fullmatch(r"[A-Za-z0-9_-]+", key):
            raise UserError(f"Setting key {key!r} of extension {self.name}: use letters, digits, '_' and '-'.")
        if any(s.key == key for s in self._extension.settings):
            raise UserError(f"Extension {self.name} adds the setting {key!r} twice.")
        setting = Setting(self.name, key, default, label, tuple(choices) if choices else None, self._read_setting)
        self._extension.settings.append(setting)
        return setting

    def on_image(self, hook: ImageHook) -> None:
        """`hook(image, infotext, params)` runs on every finished image before it is saved (UI, API and
        command line) and returns a replacement image, or None to keep it. `params.extra` holds what
        your script put there; check it, so that the hook does nothing unless asked."""
        self._extension.image_hooks.append(hook)

    def _read_setting(self, full_key: str, default: Any) -> Any:
        return self.ctx.options.options.extension_settings.get(full_key, default)


@dataclass
class LoadedExtensions:
    """Every extension found (loaded, failed or disabled) and, together, what the loaded ones added."""

    extensions: list[Extension]

    def loaded(self) -> list[Extension]:
        return [e for e in self.extensions if e.status == LOADED]

    @property
    def tabs(self) -> list[TabSpec]:
        return [t for e in self.loaded() for t in e.tabs]

    @property
    def scripts(self) -> list[ScriptSpec]:
        return [s for e in self.loaded() for s in e.scripts]

    @property
    def settings(self) -> list[Setting]:
        return [s for e in self.loaded() for s in e.settings]


def extension_dirs(ctx: AppContext) -> list[tuple[Path, bool]]:
    """(folder, builtin) pairs searched for extensions, shipped ones first."""
    return [(BUILTIN_DIR, True), (ctx.paths.extensions_dir, False)]


def discover(ctx: AppContext, dirs: list[tuple[Path, bool]] | None = None) -> list[Extension]:
    """Extension folders in name order; a user folder named like a shipped one is reported as failed."""
    found: list[Extension] = []
    names: set[str] = set()
    disabled = set(ctx.options.options.disabled_extensions or [])
    for folder, builtin in dirs if dirs is not None else extension_dirs(ctx):
        if not folder.is_dir():
            continue
        for path in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
            ext = Extension(name=path.name, path=path, builtin=builtin, enabled=path.name not in disabled)
            if path.name in names:
                ext.status, ext.error = FAILED, "another extension with this name was found first; rename the folder"
            names.add(path.name)
            found.append(ext)
    return found


def load_extensions(ctx: AppContext, dirs: list[tuple[Path, bool]] | None = None) -> LoadedExtensions:
    """Discover and import the enabled extensions; their image hooks join `ctx.image_hooks`."""
    extensions = discover(ctx, dirs)
    for ext in extensions:
        if ext.status == FAILED:
            log.error("Extension %s (%s) not loaded: %s", ext.name, ext.path, ext.error)
        elif not ext.enabled:
            log.debug("Extension %s is disabled.", ext.name)
        else:
            _load(ctx, ext)
    for ext in extensions:
        if ext.status == LOADED:
            ctx.image_hooks.extend(ext.image_hooks)
    return LoadedExtensions(extensions)


def _load(ctx: AppContext, ext: Extension) -> None:
    entry = ext.path / ENTRY_FILE
    if not entry.is_file():
        ext.status, ext.error = FAILED, f"no {ENTRY_FILE} in {ext.path}"
        log.error("Extension %s not loaded: %s", ext.name, ext.error)
        return
    module_name = "sd_extension_" + re.sub(r"\W", "_", ext.name)
    try:
        # A package spec, so that an extension may split itself into files and import them relatively.
        spec = importlib.util.spec_from_file_location(module_name, entry, submodule_search_locations=[str(ext.path)])
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import {entry}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        register = getattr(module, "register", None)
        if not callable(register):
            raise AttributeError(f"{ENTRY_FILE} defines no register(api) function")
        register(ExtensionAPI(ctx, ext))
    except Exception as exc:  # noqa: BLE001 - any failure of foreign code must not stop the program
        sys.modules.pop(module_name, None)
        for added in (ext.tabs, ext.scripts, ext.settings, ext.image_hooks):
            added.clear()  # nothing of a half-registered extension is used
        ext.status = FAILED
        ext.error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        log.error("Extension %s (%s) failed to load: %s", ext.name, ext.path, ext.error, exc_info=exc)
        return
    ext.status = LOADED
    log.debug("Extension %s loaded.", ext.name)


def set_disabled(ctx: AppContext, names: list[str]) -> None:
    """Persist which extensions are off (config.json `disabled_extensions`); applies at the next start."""
    ctx.options.update({"disabled_extensions": sorted(set(names))})


def save_settings(ctx: AppContext, settings: list[Setting], values: list[Any]) -> None:
    """Store extension settings, each converted to its default's type (a wrong type is a UserError)."""
    stored = dict(ctx.options.options.extension_settings or {})
    for setting, value in zip(settings, values, strict=True):
        stored[setting.full_key] = _convert(setting, value)
    ctx.options.update({"extension_settings": stored})


def _convert(setting: Setting, value: Any) -> Any:
    kind = type(setting.default)
    if setting.choices is not None and value not in setting.choices:
        raise UserError(f"{setting.label}: choose one of {', '.join(map(str, setting.choices))}, not {value!r}.")
    if kind is bool:
        return bool(value)
    if kind in (int, float):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise UserError(f"{setting.label} must be a number, got {value!r}.") from None
        if kind is int and number != int(number):
            raise UserError(f"{setting.label} must be a whole number, got {value!r}.")
        return kind(number)
    return "" if value is None else value
