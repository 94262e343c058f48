"""Network in Network (Lin et al. 2013; d2l 8.3): 1×1 convs as per-pixel MLPs, no FC layer."""

from __future__ import annotations

from torch import nn

from explorer.models.common import ShapeTracker, seq
from explorer.specs import NiNSpec


def nin_block(t: ShapeTracker, label: str, out_channels: int, kernel: int, stride: int,
              padding: int, batch_norm: bool) -> nn.Sequential:
    """conv(c, k, s, p) ReLU conv(c, 1) ReLU conv(c, 1) ReLU."""
    items: list[tuple[str, nn.Module | None]] = []
    for j, (k, s, p) in enumerate(((kernel, stride, padding), (1, 1, 0), (1, 1, 0)), 1):
        items += [(f"conv{j}", t.conv(f"{label}, conv {j}", out_channels, k, s, p)),
                  (f"bn{j}", t.bn2d() if batch_norm else None),
                  (f"relu{j}", nn.ReLU())]
    return seq(*items)


def build_nin(spec: NiNSpec) -> nn.Module:
    """nin blocks each followed by maxpool(3, 2); head: dropout, nin(classes), GAP, flatten."""
    t = ShapeTracker(spec.input_shape)
    items: list[tuple[str, nn.Module | None]] = []
    for i, b in enumerate(spec.blocks, 1):
        items.append((f"block{i}", nin_block(t, f"NiN block {i}", b.out_channels, b.kernel,
                                             b.stride, b.padding, spec.batch_norm)))
        items.append((f"pool{i}", t.pool(f"the max pool after NiN block {i}", "max", 3, 2)))
    k = spec.head_kernel
    head = seq(("drop", nn.Dropout(spec.dropout) if spec.dropout > 0 else None),
               ("block", nin_block(t, "the last NiN block", spec.num_classes, k, 1, k // 2,
                                   spec.batch_norm)),
               ("pool", t.adaptive_avg(1)), ("flatten", t.flatten()))
    return seq(*items, ("head", head))
