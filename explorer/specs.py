"""Frozen dataclass specs: one per family, the single description of a network.

This module holds what every spec shares (``SpecBase``: coercion, range checks, dict/JSON/URL
round trips) and the arch-table rows several families use; each family's spec class lives in
its module in ``explorer/families`` and is found through the registry (``SPEC_TYPES``, and
``from explorer.specs import LeNetSpec`` still works).

Architectures are data (DESIGN.md, house style 1 and 4): a spec is a table of numbers that
``explorer.models.build`` turns into an ``nn.Module``. Every spec carries its input shape (C, H, W)
and number of classes. Construction coerces JSON-like values (lists become tuples, "3" stays an
error) and checks every field's range, so an invalid spec cannot exist; what only the shapes can
tell (a stage that shrinks the map to 0×0) is checked by ``explorer.models.validate``.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import MISSING, asdict, field, fields
from typing import Any, ClassVar, Literal, NamedTuple

from explorer.bounded import check_text, loads, shown
from explorer.errors import ConfigError

Shape = tuple[int, int, int]


# ---------------------------------------------------------------------------------------------
# Rows of the arch tables. Named fields, so that (num_convs, out_channels) can never be misread
# as the notebook's (out_channels, num_convs) (LECTURES.md, VGG).


class VGGBlock(NamedTuple):
    """One VGG block: ``num_convs`` × [conv(out_channels, 3, p1) ReLU], then maxpool(2, 2)."""

    num_convs: int
    out_channels: int


class Stage(NamedTuple):
    """One ResNet/ResNeXt stage: ``num_blocks`` residual blocks of ``channels`` channels."""

    num_blocks: int
    channels: int


class ConvLayer(NamedTuple):
    """``conv(out_channels, kernel, stride, padding)``; ``pool`` adds maxpool(3, 2) after it."""

    out_channels: int
    kernel: int
    stride: int = 1
    padding: int = 0
    pool: bool = False


class Inception(NamedTuple):
    """GoogLeNet Inception block: branch widths c1, (c2a, c2b), (c3a, c3b), c4 (LECTURES.md)."""

    c1: int
    c2a: int
    c2b: int
    c3a: int
    c3b: int
    c4: int


# Range of every field of the rows above: (low, high), inclusive. A family's own row type
# declares its ranges as a ``LIMITS`` class attribute instead (see ``row_limits``).
_ROW_LIMITS: dict[type, dict[str, tuple[int, int]]] = {
    VGGBlock: {"num_convs": (1, 32), "out_channels": (1, 8192)},
    Stage: {"num_blocks": (1, 64), "channels": (1, 8192)},
    ConvLayer: {"out_channels": (1, 8192), "kernel": (1, 31), "stride": (1, 16),
                "padding": (0, 32), "pool": (0, 1)},
    Inception: {name: (1, 4096) for name in Inception._fields},
}


def row_limits(row_type: type) -> dict[str, tuple[int, int]]:
    """(low, high) of every field of an arch-table row type."""
    limits = _ROW_LIMITS.get(row_type) or getattr(row_type, "LIMITS", None)
    if limits is None:  # pragma: no cover - a new row type must declare its ranges
        raise TypeError(f"{row_type.__name__} declares no LIMITS")
    return limits


def _f(default: Any, help: str, lo: float | None = None, hi: float | None = None,
       items: tuple[int, int] | None = None, max_len: int = 16) -> Any:
    """A dataclass field with its one-line help text and range (shown in the UI and in errors)."""
    meta = {"help": help, "lo": lo, "hi": hi, "items": items, "max_len": max_len}
    return field(default=default, metadata=meta)


# ---------------------------------------------------------------------------------------------
# Coercion and range checks shared by every spec.


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


_MAX_ITEMS = 64  # no list field holds more; a longer one is refused before any entry is read


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Turn a JSON-like ``value`` into type ``tp`` or raise ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{where} must be true or false, not {shown(value)}.")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} must be a whole number, not {shown(value)}.")
        if isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{where} must be a whole number, not {shown(value)}.")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} must be a number, not {shown(value)}.")
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{where} must be a finite number, not {shown(value)}.")
        try:
            return float(value)
        except OverflowError:  # an int beyond 1e308, e.g. 1 followed by 400 zeros
            raise ConfigError(f"{where} must be a number below 1e308, not "
                              f"{shown(value)}.") from None
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where} must be one of {', '.join(map(repr, choices))}, "
                              f"not {shown(value)}.")
        return value
    if isinstance(tp, type) and issubclass(tp, tuple) and hasattr(tp, "_fields"):
        return _coerce_row(value, tp, where)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, not {shown(value)}.")
        if len(args) == 2 and args[1] is Ellipsis:
            if len(value) > _MAX_ITEMS:
                raise ConfigError(f"{where} has {len(value):,} entries; at most {_MAX_ITEMS} "
                                  f"are allowed.")
            return tuple(_coerce(v, args[0], f"{where}[{i + 1}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where} must have {len(args)} numbers, not {len(value)}.")
        return tuple(_coerce(v, a, f"{where}[{i + 1}]") for i, (v, a) in enumerate(zip(value, args,
                                                                                     strict=True)))
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"unions are not used in specs ({where})")
    raise TypeError(f"no coercion for {_type_name(tp)} ({where})")


def _coerce_row(value: Any, row_type: type, where: str) -> Any:
    """A row of an arch table from a list (positional) or a dict (named fields)."""
    names = row_type._fields
    defaults = row_type._field_defaults
    if isinstance(value, dict):
        unknown = set(value) - set(names)
        if unknown:
            raise ConfigError(f"{where} has unknown field(s) {shown(sorted(unknown))}; "
                              f"its fields are {', '.join(names)}.")
        missing = [n for n in names if n not in value and n not in defaults]
        if missing:
            raise ConfigError(f"{where} is missing {', '.join(missing)}.")
        items = [value.get(n, defaults.get(n)) for n in names]
    elif isinstance(value, list | tuple):
        required = len(names) - len(defaults)
        if not required <= len(value) <= len(names):
            want = f"{required}" if required == len(names) else f"{required} to {len(names)}"
            raise ConfigError(f"{where} needs {want} numbers ({', '.join(names)}), "
                              f"not {len(value)}.")
        items = list(value) + [defaults[n] for n in names[len(value):]]
    else:
        raise ConfigError(f"{where} must be a row ({', '.join(names)}), not {shown(value)}.")
    hints = typing.get_type_hints(row_type)
    out = []
    for name, item in zip(names, items, strict=True):
        v = _coerce(item, hints[name], f"{where} {name}")
        lo, hi = row_limits(row_type)[name]
        if not lo <= int(v) <= hi:
            raise ConfigError(f"{where} {name} is {shown(v)}; it must be between {lo} and {hi}.")
        out.append(v)
    return row_type(*out)


def _check_length(name: str, value: Any, meta: dict) -> None:
    """Refuse a list longer than its field allows before any entry is converted."""
    max_len = meta.get("max_len", 16)
    if isinstance(value, list | tuple) and len(value) > max_len:
        raise ConfigError(f"{name} has {len(value):,} entries; at most {max_len} are allowed.")


def _check_range(name: str, value: Any, meta: dict) -> None:
    lo, hi, items = meta.get("lo"), meta.get("hi"), meta.get("items")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if lo is not None and value < lo:
            raise ConfigError(f"{name} is {shown(value)}; it must be at least {lo}.")
        if hi is not None and value > hi:
            raise ConfigError(f"{name} is {shown(value)}; it must be at most {hi}.")
    if isinstance(value, tuple):
        max_len = meta.get("max_len", 16)
        if meta.get("lo") is not None and len(value) < meta["lo"]:
            raise ConfigError(f"{name} needs at least {meta['lo']} entr"
                              f"{'y' if meta['lo'] == 1 else 'ies'}; add a row.")
        if len(value) > max_len:
            raise ConfigError(f"{name} has {len(value)} entries; at most {max_len} are allowed.")
        if items is not None:
            for i, v in enumerate(value):
                if isinstance(v, int) and not items[0] <= v <= items[1]:
                    raise ConfigError(f"{name}[{i + 1}] is {v}; it must be between "
                                      f"{items[0]} and {items[1]}.")


class SpecBase:
    """Shared behaviour of every spec: coercion, range checks, dict/JSON/URL round trips."""

    family: ClassVar[str]
    title: ClassVar[str]

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):  # type: ignore[arg-type]
            _check_length(f.name, getattr(self, f.name), dict(f.metadata))
            value = _coerce(getattr(self, f.name), hints[f.name], f.name)
            if f.name == "input_shape":
                _check_input_shape(value)
            else:
                _check_range(f.name, value, dict(f.metadata))
            object.__setattr__(self, f.name, value)
        self._check()

    def _check(self) -> None:
        """Checks that relate several fields; overridden per family."""

    # -- round trips -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict with the family name first."""
        return {"family": self.family, **_plain(asdict(self))}  # type: ignore[call-overload]

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_query(self) -> dict[str, str]:
        """Query parameters (one per field, compact JSON values) that ``spec_from_query`` reads."""
        return {k: v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))
                for k, v in self.to_dict().items()}

    @classmethod
    def field_help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}  # type: ignore[arg-type]


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _check_input_shape(shape: Shape) -> None:
    c, h, w = shape
    if not 1 <= c <= 64:
        raise ConfigError(f"input_shape has {c} channels; use 1 (grey) or 3 (colour), at most 64.")
    for name, v in (("height", h), ("width", w)):
        if not 1 <= v <= 2048:
            raise ConfigError(f"input_shape {name} is {v}; it must be between 1 and 2048 pixels.")


