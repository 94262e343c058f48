"""AlexNet (Krizhevsky et al. 2012), the course version (d2l 8.1) and torchvision's.

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
from explorer.specs import ConvLayer, Shape, SpecBase
from explorer.specs import spec_field as _f


@dataclass(frozen=True)
class AlexNetSpec(SpecBase):
    """AlexNet (Krizhevsky et al. 2012): five convs, three max pools, two wide FC layers."""

    family: ClassVar[str] = "alexnet"
    title: ClassVar[str] = "AlexNet"
    input_shape: Shape = _f((1, 224, 224), _INPUT_HELP)
    num_classes: int = _f(10, _CLASSES_HELP, 1, 100_000)
    convs: tuple[ConvLayer, ...] = _f(
        (ConvLayer(96, 11, 4, 1, True), ConvLayer(256, 5, 1, 2, True), ConvLayer(384, 3, 1, 1),
         ConvLayer(384, 3, 1, 1), ConvLayer(256, 3, 1, 1, True)),
        "conv layers (out channels, kernel, stride, padding, maxpool(3,2) after)", 1)
    avgpool_size: int = _f(0, "adaptive average pool to this size before the classifier "
                              "(torchvision: 6; 0 = none)", 0, 64)
    hidden: tuple[int, ...] = _f((4096, 4096), "widths of the hidden fully connected layers", 0,
                                 items=(1, 65536), max_len=8)
    dropout: float = _f(0.5, "dropout probability in the classifier", 0.0, 0.99)
    dropout_first: bool = _f(False, "dropout before each hidden linear layer (torchvision) "
                                    "instead of after its ReLU (course)")
    bias: bool = _f(True, "bias on conv and linear layers")


def build_alexnet(spec: AlexNetSpec) -> nn.Module:
    """features (conv ReLU [maxpool 3/2] per layer), optional adaptive pool, then the head."""
    t = ShapeTracker(spec.input_shape)
    items: list[tuple[str, nn.Module | None]] = []
    for i, layer in enumerate(spec.convs, 1):
        items.append((f"conv{i}", t.conv(f"conv layer {i}", layer.out_channels, layer.kernel,
                                         layer.stride, layer.padding, bias=spec.bias)))
        items.append((f"relu{i}", nn.ReLU()))
        if layer.pool:
            items.append((f"pool{i}", t.pool(f"the max pool after conv layer {i}", "max", 3, 2)))
    avgpool = t.adaptive_avg(spec.avgpool_size) if spec.avgpool_size else None
    head = mlp_head(t, spec.hidden, spec.num_classes, "relu", spec.dropout, spec.dropout_first,
                    bias=spec.bias)
    return seq(("features", seq(*items)), ("avgpool", avgpool), ("head", head))


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
