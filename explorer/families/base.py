"""The family registry: one frozen ``Family`` record per family, registered in one line.

A family module (``explorer/families/<name>.py``) holds or names its spec, blocks, builder, form
labels, notes, presets and diagram description, and ends with ``register(Family(...))``; the
specs, builders, forms, notes, charts, export, presets, the CLI and the tests find families only
here (torchvision's ``@register_model`` in ``models/_api.py``, timm's ``_registry.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from explorer.errors import ConfigError

Group = Literal["course", "torchvision"]


@dataclass(frozen=True)
class Preset:
    """A named spec with a one-line description and, for torchvision names, its reference."""

    name: str
    spec: Any  # a SpecBase
    description: str
    group: Group
    note: str = ""  # a paragraph for the lecture gallery: what to look at
    reference: str | None = None  # torchvision.models builder with the same architecture

    @property
    def family(self) -> str:
        return self.spec.family


@dataclass(frozen=True)
class DiagramNode:
    """One box of the architecture diagram."""

    name: str
    kind: str  # a key of explorer.charts.KIND_COLORS
    label: str
    skip: str | None = None  # "identity" or "1×1 conv" for residual blocks
    concat: int = 0  # number of concatenated inputs (Inception branches, dense layers)


def _frozen(mapping: Mapping[Any, Any] | None) -> Mapping[Any, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class Family:
    """Everything the app, the CLI and the tests need to know about one family.

    Args:
        name: the family key (``spec.family``), as in links and spec files.
        spec: the frozen spec dataclass (a ``explorer.specs.SpecBase``).
        build: spec → ``nn.Module``, creating layers through a ``ShapeTracker``.
        notes: the Build page's explanation of the family's block (Markdown).
        presets: the family's named specs (course and torchvision).
        labels: form labels of the spec's fields (``explorer.forms``).
        columns: column labels of the fields of its arch-table rows.
        list_labels: column label of its single-column tables (tuple[int, ...] fields).
        book_order: per row type, the order the book writes a row in.
        diagram: (name, module) → the diagram box of one of its blocks, or None.
        blocks: its own nn.Module classes, whose ``forward`` the PyTorch export copies.
        concat: block class name → "block" (the block concatenates its branches) or "layers"
            (each child's output is concatenated onto its input); the shape-flow chart's points.
        course_pairs: course preset → torchvision preset that Compare lines up with it.
        open_settings: the Build page opens "More settings" for it (its key fields are there).
        extra_table: spec → rows of a table the Build page shows beside the form, or None.
        extra_caption: the sentence above that table.
    """

    name: str
    spec: type
    build: Callable[[Any], Any]
    notes: str
    presets: tuple[Preset, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    columns: Mapping[str, str] = field(default_factory=dict)
    list_labels: Mapping[str, str] = field(default_factory=dict)
    book_order: Mapping[type, str] = field(default_factory=dict)
    diagram: Callable[[str, Any], DiagramNode | None] | None = None
    blocks: tuple[type, ...] = ()
    concat: Mapping[str, str] = field(default_factory=dict)
    course_pairs: Mapping[str, str] = field(default_factory=dict)
    open_settings: bool = False
    extra_table: Callable[[Any], list[dict[str, Any]] | None] | None = None
    extra_caption: str = ""

    def __post_init__(self) -> None:
        for name in ("labels", "columns", "list_labels", "book_order", "concat", "course_pairs"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))
        object.__setattr__(self, "presets", tuple(self.presets))

    @property
    def title(self) -> str:
        return self.spec.title


_FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add ``family`` to the registry (one line at the end of its module); returns it."""
    if family.name in _FAMILIES:
        raise ValueError(f"family {family.name!r} is already registered")
    if getattr(family.spec, "family", None) != family.name:
        raise ValueError(f"{family.spec.__name__}.family is {family.spec.family!r}, "
                         f"not {family.name!r}")
    known = {p.name for f in _FAMILIES.values() for p in f.presets}
    for p in family.presets:
        if p.name in known:
            raise ValueError(f"preset {p.name!r} is already registered")
        if p.family != family.name:
            raise ValueError(f"preset {p.name!r} is a {p.family} spec, not {family.name}")
        known.add(p.name)
    for course, ref in family.course_pairs.items():
        if course not in {p.name for p in family.presets}:
            raise ValueError(f"course pair {course!r} → {ref!r}: {course!r} is not a preset "
                             f"of {family.name}")
    _FAMILIES[family.name] = family
    return family


def families() -> tuple[Family, ...]:
    """Every registered family, in registration order."""
    return tuple(_FAMILIES.values())


def family_names() -> tuple[str, ...]:
    return tuple(_FAMILIES)


def get_family(name: object) -> Family:
    """The family called ``name``; an unknown name lists the known ones."""
    try:
        return _FAMILIES[name]  # type: ignore[index]
    except (KeyError, TypeError):
        from explorer.bounded import shown

        raise ConfigError(f"unknown family {shown(name)}; choose one of "
                          f"{', '.join(_FAMILIES)}.") from None


def family_of(spec: object) -> Family:
    """The family of a spec (by its ``family`` class attribute)."""
    return get_family(getattr(spec, "family", None))


def side_table(spec: object) -> tuple[str, list[dict[str, Any]]] | None:
    """The table the Build page shows beside a spec's form, as (caption, rows), or None.

    ResNet/ResNeXt bottlenecks: the groups per stage in both readings of the book's argument;
    RegNet: bottleneck width and groups per stage.
    """
    f = family_of(spec)
    rows = f.extra_table(spec) if f.extra_table is not None else None
    return (f.extra_caption, rows) if rows else None
