"""The server's numeric settings: environment variables read in one place, with their bounds.

Every number a deployment may set (docs/DEPLOY.md lists them) is declared here once, with its
default and its range; ``read`` returns the value, or raises a ``ConfigError`` whose one sentence
names the variable, the range and what it sets. A blank or unset variable means the default.
Strings (``EXPLORER_RUNS_DB``, ``RAY_ADDRESS``, the teacher key) are read where they are used.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

from explorer.errors import ConfigError


@dataclass(frozen=True)
class Setting:
    """One numeric environment variable."""

    name: str
    default: float | None  # None: derived at run time (e.g. from the device)
    low: float  # inclusive bounds
    high: float
    what: str  # what it sets, for the sentence on a bad value
    whole: bool = False  # a whole number (slots, counts), else any real number


_ALL = (
    Setting("EXPLORER_RUN_BUDGET_S", 600.0, 1.0, 1e7,
            "the longest run in seconds the server accepts"),
    Setting("EXPLORER_RUN_MEMORY_BYTES", None, 1.0, 2.0**60,
            "the bytes of memory one run may use"),
    Setting("EXPLORER_SLOTS", None, 1, 64, "the local worker processes per device", whole=True),
    Setting("EXPLORER_GPU_SLOTS", None, 1, 64, "the local worker processes per GPU", whole=True),
    Setting("EXPLORER_GPU_MEMORY_MB", None, 1.0, 1e8,
            "the megabytes of one GPU's memory that its runs may hold together"),
    Setting("EXPLORER_GPU_RESERVE_MB", None, 0.0, 1e8,
            "the megabytes of each GPU's memory kept free of runs"),
    Setting("EXPLORER_RUNS_PER_VISITOR", 1, 1, 10_000,
            "the queued or training runs one browser may have at once", whole=True),
    Setting("EXPLORER_RUNS_KEPT_PER_VISITOR", 100, 0, 1_000_000,
            "the runs one browser may keep on the server, past which it imports no more",
            whole=True),
    Setting("EXPLORER_RAY_GPU_FRACTION", 0.25, 0.1, 1.0,
            "the share of a GPU a Ray run of unknown footprint asks for"),
    Setting("EXPLORER_RAY_GPU_MEMORY_GB", 0.0, 0.0, 1e6,
            "the memory of one GPU of the Ray cluster (0: asked of a GPU node)"),
    Setting("EXPLORER_RAY_CPUS", 1.0, 0.01, 1024.0, "the CPUs a Ray run asks for"),
    Setting("EXPLORER_DB_POOL", 4, 1, 64,
            "the PostgreSQL connections of one process", whole=True),
)
SETTINGS: dict[str, Setting] = {s.name: s for s in _ALL}


def _bound(x: float) -> str:
    x = float(x)
    return f"{x:,.0f}".replace(",", "") if x.is_integer() and abs(x) >= 1e6 else f"{x:g}"


def read(name: str, env: Mapping[str, str] | None = None) -> float | int | None:
    """The value of setting ``name`` from ``env`` (default: the process environment).

    Returns the declared default when the variable is unset or blank; a whole-number setting
    returns an ``int``. A value that is not a number in the setting's range is a sentence.
    """
    setting = SETTINGS[name]
    raw = (os.environ if env is None else env).get(name, "").strip()
    if not raw:
        return setting.default
    try:
        value = float(raw) if raw.isascii() else math.nan
    except ValueError:
        value = math.nan
    kind = "a whole number" if setting.whole else "a number"
    if (not math.isfinite(value) or not setting.low <= value <= setting.high
            or (setting.whole and not value.is_integer())):
        raise ConfigError(f"${name} must be {kind} from {_bound(setting.low)} to "
                          f"{_bound(setting.high)}, got {raw[:20]!r}: it sets {setting.what}.")
    return int(value) if setting.whole else value


def check_all(env: Mapping[str, str] | None = None) -> list[str]:
    """Every bad setting's sentence (empty when all are good), for a server to show at start."""
    problems = []
    for name in SETTINGS:
        try:
            read(name, env)
        except ConfigError as exc:
            problems.append(str(exc))
    return problems


__all__ = ["SETTINGS", "Setting", "check_all", "read"]
