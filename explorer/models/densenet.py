"""DenseNet (Huang et al. 2016; d2l 8.7): dense blocks that concatenate, and transitions."""

from __future__ import annotations

from fractions import Fraction

import torch
from torch import nn

from explorer.errors import ConfigError
from explorer.models.common import ShapeTracker, gap_head, seq
from explorer.specs import DenseNetSpec


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
