"""VGG (Simonyan & Zisserman 2014): the family's record; spec in explorer.specs."""

from __future__ import annotations

from explorer.families.base import Family, Preset, register
from explorer.models.vgg import build_vgg
from explorer.specs import VGGBlock, VGGSpec

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
