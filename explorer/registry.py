"""Presets by name: the single list that the UI, the CLI and the tests iterate over.

Course presets are the networks of the d2l.ai lectures at their lecture input shapes; presets
named after torchvision's builders reproduce those models exactly (same parameter count and
per-layer output shapes at 3×224×224 with 1000 classes), so the differences are visible.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Literal

from explorer.errors import ConfigError
from explorer.specs import (
    AlexNetSpec,
    ConvLayer,
    DenseNetSpec,
    GoogLeNetSpec,
    LeNetSpec,
    NiNSpec,
    ResNetSpec,
    ResNeXtSpec,
    SpecBase,
    Stage,
    VGGBlock,
    VGGSpec,
)

Group = Literal["course", "torchvision"]
IMAGENET = {"input_shape": (3, 224, 224), "num_classes": 1000}


@dataclass(frozen=True)
class Preset:
    """A named spec with a one-line description and, for torchvision names, its reference."""

    name: str
    spec: SpecBase
    description: str
    group: Group
    note: str = ""  # a paragraph for the lecture gallery: what to look at
    reference: str | None = None  # torchvision.models builder with the same architecture

    @property
    def family(self) -> str:
        return self.spec.family


def _vgg(blocks: tuple[tuple[int, int], ...], bn: bool = False) -> VGGSpec:
    return VGGSpec(arch=tuple(VGGBlock(*b) for b in blocks), batch_norm=bn, avgpool_size=7,
                   **IMAGENET)


def _tv_resnet(block: str, blocks: tuple[int, ...], cls: type[ResNetSpec] = ResNetSpec,
               **kw: object) -> ResNetSpec:
    stages = tuple(Stage(n, c) for n, c in zip(blocks, (64, 128, 256, 512), strict=True))
    return cls(block=block, stages=stages, expansion=4, conv_bias=False, shortcut_bn=True,
               **IMAGENET, **kw)  # type: ignore[arg-type]


def _tv_densenet(growth: int, blocks: tuple[int, ...], init: int) -> DenseNetSpec:
    return DenseNetSpec(growth_rate=growth, block_config=blocks, num_init_features=init,
                        bn_size=4, conv_bias=False, **IMAGENET)


VGG11 = ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))

_PRESETS: tuple[Preset, ...] = (
    # ---- the course (d2l.ai, "Modern convolutional neural networks") -------------------------
    Preset("course_lenet5", LeNetSpec(conv_channels=(20, 50), padding=(2,), activation="relu",
                                      hidden=(500,)),
           "LeNet-5, the lecture's table version: 20 and 50 channels, ReLU, one 500-wide layer",
           "course",
           "The lecture's table of LeNet-5. Padding 2 keeps 28×28 after the first conv; each "
           "2×2 pool halves the map. Look at where the parameters live: the 2450→500 linear "
           "layer holds almost all of them."),
    Preset("course_lenet", LeNetSpec(pool="avg"),
           "Classic LeNet: conv(6,5) and conv(16,5) with sigmoid and average pooling",
           "course",
           "LeNet as published, with sigmoid activations. The maps shrink 28→24→12→8→4 without "
           "padding; 16×4×4 = 256 features reach the 120-wide layer."),
    Preset("course_bn_lenet", LeNetSpec(batch_norm=True),
           "BN-LeNet: classic LeNet with batch norm before every sigmoid (max pooling)",
           "course",
           "The batch-norm lecture's network: BN after every conv and hidden linear layer, "
           "before the sigmoid. BN adds only 2 parameters per channel (γ, β) but lets SGD with "
           "learning rate 1.0 train it."),
    Preset("course_lenet_d2l", LeNetSpec(padding=(2, 0), pool="avg"),
           "d2l's LeNet chapter: only the first conv padded (6×28×28), sigmoid, average pooling",
           "course",
           "The network of d2l's LeNet chapter. Padding 2 on the first 5×5 conv keeps 28×28; "
           "the second conv is unpadded (14 → 10), so 16×5×5 = 400 features reach the 120-wide "
           "layer, and the network has 61,706 parameters. The batch-norm lecture's LeNet pads "
           "neither conv (256 features)."),
    Preset("course_alexnet", AlexNetSpec(),
           "AlexNet, course version on 1×224×224 (Fashion-MNIST resized)", "course",
           "Five convs and two 4096-wide layers. The first conv is 11×11 with stride 4: "
           "224 → 54. Compare the first linear layer (6400 → 4096) with everything else."),
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
    Preset("course_nin", NiNSpec(), "NiN: three NiN blocks and a 10-channel NiN head, no FC",
           "course",
           "1×1 convs act as a small MLP at every pixel. The last block has one channel per "
           "class and global average pooling replaces the fully connected layers."),
    Preset("course_googlenet", GoogLeNetSpec(), "GoogLeNet, course version on 1×96×96",
           "course",
           "Nine Inception blocks whose four branches are concatenated on channels. The "
           "receptive field grows through the widest branch (the 5×5)."),
    Preset("course_resnet18", ResNetSpec(), "ResNet-18, course version on 1×96×96", "course",
           "Stages ((2,64),(2,128),(2,256),(2,512)). The first block of stages 2-4 halves the "
           "map and uses a 1×1 conv shortcut; the others add the identity."),
    Preset("course_resnet_3x4_28",
           ResNetSpec(input_shape=(1, 28, 28),
                      stages=tuple(Stage(3, c) for c in (64, 128, 256, 512))),
           "The older notebook's ResNet: 3 residual blocks per stage on 1×28×28", "course",
           "Three blocks per stage on Fashion-MNIST's own 28×28: the map is 1×1 by stage 4, "
           "so the last stages see the whole image."),
    Preset("course_resnext", ResNeXtSpec(),
           "ResNeXt, course blocks: 16 groups, bot_mul 1, BN on the shortcut, 1×96×96", "course",
           "Grouped 3×3 convs: 16 groups cost 1/16 of a full conv. The book's ResNeXtBlock "
           "passes groups=b//groups, so its argument is channels per group; the group table "
           "shows both readings."),
    Preset("course_densenet", DenseNetSpec(),
           "DenseNet, course version: 4 dense blocks of 4 convs, growth 32, on 1×96×96", "course",
           "Each conv adds 32 channels (64 → 192 in the first block); transitions halve "
           "channels and size. Concatenation keeps every earlier feature map."),
    # ---- torchvision's published networks (3×224×224, 1000 classes) --------------------------
    Preset("alexnet",
           AlexNetSpec(convs=(ConvLayer(64, 11, 4, 2, True), ConvLayer(192, 5, 1, 2, True),
                              ConvLayer(384, 3, 1, 1), ConvLayer(256, 3, 1, 1),
                              ConvLayer(256, 3, 1, 1, True)),
                       avgpool_size=6, dropout_first=True, **IMAGENET),
           "torchvision alexnet (the one-GPU variant: 64-192-384-256-256)", "torchvision",
           reference="alexnet"),
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
    Preset("densenet121", _tv_densenet(32, (6, 12, 24, 16), 64), "torchvision densenet121",
           "torchvision", reference="densenet121"),
    Preset("densenet161", _tv_densenet(48, (6, 12, 36, 24), 96), "torchvision densenet161",
           "torchvision", reference="densenet161"),
    Preset("densenet169", _tv_densenet(32, (6, 12, 32, 32), 64), "torchvision densenet169",
           "torchvision", reference="densenet169"),
    Preset("densenet201", _tv_densenet(32, (6, 12, 48, 32), 64), "torchvision densenet201",
           "torchvision", reference="densenet201"),
    Preset("googlenet",
           GoogLeNetSpec(branch3_kernel=3, batch_norm=True, pool_style="torchvision",
                         dropout=0.2, **IMAGENET),
           "torchvision googlenet without aux heads (BN, 3×3 in branch 3, ceil-mode pools)",
           "torchvision", reference="googlenet"),
)

PRESETS: dict[str, Preset] = {p.name: p for p in _PRESETS}
assert len(PRESETS) == len(_PRESETS), "duplicate preset name"

# The course-vs-torchvision pairs the Compare page lines up layer by layer.
COURSE_PAIRS: dict[str, str] = {
    "course_resnet18": "resnet18", "course_alexnet": "alexnet", "course_vgg11": "vgg11",
    "course_densenet": "densenet121", "course_googlenet": "googlenet",
}

DEFAULT_PRESET = "course_resnet18"


def preset_names(group: Group | None = None, family: str | None = None) -> list[str]:
    """Preset names in registry order, optionally of one group or family."""
    return [p.name for p in _PRESETS
            if (group is None or p.group == group) and (family is None or p.family == family)]


def get_preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name lists the known ones."""
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), PRESETS, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown preset {name!r}.{hint} Known presets: "
                          f"{', '.join(PRESETS)}.") from None
