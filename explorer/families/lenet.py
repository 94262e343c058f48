"""LeNet (LeCun et al. 1998): d2l's chapter version, the lectures' LeNet-5 table version and
BN-LeNet (d2l 7.6, 8.5); each conv layer has its own padding.

The whole family in one module: spec, blocks, builder, form labels, notes, presets and
diagram, registered in its last line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from torch import nn

from explorer.errors import ConfigError
from explorer.families.base import Family, Preset, register
from explorer.models.common import ACTIVATIONS, ShapeTracker, mlp_head, seq
from explorer.specs import CLASSES_HELP as _CLASSES_HELP
from explorer.specs import INPUT_HELP as _INPUT_HELP
from explorer.specs import Shape, SpecBase
from explorer.specs import spec_field as _f


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


def build_lenet(spec: LeNetSpec) -> nn.Module:
    """conv [BN] act pool, per conv layer; then the fully connected head (named ``head``)."""
    t = ShapeTracker(spec.input_shape)
    items: list[tuple[str, nn.Module | None]] = []
    for i, ch in enumerate(spec.conv_channels, 1):
        items += [
            (f"conv{i}", t.conv(f"conv layer {i}", ch, spec.kernel_size, 1,
                                spec.conv_padding(i - 1), bias=spec.bias)),
            (f"bn{i}", t.bn2d() if spec.batch_norm else None),
            (f"act{i}", ACTIVATIONS[spec.activation]()),
            (f"pool{i}", t.pool(f"the pool after conv layer {i}", spec.pool, 2, 2)),
        ]
    head = mlp_head(t, spec.hidden, spec.num_classes, spec.activation,
                    batch_norm=spec.batch_norm, bias=spec.bias)
    return seq(("features", seq(*items)), ("head", head))


NOTES = (
    "**LeNet** alternates convolutions, which detect local patterns with shared weights, "
    "and 2×2 pooling, which halves the map. After two such pairs the feature map is "
    "flattened and fully connected layers classify it. Almost all parameters sit in the "
    "first fully connected layer; almost all multiply-adds in the convolutions.")

PRESETS = (
    Preset("course_lenet5", LeNetSpec(conv_channels=(20, 50), padding=(2,), activation="relu",
                                      hidden=(500,)),
           "LeNet-5, the lecture's table version: 20 and 50 channels, ReLU, one 500-wide layer",
           "course",
           "The lecture's table of LeNet-5. Padding 2 keeps 28×28 after the first conv; each "
           "2×2 pool halves the map. Look at where the parameters live: the 2450→500 linear "
           "layer holds almost all of them."),
    Preset("course_lenet", LeNetSpec(pool="avg"),
           "Classic LeNet: conv(6,5) and conv(16,5) with sigmoid and average pooling",
           "course",
           "LeNet as published, with sigmoid activations. The maps shrink 28→24→12→8→4 without "
           "padding; 16×4×4 = 256 features reach the 120-wide layer."),
    Preset("course_bn_lenet", LeNetSpec(batch_norm=True),
           "BN-LeNet: classic LeNet with batch norm before every sigmoid (max pooling)",
           "course",
           "The batch-norm lecture's network: BN after every conv and hidden linear layer, "
           "before the sigmoid. BN adds only 2 parameters per channel (γ, β) but lets SGD with "
           "learning rate 1.0 train it."),
    Preset("course_lenet_d2l", LeNetSpec(padding=(2, 0), pool="avg"),
           "d2l's LeNet chapter: only the first conv padded (6×28×28), sigmoid, average pooling",
           "course",
           "The network of d2l's LeNet chapter. Padding 2 on the first 5×5 conv keeps 28×28; "
           "the second conv is unpadded (14 → 10), so 16×5×5 = 400 features reach the 120-wide "
           "layer, and the network has 61,706 parameters. The batch-norm lecture's LeNet pads "
           "neither conv (256 features)."),
)

FAMILY = register(Family(
    "lenet", LeNetSpec, build_lenet, NOTES, PRESETS,
    labels={"conv_channels": "Conv layers", "kernel_size": "Kernel size", "padding": "Padding",
            "pool": "Pooling", "activation": "Activation", "hidden": "Hidden FC layers",
            "batch_norm": "Batch norm", "bias": "Biases"},
    list_labels={"conv_channels": "out channels", "hidden": "width", "padding": "padding"},
))
