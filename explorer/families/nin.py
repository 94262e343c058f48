"""Network in Network (Lin et al. 2013; d2l 8.3): 1×1 convs as per-pixel MLPs, no FC layer.

The whole family in one module: spec, blocks, builder, form labels, notes, presets and
diagram, registered in its last line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from explorer.families.alexnet import CONV_COLUMNS
from explorer.families.base import Family, Preset, register
from explorer.models.common import ShapeTracker, seq
from explorer.specs import CLASSES_HELP as _CLASSES_HELP
from explorer.specs import INPUT_HELP as _INPUT_HELP
from explorer.specs import ConvLayer, Shape, SpecBase
from explorer.specs import spec_field as _f


@dataclass(frozen=True)
class NiNSpec(SpecBase):
    """Network in Network (Lin et al. 2013): conv + two 1×1 convs per block, no FC layer."""

    family: ClassVar[str] = "nin"
    title: ClassVar[str] = "NiN"
    input_shape: Shape = _f((1, 224, 224), _INPUT_HELP)
    num_classes: int = _f(10, _CLASSES_HELP, 1, 100_000)
    blocks: tuple[ConvLayer, ...] = _f(
        (ConvLayer(96, 11, 4, 0), ConvLayer(256, 5, 1, 2), ConvLayer(384, 3, 1, 1)),
        "NiN blocks (out channels, kernel, stride, padding), each followed by maxpool(3,2)", 1)
    head_kernel: int = _f(3, "kernel of the last NiN block, whose channels are the classes; "
                             "it pads by kernel // 2, so an odd kernel keeps the size and an even "
                             "one grows it by 1 (4 turns 7×7 into 8×8)", 1, 15)
    dropout: float = _f(0.5, "dropout before the last NiN block", 0.0, 0.99)
    batch_norm: bool = _f(False, "batch norm after every conv (not in the lecture)")


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


NOTES = (
    "**Network in Network** follows each spatial convolution with two 1×1 convolutions, a "
    "small fully connected network applied at every pixel. The last block outputs one "
    "channel per class and global average pooling turns each channel into a score, so "
    "there is no large fully connected layer.")

PRESETS = (
    Preset("course_nin", NiNSpec(), "NiN: three NiN blocks and a 10-channel NiN head, no FC",
           "course",
           "1×1 convs act as a small MLP at every pixel. The last block has one channel per "
           "class and global average pooling replaces the fully connected layers."),
)

FAMILY = register(Family(
    "nin", NiNSpec, build_nin, NOTES, PRESETS,
    labels={"blocks": "NiN blocks", "head_kernel": "Head kernel", "dropout": "Dropout",
            "batch_norm": "Batch norm"},
    columns=CONV_COLUMNS,
    book_order={ConvLayer: "(out_channels, kernel, stride, padding, max pool after)"},
))
