"""Layer table, totals and exact receptive fields of a CNN (d2l 7.1-8.7; torchinfo).

``analyze`` runs torchinfo once (one real forward pass at batch 1, in eval mode) for output shapes,
parameters and multiply-adds, and captures the model's data-flow graph on the meta device to
follow every path, so that receptive fields stay exact through residual additions and Inception or
DenseNet concatenations (``explorer.rfgraph``; the rules and what the network's receptive field
means are in ``explorer.receptive``). Nothing process-wide is locked or patched: analyses of
different models run at the same time; one model object is analysed by one thread at a time.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
import torchinfo
import torchinfo.torchinfo as torchinfo_impl
from torch import nn

from explorer.errors import ConfigError
from explorer.rfgraph import GraphRF, capture, graph_rf, model_lock, sequential_rf

MACS_CONVENTIONS = """\
Multiply-adds (MACs) are counted per image, in two conventions:

- **Lecture convention** (`macs_lecture`): a convolution costs
  C_out × H' × W' × (C_in / groups × K_h × K_w) and a fully connected layer in × out.
  The bias is not counted, and batch norm, pooling and activations count 0.
- **torchinfo convention** (`macs`): every weight *and bias* of a convolution is multiplied by the
  number of output pixels (H' × W'), and every parameter of the other layers (Linear, BatchNorm) is
  counted once per image. It is therefore slightly larger: for a convolution the difference is
  exactly the bias term C_out × H' × W'.

A container's MACs are the sum over the layers inside it.
"""

MACS_NOTE = (
    "per image; macs/total_macs: torchinfo convention (conv weights and bias × output pixels, "
    "Linear and BatchNorm parameters once); macs_lecture/total_macs_lecture: lecture convention "
    "(conv C_out×H'×W'×C_in/groups×Kh×Kw, linear in×out, no bias, everything else 0)."
)

@dataclass(frozen=True, eq=False)  # eq=False: DataFrames have no single truth value
class Analysis:
    """One model's layer table (one row per torchinfo row, containers included) and totals."""

    table: pd.DataFrame  # columns: see TABLE_COLUMNS
    totals: dict[str, Any]  # see analyze() for the keys
    input_shape: tuple[int, int, int]  # (C, H, W) the model was analysed at
    batch_size: int = 1  # activation_bytes are for this many images; MACs are per image
    model_name: str = ""  # class name of the analysed model
    macs_conventions: str = field(default=MACS_CONVENTIONS, repr=False)

    def leaves(self) -> pd.DataFrame:
        """The rows of layers with no children (what the totals sum over)."""
        return self.table[self.table["is_leaf"]]

    def row(self, name: str) -> pd.Series:
        """The first row of the module with this qualified name, e.g. ``stage2.block1.conv1``."""
        rows = self.table[self.table["name"] == name]
        if rows.empty:
            raise ConfigError(f"the model has no layer named {name!r}; pick a name from the "
                              f"'name' column of the table.")
        return rows.iloc[0]


TABLE_COLUMNS = (
    "name", "type", "depth", "is_leaf", "is_repeat", "input_shape", "output_shape", "params",
    "trainable_params", "macs", "macs_lecture", "receptive_field", "receptive_field_w", "jump",
    "jump_w", "activation_bytes",
)


# ----------------------------------------------------------------------------------------------
# Running the model without disturbing it
# ----------------------------------------------------------------------------------------------

def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.float32


def _check_shape(input_shape: Any) -> tuple[int, int, int]:
    try:
        shape = tuple(int(v) for v in input_shape)
        valid = len(shape) == 3 and all(v > 0 for v in shape) and all(
            float(v) == int(v) for v in input_shape)
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ConfigError(f"input_shape must be three positive whole numbers (channels, height, "
                          f"width), e.g. (1, 28, 28); got {input_shape!r}.")
    return shape  # type: ignore[return-value]


_EVAL_READ_ONLY = {nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d}


