"""Network in Network (Lin et al. 2013): the family's record; spec in explorer.specs."""

from __future__ import annotations

from explorer.families.alexnet import CONV_COLUMNS
from explorer.families.base import Family, Preset, register
from explorer.models.nin import build_nin
from explorer.specs import ConvLayer, NiNSpec

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
