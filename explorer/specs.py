"""Frozen dataclass specs: one per family, the single description of a network.

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
from dataclasses import MISSING, asdict, dataclass, field, fields
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

# ---------------------------------------------------------------------------------------------
# The families.


@dataclass(frozen=True)
class LeNetSpec(SpecBase):
    """LeNet (LeCun et al. 1998): conv → activation → pool, twice, then fully connected layers."""

    family: ClassVar[str] = "lenet"
    title: ClassVar[str] = "LeNet"
    input_shape: Shape = _f((1, 28, 28), _INPUT_HELP)
    num_classes: int = _f(10, _CLASSES_HELP, 1, 100_000)
    conv_channels: tuple[int, ...] = _f((6, 16), "output channels of each conv layer", 1,
                                        items=(1, 4096), max_len=8)
    kernel_size: int = _f(5, "kernel size of every conv layer", 1, 31)
    padding: tuple[int, ...] = _f(
        (0,), "zero padding: one value for every conv layer, or one per conv layer (2 keeps "
              "28×28 with a 5×5 kernel; d2l's LeNet pads only the first conv: 2, 0)", 1,
        items=(0, 15), max_len=8)
    pool: Literal["max", "avg"] = _f("max", "2×2 stride-2 pooling after each conv")
    activation: Literal["sigmoid", "relu", "tanh"] = _f("sigmoid", "activation function")
    hidden: tuple[int, ...] = _f((120, 84), "widths of the hidden fully connected layers", 0,
                                 items=(1, 65536), max_len=8)
    batch_norm: bool = _f(False, "batch norm after every conv and hidden linear layer, "
                                 "before the activation (BN-LeNet)")
    bias: bool = _f(True, "bias on conv and linear layers")

    def __post_init__(self) -> None:
        # Specs and links written before per-conv padding gave one number for every conv.
        if isinstance(self.padding, int | float) and not isinstance(self.padding, bool):
            object.__setattr__(self, "padding", (self.padding,))
        super().__post_init__()

    def _check(self) -> None:
        n, k = len(self.conv_channels), len(self.padding)
        if k not in (1, n):
            raise ConfigError(f"padding has {k} values for {n} conv layers; give one value for "
                              f"every conv layer or one per conv layer.")

    def conv_padding(self, index: int) -> int:
        """Zero padding of conv layer ``index`` (0-based)."""
        return self.padding[0] if len(self.padding) == 1 else self.padding[index]


@dataclass(frozen=True)
class AlexNetSpec(SpecBase):
    """AlexNet (Krizhevsky et al. 2012): five convs, three max pools, two wide FC layers."""

    family: ClassVar[str] = "alexnet"
    title: ClassVar[str] = "AlexNet"
    input_shape: Shape = _f((1, 224, 224), _INPUT_HELP)
    num_classes: int = _f(10, _CLASSES_HELP, 1, 100_000)
    convs: tuple[ConvLayer, ...] = _f(
        (ConvLayer(96, 11, 4, 1, True), ConvLayer(256, 5, 1, 2, True), ConvLayer(384, 3, 1, 1),
         ConvLayer(384, 3, 1, 1), ConvLayer(256, 3, 1, 1, True)),
        "conv layers (out channels, kernel, stride, padding, maxpool(3,2) after)", 1)
    avgpool_size: int = _f(0, "adaptive average pool to this size before the classifier "
                              "(torchvision: 6; 0 = none)", 0, 64)
    hidden: tuple[int, ...] = _f((4096, 4096), "widths of the hidden fully connected layers", 0,
                                 items=(1, 65536), max_len=8)
    dropout: float = _f(0.5, "dropout probability in the classifier", 0.0, 0.99)
    dropout_first: bool = _f(False, "dropout before each hidden linear layer (torchvision) "
                                    "instead of after its ReLU (course)")
    bias: bool = _f(True, "bias on conv and linear layers")


@dataclass(frozen=True)
class VGGSpec(SpecBase):
    """VGG (Simonyan & Zisserman 2014): blocks of 3×3 convs each ending in a 2×2 max pool."""

    family: ClassVar[str] = "vgg"
    title: ClassVar[str] = "VGG"
    input_shape: Shape = _f((1, 224, 224), _INPUT_HELP)
    num_classes: int = _f(10, _CLASSES_HELP, 1, 100_000)
    arch: tuple[VGGBlock, ...] = _f(
        (VGGBlock(1, 64), VGGBlock(1, 128), VGGBlock(2, 256), VGGBlock(2, 512), VGGBlock(2, 512)),
        "blocks as (num_convs, out_channels), the book's order", 1)
    batch_norm: bool = _f(False, "batch norm after every conv (torchvision's vgg*_bn)")
    avgpool_size: int = _f(0, "adaptive average pool to this size before the classifier "
                              "(torchvision: 7; 0 = none)", 0, 64)
    hidden: tuple[int, ...] = _f((4096, 4096), "widths of the hidden fully connected layers", 0,
                                 items=(1, 65536), max_len=8)
    dropout: float = _f(0.5, "dropout probability after each hidden linear layer", 0.0, 0.99)
    bias: bool = _f(True, "bias on conv and linear layers")


@dataclass(frozen=True)
class NiNSpec(SpecBase):
    """Network in Network (Lin et al. 2013): conv + two 1×1 convs per block, no FC layer."""

    family: ClassVar[str] = "nin"
    title: ClassVar[str] = "NiN"
    input_shape: Shape = _f((1, 224, 224), _INPUT_HELP)
    num_classes: int = _f(10, _CLASSES_HELP, 1, 100_000)
    blocks: tuple[ConvLayer, ...] = _f(
        (ConvLayer(96, 11, 4, 0), ConvLayer(256, 5, 1, 2), ConvLayer(384, 3, 1, 1)),
        "NiN blocks (out channels, kernel, stride, padding), each followed by maxpool(3,2)", 1)
    head_kernel: int = _f(3, "kernel of the last NiN block, whose channels are the classes; "
                             "it pads by kernel // 2, so an odd kernel keeps the size and an even "
                             "one grows it by 1 (4 turns 7×7 into 8×8)", 1, 15)
    dropout: float = _f(0.5, "dropout before the last NiN block", 0.0, 0.99)
    batch_norm: bool = _f(False, "batch norm after every conv (not in the lecture)")


_GOOGLENET_STAGES = (
    (Inception(64, 96, 128, 16, 32, 32), Inception(128, 128, 192, 32, 96, 64)),
    (Inception(192, 96, 208, 16, 48, 64), Inception(160, 112, 224, 24, 64, 64),
     Inception(128, 128, 256, 24, 64, 64), Inception(112, 144, 288, 32, 64, 64),
     Inception(256, 160, 320, 32, 128, 128)),
    (Inception(256, 160, 320, 32, 128, 128), Inception(384, 192, 384, 48, 128, 128)),
)


@dataclass(frozen=True)
class GoogLeNetSpec(SpecBase):
    """GoogLeNet (Szegedy et al. 2014): a stem, then stages of four-branch Inception blocks."""

    family: ClassVar[str] = "googlenet"
    title: ClassVar[str] = "GoogLeNet"
    input_shape: Shape = _f((1, 96, 96), _INPUT_HELP)
    num_classes: int = _f(10, _CLASSES_HELP, 1, 100_000)
    stem_channels: tuple[int, int, int] = _f((64, 64, 192), "stem convs: 7×7/2, 1×1, 3×3")
    stages: tuple[tuple[Inception, ...], ...] = _f(
        _GOOGLENET_STAGES, "Inception stages (a max pool between stages)", 1, max_len=6)
    branch3_kernel: int = _f(5, "kernel of branch 3 (the paper: 5; torchvision: 3)", 1, 11)
    batch_norm: bool = _f(False, "batch norm after every conv (torchvision)")
    pool_style: Literal["course", "torchvision"] = _f(
        "course", "course: maxpool(3,2,p1); torchvision: ceil-mode maxpool(3,2), "
                  "a 2×2 pool before the last stage")
    dropout: float = _f(0.0, "dropout before the final linear layer (torchvision: 0.2)", 0.0, 0.99)

    def _check(self) -> None:
        if not self.stages or any(not 1 <= len(s) <= 16 for s in self.stages):
            raise ConfigError("stages must each hold between 1 and 16 Inception blocks.")
        for c in self.stem_channels:
            if not 1 <= c <= 4096:
                raise ConfigError(f"stem_channels has {c}; each must be between 1 and 4096.")


@dataclass(frozen=True)
class ResNetSpec(SpecBase):
    """ResNet (He et al. 2015): a stem, stages of residual blocks, global average pool, linear."""

    family: ClassVar[str] = "resnet"
    title: ClassVar[str] = "ResNet"
    input_shape: Shape = _f((1, 96, 96), _INPUT_HELP)
    num_classes: int = _f(10, _CLASSES_HELP, 1, 100_000)
    block: Literal["basic", "bottleneck"] = _f(
        "basic", "basic: two 3×3 convs; bottleneck: 1×1, 3×3, 1×1")
    stages: tuple[Stage, ...] = _f(
        (Stage(2, 64), Stage(2, 128), Stage(2, 256), Stage(2, 512)),
        "stages as (num_blocks, channels); every stage after the first halves the size", 1)
    stem: Literal["imagenet", "small"] = _f(
        "imagenet", "imagenet: conv 7×7/2 + maxpool 3×3/2; small: one conv 3×3/1 (CIFAR style)")
    stem_channels: int = _f(64, "channels of the stem conv", 1, 4096)
    expansion: int = _f(4, "bottleneck only: output channels = channels × expansion", 1, 8)
    cardinality: int = _f(1, "number of groups of the 3×3 conv (ResNeXt)", 1, 1024)
    base_width: int = _f(64, "torchvision's width_per_group: bottleneck width = "
                             "int(channels × base_width / 64) × cardinality", 1, 4096)
    bot_mul: float = _f(0.0, "the course's bottleneck multiplier: width = round(channels × "
                             "bot_mul); 0 uses base_width", 0.0, 16.0)
    stride_on: Literal["3x3", "1x1"] = _f(
        "3x3", "bottleneck only: stride on the 3×3 conv (torchvision, v1.5) or the first 1×1")
    conv_bias: bool = _f(True, "bias on every conv (the course: yes; torchvision: no)")
    shortcut_bn: bool = _f(False, "batch norm on the 1×1 projection shortcut (torchvision)")

    def _check(self) -> None:
        if self.block == "basic" and (self.cardinality != 1 or self.base_width != 64
                                      or self.bot_mul):
            raise ConfigError("cardinality, base_width and bot_mul only apply to bottleneck "
                              "blocks; set block to 'bottleneck' or reset them (1, 64, 0).")
        for i, st in enumerate(self.stages, 1):
            width = self.bottleneck_width(st.channels)
            if self.block == "bottleneck" and width < 1:
                raise ConfigError(f"stage {i}: the bottleneck width rounds to 0 channels; "
                                  f"raise bot_mul or base_width.")
            if self.block == "bottleneck" and width % self.cardinality:
                raise ConfigError(
                    f"stage {i}: bottleneck width {width} is not divisible by cardinality "
                    f"{self.cardinality}; choose a cardinality that divides {width}.")

    def bottleneck_width(self, channels: int) -> int:
        """Width of the grouped 3×3 conv in a bottleneck block of a stage with ``channels``."""
        if self.bot_mul:
            return round(channels * self.bot_mul)
        return int(channels * (self.base_width / 64.0)) * self.cardinality

    def out_channels(self, channels: int) -> int:
        return channels * self.expansion if self.block == "bottleneck" else channels

    def group_table(self) -> list[dict[str, int]]:
        """Per stage: bottleneck width b, groups, channels per group, and the book's reading.

        The book (d2l ResNeXtBlock) calls ``nn.Conv2d(b, b, 3, groups=b // groups)``: its
        ``groups`` argument is really channels per group. To get this spec's cardinality g the
        book's argument must be b // g; passing the book's argument g instead builds b // g groups.
        """
        rows = []
        for i, st in enumerate(self.stages, 1):
            b = self.bottleneck_width(st.channels)
            g = self.cardinality
            rows.append({"stage": i, "channels": st.channels, "bottleneck_width": b,
                         "groups": g, "width_per_group": b // g,
                         "book_groups_argument": b // g,
                         "book_groups_as_cardinality_builds": b // g})
        return rows


@dataclass(frozen=True)
class ResNeXtSpec(ResNetSpec):
    """ResNeXt (Xie et al. 2016): ResNet with grouped 3×3 convs in the bottleneck (cardinality)."""

    family: ClassVar[str] = "resnext"
    title: ClassVar[str] = "ResNeXt"
    block: Literal["basic", "bottleneck"] = _f("bottleneck", "ResNeXt uses bottleneck blocks")
    stages: tuple[Stage, ...] = _f(
        (Stage(2, 64), Stage(2, 128), Stage(2, 256), Stage(2, 512)),
        "stages as (num_blocks, channels); every stage after the first halves the size", 1)
    expansion: int = _f(1, "output channels = channels × expansion (course: 1; torchvision: 4)",
                        1, 8)
    cardinality: int = _f(16, "number of groups of the 3×3 conv", 1, 1024)
    bot_mul: float = _f(1.0, "the course's bottleneck multiplier: width = round(channels × "
                             "bot_mul); 0 uses base_width", 0.0, 16.0)
    shortcut_bn: bool = _f(True, "batch norm on the 1×1 projection shortcut")

    def _check(self) -> None:
        if self.block != "bottleneck":
            raise ConfigError("ResNeXt is built from bottleneck blocks; set block to "
                              "'bottleneck' or pick the ResNet family.")
        super()._check()


@dataclass(frozen=True)
class DenseNetSpec(SpecBase):
    """DenseNet (Huang et al. 2016): dense blocks concatenate every layer's output on channels."""

    family: ClassVar[str] = "densenet"
    title: ClassVar[str] = "DenseNet"
    input_shape: Shape = _f((1, 96, 96), _INPUT_HELP)
    num_classes: int = _f(10, _CLASSES_HELP, 1, 100_000)
    block_config: tuple[int, ...] = _f((4, 4, 4, 4), "convs per dense block", 1,
                                       items=(1, 128))
    growth_rate: int = _f(32, "channels each conv adds", 1, 1024)
    num_init_features: int = _f(64, "channels of the stem conv", 1, 4096)
    bn_size: int = _f(0, "bottleneck: a 1×1 conv to bn_size × growth_rate before each 3×3 "
                         "(torchvision: 4; course: 0 = none)", 0, 16)
    compression: float = _f(0.5, "transitions keep this fraction of the channels", 0.05, 1.0)
    conv_bias: bool = _f(True, "bias on every conv (the course: yes; torchvision: no)")
    drop_rate: float = _f(0.0, "dropout after each dense layer", 0.0, 0.99)


def __getattr__(name: str) -> Any:
    """``SPEC_TYPES``, ``FAMILIES`` and ``AnySpec``, derived from the family registry.

    Lazy (PEP 562) because the family modules import this one for ``SpecBase``.
    """
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