class _Untouched:
    """Run a model in eval mode, then restore every module's train/eval flag and buffer."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self) -> nn.Module:
        modules = list(self.model.modules())
        self.flags = [(m, m.training) for m in modules]
        # PyTorch's own batch norms do not write their statistics in eval mode; buffers of any
        # other module are copied in case its forward writes them anyway. The version counter
        # tells which buffers were written in place.
        self.buffers = [(b, b._version, None if type(m) in _EVAL_READ_ONLY else b.detach().clone())
                        for m in modules for b in m._buffers.values() if b is not None]
        self.model.eval()
        return self.model

    def __exit__(self, *exc: object) -> None:
        for m, flag in self.flags:
            m.training = flag
        with torch.no_grad():
            for b, version, saved in self.buffers:
                if saved is not None and b._version != version:
                    b.copy_(saved)


def _torchinfo(model: nn.Module, shape: tuple[int, ...], device: torch.device,
               dtype: torch.dtype) -> list[Any]:
    stats = torchinfo.summary(model, input_size=(1, *shape), verbose=0, device=device,
                              dtypes=[dtype], mode="eval")
    # torchinfo keeps every summary in a module-level dict keyed by class name, which would pin
    # the model and its weights in memory for the life of the process.
    cache = torchinfo_impl._cached_forward_pass
    if cache.get(model.__class__.__name__) is stats.summary_list:
        del cache[model.__class__.__name__]
    return stats.summary_list


def _reason(stage: str, exc: Exception) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{stage} failed with {type(exc).__name__}: {first}"


def _run(model: nn.Module, modules: dict[str, nn.Module],
         shape: tuple[int, int, int]) -> tuple[list[Any], GraphRF]:
    """torchinfo's forward pass plus the receptive fields, in eval mode, model left as it was."""
    device, dtype = _device_dtype(model)
    nodes, reason = None, ""
    with model_lock(model), _Untouched(model):
        try:
            nodes = capture(model, torch.empty((1, *shape), dtype=dtype, device="meta"))
        except Exception as exc:  # a forward that reads tensor values, untraceable Python, ...
            reason = _reason("capturing the data-flow graph", exc)
        try:
            summary = _torchinfo(model, shape, device, dtype)
        except RuntimeError as exc:
            cause = exc.__cause__ or exc
            msg = str(cause).strip().splitlines()[0] if str(cause).strip() else repr(cause)
            c, h, w = shape
            raise ConfigError(
                f"the model cannot run on a {c}×{h}×{w} input ({msg}); check that "
                f"input_shape is (channels, height, width) as the model expects and that the "
                f"image is large enough for its downsampling layers.") from None
    if nodes is not None:
        try:
            return summary, graph_rf(modules, nodes)
        except Exception as exc:
            reason = _reason("following the captured graph", exc)
    return summary, sequential_rf(summary, reason)


# ----------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------

def _lecture_macs(module: nn.Module, in_size: Sequence[int], out_size: Sequence[int]) -> int:
    """Multiply-adds in the lectures' convention, per image (bias not counted)."""
    if not out_size:
        return 0
    if isinstance(module, nn.modules.conv._ConvNd):
        w = module.weight
        if module.transposed:  # every input pixel scatters a C_out/groups × K kernel
            return math.prod(in_size[1:]) * math.prod(w.shape[1:]) if in_size else 0
        return math.prod(out_size[1:]) * math.prod(w.shape[1:])  # C_out×H'×W' × C_in/g×Kh×Kw
    if isinstance(module, nn.Linear):
        return module.in_features * math.prod(out_size[1:])  # in × out (per row, if any)
    return 0


def _size(size: Any) -> tuple[int, ...] | None:
    if not size or not all(isinstance(v, int) for v in size):
        return None
    return tuple(size[1:])


