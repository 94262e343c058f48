"""Receptive-field rules: what one unit of a feature map sees of the input image (d2l 7.1-7.5).

Each conv or pool adds (K - 1)·d·jump pixels to the receptive field and multiplies the jump (the
effective stride in input pixels) by its stride; through an addition or a concatenation a unit
sees the union of what its inputs see (Araujo et al. 2019, "Computing receptive fields of CNNs").

One meaning everywhere (CLI, Build page, layer table, charts, Compare): **the network's receptive
field is that of one unit of its last spatial feature map**, the map that a global pool, a flatten
or a fully connected layer turns into a vector. Rows after that point have no map and no receptive
field. A global pool whose result is multiplied back onto the map (squeeze-excitation) makes
every later unit depend on the whole map, and the numbers say so.

Each value on the graph carries a ``Field``: its receptive field and jump along H and W, where its
spatial axes are (channels-last blocks such as ConvNeXt's move them), and whether it is still a
map ("map"), a map pooled to 1×1 that can be broadcast back ("global"), or a vector ("flat").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from torch import nn

RF = tuple[int, int, int, int]  # (rf along H, jump along H, rf along W, jump along W)
ONE: RF = (1, 1, 1, 1)

WHOLE_IMAGE = ("A receptive field larger than the image counts the zero padding around it; "
               "it means the unit sees the whole image.")

CONV_FUNCS = {"conv1d", "conv2d", "conv3d"}
POOL_FUNCS = {  # name -> positional index of (kernel_size, stride, dilation)
    "max_pool1d": (1, 2, 4), "max_pool2d": (1, 2, 4), "max_pool3d": (1, 2, 4),
    "max_pool1d_with_indices": (1, 2, 4), "max_pool2d_with_indices": (1, 2, 4),
    "max_pool3d_with_indices": (1, 2, 4), "avg_pool1d": (1, 2, None), "avg_pool2d": (1, 2, None),
    "avg_pool3d": (1, 2, None), "lp_pool1d": (2, 3, None), "lp_pool2d": (2, 3, None),
}
ADAPTIVE_FUNCS = {
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
    "adaptive_max_pool2d", "adaptive_max_pool3d", "adaptive_max_pool1d_with_indices",
    "adaptive_max_pool2d_with_indices", "adaptive_max_pool3d_with_indices",
}
# Ops that change the map's size but neither widen the receptive field nor change the jump.
_CROP_OR_PAD = {"getitem", "pad", "narrow", "constant_pad_nd"}
_MOVES = {"permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis"}
# Normalisations whose statistics are taken over the whole map (not batch norm in eval mode).
_MAP_NORM_FUNCS = {"group_norm", "instance_norm"}
ADAPTIVE_MODULES = (
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)
_WINDOW_MODULES = (
    nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd, nn.modules.pooling._LPPoolNd,
)
_MAP_NORM_MODULES = (nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)


class Field(NamedTuple):
    """Receptive field of one value on the graph, with where its spatial axes are."""

    rf: RF
    axes: tuple[int, ...] | None  # tensor dims of (H, W), or (L,) for 1-D maps; None if flat
    kind: str  # "map", "global" (pooled to 1×1, broadcastable) or "flat" (no spatial dims)

    @property
    def is_map(self) -> bool:
        return self.kind == "map"


def standard_axes(ndim: int) -> tuple[int, ...] | None:
    """(H, W) dims of an (N, C, H, W) tensor; (L,) of (N, C, L); the last two of (N, C, D, H, W)."""
    if ndim < 3:
        return None
    return tuple(range(max(2, ndim - 2), ndim))


def input_field(ndim: int) -> Field:
    """The image itself: every pixel sees one pixel."""
    axes = standard_axes(ndim)
    return Field(ONE, axes, "map" if axes else "flat")


def sizes(shape: Sequence[int], axes: Sequence[int]) -> tuple[int, int]:
    """(H, W) of a map along its spatial axes; (L, 1) for a 1-D map."""
    h = int(shape[axes[0]])
    return h, (int(shape[axes[-1]]) if len(axes) > 1 else 1)


def hw(value: Any, n_spatial: int, default: int = 1) -> tuple[int, int]:
    """A kernel/stride/dilation argument (int or tuple) as its (H, W) pair."""
    if value is None or (isinstance(value, Sequence) and len(value) == 0):
        return default, default
    if isinstance(value, int):
        value = (value,) * max(1, n_spatial)
    value = tuple(int(v) for v in value)
    if n_spatial <= 1 or len(value) == 1:
        return value[0], 1
    return value[-2], value[-1]


def window(rf: RF, k: tuple[int, int], s: tuple[int, int], d: tuple[int, int]) -> RF:
    """The lecture's rule per axis: rf += d·(K - 1)·jump, jump ×= S."""
    rh, jh, rw, jw = rf
    return rh + d[0] * (k[0] - 1) * jh, jh * s[0], rw + d[1] * (k[1] - 1) * jw, jw * s[1]


