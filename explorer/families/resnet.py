"""ResNet (He et al. 2015) and ResNeXt (Xie et al. 2016): two families, one builder."""

from __future__ import annotations

from typing import Any

from torch import nn

from explorer.families.base import DiagramNode, Family, Preset, register
from explorer.models.resnet import ResidualBlock, build_resnet
from explorer.specs import ResNetSpec, ResNeXtSpec, Stage

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