def _table(modules: dict[str, nn.Module], summary: list[Any], rfs: GraphRF,
           batch_size: int) -> pd.DataFrame:
    names = {id(m): n for n, m in modules.items()}
    calls: dict[int, int] = defaultdict(int)
    lecture = {id(i): _lecture_macs(i.module, i.input_size, i.output_size)
               for i in summary if i.is_leaf_layer}
    cols: dict[str, list[Any]] = {c: [] for c in TABLE_COLUMNS}
    for info in summary:
        name = names.get(id(info.module), info.var_name)
        k = calls[id(info.module)]
        if info.executed:
            calls[id(info.module)] += 1
        rf = rfs.at(name, k)
        if info.is_leaf_layer:
            macs, lec = info.macs, lecture[id(info)]
        else:  # a container: the sum over the layers inside it
            leaves = [c for c in info.children if c.is_leaf_layer]
            macs = sum(c.macs for c in leaves)
            lec = sum(lecture[id(c)] for c in leaves)
        repeat = info.is_recursive  # a module called again: its parameters are listed once
        cols["name"].append(name)
        cols["type"].append(info.class_name)
        cols["depth"].append(info.depth)
        cols["is_leaf"].append(info.is_leaf_layer)
        cols["is_repeat"].append(repeat)
        cols["input_shape"].append(_size(info.input_size))
        cols["output_shape"].append(_size(info.output_size))
        cols["params"].append(0 if repeat else info.num_params)
        cols["trainable_params"].append(0 if repeat else info.trainable_params)
        cols["macs"].append(macs)
        cols["macs_lecture"].append(lec)
        rh, jh, rw, jw = (None,) * 4 if rf is None else rf.rf
        cols["receptive_field"].append(rh)
        cols["receptive_field_w"].append(rw)
        cols["jump"].append(jh)
        cols["jump_w"].append(jw)
        cols["activation_bytes"].append(info.output_bytes * batch_size if info.executed else 0)
    data: dict[str, Any] = dict(cols)
    for col in ("receptive_field", "receptive_field_w", "jump", "jump_w"):
        data[col] = pd.array(cols[col], dtype="Int64")  # None where no map is left
    for col in ("input_shape", "output_shape"):
        data[col] = pd.Series(cols[col], dtype=object)
    return pd.DataFrame(data)


def _count(summary: list[Any], kind: type | tuple[type, ...], name_part: str = "") -> int:
    seen = {id(i.module) for i in summary if i.executed and (
        isinstance(i.module, kind) or (name_part and name_part in i.class_name))}
    return len(seen)


