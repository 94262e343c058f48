"""Numbers as the pages show them: short enough to read from the back of a lecture hall.

One module for every page and for ``explorer.compare``'s tables, so that a count reads the same
everywhere ("12.35 M" on Build, in Compare's totals and in the gallery).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

MISSING = "—"  # what a table shows where a model has no such number


def fmt_count(n: float | None) -> str:
    """12,345,678 → '12.35 M'; 950 → '950'; None or NaN → '—'."""
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return MISSING
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:,.0f}"


def fmt_bytes(n: float | None) -> str:
    """Bytes in binary units with one decimal: 3,000,000 → '2.9 MiB'; None → '—'."""
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return MISSING
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:,.0f} B"


def shape_text(shape: Sequence[int] | None) -> str:
    """(64, 24, 24) → '64×24×24'; containers that are never called whole show a dash."""
    return "×".join(str(s) for s in shape) if shape is not None and len(shape) else MISSING


def plural(n: int, word: str, many: str | None = None) -> str:
    """1, 'run' → '1 run'; 3 → '3 runs'; ``many`` for a plural that is not word + 's'."""
    return f"{n:,} {word if n == 1 else many or word + 's'}"


def run_list(ids: Sequence[int]) -> str:
    """[5] → '#5'; [5, 6] → '#5 and #6'; [5, 6, 7] → '#5, #6 and #7'."""
    tags = [f"#{i}" for i in ids]
    return " and ".join(tags) if len(tags) < 3 else ", ".join(tags[:-1]) + " and " + tags[-1]
