"""ResNet (He et al. 2015; d2l 8.6) and ResNeXt (Xie et al. 2016): one builder, two block kinds.

Like torchvision, ResNeXt is ResNet with ``cardinality`` groups in the bottleneck's 3×3 conv; the
course version differs by conv biases, no BN on the shortcut (ResNet) and ``bot_mul`` widths.

The whole family in one module: spec, blocks, builder, form labels, notes, presets and
diagram, registered in its last line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from explorer.errors import ConfigError
from explorer.families.base import DiagramNode, Family, Preset, register
from explorer.models.common import ShapeTracker, gap_head, seq
from explorer.specs import CLASSES_HELP as _CLASSES_HELP
from explorer.specs import INPUT_HELP as _INPUT_HELP
from explorer.specs import Shape, SpecBase, Stage
from explorer.specs import spec_field as _f


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


IMAGENET = {"input_shape": (3, 224, 224), "num_classes": 1000}

RESNET_NOTES = (
    "**ResNet** adds a block's input to its output (a skip connection), so each block "
    "learns a residual correction and a block that learns nothing passes the input on "
    "unchanged. When the stride or the channels change, a 1×1 convolution reshapes the "
    "shortcut. Batch norm follows every convolution.")
RESNEXT_NOTES = (
    "**ResNeXt** splits the bottleneck's 3×3 convolution into groups (the cardinality): "
    "each group sees only its own channels, so g groups cost 1/g of a full convolution. "
    "More groups of narrower width often beat a wider network at the same cost.")


def _tv_resnet(block: str, blocks: tuple[int, ...], cls: type[ResNetSpec] = ResNetSpec,
               **kw: object) -> ResNetSpec:
    stages = tuple(Stage(n, c) for n, c in zip(blocks, (64, 128, 256, 512), strict=True))
    return cls(block=block, stages=stages, expansion=4, conv_bias=False, shortcut_bn=True,
               **IMAGENET, **kw)  # type: ignore[arg-type]


RESNET_PRESETS = (
    Preset("course_resnet18", ResNetSpec(), "ResNet-18, course version on 1×96×96", "course",
           "Stages ((2,64),(2,128),(2,256),(2,512)). The first block of stages 2-4 halves the "
           "map and uses a 1×1 conv shortcut; the others add the identity."),
    Preset("course_resnet_3x4_28",
           ResNetSpec(input_shape=(1, 28, 28),
                      stages=tuple(Stage(3, c) for c in (64, 128, 256, 512))),
           "The older notebook's ResNet: 3 residual blocks per stage on 1×28×28", "course",
           "Three blocks per stage on Fashion-MNIST's own 28×28: the map is 1×1 by stage 4, "
           "so the last stages see the whole image."),
    Preset("resnet18", _tv_resnet("basic", (2, 2, 2, 2)), "torchvision resnet18",
           "torchvision", reference="resnet18"),
    Preset("resnet34", _tv_resnet("basic", (3, 4, 6, 3)), "torchvision resnet34",
           "torchvision", reference="resnet34"),
    Preset("resnet50", _tv_resnet("bottleneck", (3, 4, 6, 3)),
           "torchvision resnet50 (bottleneck, stride on the 3×3: v1.5)", "torchvision",
           reference="resnet50"),
    Preset("resnet101", _tv_resnet("bottleneck", (3, 4, 23, 3)), "torchvision resnet101",
           "torchvision", reference="resnet101"),
    Preset("resnet152", _tv_resnet("bottleneck", (3, 8, 36, 3)), "torchvision resnet152",
           "torchvision", reference="resnet152"),
)
RESNEXT_PRESETS = (
    Preset("course_resnext", ResNeXtSpec(),
           "ResNeXt, course blocks: 16 groups, bot_mul 1, BN on the shortcut, 1×96×96", "course",
           "Grouped 3×3 convs: 16 groups cost 1/16 of a full conv. The book's ResNeXtBlock "
           "passes groups=b//groups, so its argument is channels per group; the group table "
           "shows both readings."),
    Preset("resnext50_32x4d",
           _tv_resnet("bottleneck", (3, 4, 6, 3), ResNeXtSpec, cardinality=32, base_width=4,
                      bot_mul=0.0),
           "torchvision resnext50_32x4d: 32 groups of 4 channels (at 64 planes)", "torchvision",
           reference="resnext50_32x4d"),
    Preset("resnext101_32x8d",
           _tv_resnet("bottleneck", (3, 4, 23, 3), ResNeXtSpec, cardinality=32, base_width=8,
                      bot_mul=0.0),
           "torchvision resnext101_32x8d: 32 groups of 8 channels (at 64 planes)",
           "torchvision", reference="resnext101_32x8d"),
)

LABELS = {
    "block": "Block", "stages": "Stages", "stem": "Stem", "stem_channels": "Stem channels",
    "expansion": "Expansion", "cardinality": "Cardinality (groups)",
    "base_width": "Base width (torchvision width_per_group)", "bot_mul": "Bottleneck multiplier",
    "stride_on": "Stride on", "conv_bias": "Conv biases", "shortcut_bn": "BN on shortcut",
}
COLUMNS = {"num_blocks": "blocks", "channels": "channels"}
BOOK_ORDER = {Stage: "(num_blocks, channels)"}

GROUPS_CAPTION = ("**Groups per stage.** The book calls `nn.Conv2d(b, b, 3, groups=b // groups)`, "
                  "so its `groups` argument is really *channels per group*.")
_GROUP_COLUMNS = {
    "bottleneck_width": "bottleneck width b", "groups": "cardinality g",
    "width_per_group": "width per group b/g",
    "book_groups_argument": "book's groups argument that builds g",
    "book_groups_as_cardinality_builds": "groups built if the book is passed g"}


def group_rows(spec: ResNetSpec) -> list[dict[str, Any]] | None:
    """The bottleneck's groups per stage with readable column names; None for basic blocks."""
    if spec.block != "bottleneck":
        return None
    return [{_GROUP_COLUMNS.get(k, k): v for k, v in row.items()} for row in spec.group_table()]


def diagram(name: str, m: nn.Module) -> DiagramNode | None:
    """A residual block: basic or bottleneck, its stride, width and groups; an arc for the skip."""
    if not isinstance(m, ResidualBlock):
        return None
    kind = "bottleneck" if m.conv3 is not None else "basic"
    stride = m.conv1.stride[0] * m.conv2.stride[0]
    out = (m.conv3 or m.conv2).out_channels
    g = f", g{m.conv2.groups}" if m.conv2.groups > 1 else ""
    return DiagramNode(name, "residual", f"{kind}{'/' + str(stride) if stride > 1 else ''}"
                                         f"<br>{out}{g}",
                       skip="identity" if m.shortcut is None else "1×1 conv")


RESNET = register(Family(
    "resnet", ResNetSpec, build_resnet, RESNET_NOTES, RESNET_PRESETS, labels=LABELS,
    columns=COLUMNS, book_order=BOOK_ORDER, diagram=diagram, blocks=(ResidualBlock,),
    course_pairs={"course_resnet18": "resnet18"}, extra_table=group_rows,
    extra_caption=GROUPS_CAPTION))
RESNEXT = register(Family(
    "resnext", ResNeXtSpec, build_resnet, RESNEXT_NOTES, RESNEXT_PRESETS, labels=LABELS,
    columns=COLUMNS, book_order=BOOK_ORDER, diagram=diagram, blocks=(ResidualBlock,),
    open_settings=True, extra_table=group_rows, extra_caption=GROUPS_CAPTION))