def analyze(model_or_spec: Any, input_shape: Sequence[int] | None = None,
            batch_size: int = 1) -> Analysis:
    """Layer table and totals of a model or spec: shapes, params, MACs, receptive fields (d2l 7-8).

    Args:
        model_or_spec: an ``nn.Module``, or a spec (anything with ``input_shape`` and ``family``)
            that ``explorer.models.build`` turns into one.
        input_shape: (C, H, W) without the batch; overrides the spec's, required for a module.
        batch_size: activation_bytes are reported for this many images (MACs stay per image).

    The model is run once in eval mode at batch 1; its train/eval flags and buffers (batch-norm
    running statistics) are restored afterwards. Totals: total_params, trainable_params,
    param_bytes, total_macs (torchinfo), total_macs_lecture, activation_bytes (leaf outputs),
    receptive_field, receptive_field_w, receptive_field_jump, receptive_field_jump_w (the
    network's: one unit of its last spatial feature map, see ``explorer.receptive``; also the
    table's whole-network row ""), receptive_field_at, receptive_field_exact,
    receptive_field_note, depth (conv and linear layers on the longest input-to-output path,
    the number in "ResNet-18"), n_weight_layers, n_conv, n_linear, n_bn, macs_note,
    output_shape, input_shape, batch_size.
    """
    if isinstance(model_or_spec, nn.Module):
        model = model_or_spec
        if input_shape is None:
            raise ConfigError("input_shape is required when analysing an nn.Module; pass "
                              "(channels, height, width), e.g. (1, 28, 28).")
        shape = _check_shape(input_shape)
    elif hasattr(model_or_spec, "input_shape") and hasattr(model_or_spec, "family"):
        from explorer.models import build  # lazy: the builders import torchvision-sized code

        shape = _check_shape(model_or_spec.input_shape if input_shape is None else input_shape)
        model = build(model_or_spec)
    else:
        raise ConfigError(f"analyze() takes an nn.Module or a spec from explorer.specs, not "
                          f"{type(model_or_spec).__name__}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a whole number of at least 1; got {batch_size!r}.")

    modules = dict(model.named_modules())
    summary, rfs = _run(model, modules, shape)
    table = _table(modules, summary, rfs, batch_size)
    leaf = table["is_leaf"].to_numpy()
    params = list(model.parameters())
    n_conv = _count(summary, nn.modules.conv._ConvNd)
    n_linear = _count(summary, nn.Linear)
    net = None if rfs.network is None else rfs.network.rf
    totals: dict[str, Any] = {
        "total_params": sum(p.numel() for p in params),
        "trainable_params": sum(p.numel() for p in params if p.requires_grad),
        "param_bytes": sum(p.numel() * p.element_size() for p in params),
        "total_macs": int(table["macs"].to_numpy()[leaf].sum()),
        "total_macs_lecture": int(table["macs_lecture"].to_numpy()[leaf].sum()),
        "activation_bytes": int(table["activation_bytes"].to_numpy()[leaf].sum()),
        "receptive_field": None if net is None else net[0],
        "receptive_field_w": None if net is None else net[2],
        "receptive_field_jump": None if net is None else net[1],
        "receptive_field_jump_w": None if net is None else net[3],
        "receptive_field_at": rfs.where,
        "receptive_field_exact": rfs.exact,
        "receptive_field_note": rfs.note,
        "depth": rfs.depth,
        "n_weight_layers": n_conv + n_linear,
        "n_conv": n_conv,
        "n_linear": n_linear,
        "n_bn": _count(summary, nn.modules.batchnorm._BatchNorm, "BatchNorm"),
        "macs_note": MACS_NOTE,
        "output_shape": table["output_shape"].iloc[0] if len(table) else None,
        "input_shape": shape,
        "batch_size": batch_size,
    }
    return Analysis(table=table, totals=totals, input_shape=shape, batch_size=batch_size,
                    model_name=type(model).__name__)


def receptive_fields(model: nn.Module, input_shape: Sequence[int]) -> dict[str, tuple[int, int]]:
    """Receptive field and jump along H at the output of every module that ends in a map.

    The key "" is the network's receptive field (its last spatial feature map's). Exact through
    residual adds and concatenations (the largest over the incoming paths); see ``analyze``.
    """
    table = analyze(model, input_shape).table
    return {row.name: (int(row.receptive_field), int(row.jump))
            for row in table.itertuples() if not pd.isna(row.receptive_field)}


def benchmark_analyze(model: nn.Module, input_shape: Sequence[int],
                      repeats: int = 5) -> dict[str, float]:
    """Median wall time of ``analyze`` against a plain ``torchinfo.summary`` on the same model."""
    shape = _check_shape(input_shape)
    device, _ = _device_dtype(model)

    def plain() -> None:
        stats = torchinfo.summary(model, input_size=(1, *shape), verbose=0, device=device)
        torchinfo_impl._cached_forward_pass.pop(model.__class__.__name__, stats)

    def timed(fn: Callable[[], Any]) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    flags = [(m, m.training) for m in model.modules()]  # torchinfo resets them all to one flag
    try:
        analyze(model, shape)  # warm-up: first calls pay for lazy imports and allocator growth
        plain()
        a, t = [], []
        for _ in range(max(1, repeats)):
            a.append(timed(lambda: analyze(model, shape)))
            t.append(timed(plain))
    finally:
        for m, flag in flags:
            m.training = flag
    a_med, t_med = statistics.median(a), statistics.median(t)
    return {"analyze_median_s": round(a_med, 4), "torchinfo_median_s": round(t_med, 4),
            "ratio": round(a_med / t_med, 3)}


__all__ = ["MACS_CONVENTIONS", "MACS_NOTE", "TABLE_COLUMNS", "Analysis", "analyze",
           "benchmark_analyze", "receptive_fields"]
