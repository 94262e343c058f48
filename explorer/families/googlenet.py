"""GoogLeNet (Szegedy et al. 2014): the family's record; spec in explorer.specs."""

from __future__ import annotations

from torch import nn

from explorer.families.base import DiagramNode, Family, Preset, register
from explorer.models.googlenet import InceptionBlock, build_googlenet
from explorer.specs import GoogLeNetSpec, Inception

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
