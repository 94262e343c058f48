"""Every family of the explorer, registered in one line each (the order of the UI and the CLI).

``explorer.families.base`` defines the ``Family`` record and ``register``; each module below ends
with ``register(Family(...))``. Importing this package registers them all.
"""

from __future__ import annotations

from explorer.families.base import (
    DiagramNode,
    Family,
    Preset,
    families,
    family_names,
    family_of,
    get_family,
    register,
    side_table,
)

# One line per family: importing the module registers it.
from explorer.families import lenet  # noqa: E402,F401  isort: skip
from explorer.families import alexnet  # noqa: E402,F401  isort: skip
from explorer.families import vgg  # noqa: E402,F401  isort: skip
from explorer.families import nin  # noqa: E402,F401  isort: skip
from explorer.families import googlenet  # noqa: E402,F401  isort: skip
from explorer.families import resnet  # noqa: E402,F401  isort: skip
from explorer.families import densenet  # noqa: E402,F401  isort: skip
from explorer.families import regnet  # noqa: E402,F401  isort: skip

__all__ = ["DiagramNode", "Family", "Preset", "families", "family_names", "family_of",
           "get_family", "register", "side_table"]
