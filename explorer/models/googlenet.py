"""GoogLeNet (Szegedy et al. 2014; d2l 8.4): stages of four-branch Inception blocks."""

from __future__ import annotations

import torch
from torch import nn

from explorer.errors import ConfigError
from explorer.models.common import ShapeTracker, gap_head, seq
from explorer.specs import GoogLeNetSpec, Inception


def conv_unit(t: ShapeTracker, where: str, index: int, out_channels: int, kernel: int,
              stride: int = 1, padding: int = 0, batch_norm: bool = False
              ) -> list[tuple[str, nn.Module | None]]:
    """conv [BN] ReLU; with BN the conv has no bias (torchvision's BasicConv2d)."""
    return [(f"conv{index}", t.conv(where, out_channels, kernel, stride, padding,
                                    bias=not batch_norm)),
            (f"bn{index}", t.bn2d() if batch_norm else None),
            (f"relu{index}", nn.ReLU())]


class InceptionBlock(nn.Module):
    """Four branches on the same input, concatenated on channels.

    (1) conv 1×1; (2) conv 1×1, conv 3×3; (3) conv 1×1, conv k×k (k = 5 in the paper);
    (4) maxpool 3×3/1, conv 1×1. Every conv is followed by ReLU.
    """

    def __init__(self, t: ShapeTracker, label: str, cfg: Inception, branch3_kernel: int,
                 batch_norm: bool, ceil_mode: bool):
        super().__init__()
        bn = batch_norm
        t1, t2, t3, t4 = (t.copy() for _ in range(4))
        self.branch1 = seq(*conv_unit(t1, f"{label}, branch 1", 1, cfg.c1, 1, batch_norm=bn))
        self.branch2 = seq(*conv_unit(t2, f"{label}, branch 2", 1, cfg.c2a, 1, batch_norm=bn),
                           *conv_unit(t2, f"{label}, branch 2", 2, cfg.c2b, 3, 1, 1, bn))
        k = branch3_kernel
        self.branch3 = seq(*conv_unit(t3, f"{label}, branch 3", 1, cfg.c3a, 1, batch_norm=bn),
                           *conv_unit(t3, f"{label}, branch 3", 2, cfg.c3b, k, 1, k // 2, bn))
        self.branch4 = seq(("pool", t4.pool(f"{label}, branch 4", "max", 3, 1, 1, ceil_mode)),
                           *conv_unit(t4, f"{label}, branch 4", 1, cfg.c4, 1, batch_norm=bn))
        sizes = {(b.h, b.w) for b in (t1, t2, t3, t4)}
        if len(sizes) > 1:
            raise ConfigError(f"{label}: the branches give different sizes {sorted(sizes)} and "
                              f"cannot be concatenated; use an odd branch3_kernel.")
        t.c, t.h, t.w = cfg.c1 + cfg.c2b + cfg.c3b + cfg.c4, t1.h, t1.w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


def build_googlenet(spec: GoogLeNetSpec) -> nn.Module:
    """stem, then stage3, pool3, stage4, pool4, stage5 (the paper's numbering), then the head."""
    t = ShapeTracker(spec.input_shape)
    bn = spec.batch_norm
    tv = spec.pool_style == "torchvision"

    def pool(where: str, kernel: int = 3) -> nn.Module:
        if tv:
            return t.pool(where, "max", kernel, 2, 0, ceil_mode=True)
        return t.pool(where, "max", 3, 2, 1)

    c1, c2, c3 = spec.stem_channels
    stem = seq(*conv_unit(t, "the stem's 7×7 conv", 1, c1, 7, 2, 3, bn),
               ("pool1", pool("the stem's first max pool")),
               *conv_unit(t, "the stem's 1×1 conv", 2, c2, 1, batch_norm=bn),
               *conv_unit(t, "the stem's 3×3 conv", 3, c3, 3, 1, 1, bn),
               ("pool2", pool("the stem's second max pool")))
    items: list[tuple[str, nn.Module | None]] = [("stem", stem)]
    last = len(spec.stages)
    for i, stage in enumerate(spec.stages, 1):
        n = i + 2  # the paper numbers the Inception stages 3, 4, 5
        blocks = [(f"inception{n}{chr(96 + j)}",
                   InceptionBlock(t, f"Inception block {n}{chr(96 + j)}", cfg,
                                  spec.branch3_kernel, bn, tv))
                  for j, cfg in enumerate(stage, 1)]
        items.append((f"stage{n}", seq(*blocks)))
        if i < last:
            # torchvision's last between-stage pool is 2×2 (maxpool4).
            items.append((f"pool{n}", pool(f"the max pool after stage {n}",
                                           2 if tv and i == last - 1 else 3)))
    items.append(("head", gap_head(t, spec.num_classes, spec.dropout)))
    return seq(*items)
