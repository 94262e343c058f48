"""DenseNet (Huang et al. 2016; d2l 8.7): dense blocks that concatenate, and transitions.

The whole family in one module: spec, blocks, builder, form labels, notes, presets and
diagram, registered in its last line.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar

import torch
from torch import nn

from explorer.errors import ConfigError
from explorer.families.base import DiagramNode, Family, Preset, register
from explorer.models.common import ShapeTracker, gap_head, seq
from explorer.specs import CLASSES_HELP as _CLASSES_HELP
from explorer.specs import INPUT_HELP as _INPUT_HELP
from explorer.specs import Shape, SpecBase
from explorer.specs import spec_field as _f


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


class DenseBlock(nn.Module):
    """``n`` dense layers; each one's output is concatenated onto its input (channels += growth).

    A dense layer is BN ReLU conv(growth, 3, p1) (the course's conv_block), preceded by
    BN ReLU conv(bn_size × growth, 1) when ``bn_size`` > 0 (torchvision's DenseNet-BC).
    """

    def __init__(self, t: ShapeTracker, label: str, num_layers: int, spec: DenseNetSpec):
        super().__init__()
        g, bias = spec.growth_rate, spec.conv_bias
        for j in range(1, num_layers + 1):
            lt = t.copy()
            items: list[tuple[str, nn.Module | None]] = []
            if spec.bn_size:
                items += [("norm1", lt.bn2d()), ("relu1", nn.ReLU()),
                          ("conv1", lt.conv(f"{label}, layer {j}, conv1", spec.bn_size * g, 1,
                                            bias=bias))]
            n = 2 if spec.bn_size else 1
            items += [(f"norm{n}", lt.bn2d()), (f"relu{n}", nn.ReLU()),
                      (f"conv{n}", lt.conv(f"{label}, layer {j}, conv{n}", g, 3, 1, 1,
                                           bias=bias)),
                      ("drop", nn.Dropout(spec.drop_rate) if spec.drop_rate > 0 else None)]
            # The layers are the block's own children (no container that is never called, so
            # the layer table has no row without an output shape).
            self.add_module(f"layer{j}", seq(*items))
            t.c += g

    @property
    def layers(self) -> list[nn.Module]:
        """The dense layers in order."""
        return list(self.children())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.children():
            x = torch.cat([x, layer(x)], 1)
        return x


def kept_channels(channels: int, compression: float) -> int:
    """floor(channels × compression), with the compression read as the decimal it was written
    as: 100 × 0.58 keeps 58 channels, where floating point would give int(57.99…) = 57."""
    return int(Fraction(repr(compression)) * channels)


def build_densenet(spec: DenseNetSpec) -> nn.Module:
    """stem, denseblock1, transition1, ..., denseblockN, head (BN ReLU GAP flatten linear)."""
    t = ShapeTracker(spec.input_shape)
    stem = seq(("conv", t.conv("the stem conv", spec.num_init_features, 7, 2, 3,
                               bias=spec.conv_bias)),
               ("norm", t.bn2d()), ("relu", nn.ReLU()),
               ("pool", t.pool("the stem's max pool", "max", 3, 2, 1)))
    items: list[tuple[str, nn.Module | None]] = [("stem", stem)]
    for i, n in enumerate(spec.block_config, 1):
        items.append((f"denseblock{i}", DenseBlock(t, f"dense block {i}", n, spec)))
        if i < len(spec.block_config):
            out = kept_channels(t.c, spec.compression)
            if out < 1:
                raise ConfigError(f"transition {i} would keep {out} of {t.c} channels; raise "
                                  f"compression.")
            items.append((f"transition{i}", seq(
                ("norm", t.bn2d()), ("relu", nn.ReLU()),
                ("conv", t.conv(f"transition {i}", out, 1, bias=spec.conv_bias)),
                ("pool", t.pool(f"transition {i}'s average pool", "avg", 2, 2)))))
    head = gap_head(t, spec.num_classes, prefix=(("norm", t.bn2d()), ("relu", nn.ReLU())))
    items.append(("head", head))
    return seq(*items)


NOTES = (
    "**DenseNet** concatenates instead of adding: every layer in a dense block receives "
    "all earlier feature maps and adds growth-rate new channels. Transition layers (1×1 "
    "conv and 2×2 average pool) cut the channels and the size between blocks.")


def _tv_densenet(growth: int, blocks: tuple[int, ...], init: int) -> DenseNetSpec:
    return DenseNetSpec(growth_rate=growth, block_config=blocks, num_init_features=init,
                        bn_size=4, conv_bias=False, input_shape=(3, 224, 224), num_classes=1000)


PRESETS = (
    Preset("course_densenet", DenseNetSpec(),
           "DenseNet, course version: 4 dense blocks of 4 convs, growth 32, on 1×96×96", "course",
           "Each conv adds 32 channels (64 → 192 in the first block); transitions halve "
           "channels and size. Concatenation keeps every earlier feature map."),
    Preset("densenet121", _tv_densenet(32, (6, 12, 24, 16), 64), "torchvision densenet121",
           "torchvision", reference="densenet121"),
    Preset("densenet161", _tv_densenet(48, (6, 12, 36, 24), 96), "torchvision densenet161",
           "torchvision", reference="densenet161"),
    Preset("densenet169", _tv_densenet(32, (6, 12, 32, 32), 64), "torchvision densenet169",
           "torchvision", reference="densenet169"),
    Preset("densenet201", _tv_densenet(32, (6, 12, 48, 32), 64), "torchvision densenet201",
           "torchvision", reference="densenet201"),
)


def diagram(name: str, m: nn.Module) -> DiagramNode | None:
    """A dense block: one box; each layer's output is concatenated onto its input."""
    if not isinstance(m, DenseBlock):
        return None
    n = len(m.layers)
    convs = [x for x in m.layers[0] if isinstance(x, nn.Conv2d)]
    cin, growth = convs[0].in_channels, convs[-1].out_channels
    # The width grows by n × growth.
    return DiagramNode(name, "dense", f"dense +{growth}<br>{cin} → {cin + n * growth}", concat=n)


FAMILY = register(Family(
    "densenet", DenseNetSpec, build_densenet, NOTES, PRESETS,
    labels={"block_config": "Dense blocks", "growth_rate": "Growth rate",
            "num_init_features": "Stem channels", "bn_size": "Bottleneck size (bn_size)",
            "compression": "Compression", "conv_bias": "Conv biases",
            "drop_rate": "Dropout rate"},
    list_labels={"block_config": "convs"},
    diagram=diagram, blocks=(DenseBlock,), concat={"DenseBlock": "layers"},
    course_pairs={"course_densenet": "densenet121"},
))
