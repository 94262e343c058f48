"""LeNet (LeCun et al. 1998): the family's record; spec in explorer.specs, builder in models."""

from __future__ import annotations

from explorer.families.base import Family, Preset, register
from explorer.models.lenet import build_lenet
from explorer.specs import LeNetSpec

NOTES = (
    "**LeNet** alternates convolutions, which detect local patterns with shared weights, "
    "and 2×2 pooling, which halves the map. After two such pairs the feature map is "
    "flattened and fully connected layers classify it. Almost all parameters sit in the "
    "first fully connected layer; almost all multiply-adds in the convolutions.")

PRESETS = (
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
)

FAMILY = register(Family(
    "lenet", LeNetSpec, build_lenet, NOTES, PRESETS,
    labels={"conv_channels": "Conv layers", "kernel_size": "Kernel size", "padding": "Padding",
            "pool": "Pooling", "activation": "Activation", "hidden": "Hidden FC layers",
            "batch_norm": "Batch norm", "bias": "Biases"},
    list_labels={"conv_channels": "out channels", "hidden": "width", "padding": "padding"},
))
