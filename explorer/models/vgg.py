"""VGG (Simonyan & Zisserman 2014): the book's arch tuple of (num_convs, out_channels) blocks."""

from __future__ import annotations

from torch import nn

from explorer.models.common import ShapeTracker, mlp_head, seq
from explorer.specs import VGGSpec


def vgg_block(t: ShapeTracker, index: int, num_convs: int, out_channels: int, batch_norm: bool,
              bias: bool) -> nn.Sequential:
    """``num_convs`` × [conv(out_channels, 3, p1) [BN] ReLU], then maxpool(2, 2) (d2l 8.2)."""
    items: list[tuple[str, nn.Module | None]] = []
    for j in range(1, num_convs + 1):
        items += [(f"conv{j}", t.conv(f"block {index}, conv {j}", out_channels, 3, 1, 1,
                                      bias=bias)),
                  (f"bn{j}", t.bn2d() if batch_norm else None),
                  (f"relu{j}", nn.ReLU())]
    items.append(("pool", t.pool(f"the max pool of block {index}", "max", 2, 2)))
    return seq(*items)


def build_vgg(spec: VGGSpec) -> nn.Module:
    """block1..blockN, optional adaptive average pool (torchvision: 7×7), then the FC head."""
    t = ShapeTracker(spec.input_shape)
    blocks = [(f"block{i}", vgg_block(t, i, b.num_convs, b.out_channels, spec.batch_norm,
                                      spec.bias))
              for i, b in enumerate(spec.arch, 1)]
    avgpool = t.adaptive_avg(spec.avgpool_size) if spec.avgpool_size else None
    head = mlp_head(t, spec.hidden, spec.num_classes, "relu", spec.dropout, bias=spec.bias)
    return seq(*blocks, ("avgpool", avgpool), ("head", head))
