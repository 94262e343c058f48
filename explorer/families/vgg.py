"""VGG (Simonyan & Zisserman 2014): the book's arch tuple of (num_convs, out_channels) blocks.

The whole family in one module: spec, blocks, builder, form labels, notes, presets and
diagram, registered in its last line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from explorer.families.base import Family, Preset, register
from explorer.models.common import ShapeTracker, mlp_head, seq
from explorer.specs import CLASSES_HELP as _CLASSES_HELP
from explorer.specs import INPUT_HELP as _INPUT_HELP
from explorer.specs import Shape, SpecBase, VGGBlock
from explorer.specs import spec_field as _f


@dataclass(frozen=True)
class VGGSpec(SpecBase):
    """VGG (Simonyan & Zisserman 2014): blocks of 3×3 convs each ending in a 2×2 max pool."""

    family: ClassVar[str] = "vgg"
    title: ClassVar[str] = "VGG"
    input_shape: Shape = _f((1, 224, 224), _INPUT_HELP)
    num_classes: int = _f(10, _CLASSES_HELP, 1, 100_000)
    arch: tuple[VGGBlock, ...] = _f(
        (VGGBlock(1, 64), VGGBlock(1, 128), VGGBlock(2, 256), VGGBlock(2, 512), VGGBlock(2, 512)),
        "blocks as (num_convs, out_channels), the book's order", 1)
    batch_norm: bool = _f(False, "batch norm after every conv (torchvision's vgg*_bn)")
    avgpool_size: int = _f(0, "adaptive average pool to this size before the classifier "
                              "(torchvision: 7; 0 = none)", 0, 64)
    hidden: tuple[int, ...] = _f((4096, 4096), "widths of the hidden fully connected layers", 0,
                                 items=(1, 65536), max_len=8)
    dropout: float = _f(0.5, "dropout probability after each hidden linear layer", 0.0, 0.99)
    bias: bool = _f(True, "bias on conv and linear layers")


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


IMAGENET = {"input_shape": (3, 224, 224), "num_classes": 1000}

NOTES = (
    "**VGG** repeats one block: a few 3×3 convolutions with padding 1 (size kept), then a "
    "2×2 max pool (size halved). Two stacked 3×3 convolutions see 5×5 pixels with fewer "
    "weights than one 5×5 convolution. The arch tuple lists the blocks as "
    "(num_convs, out_channels).")


def _vgg(blocks: tuple[tuple[int, int], ...], bn: bool = False) -> VGGSpec:
    return VGGSpec(arch=tuple(VGGBlock(*b) for b in blocks), batch_norm=bn, avgpool_size=7,
                   **IMAGENET)


VGG11 = ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))

PRESETS = (
    Preset("course_vgg11", VGGSpec(), "VGG-11: arch ((1,64),(1,128),(2,256),(2,512),(2,512))",
           "course",
           "Five VGG blocks of 3×3 convs, each halving the map: 224 → 7. Two 3×3 convs see "
           "5×5 with 72% of the weights of one 5×5 conv."),
    Preset("course_vgg11_small",
           VGGSpec(arch=tuple(VGGBlock(n, c) for n, c in
                              ((1, 16), (1, 32), (2, 64), (2, 128), (2, 128)))),
           "The notebook's reduced VGG-11: channels divided by 4 (flatten 128×7×7 = 6272)",
           "course",
           "The notebook writes the blocks as (out_channels, num_convs); here they are "
           "(num_convs, out_channels). Dividing channels by 4 divides conv weights by 16."),
    Preset("vgg11", _vgg(VGG11), "torchvision vgg11 (configuration A)", "torchvision",
           reference="vgg11"),
    Preset("vgg11_bn", _vgg(VGG11, bn=True), "torchvision vgg11_bn (A with batch norm)",
           "torchvision", reference="vgg11_bn"),
    Preset("vgg13", _vgg(((2, 64), (2, 128), (2, 256), (2, 512), (2, 512))),
           "torchvision vgg13 (configuration B)", "torchvision", reference="vgg13"),
    Preset("vgg16", _vgg(((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))),
           "torchvision vgg16 (configuration D)", "torchvision", reference="vgg16"),
    Preset("vgg19", _vgg(((2, 64), (2, 128), (4, 256), (4, 512), (4, 512))),
           "torchvision vgg19 (configuration E)", "torchvision", reference="vgg19"),
)

FAMILY = register(Family(
    "vgg", VGGSpec, build_vgg, NOTES, PRESETS,
    labels={"arch": "Arch tuple", "batch_norm": "Batch norm",
            "avgpool_size": "Adaptive pool size", "hidden": "Hidden FC layers",
            "dropout": "Dropout", "bias": "Biases"},
    columns={"num_convs": "convs", "out_channels": "out channels"},
    list_labels={"hidden": "width"},
    book_order={VGGBlock: "(num_convs, out_channels), the book's order; the notebook writes "
                          "(out_channels, num_convs)"},
    course_pairs={"course_vgg11": "vgg11"},
))