_INPUT_HELP = "input image as channels, height, width"
_CLASSES_HELP = "number of output classes (10 for Fashion-MNIST, 1000 for ImageNet)"
# For the family modules (explorer/families): the field helper and the shared help texts.
spec_field = _f
INPUT_HELP, CLASSES_HELP = _INPUT_HELP, _CLASSES_HELP

# Where each family's spec class lives (explorer/families); ``from explorer.specs import
# LeNetSpec`` keeps working through ``__getattr__``.
_MOVED: dict[str, str] = {
    "LeNetSpec": "lenet", "AlexNetSpec": "alexnet", "VGGSpec": "vgg", "NiNSpec": "nin",
    "GoogLeNetSpec": "googlenet", "ResNetSpec": "resnet", "ResNeXtSpec": "resnet",
    "DenseNetSpec": "densenet"}


def __getattr__(name: str) -> Any:
    """``SPEC_TYPES``, ``FAMILIES`` and ``AnySpec``, derived from the family registry.

    Lazy (PEP 562) because the family modules import this one for ``SpecBase``.
    """
    if name in _MOVED:  # the spec classes live with their families (explorer/families)
        import importlib

        return getattr(importlib.import_module(f"explorer.families.{_MOVED[name]}"), name)
    if name in ("SPEC_TYPES", "FAMILIES", "AnySpec"):
        from explorer.families import families

        found = families()
        if name == "SPEC_TYPES":
            return {f.name: f.spec for f in found}
        if name == "FAMILIES":
            return tuple(f.name for f in found)
        return typing.Union[tuple(f.spec for f in found)]  # noqa: UP007
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def spec_type(family: str) -> type[SpecBase]:
    """The spec class of a family; unknown names list the known ones."""
    from explorer.families import get_family

    return get_family(family).spec


