"""Presets by name: the single list that the UI, the CLI and the tests iterate over.

Course presets are the networks of the d2l.ai lectures at their lecture input shapes; presets
named after torchvision's builders reproduce those models exactly (same parameter count and
per-layer output shapes at 3×224×224 with 1000 classes), so the differences are visible.
"""

from __future__ import annotations

import difflib

from explorer.errors import ConfigError
from explorer.families import Preset, families
from explorer.families.base import Group

__all__ = ["COURSE_PAIRS", "DEFAULT_PRESET", "Group", "PRESETS", "Preset", "get_preset",
           "preset_names"]

# Course presets first, then torchvision's, each in family order (the gallery's order).
_PRESETS: tuple[Preset, ...] = tuple(
    p for group in ("course", "torchvision") for f in families() for p in f.presets
    if p.group == group)

PRESETS: dict[str, Preset] = {p.name: p for p in _PRESETS}
assert len(PRESETS) == len(_PRESETS), "duplicate preset name"

DEFAULT_PRESET = "course_resnet18"

# The course-vs-torchvision pairs the Compare page lines up layer by layer; the default
# preset's pair first (the page's first option).
COURSE_PAIRS: dict[str, str] = dict(sorted(
    ((a, b) for f in families() for a, b in f.course_pairs.items()),
    key=lambda pair: pair[0] != DEFAULT_PRESET))
assert all(b in PRESETS for b in COURSE_PAIRS.values()), "a course pair names no preset"


def preset_names(group: Group | None = None, family: str | None = None) -> list[str]:
    """Preset names in registry order, optionally of one group or family."""
    return [p.name for p in _PRESETS
            if (group is None or p.group == group) and (family is None or p.family == family)]


def get_preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name lists the known ones."""
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), PRESETS, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown preset {name!r}.{hint} Known presets: "
                          f"{', '.join(PRESETS)}.") from None
