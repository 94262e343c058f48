"""Where a unit looks: its theoretical receptive field as a rectangle of input pixels, and its
effective receptive field |∂unit/∂input| (Luo et al. 2016, "Understanding the effective receptive
field in deep CNNs"; Araujo et al. 2019, "Computing receptive fields of CNNs", Distill).

The Build page's analysis gives each layer's receptive-field size and jump; a rectangle also needs
where unit (0, 0)'s field starts, which depends on the paddings along the way. ``unit_geometry``
follows, during one forward pass of a zero image, the exact interval of input rows and columns
seen by every output row and column: each conv or pool maps unit i to input indices
[i·S − P, i·S − P + D(K − 1)], an add or concatenation takes the union of its inputs' intervals
(exact on residual, Inception and dense blocks), and a flatten or global pool spans the whole
map. It intercepts torch functions with a ``TorchFunctionMode`` (no fx tracing); its sizes and
jumps equal the analysis's, which the tests check layer by layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from explorer.errors import ConfigError
from explorer.inspect import as_batch, eval_mode
from explorer.rfgraph import model_lock


@dataclass(frozen=True)
class Axis:
    """Along one axis: the input interval [lo[i], hi[i]] of every output index i, and the jump.

    Indices beyond the map (padding) continue the first or last interval by ``jump``.
    """

    lo: tuple[int, ...]
    hi: tuple[int, ...]
    jump: int

    @classmethod
    def identity(cls, n: int) -> Axis:
        return cls(tuple(range(n)), tuple(range(n)), 1)

    def lo_at(self, i: int) -> int:
        n = len(self.lo)
        if i < 0:
            return self.lo[0] + i * self.jump
        return self.lo[i] if i < n else self.lo[-1] + (i - n + 1) * self.jump

    def hi_at(self, i: int) -> int:
        n = len(self.hi)
        if i < 0:
            return self.hi[0] + i * self.jump
        return self.hi[i] if i < n else self.hi[-1] + (i - n + 1) * self.jump

    @property
    def size(self) -> int:
        """Receptive field of index 0 (the same for every index of a regular map)."""
        return self.hi[0] - self.lo[0] + 1

    def window(self, k: int, s: int, p: int, d: int, n_out: int) -> Axis:
        """A conv or pool: output i reads indices i·s − p … i·s − p + d(k − 1)."""
        return Axis(tuple(self.lo_at(i * s - p) for i in range(n_out)),
                    tuple(self.hi_at(i * s - p + d * (k - 1)) for i in range(n_out)),
                    self.jump * s)

    def adaptive(self, n_out: int) -> Axis:
        """PyTorch's adaptive pool: window i spans [⌊i·n/m⌋, ⌈(i+1)·n/m⌉)."""
        n = len(self.lo)
        return Axis(tuple(self.lo_at(i * n // n_out) for i in range(n_out)),
                    tuple(self.hi_at(-(-(i + 1) * n // n_out) - 1) for i in range(n_out)),
                    self.jump * max(1, n // n_out))

    def collapse(self) -> Axis:
        """Flatten, Linear, a global mean: one unit that sees the whole map."""
        return Axis((min(self.lo),), (max(self.hi),), self.jump * len(self.lo))


def _union(axes: Sequence[Axis]) -> Axis:
    first = axes[0]
    if len(axes) == 1:
        return first
    return Axis(tuple(min(v) for v in zip(*(a.lo for a in axes), strict=True)),
                tuple(max(v) for v in zip(*(a.hi for a in axes), strict=True)),
                max(a.jump for a in axes))


@dataclass(frozen=True)
class LayerGeometry:
    """A layer's output geometry: intervals along H and W; ``spatial`` is False once flattened."""

    h: Axis
    w: Axis
    spatial: bool = True

    @property
    def receptive_field(self) -> tuple[int, int]:
        return self.h.size, self.w.size

    @property
    def jump(self) -> tuple[int, int]:
        return self.h.jump, self.w.jump


@dataclass(frozen=True)
class Geometry:
    """Every named layer's geometry for one input shape; ``exact`` is False where an op was
    met that the rules do not cover (then the union of its inputs is used)."""

    input_shape: tuple[int, int, int]
    layers: dict[str, LayerGeometry]
    exact: bool = True
    note: str = "exact"

    def layer(self, name: str) -> LayerGeometry:
        if name not in self.layers:
            raise ConfigError(f"the model has no layer named {name!r} with a receptive field; "
                              f"choose one of the layers listed.")
        return self.layers[name]


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    v = tuple(int(a) for a in v)
    return (v[0], v[0]) if len(v) == 1 else (v[-2], v[-1])


def _arg(args: Sequence[Any], kwargs: dict[str, Any], pos: int, name: str, default: Any) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[pos] if len(args) > pos else default


def _name(func: Callable[..., Any]) -> str:
    return getattr(func, "__name__", str(func)).lstrip("_")


class _GeometryMode(TorchFunctionMode):
    """Propagates LayerGeometry from tensor to tensor through every torch call."""

    def __init__(self) -> None:
        super().__init__()
        self.geo: dict[int, tuple[torch.Tensor, LayerGeometry]] = {}
        self.unknown: set[str] = set()

    def get(self, t: Any) -> LayerGeometry | None:
        item = self.geo.get(id(t)) if isinstance(t, torch.Tensor) else None
        return None if item is None or item[0] is not t else item[1]

    def put(self, t: torch.Tensor, g: LayerGeometry) -> None:
        self.geo[id(t)] = (t, g)  # the tensor is kept so that its id is not reused meanwhile

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        ins = [t for t in tree_flatten((args, kwargs))[0] if self.get(t) is not None]
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if ins and outs:
            g = self._rule(_name(func), args, kwargs, ins, outs[0])
            for o in outs[:1]:
                self.put(o, g)
        return out

    def _rule(self, name: str, args: Sequence[Any], kwargs: dict[str, Any],
              ins: list[torch.Tensor], out: torch.Tensor) -> LayerGeometry:
        x = ins[0]
        g = self.get(x)
        assert g is not None
        if g.spatial and x.dim() == 4 and out.dim() == 4:
            n_h, n_w = int(out.shape[-2]), int(out.shape[-1])
            if name == "conv2d":
                weight = _arg(args, kwargs, 1, "weight", None)
                k = (int(weight.shape[-2]), int(weight.shape[-1]))
                s = _pair(_arg(args, kwargs, 3, "stride", 1))
                d = _pair(_arg(args, kwargs, 5, "dilation", 1))
                pad = _arg(args, kwargs, 4, "padding", 0)
                if pad == "valid":
                    p = (0, 0)
                elif pad == "same":
                    p = (d[0] * (k[0] - 1) // 2, d[1] * (k[1] - 1) // 2)
                else:
                    p = _pair(pad)
                return LayerGeometry(g.h.window(k[0], s[0], p[0], d[0], n_h),
                                     g.w.window(k[1], s[1], p[1], d[1], n_w))
            if name in ("max_pool2d", "max_pool2d_with_indices", "avg_pool2d"):
                k = _pair(_arg(args, kwargs, 1, "kernel_size", 1))
                stride = _arg(args, kwargs, 2, "stride", None)
                s = k if stride is None or stride == [] or stride == () else _pair(stride)
                p = _pair(_arg(args, kwargs, 3, "padding", 0))
                d = _pair(_arg(args, kwargs, 4, "dilation", 1)) if name != "avg_pool2d" \
                    else (1, 1)
                return LayerGeometry(g.h.window(k[0], s[0], p[0], d[0], n_h),
                                     g.w.window(k[1], s[1], p[1], d[1], n_w))
            if name.startswith(("adaptive_avg_pool2d", "adaptive_max_pool2d")):
                return LayerGeometry(g.h.adaptive(n_h), g.w.adaptive(n_w))
            same = [self.get(t) for t in ins if t.dim() == 4 and t.shape[-2:] == out.shape[-2:]]
            if len(same) == len(ins) and all(s is not None and s.spatial for s in same):
                # element-wise, batch norm, concatenation, add: each pixel keeps its place
                return LayerGeometry(_union([s.h for s in same]), _union([s.w for s in same]))
            self.unknown.add(name)
        # Flatten, Linear, a mean over the map, anything after them: the whole extent.
        geos = [self.get(t) for t in ins]
        hs = [gg.h if not gg.spatial else gg.h.collapse() for gg in geos if gg is not None]
        ws = [gg.w if not gg.spatial else gg.w.collapse() for gg in geos if gg is not None]
        if out.dim() == 4 and out.shape[-2:] != (1, 1):
            self.unknown.add(name)
        return LayerGeometry(_union_collapsed(hs), _union_collapsed(ws), spatial=False)


def _union_collapsed(axes: list[Axis]) -> Axis:
    return Axis((min(a.lo[0] for a in axes),), (max(a.hi[-1] for a in axes),),
                max(a.jump for a in axes))


def unit_geometry(model: nn.Module, input_shape: Sequence[int]) -> Geometry:
    """Geometry of every named layer, from one eval-mode forward pass on the meta device.

    The geometry depends on the architecture only, so the pass runs with meta tensors in place
    of the weights (``functional_call``): shapes are followed, no arithmetic is done.
    """
    c, h, w = (int(v) for v in input_shape)
    mode = _GeometryMode()
    found: dict[str, LayerGeometry] = {}
    handles = []

    def make_hook(name: str):
        def hook(_m: nn.Module, _i: object, out: object) -> None:
            g = mode.get(out)
            if g is not None and name not in found:  # a module called twice: its first call
                found[name] = g
        return hook

    x = torch.zeros(1, c, h, w, device="meta")
    meta = {name: torch.empty_like(t, device="meta") for name, t in
            (*model.named_parameters(), *model.named_buffers())}
    with model_lock(model), eval_mode(model), torch.no_grad():
        handles = [m.register_forward_hook(make_hook(n)) for n, m in model.named_modules() if n]
        try:
            mode.put(x, LayerGeometry(Axis.identity(h), Axis.identity(w)))
            with mode:
                functional_call(model, meta, (x,))
        finally:
            for hd in handles:
                hd.remove()
    exact = not mode.unknown
    note = "exact" if exact else ("approximate: these ops change the map's size in a way the "
                                  "rules do not cover: " + ", ".join(sorted(mode.unknown)))
    return Geometry((c, h, w), found, exact, note)


@dataclass(frozen=True)
class Rect:
    """Rows top..bottom and columns left..right (inclusive) of the input; may reach outside."""

    top: int
    left: int
    bottom: int
    right: int
    image_h: int
    image_w: int

    @property
    def height(self) -> int:
        return self.bottom - self.top + 1

    @property
    def width(self) -> int:
        return self.right - self.left + 1

    def clipped(self) -> Rect:
        """The part on the image."""
        return Rect(max(self.top, 0), max(self.left, 0), min(self.bottom, self.image_h - 1),
                    min(self.right, self.image_w - 1), self.image_h, self.image_w)

    @property
    def inside_pixels(self) -> int:
        c = self.clipped()
        return max(c.height, 0) * max(c.width, 0)

    @property
    def padding_pixels(self) -> int:
        """Pixels of the rectangle that lie in the padding, outside the image."""
        return self.height * self.width - self.inside_pixels

    def contains(self, y: int, x: int) -> bool:
        return self.top <= y <= self.bottom and self.left <= x <= self.right


def unit_index(shape: Sequence[int], channel: int, y: int, x: int) -> tuple[int, ...]:
    """Check a unit against a layer's output shape (C×H×W or (F,)); its index in that output."""
    if len(shape) == 3:
        c, h, w = shape
        if not (0 <= channel < c and 0 <= y < h and 0 <= x < w):
            raise ConfigError(f"unit ({channel}, {y}, {x}) is outside this layer's {c}×{h}×{w} "
                              f"output; channel, row and column start at 0.")
        return (channel, y, x)
    n = shape[0]
    if not 0 <= channel < n:
        raise ConfigError(f"unit {channel} is outside this layer's {n} outputs.")
    return (channel,)


def receptive_rect(geometry: Geometry, layer: str, y: int = 0, x: int = 0) -> Rect:
    """The theoretical receptive field of the units at (y, x) of ``layer`` (any channel)."""
    g = geometry.layer(layer)
    _, h, w = geometry.input_shape
    if not g.spatial:
        y = x = 0
    return Rect(g.h.lo_at(y), g.w.lo_at(x), g.h.hi_at(y), g.w.hi_at(x), h, w)


class _Stop(Exception):
    """Raised by a hook once the chosen layer has run: the rest of the network is not needed."""


def effective_rf(model: nn.Module, x: torch.Tensor, layer: str, channel: int, y: int = 0,
                 col: int = 0) -> torch.Tensor:
    """|∂unit/∂input| for one image, summed over input channels: an H×W map (eval mode)."""
    modules = dict(model.named_modules())
    if layer not in modules or not layer:
        raise ConfigError(f"the model has no layer named {layer!r}; choose one of the layers "
                          f"listed.")
    inp = as_batch(x, model).detach().clone().requires_grad_(True)
    captured: list[torch.Tensor] = []

    def hook(_m: nn.Module, _i: object, out: object) -> None:
        if isinstance(out, torch.Tensor):
            captured.append(out)
        raise _Stop

    with model_lock(model), eval_mode(model), torch.enable_grad():
        handle = modules[layer].register_forward_hook(hook)
        try:
            model(inp)
        except _Stop:
            pass
        finally:
            handle.remove()
    if not captured:
        raise ConfigError(f"layer {layer!r} gives no tensor to take a unit from.")
    out = captured[0][0]
    unit = out[unit_index(tuple(out.shape), channel, y, col)]
    (grad,) = torch.autograd.grad(unit, inp)
    return grad[0].abs().sum(0).detach().cpu()


def erf_mass_pixels(erf: torch.Tensor, fraction: float = 0.5) -> int:
    """How few pixels hold ``fraction`` of the ERF's total weight (0 for an all-zero map)."""
    flat = erf.flatten().double()
    total = float(flat.sum())
    if total <= 0:
        return 0
    cum = torch.cumsum(torch.sort(flat, descending=True).values, 0)
    return int(torch.searchsorted(cum, torch.tensor(fraction * total, dtype=cum.dtype))) + 1


def compare_sentence(rect: Rect, erf: torch.Tensor, unit: str) -> str:
    """One sentence that compares the theoretical and the effective receptive field."""
    size = f"{rect.height}×{rect.width}"
    inside = rect.inside_pixels
    pad = rect.padding_pixels
    where = (f"{inside:,} of its pixels on the image and {pad:,} in the padding" if pad
             else f"all {inside:,} of its pixels on the image")
    n50 = erf_mass_pixels(erf)
    if n50 == 0:
        return (f"The theoretical receptive field of {unit} is {size} pixels ({where}), but its "
                f"effective field on this image is empty: its gradient is zero everywhere, "
                f"because a ReLU or a max pool on its paths lets nothing through for this "
                f"image.")
    share = n50 / max(inside, 1)
    how = ("far smaller" if share < 0.1 else "smaller" if share < 0.5
           else "about as large")
    return (f"The theoretical receptive field of {unit} is {size} pixels ({where}); its "
            f"effective field on this image is {how}: half of |∂unit/∂input| lies on "
            f"{n50:,} pixels, {math.ceil(100 * share) if share < 1 else 100}% of the "
            f"theoretical field's pixels on the image.")


__all__ = ["Axis", "Geometry", "LayerGeometry", "Rect", "compare_sentence", "effective_rf",
           "erf_mass_pixels", "receptive_rect", "unit_geometry", "unit_index"]
