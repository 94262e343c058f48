"""GoogLeNet (Szegedy et al. 2014; d2l 8.4): stages of four-branch Inception blocks.

The whole family in one module: spec, blocks, builder, form labels, notes, presets and
diagram, registered in its last line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from explorer.errors import ConfigError
from explorer.families.base import DiagramNode, Family, Preset, register
from explorer.models.common import ShapeTracker, gap_head, seq
from explorer.specs import CLASSES_HELP as _CLASSES_HELP
from explorer.specs import INPUT_HELP as _INPUT_HELP
from explorer.specs import Inception, Shape, SpecBase
from explorer.specs import spec_field as _f

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


NOTES = (
    "**GoogLeNet** runs four branches side by side in each Inception block (1×1, 3×3, 5×5 "
    "convolutions and a pooled path) and concatenates their outputs on channels. 1×1 "
    "convolutions first reduce the channels, which keeps the 3×3 and 5×5 paths cheap.")

PRESETS = (
    Preset("course_googlenet", GoogLeNetSpec(), "GoogLeNet, course version on 1×96×96",
           "course",
           "Nine Inception blocks whose four branches are concatenated on channels. The "
           "receptive field grows through the widest branch (the 5×5)."),
    Preset("googlenet",
           GoogLeNetSpec(branch3_kernel=3, batch_norm=True, pool_style="torchvision",
                         dropout=0.2, input_shape=(3, 224, 224), num_classes=1000),
           "torchvision googlenet without aux heads (BN, 3×3 in branch 3, ceil-mode pools)",
           "torchvision", reference="googlenet"),
)


def diagram(name: str, m: nn.Module) -> DiagramNode | None:
    """An Inception block: one box, its four branches concatenated."""
    if not isinstance(m, InceptionBlock):
        return None
    out = sum(b[-1].out_channels if isinstance(b[-1], nn.Conv2d) else
              [x for x in b if isinstance(x, nn.Conv2d)][-1].out_channels
              for b in (m.branch1, m.branch2, m.branch3, m.branch4))
    return DiagramNode(name, "inception", f"Inception<br>{out}", concat=4)


FAMILY = register(Family(
    "googlenet", GoogLeNetSpec, build_googlenet, NOTES, PRESETS,
    labels={"stem_channels": "Stem channels", "stages": "Stages",
            "branch3_kernel": "Branch 3 kernel", "batch_norm": "Batch norm",
            "pool_style": "Pool style", "dropout": "Dropout"},
    columns={"c1": "1×1", "c2a": "3×3 reduce", "c2b": "3×3", "c3a": "5×5 reduce", "c3b": "5×5",
             "c4": "pool proj"},
    book_order={Inception: "(c1, c2a, c2b, c3a, c3b, c4): 1×1, 3×3 reduce, 3×3, 5×5 reduce, "
                           "5×5, pool proj"},
    diagram=diagram, blocks=(InceptionBlock,), concat={"InceptionBlock": "block"},
    course_pairs={"course_googlenet": "googlenet"},
))
