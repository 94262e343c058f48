"""AlexNet (Krizhevsky et al. 2012), the course version (d2l 8.1) and torchvision's."""

from __future__ import annotations

from torch import nn

from explorer.models.common import ShapeTracker, mlp_head, seq
from explorer.specs import AlexNetSpec


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
