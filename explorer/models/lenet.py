"""LeNet (LeCun et al. 1998): d2l's chapter version, the lectures' LeNet-5 table version and
BN-LeNet (d2l 7.6, 8.5); each conv layer has its own padding."""

from __future__ import annotations

from torch import nn

from explorer.models.common import ACTIVATIONS, ShapeTracker, mlp_head, seq
from explorer.specs import LeNetSpec


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
