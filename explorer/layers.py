"""What one meta-device forward pass learns about a model: every conv, linear, batch-norm and
pooling layer with its configuration, shapes and parameters, and the multiply-adds per image in
both conventions (``explorer.analysis.MACS_CONVENTIONS``).

Needs torch alone (no torchinfo, pandas or plotly), so that a bare GPU machine with PyTorch can run
the benchmarks that count FLOPs; ``explorer.compare`` builds its alignment and scatter on it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from explorer.errors import ConfigError
from explorer.models import meta_model
from explorer.specs import SpecBase

_POOLS = (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
          nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)


@dataclass
class Layer:
    """One conv, linear, batch-norm or pooling layer, as the alignment compares it."""

    name: str
    kind: str  # "conv", "linear", "bn" or "pool"
    config: dict[str, Any]
    input_shape: tuple[int, ...]  # without the batch
    output_shape: tuple[int, ...]
    params: int
    flat_from: tuple[int, ...] | None = None  # linear: the last C×H×W map before it
    index: int = 0  # position among the model's layers
    first: bool = False  # the first conv (reads the image) or the first linear layer
    last: bool = False  # the last linear layer (the classifier)
    followed_by_bn: bool = False

    @property
    def stage(self) -> str:
        return self.name.split(".")[0]

    def describe(self) -> str:
        """'conv 3×3/2 p1, 64→128, no bias', 'linear 512→10', 'BN 64', 'max pool 3×3/2 p1'."""
        c = self.config
        if self.kind == "conv":
            text = f"conv {pair_text(c['kernel'])}{_sp(c['stride'], c['padding'])}, " \
                   f"{c['in']}→{c['out']}"
            if c["groups"] > 1:
                text += f", {c['groups']} groups"
            if max(c["dilation"]) > 1:
                text += f", dilation {c['dilation'][0]}"
            return text + ("" if c["bias"] else ", no bias")
        if self.kind == "linear":
            return f"linear {c['in']:,}→{c['out']:,}" + ("" if c["bias"] else ", no bias")
        if self.kind == "bn":
            return f"BN {c['features']}"
        if c["op"].startswith("adaptive"):
            return f"{c['op']} pool → {pair_text(c['output_size'])}"
        return f"{c['op']} pool {pair_text(c['kernel'])}{_sp(c['stride'], c['padding'])}" + (
            " ceil" if c["ceil_mode"] else "")


def pair_text(pair: Sequence[int]) -> str:
    return f"{pair[0]}×{pair[1]}"


def _sp(stride: Sequence[int], padding: Sequence[int]) -> str:
    s = f"/{stride[0]}" if max(stride) > 1 else ""
    return s + (f" p{padding[0]}" if max(padding) > 0 else "")


def _pair(v: Any) -> tuple[int, int]:
    if v is None:
        return (0, 0)
    if isinstance(v, int):
        return (v, v)
    v = tuple(v)
    return (int(v[0]), int(v[-1])) if v else (0, 0)


def layer_config(m: nn.Module) -> tuple[str, dict[str, Any]] | None:
    if isinstance(m, nn.modules.conv._ConvNd):
        return "conv", {"in": m.in_channels, "out": m.out_channels, "kernel": _pair(m.kernel_size),
                        "stride": _pair(m.stride), "padding": _pair(m.padding),
                        "dilation": _pair(m.dilation), "groups": m.groups,
                        "bias": m.bias is not None}
    if isinstance(m, nn.Linear):
        return "linear", {"in": m.in_features, "out": m.out_features, "bias": m.bias is not None}
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return "bn", {"features": m.num_features}
    if isinstance(m, _POOLS):
        adaptive = isinstance(m, nn.modules.pooling._AdaptiveAvgPoolNd
                              | nn.modules.pooling._AdaptiveMaxPoolNd)
        op = ("max" if isinstance(m, nn.modules.pooling._MaxPoolNd
                                  | nn.modules.pooling._AdaptiveMaxPoolNd) else "avg")
        if adaptive:
            return "pool", {"op": f"adaptive {op}", "output_size": _pair(m.output_size)}
        kernel = _pair(m.kernel_size)
        return "pool", {"op": op, "kernel": kernel,
                        "stride": _pair(m.stride) if m.stride else kernel,
                        "padding": _pair(m.padding), "ceil_mode": bool(m.ceil_mode)}
    return None


@dataclass
class MetaPass:
    """What one meta-device forward pass learns about a spec's model."""

    layers: list[Layer]
    params: int
    macs: int  # torchinfo convention
    macs_lecture: int
    input_shape: tuple[int, int, int]
    output_shape: tuple[int, ...]


def meta_pass(spec: SpecBase) -> MetaPass:
    """Build ``spec`` on the meta device and run one forward pass there (no weights, no math).

    Counts multiply-adds in both conventions (analysis.MACS_CONVENTIONS): lecture = conv
    C_out·H'·W'·C_in/g·K_h·K_w and linear in·out, bias not counted; torchinfo = conv parameters
    (bias included) × H'·W', every other layer's parameters once per image.
    """
    if not isinstance(spec, SpecBase):
        raise ConfigError(f"expected a spec from explorer.specs, not {type(spec).__name__}.")
    model = meta_model(spec).eval()
    layers: list[Layer] = []
    seen: set[str] = set()
    totals = {"macs": 0, "lecture": 0}
    last_map: list[tuple[int, ...] | None] = [None]

    def hook(name: str, m: nn.Module):
        def run(_m: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
            x = inputs[0] if inputs else None
            in_shape = tuple(x.shape[1:]) if isinstance(x, torch.Tensor) else ()
            out_shape = tuple(out.shape[1:])
            own = sum(p.numel() for p in m.parameters(recurse=False))
            if isinstance(m, nn.modules.conv._ConvNd):
                pixels = math.prod(out.shape[2:])
                totals["macs"] += own * pixels
                totals["lecture"] += m.weight.numel() * pixels
            elif isinstance(m, nn.Linear):
                rows = math.prod(out.shape[:-1])  # batch 1: one row per image
                totals["macs"] += own * rows
                totals["lecture"] += m.weight.numel() * rows
            else:
                totals["macs"] += own
            kind_config = layer_config(m)
            if kind_config and name not in seen:
                seen.add(name)
                kind, config = kind_config
                layers.append(Layer(name, kind, config, in_shape, out_shape, own,
                                    flat_from=last_map[0] if kind == "linear" else None))
            if len(in_shape) == 3:
                last_map[0] = in_shape
            if len(out_shape) == 3:
                last_map[0] = out_shape
        return run

    handles = [m.register_forward_hook(hook(n, m)) for n, m in model.named_modules()
               if n and not list(m.children())]
    try:
        with torch.no_grad():
            out = model(torch.empty(1, *spec.input_shape, device="meta"))
    finally:
        for h in handles:
            h.remove()
    for i, layer in enumerate(layers):
        layer.index = i
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        layer.followed_by_bn = nxt is not None and nxt.kind == "bn"
    convs = [x for x in layers if x.kind == "conv"]
    linears = [x for x in layers if x.kind == "linear"]
    if convs:
        convs[0].first = True
    if linears:
        linears[0].first = True
        linears[-1].last = True
    return MetaPass(layers, sum(p.numel() for p in model.parameters()), totals["macs"],
                    totals["lecture"], tuple(spec.input_shape), tuple(out.shape[1:]))

__all__ = ["Layer", "MetaPass", "layer_config", "meta_pass", "pair_text"]
