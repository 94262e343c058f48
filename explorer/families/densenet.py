"""DenseNet (Huang et al. 2016): the family's record; spec in explorer.specs."""

from __future__ import annotations

from torch import nn

from explorer.families.base import DiagramNode, Family, Preset, register
from explorer.models.densenet import DenseBlock, build_densenet
from explorer.specs import DenseNetSpec

NOTES = (
    "**DenseNet** concatenates instead of adding: every layer in a dense block receives "
    "all earlier feature maps and adds growth-rate new channels. Transition layers (1×1 "
    "conv and 2×2 average pool) cut the channels and the size between blocks.")


def _tv_densenet(growth: int, blocks: tuple[int, ...], init: int) -> DenseNetSpec:
    return DenseNetSpec(growth_rate=growth, block_config=blocks, num_init_features=init,
                        bn_size=4, conv_bias=False, input_shape=(3, 224, 224), num_classes=1000)


PRESETS = (
    Preset("course_densenet", DenseNetSpec(),
           "DenseNet, course version: 4 dense blocks of 4 convs, growth 32, on 1×96×96", "course",
           "Each conv adds 32 channels (64 → 192 in the first block); transitions halve "
           "channels and size. Concatenation keeps every earlier feature map."),
    Preset("densenet121", _tv_densenet(32, (6, 12, 24, 16), 64), "torchvision densenet121",
           "torchvision", reference="densenet121"),
    Preset("densenet161", _tv_densenet(48, (6, 12, 36, 24), 96), "torchvision densenet161",
           "torchvision", reference="densenet161"),
    Preset("densenet169", _tv_densenet(32, (6, 12, 32, 32), 64), "torchvision densenet169",
           "torchvision", reference="densenet169"),
    Preset("densenet201", _tv_densenet(32, (6, 12, 48, 32), 64), "torchvision densenet201",
           "torchvision", reference="densenet201"),
)


def diagram(name: str, m: nn.Module) -> DiagramNode | None:
    """A dense block: one box; each layer's output is concatenated onto its input."""
    if not isinstance(m, DenseBlock):
        return None
    n = len(m.layers)
    convs = [x for x in m.layers[0] if isinstance(x, nn.Conv2d)]
    cin, growth = convs[0].in_channels, convs[-1].out_channels
    # The width grows by n × growth.
    return DiagramNode(name, "dense", f"dense +{growth}<br>{cin} → {cin + n * growth}", concat=n)


FAMILY = register(Family(
    "densenet", DenseNetSpec, build_densenet, NOTES, PRESETS,
    labels={"block_config": "Dense blocks", "growth_rate": "Growth rate",
            "num_init_features": "Stem channels", "bn_size": "Bottleneck size (bn_size)",
            "compression": "Compression", "conv_bias": "Conv biases",
            "drop_rate": "Dropout rate"},
    list_labels={"block_config": "convs"},
    diagram=diagram, blocks=(DenseBlock,), concat={"DenseBlock": "layers"},
    course_pairs={"course_densenet": "densenet121"},
))