def _adaptive_1d(n_in: int, n_out: int) -> tuple[int, int]:
    """Kernel and stride of an adaptive pool from n_in to n_out cells along one axis."""
    if n_out <= 0 or n_in <= 0:
        return 1, 1
    if n_in % n_out == 0:
        return n_in // n_out, n_in // n_out
    # PyTorch's window i spans [floor(i·n_in/n_out), ceil((i+1)·n_in/n_out)); take the largest.
    k = max(-(-(i + 1) * n_in // n_out) - (i * n_in) // n_out for i in range(n_out))
    return k, max(1, n_in // n_out)


def _whole_map(rf: RF, in_sp: tuple[int, int]) -> RF:
    """What a unit that reads every position of an H×W map sees; the jump is kept."""
    rh, jh, rw, jw = rf
    return rh + (in_sp[0] - 1) * jh, jh, rw + (in_sp[1] - 1) * jw, jw


def merge(fields: Sequence[Field]) -> tuple[Field | None, bool]:
    """The field of an op with several inputs (add, cat, mul), and whether a pooled vector was
    merged back into a map (squeeze-excitation): each unit then sees the union of its inputs."""
    if not fields:
        return None, False
    maps = [f for f in fields if f.is_map]
    pick = maps or [f for f in fields if f.kind == "global"] or list(fields)
    rf = (max(f.rf[0] for f in fields), max(f.rf[1] for f in pick),
          max(f.rf[2] for f in fields), max(f.rf[3] for f in pick))
    return Field(rf, pick[0].axes, pick[0].kind), bool(maps) and len(maps) < len(fields)


def _windowed(base: Field, k: tuple[int, int], s: tuple[int, int], d: tuple[int, int],
              out_ndim: int) -> Field:
    if not base.is_map:  # a 1×1 vector stays one: it already sees everything it can
        return base
    return Field(window(base.rf, k, s, d), standard_axes(out_ndim), "map")


def _adaptive_rule(base: Field, in_shape: Sequence[int], out_shape: Sequence[int]) -> Field:
    if not base.is_map:
        return base
    axes = standard_axes(len(out_shape))
    in_sp, out_sp = sizes(in_shape, base.axes), sizes(out_shape, axes)
    if out_sp == (1, 1):  # a global pool: the map ends here
        return Field(window(base.rf, in_sp, in_sp, (1, 1)), axes, "global")
    (kh, sh), (kw, sw) = _adaptive_1d(in_sp[0], out_sp[0]), _adaptive_1d(in_sp[1], out_sp[1])
    return Field(window(base.rf, (kh, kw), (sh, sw), (1, 1)), axes, "map")


def _flattened(base: Field, in_shape: Sequence[int]) -> Field:
    in_sp = sizes(in_shape, base.axes)
    return Field(window(base.rf, in_sp, in_sp, (1, 1)), None, "flat")


def _linear_rule(base: Field, in_shape: Sequence[int]) -> tuple[Field, bool]:
    """A linear layer acts on the last dim: per pixel on a channels-last map (ConvNeXt)."""
    if base.is_map and len(in_shape) - 1 in base.axes:  # it would mix a spatial axis
        return _flattened(base, in_shape), False
    return base, True


def _map_norm(base: Field, in_shape: Sequence[int], dims: Sequence[int] | None) -> Field:
    """A normalisation whose statistics span the spatial ``dims``: every unit sees the map."""
    if not base.is_map or (dims is not None and not set(dims) & set(base.axes)):
        return base
    return base._replace(rf=_whole_map(base.rf, sizes(in_shape, base.axes)))


def _moved(base: Field, name: str, args: Sequence[Any], kwargs: dict[str, Any],
           ndim: int) -> Field:
    """permute/transpose/movedim: the spatial axes move with the data."""
    if not base.is_map:
        return base
    perm = list(range(ndim))
    rest = list(args[1:])
    if name == "permute":
        dims = rest or list(kwargs.get("dims", ()))
        if len(dims) == 1 and isinstance(dims[0], Sequence):
            dims = list(dims[0])
        perm = [int(d) % ndim for d in dims]
    elif name in ("transpose", "swapaxes", "swapdims"):
        a = rest[0] if rest else kwargs["dim0"]
        b = rest[1] if len(rest) > 1 else kwargs["dim1"]
        a, b = int(a) % ndim, int(b) % ndim
        perm[a], perm[b] = perm[b], perm[a]
    else:  # movedim(source, destination)
        src = rest[0] if rest else kwargs.get("source")
        dst = rest[1] if len(rest) > 1 else kwargs.get("destination")
        src = [int(v) % ndim for v in (src if isinstance(src, Sequence) else [src])]
        dst = [int(v) % ndim for v in (dst if isinstance(dst, Sequence) else [dst])]
        out: list[int | None] = [None] * ndim
        for s_, d_ in zip(src, dst, strict=True):
            out[d_] = s_
        others = iter(v for v in range(ndim) if v not in src)
        perm = [v if v is not None else next(others) for v in out]
    return base._replace(axes=tuple(perm.index(a) for a in base.axes))


def generic(base: Field, in_shape: Sequence[int] | None, out_shape: Sequence[int],
            keeps_rf: bool = False) -> tuple[Field, bool]:
    """An op without a kernel: keep the field, move the axes, end the map, or flag it inexact."""
    if not base.is_map or in_shape is None:
        return base, True
    axes, n_in, n_out = base.axes, len(in_shape), len(out_shape)
    in_sp = sizes(in_shape, axes)
    if n_out == n_in and (keeps_rf or sizes(out_shape, axes) == in_sp):
        return base, True  # element-wise, on channels, a concatenation, a crop or a pad
    tail = tuple(in_shape[axes[0]:])
    if n_out > n_in and tuple(out_shape[n_out - len(tail):]) == tail:  # unsqueeze in front
        return base._replace(axes=tuple(a + n_out - n_in for a in axes)), True
    if n_out == n_in and sizes(out_shape, axes) == (1, 1):  # a mean over H and W, kept dims
        return Field(window(base.rf, in_sp, in_sp, (1, 1)), axes, "global"), True
    if n_out < n_in:
        last = max(axes)
        if n_out > last and tuple(out_shape[:last + 1]) == tuple(in_shape[:last + 1]):
            return base, True  # only dims after the spatial ones were merged
        return _flattened(base, in_shape), True  # flatten, view, a mean over H and W
    return base, False  # upsampling, a transposed conv, unfold, ...: not covered by the rules


def module_rule(mod: nn.Module, base: Field, in_shape: Sequence[int] | None,
                out_shape: Sequence[int]) -> tuple[Field, bool]:
    """Field at the output of a leaf module; the flag says whether the rules cover it."""
    if in_shape is None or not base.is_map:
        if isinstance(mod, nn.Flatten) and base.kind == "global":
            return base._replace(axes=None, kind="flat"), True
        return base, True
    if isinstance(mod, nn.modules.conv._ConvNd):
        if mod.transposed:
            return base, False
        n = len(mod.kernel_size)
        return _windowed(base, hw(mod.kernel_size, n), hw(mod.stride, n), hw(mod.dilation, n),
                         len(out_shape)), True
    if isinstance(mod, _WINDOW_MODULES):
        n = len(in_shape) - 2
        k = hw(mod.kernel_size, n)
        s = hw(mod.stride, n) if mod.stride else k
        return _windowed(base, k, s, hw(getattr(mod, "dilation", 1), n), len(out_shape)), True
    if isinstance(mod, ADAPTIVE_MODULES):
        return _adaptive_rule(base, in_shape, out_shape), True
    if isinstance(mod, nn.Linear):
        return _linear_rule(base, in_shape)
    if isinstance(mod, nn.LayerNorm):
        n = len(mod.normalized_shape)
        return _map_norm(base, in_shape, range(len(in_shape) - n, len(in_shape))), True
    if isinstance(mod, _MAP_NORM_MODULES):
        return _map_norm(base, in_shape, None), True
    return generic(base, in_shape, out_shape)


def arg(args: Sequence[Any], kwargs: dict[str, Any], pos: int | None, name: str,
        default: Any) -> Any:
    """A call's argument by keyword or position."""
    if name in kwargs:
        return kwargs[name]
    if pos is not None and len(args) > pos:
        return args[pos]
    return default


def function_rule(name: str, args: Sequence[Any], kwargs: dict[str, Any], base: Field,
                  in_shape: Sequence[int] | None,
                  out_shape: Sequence[int]) -> tuple[Field, bool]:
    """Field at the output of a function call (F.conv2d, F.max_pool2d, add, cat, permute, ...)."""
    if in_shape is not None and name in _MOVES:
        return _moved(base, name, args, kwargs, len(in_shape)), True
    if in_shape is None or not base.is_map:
        return generic(base, in_shape, out_shape)
    n = len(in_shape) - 2
    if name in CONV_FUNCS:
        weight = arg(args, kwargs, 1, "weight", None)
        k = hw(tuple(weight.shape[2:]), n)
        return _windowed(base, k, hw(arg(args, kwargs, 3, "stride", 1), n),
                         hw(arg(args, kwargs, 5, "dilation", 1), n), len(out_shape)), True
    if name in POOL_FUNCS:
        kp, sp, dp = POOL_FUNCS[name]
        k = hw(arg(args, kwargs, kp, "kernel_size", 1), n)
        s = hw(arg(args, kwargs, sp, "stride", None), n, default=0)
        s = k if s == (0, 0) else s
        d = hw(arg(args, kwargs, dp, "dilation", 1), n) if dp else (1, 1)
        return _windowed(base, k, s, d, len(out_shape)), True
    if name in ADAPTIVE_FUNCS:
        return _adaptive_rule(base, in_shape, out_shape), True
    if name == "linear":
        return _linear_rule(base, in_shape)
    if name == "layer_norm":
        k = len(tuple(arg(args, kwargs, 1, "normalized_shape", ())))
        return _map_norm(base, in_shape, range(len(in_shape) - k, len(in_shape))), True
    if name in _MAP_NORM_FUNCS:
        return _map_norm(base, in_shape, None), True
    return generic(base, in_shape, out_shape, keeps_rf=name in _CROP_OR_PAD)


# ----------------------------------------------------------------------------------------------
# How the pages and the CLI say it


def rf_text(totals: dict[str, Any]) -> str:
    """'435 px', or '435×499 px' when height and width differ; '—' without a map."""
    h, w = totals.get("receptive_field"), totals.get("receptive_field_w")
    if h is None:
        return "—"
    return f"{h:,} px" if w in (None, h) else f"{h:,}×{w:,} px"


def rf_help(totals: dict[str, Any]) -> str:
    """The Build metric's tooltip: where the receptive field is read and how exact it is."""
    return (f"What one unit of the last spatial feature map sees of the input "
            f"({totals.get('receptive_field_at', '')}), before global pooling, flatten or the "
            f"classifier; {totals.get('receptive_field_note', '')}. {WHOLE_IMAGE}")


def rf_caption(totals: dict[str, Any]) -> str | None:
    """The sentence to show beside the metric when the receptive field exceeds the image."""
    shape = totals.get("input_shape")
    h, w = totals.get("receptive_field"), totals.get("receptive_field_w")
    if not shape or h is None or (h <= shape[1] and (w or h) <= shape[2]):
        return None
    return f"Receptive field {rf_text(totals)} on a {shape[1]}×{shape[2]} image. {WHOLE_IMAGE}"


__all__ = ["ONE", "RF", "WHOLE_IMAGE", "Field", "function_rule", "generic", "input_field",
           "merge", "module_rule", "rf_caption", "rf_help", "rf_text", "sizes", "standard_axes"]
