"""ResNet (He et al. 2015; d2l 8.6) and ResNeXt (Xie et al. 2016): one builder, two block kinds.

Like torchvision, ResNeXt is ResNet with ``cardinality`` groups in the bottleneck's 3×3 conv; the
course version differs by conv biases, no BN on the shortcut (ResNet) and ``bot_mul`` widths.
"""

from __future__ import annotations

import torch
from torch import nn

from explorer.models.common import ShapeTracker, gap_head, seq
from explorer.specs import ResNetSpec


class ResidualBlock(nn.Module):
    """A basic (3×3, 3×3) or bottleneck (1×1, 3×3 grouped, 1×1) block plus its shortcut.

    The shortcut is the identity, or a 1×1 conv (and BN when ``shortcut_bn``) when the stride or
    the number of channels changes. Output: ReLU(main(x) + shortcut(x)).
    """

    def __init__(self, t: ShapeTracker, label: str, channels: int, stride: int,
                 spec: ResNetSpec):
        super().__init__()
        bias = spec.conv_bias
        t_in = t.copy()
        out_c = spec.out_channels(channels)
        if spec.block == "basic":
            self.conv1 = t.conv(f"{label}, conv1", channels, 3, stride, 1, bias=bias)
            self.bn1 = t.bn2d()
            self.relu1 = nn.ReLU()
            self.conv2 = t.conv(f"{label}, conv2", channels, 3, 1, 1, bias=bias)
            self.bn2 = t.bn2d()
            self.relu2 = self.conv3 = self.bn3 = None
        else:
            width = spec.bottleneck_width(channels)
            s1, s3 = (1, stride) if spec.stride_on == "3x3" else (stride, 1)
            self.conv1 = t.conv(f"{label}, conv1", width, 1, s1, 0, bias=bias)
            self.bn1 = t.bn2d()
            self.relu1 = nn.ReLU()
            self.conv2 = t.conv(f"{label}, conv2", width, 3, s3, 1, groups=spec.cardinality,
                                bias=bias)
            self.bn2 = t.bn2d()
            self.relu2 = nn.ReLU()
            self.conv3 = t.conv(f"{label}, conv3", out_c, 1, 1, 0, bias=bias)
            self.bn3 = t.bn2d()
        self.shortcut: nn.Module | None = None
        if stride != 1 or t_in.c != out_c:
            self.shortcut = seq(
                ("conv", t_in.conv(f"{label}, shortcut", out_c, 1, stride, 0, bias=bias)),
                ("bn", t_in.bn2d() if spec.shortcut_bn else None))
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        if self.conv3 is not None:
            y = self.bn3(self.conv3(self.relu2(y)))
        return self.relu(y + (x if self.shortcut is None else self.shortcut(x)))


def build_resnet(spec: ResNetSpec) -> nn.Module:
    """stem, stage1..stageN (the first block of every stage but the first has stride 2), head."""
    t = ShapeTracker(spec.input_shape)
    bias = spec.conv_bias
    if spec.stem == "imagenet":
        stem = seq(("conv", t.conv("the stem conv", spec.stem_channels, 7, 2, 3, bias=bias)),
                   ("bn", t.bn2d()), ("relu", nn.ReLU()),
                   ("pool", t.pool("the stem's max pool", "max", 3, 2, 1)))
    else:
        stem = seq(("conv", t.conv("the stem conv", spec.stem_channels, 3, 1, 1, bias=bias)),
                   ("bn", t.bn2d()), ("relu", nn.ReLU()))
    items: list[tuple[str, nn.Module | None]] = [("stem", stem)]
    for i, st in enumerate(spec.stages, 1):
        blocks = [(f"block{j}", ResidualBlock(t, f"stage {i}, block {j}", st.channels,
                                              2 if (j == 1 and i > 1) else 1, spec))
                  for j in range(1, st.num_blocks + 1)]
        items.append((f"stage{i}", seq(*blocks)))
    items.append(("head", gap_head(t, spec.num_classes)))
    return seq(*items)
