"""AlexNet (Krizhevsky et al. 2012): the family's record; spec in explorer.specs."""

from __future__ import annotations

from explorer.families.base import Family, Preset, register
from explorer.models.alexnet import build_alexnet
from explorer.specs import AlexNetSpec, ConvLayer

IMAGENET = {"input_shape": (3, 224, 224), "num_classes": 1000}

NOTES = (
    "**AlexNet** is LeNet made deeper and wider for 224×224 images: an 11×11 stride-4 "
    "convolution shrinks the image fast, ReLU replaces the sigmoid, and dropout regularises "
    "two 4096-wide fully connected layers, which hold most of its parameters.")

CONV_COLUMNS = {"out_channels": "out channels", "kernel": "kernel", "stride": "stride",
                "padding": "padding", "pool": "max pool after"}
CONV_ORDER = {ConvLayer: "(out_channels, kernel, stride, padding, max pool after)"}

PRESETS = (
    Preset("course_alexnet", AlexNetSpec(),
           "AlexNet, course version on 1×224×224 (Fashion-MNIST resized)", "course",
           "Five convs and two 4096-wide layers. The first conv is 11×11 with stride 4: "
           "224 → 54. Compare the first linear layer (6400 → 4096) with everything else."),
    Preset("alexnet",
           AlexNetSpec(convs=(ConvLayer(64, 11, 4, 2, True), ConvLayer(192, 5, 1, 2, True),
                              ConvLayer(384, 3, 1, 1), ConvLayer(256, 3, 1, 1),
                              ConvLayer(256, 3, 1, 1, True)),
                       avgpool_size=6, dropout_first=True, **IMAGENET),
           "torchvision alexnet (the one-GPU variant: 64-192-384-256-256)", "torchvision",
           reference="alexnet"),
)

FAMILY = register(Family(
    "alexnet", AlexNetSpec, build_alexnet, NOTES, PRESETS,
    labels={"convs": "Conv layers", "avgpool_size": "Adaptive pool size",
            "hidden": "Hidden FC layers", "dropout": "Dropout",
            "dropout_first": "Dropout before each FC", "bias": "Biases"},
    columns=CONV_COLUMNS, list_labels={"hidden": "width"}, book_order=CONV_ORDER,
    course_pairs={"course_alexnet": "alexnet"},
))