def spec_from_dict(data: dict[str, Any]) -> Any:
    """Build a spec from a JSON-like dict with a ``family`` key; missing fields take defaults."""
    if not isinstance(data, dict):
        raise ConfigError("a spec must be a JSON object with a 'family' field.")
    if "family" not in data:
        from explorer.families import family_names

        raise ConfigError(f"the spec has no 'family' field; add one of "
                          f"{', '.join(family_names())}.")
    cls = spec_type(data["family"])
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names - {"family"})
    if unknown:
        raise ConfigError(f"unknown field(s) {shown(', '.join(unknown))[1:-1]} for {cls.title}; "
                          f"its fields are {', '.join(sorted(names))}.")
    return cls(**{k: v for k, v in data.items() if k != "family"})


MAX_SPEC_CHARS = 64 * 1024  # the largest preset's spec is under 2 KiB


def spec_from_json(text: str) -> Any:
    """Parse a spec from JSON text (a file's contents); bad or oversized JSON is a ConfigError."""
    return spec_from_dict(loads(text, "the spec", MAX_SPEC_CHARS))


_MAX_QUERY_CHARS = 8 * 1024  # one field's value in a link


def spec_from_query(params: dict[str, str]) -> Any:
    """Inverse of ``SpecBase.to_query``: each value is compact JSON, the family a bare name."""
    data: dict[str, Any] = {}
    cls = spec_type(params.get("family", ""))
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    for key, raw in params.items():
        if key == "family" or key not in names:
            continue  # other pages' parameters share the URL
        check_text(str(raw), f"the link's {key}", _MAX_QUERY_CHARS)
        try:
            data[key] = json.loads(raw)
        except json.JSONDecodeError:
            data[key] = raw  # a bare string such as pool=max
    return spec_from_dict({"family": cls.family, **data})


def default_spec(family: str) -> Any:
    """The family's defaults (the course version where there is one)."""
    return spec_type(family)()


def field_defaults(cls: type[SpecBase]) -> dict[str, Any]:
    return {f.name: f.default for f in fields(cls) if f.default is not MISSING}  # type: ignore


def coerce_field(cls: type[SpecBase], name: str, value: Any) -> Any:
    """Coerce one field's value to its declared type (rows, tuples) and check its range."""
    hints = typing.get_type_hints(cls)
    meta = {f.name: dict(f.metadata) for f in fields(cls)}  # type: ignore[arg-type]
    if name not in meta:
        raise ConfigError(f"{cls.title} has no field {shown(name)}.")
    _check_length(name, value, meta[name])
    coerced = _coerce(value, hints[name], name)
    _check_range(name, coerced, meta[name])
    return coerced
