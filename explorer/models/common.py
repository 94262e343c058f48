"""Building blocks shared by the family builders, and the shape tracker that validates as it builds.

Every builder creates its layers through a ``ShapeTracker``: it follows C×H×W with the lectures'
formula H' = floor((H + 2P - d(K-1) - 1) / S) + 1 (rounded up for ceil-mode pools), so a spec
that would shrink a feature map to 0×0 fails with a sentence naming the block before any tensor
exists.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

from torch import nn

from explorer.errors import ConfigError

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


def out_size(size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1,
             ceil_mode: bool = False) -> int:
    """Output size of a conv or pool along one axis: PyTorch's rule, ceil mode included.

    H' = floor((H + 2P - d(K-1) - 1) / S) + 1; in ceil mode the division rounds up, so the last
    window may hang over the right edge (a 3×3/2 pool on 2×2 gives 1×1), as long as it starts
    inside the input or the left padding (PyTorch's ``pooling_output_shape``). 0 when nothing fits.
    """
    num = size + 2 * padding - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = num // stride + 1  # floor division, also for a negative numerator (PyTorch's div_rtn)
    if ceil_mode and out > 0 and (out - 1) * stride >= size + padding:
        out -= 1
    return max(out, 0)


class ShapeTracker:
    """Follows the feature-map shape through a builder and creates layers that fit it."""

    def __init__(self, shape: tuple[int, int, int]):
        self.c, self.h, self.w = shape
        self.flat: int | None = None  # features after flatten

    def copy(self) -> ShapeTracker:
        return copy.copy(self)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.c, self.h, self.w)

    def _shrink(self, where: str, kernel: int, stride: int, padding: int, dilation: int = 1,
                ceil_mode: bool = False) -> tuple[int, int]:
        h = out_size(self.h, kernel, stride, padding, dilation, ceil_mode)
        w = out_size(self.w, kernel, stride, padding, dilation, ceil_mode)
        if h < 1 or w < 1:
            span = dilation * (kernel - 1) + 1
            raise ConfigError(
                f"{where} would shrink the {self.c}×{self.h}×{self.w} feature map to "
                f"{max(h, 0)}×{max(w, 0)} (its {span}×{span} window does not fit); remove a "
                f"block, reduce its kernel or stride, or use a larger input.")
        return h, w

    def conv(self, where: str, out_channels: int, kernel: int, stride: int = 1,
             padding: int = 0, groups: int = 1, bias: bool = True, dilation: int = 1) -> nn.Conv2d:
        if self.flat is not None:
            raise ConfigError(f"{where} is a conv after the network was flattened; "
                              f"move it before the fully connected layers.")
        if out_channels < 1:
            raise ConfigError(f"{where} has {out_channels} output channels; use at least 1.")
        if self.c % groups or out_channels % groups:
            raise ConfigError(
                f"{where}: {self.c} input and {out_channels} output channels must both be "
                f"divisible by its {groups} groups; choose a number of groups that divides both.")
        h, w = self._shrink(where, kernel, stride, padding, dilation)
        layer = nn.Conv2d(self.c, out_channels, kernel, stride, padding, dilation=dilation,
                          groups=groups, bias=bias)
        self.c, self.h, self.w = out_channels, h, w
        return layer

    def pool(self, where: str, kind: str, kernel: int, stride: int | None = None,
             padding: int = 0, ceil_mode: bool = False) -> nn.Module:
        stride = kernel if stride is None else stride
        if 2 * padding > kernel:
            raise ConfigError(f"{where} pads by {padding}, more than half its {kernel}×{kernel} "
                              f"window, which PyTorch refuses; use padding ≤ {kernel // 2}.")
        self.h, self.w = self._shrink(where, kernel, stride, padding, 1, ceil_mode)
        if kind == "max":
            return nn.MaxPool2d(kernel, stride, padding, ceil_mode=ceil_mode)
        return nn.AvgPool2d(kernel, stride, padding, ceil_mode=ceil_mode)

    def adaptive_avg(self, size: int) -> nn.AdaptiveAvgPool2d:
        self.h = self.w = size
        return nn.AdaptiveAvgPool2d(size)

    def bn2d(self) -> nn.BatchNorm2d:
        return nn.BatchNorm2d(self.c)

    def flatten(self) -> nn.Flatten:
        self.flat = self.c * self.h * self.w
        return nn.Flatten()

    def linear(self, where: str, out_features: int, bias: bool = True) -> nn.Linear:
        if self.flat is None:
            raise ConfigError(f"{where} needs a flattened input; flatten first.")
        layer = nn.Linear(self.flat, out_features, bias=bias)
        self.flat = out_features
        return layer


def seq(*items: tuple[str, nn.Module | None]) -> nn.Sequential:
    """An ``nn.Sequential`` with readable names; ``None`` entries are skipped."""
    return nn.Sequential(OrderedDict((name, m) for name, m in items if m is not None))


def mlp_head(t: ShapeTracker, hidden: tuple[int, ...], num_classes: int, activation: str = "relu",
             dropout: float = 0.0, dropout_first: bool = False, batch_norm: bool = False,
             bias: bool = True) -> nn.Sequential:
    """flatten, then per hidden width: linear [BN] act [dropout]; then the output linear.

    ``dropout_first`` puts each dropout before its linear layer (torchvision's AlexNet) instead
    of after the activation (the course and torchvision's VGG).
    """
    items: list[tuple[str, nn.Module | None]] = [("flatten", t.flatten())]
    for i, width in enumerate(hidden, 1):
        drop = nn.Dropout(dropout) if dropout > 0 else None
        if dropout_first:
            items.append((f"drop{i}", drop))
        items.append((f"fc{i}", t.linear(f"hidden layer {i}", width, bias=bias)))
        items.append((f"bn{i}", nn.BatchNorm1d(width) if batch_norm else None))
        items.append((f"act{i}", ACTIVATIONS[activation]()))
        if not dropout_first:
            items.append((f"drop{i}", drop))
    items.append(("fc", t.linear("the output layer", num_classes, bias=bias)))
    return seq(*items)


def gap_head(t: ShapeTracker, num_classes: int, dropout: float = 0.0,
             prefix: tuple[tuple[str, nn.Module], ...] = ()) -> nn.Sequential:
    """Global average pool, flatten, [dropout], linear: the head of NiN-era and later networks."""
    items: list[tuple[str, nn.Module | None]] = list(prefix)
    items += [("pool", t.adaptive_avg(1)), ("flatten", t.flatten()),
              ("drop", nn.Dropout(dropout) if dropout > 0 else None),
              ("fc", t.linear("the output layer", num_classes))]
    return seq(*items)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
