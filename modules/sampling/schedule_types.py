"""The schedule types A1111 1.9+ offers, by name: light (no torch), for menus, flags and the API.

The sigmas of each are computed in `schedules.py`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScheduleType:
    name: str  # A1111's internal name (the API's "name")
    label: str  # what users see and infotexts write
    aliases: tuple[str, ...] = ()
    default_rho: float = -1.0  # the schedules with a rho setting
    need_inner_model: bool = False  # built from the model's own noise levels


# A1111's order (modules/sd_schedulers.py): the menus and /sdapi/v1/schedulers keep it.
SCHEDULES: tuple[ScheduleType, ...] = (
    ScheduleType("automatic", "Automatic"),
    ScheduleType("uniform", "Uniform", need_inner_model=True),
    ScheduleType("karras", "Karras", default_rho=7.0),
    ScheduleType("exponential", "Exponential"),
    ScheduleType("polyexponential", "Polyexponential", default_rho=1.0),
    ScheduleType("sgm_uniform", "SGM Uniform", aliases=("SGMUniform",), need_inner_model=True),
    ScheduleType("kl_optimal", "KL Optimal"),
    ScheduleType("align_your_steps", "Align Your Steps"),
    ScheduleType("simple", "Simple", need_inner_model=True),
    ScheduleType("normal", "Normal", need_inner_model=True),
    ScheduleType("ddim", "DDIM", need_inner_model=True),
    ScheduleType("beta", "Beta", need_inner_model=True),
)
SCHEDULE_LABELS: tuple[str, ...] = tuple(s.label for s in SCHEDULES)


def _key(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


_BY_KEY = {_key(alias): s for s in SCHEDULES for alias in (s.name, s.label, *s.aliases)}


def find_schedule(text: str) -> ScheduleType | None:
    """The schedule type named by a label, internal name or alias (case, spaces and "_" ignored)."""
    return _BY_KEY.get(_key(text)) if isinstance(text, str) and text.strip() else None
