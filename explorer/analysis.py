"""Layer table, totals and exact receptive fields of a CNN (d2l 7.1-8.7; torchinfo; torch.fx).

``analyze`` runs torchinfo once (one real forward pass at batch 1, in eval mode) for output shapes,
parameters and multiply-adds, and traces the model with ``torch.fx`` to follow every path of the
data-flow graph, so that receptive fields stay exact through residual additions and Inception or
DenseNet concatenations (Araujo et al. 2019, "Computing receptive fields of CNNs", Distill).
The spatial sizes that the receptive-field rules need come from the same forward pass: hooks record
each leaf module's output as a meta tensor, and the few functions between modules (add, cat,
flatten, ...) are replayed on the meta device, where they cost no arithmetic.
"""

from __future__ import annotations

import math
import operator
import statistics
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
import torch.fx as fx
import torchinfo
import torchinfo.torchinfo as torchinfo_impl
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map_only

from explorer.errors import ConfigError

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

# One analysis at a time: the run flips eval mode and adds hooks, and fx tracing patches
# nn.Module.__call__ process-wide while it runs (see _ThreadTracer).
_LOCK = threading.Lock()

_RF = tuple[int, int, int, int]  # (rf along H, jump along H, rf along W, jump along W)
_ONE: _RF = (1, 1, 1, 1)

_CONV_FUNCS = {"conv1d", "conv2d", "conv3d"}
_WEIGHT_FUNCS = _CONV_FUNCS | {"linear"}
# Element-wise ops: with inputs of one shape the output has that shape too.
_SAME_SHAPE_OPS = {
    "add", "iadd", "add_", "sub", "isub", "sub_", "mul", "imul", "mul_", "truediv", "div",
    "relu", "relu_", "relu6", "sigmoid", "sigmoid_", "tanh", "tanh_", "gelu", "silu", "elu",
    "leaky_relu", "hardswish", "hardsigmoid", "hardtanh", "dropout", "contiguous", "clone",
}
_POOL_FUNCS = {  # name -> positional index of (kernel_size, stride, dilation)
    "max_pool1d": (1, 2, 4), "max_pool2d": (1, 2, 4), "max_pool3d": (1, 2, 4),
    "max_pool1d_with_indices": (1, 2, 4), "max_pool2d_with_indices": (1, 2, 4),
    "max_pool3d_with_indices": (1, 2, 4), "avg_pool1d": (1, 2, None), "avg_pool2d": (1, 2, None),
    "avg_pool3d": (1, 2, None), "lp_pool1d": (2, 3, None), "lp_pool2d": (2, 3, None),
}
_ADAPTIVE_FUNCS = {
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
    "adaptive_max_pool2d", "adaptive_max_pool3d", "adaptive_max_pool1d_with_indices",
    "adaptive_max_pool2d_with_indices", "adaptive_max_pool3d_with_indices",
}
# Ops that change the map's size but neither widen the receptive field nor change the jump.
_CROP_OR_PAD = {"getitem", "pad", "narrow", "constant_pad_nd"}
_ADAPTIVE_MODULES = (
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)
_WINDOW_MODULES = (
    nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd, nn.modules.pooling._LPPoolNd,
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
# Receptive-field rules (lecture: each conv/pool adds (K-1)×jump and multiplies the jump by S)
# ----------------------------------------------------------------------------------------------

def _spatial(shape: Sequence[int] | None) -> tuple[int, int] | None:
    """(H, W) of an (N, C, H, W) shape; (L, 1) for (N, C, L); None when space is gone."""
    if shape is None or len(shape) < 3:
        return None
    if len(shape) == 3:
        return int(shape[2]), 1
    return int(shape[-2]), int(shape[-1])


def _hw(value: Any, n_spatial: int, default: int = 1) -> tuple[int, int]:
    """A kernel/stride/dilation argument (int or tuple) as its (H, W) pair."""
    if value is None or (isinstance(value, Sequence) and len(value) == 0):
        return default, default
    if isinstance(value, int):
        value = (value,) * max(1, n_spatial)
    value = tuple(int(v) for v in value)
    if n_spatial <= 1 or len(value) == 1:
        return value[0], 1
    return value[-2], value[-1]


def _window(rf: _RF, k: tuple[int, int], s: tuple[int, int], d: tuple[int, int]) -> _RF:
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


def _adaptive(rf: _RF, in_sp: tuple[int, int], out_sp: tuple[int, int]) -> _RF:
    (kh, sh), (kw, sw) = _adaptive_1d(in_sp[0], out_sp[0]), _adaptive_1d(in_sp[1], out_sp[1])
    return _window(rf, (kh, kw), (sh, sw), (1, 1))


def _collapse(rf: _RF, in_sp: tuple[int, int]) -> _RF:
    """Flatten, Linear, a global mean: one kernel spanning the whole remaining map."""
    return _window(rf, in_sp, in_sp, (1, 1))


def _max_rf(rfs: Iterable[_RF]) -> _RF | None:
    rfs = list(rfs)
    if not rfs:
        return None
    # Through an add or a cat each output pixel sees the union of what its inputs see.
    return (max(r[0] for r in rfs), max(r[1] for r in rfs),
            max(r[2] for r in rfs), max(r[3] for r in rfs))


def _generic(base: _RF, in_shape: Sequence[int] | None, out_shape: Sequence[int] | None,
             keeps_rf: bool = False) -> tuple[_RF, bool]:
    """Rule for an op without a kernel: keep the RF, collapse it, or flag it as inexact."""
    in_sp, out_sp = _spatial(in_shape), _spatial(out_shape)
    if in_sp is None or out_shape is None:
        return base, True
    if out_sp is None:
        return _collapse(base, in_sp), True
    if out_sp == in_sp or keeps_rf:
        return base, True
    return base, False  # upsampling, transposed conv, ...: not covered by the rules


def _module_rule(mod: nn.Module, base: _RF, in_shape: Sequence[int] | None,
                 out_shape: Sequence[int] | None) -> tuple[_RF, bool]:
    """Receptive field and jump at the output of a leaf module; the flag says whether exact."""
    in_sp, out_sp = _spatial(in_shape), _spatial(out_shape)
    if in_sp is None:
        return base, True
    n_sp = len(in_shape) - 2
    if isinstance(mod, nn.modules.conv._ConvNd):
        if mod.transposed:
            return base, False
        return _window(base, _hw(mod.kernel_size, n_sp), _hw(mod.stride, n_sp),
                       _hw(mod.dilation, n_sp)), True
    if isinstance(mod, _WINDOW_MODULES):
        k = _hw(mod.kernel_size, n_sp)
        s = _hw(mod.stride, n_sp) if mod.stride else k
        return _window(base, k, s, _hw(getattr(mod, "dilation", 1), n_sp)), True
    if isinstance(mod, _ADAPTIVE_MODULES) and out_sp is not None:
        return _adaptive(base, in_sp, out_sp), True
    if isinstance(mod, (nn.Flatten, nn.Linear)):
        return _collapse(base, in_sp), True
    return _generic(base, in_shape, out_shape)


def _fn_name(node: fx.Node) -> str:
    """"conv2d", "max_pool2d", "add", "view", ...: the name the rules key on."""
    if node.op == "call_method":
        return str(node.target)
    if node.target is operator.getitem:
        return "getitem"
    return getattr(node.target, "__name__", str(node.target)).lstrip("_")


def _arg(args: Sequence[Any], kwargs: dict[str, Any], pos: int | None, name: str,
         default: Any) -> Any:
    if name in kwargs:
        return kwargs[name]
    if pos is not None and len(args) > pos:
        return args[pos]
    return default


def _function_rule(name: str, args: Sequence[Any], kwargs: dict[str, Any], base: _RF,
                   in_shape: Sequence[int] | None,
                   out_shape: Sequence[int] | None) -> tuple[_RF, bool]:
    """Receptive field at the output of a function call (F.conv2d, F.max_pool2d, add, cat, ...)."""
    in_sp, out_sp = _spatial(in_shape), _spatial(out_shape)
    if in_sp is not None:
        n_sp = len(in_shape) - 2
        if name in _CONV_FUNCS:
            weight = _arg(args, kwargs, 1, "weight", None)
            k = _hw(tuple(weight.shape[2:]), n_sp)
            return _window(base, k, _hw(_arg(args, kwargs, 3, "stride", 1), n_sp),
                           _hw(_arg(args, kwargs, 5, "dilation", 1), n_sp)), True
        if name in _POOL_FUNCS:
            kp, sp, dp = _POOL_FUNCS[name]
            k = _hw(_arg(args, kwargs, kp, "kernel_size", 1), n_sp)
            s = _hw(_arg(args, kwargs, sp, "stride", None), n_sp, default=0)
            s = k if s == (0, 0) else s
            d = _hw(_arg(args, kwargs, dp, "dilation", 1), n_sp) if dp else (1, 1)
            return _window(base, k, s, d), True
        if name in _ADAPTIVE_FUNCS and out_sp is not None:
            return _adaptive(base, in_sp, out_sp), True
        if name == "linear":
            return _collapse(base, in_sp), True
    return _generic(base, in_shape, out_shape, keeps_rf=name in _CROP_OR_PAD)


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    for leaf in tree_flatten(value)[0]:
        if isinstance(leaf, torch.Tensor):
            return leaf
    return None


class _Meta:
    """A module output recorded during the real forward pass: its size, strides and dtype.

    A meta tensor is made from it only when a function between modules needs one as input.
    """

    __slots__ = ("shape", "stride", "dtype", "_tensor")

    def __init__(self, t: torch.Tensor):
        self.shape, self.stride, self.dtype = tuple(t.shape), t.stride(), t.dtype
        self._tensor: torch.Tensor | None = None

    def tensor(self) -> torch.Tensor:
        if self._tensor is None:
            self._tensor = torch.empty_strided(self.shape, self.stride, dtype=self.dtype,
                                               device="meta")
        return self._tensor


def _record(value: Any) -> Any:
    if type(value) is torch.Tensor:
        return _Meta(value)
    return _to_meta(value)


def _shape(value: Any) -> tuple[int, ...] | None:
    if isinstance(value, _Meta):
        return value.shape
    t = _first_tensor(value)
    return None if t is None else tuple(t.shape)


def _to_meta(value: Any) -> Any:
    return tree_map_only(
        torch.Tensor,
        lambda t: torch.empty_strided(t.size(), t.stride(), dtype=t.dtype, device="meta"),
        value)


@dataclass
class _GraphRF:
    """Receptive fields on the fx graph (or the fallback chain), looked up by module call."""

    node_rf: dict[Any, _RF]
    last_by_key: dict[str, Any]  # nn_module_stack key ("layer1.0.relu@1") -> its last node
    key_path: dict[str, str]  # nn_module_stack key -> qualified module name
    output: _RF | None
    head_input: _RF | None
    head_where: str
    exact: bool
    depth: int  # conv/linear layers on the longest input-to-output path
    note: str
    order: dict[Any, int] = field(default_factory=dict)  # node -> position in the graph

    def at(self, path: str, call: int) -> _RF | None:
        """RF at the output of the call-th call of the module named path ("" = the model)."""
        if path == "":
            return self.output
        node = self.last_by_key.get(path if call == 0 else f"{path}@{call}")
        if node is None:  # a container never called itself (ModuleList): its last inner node
            prefix = path + "."
            inner = [n for k, n in self.last_by_key.items()
                     if self.key_path.get(k, "").startswith(prefix)]
            node = max(inner, key=lambda n: self.order.get(n, 0), default=None)
        return None if node is None else self.node_rf.get(node)


class _ThreadTracer(fx.Tracer):
    """fx's tracer, transparent to other threads.

    While it traces, fx patches ``nn.Module.__call__`` and ``__getattr__`` for the whole process;
    without this, a training step running in another thread at that moment would fail with
    "module is not installed as a submodule". Calls from other threads run the module normally.
    """

    def __init__(self) -> None:
        super().__init__()
        self._owner = threading.get_ident()

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        if threading.get_ident() != self._owner:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        if threading.get_ident() != self._owner:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def create_node(self, kind: str, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                    name: str | None = None, type_expr: Any | None = None) -> fx.Node:
        # The base method's extras (stack traces, mutation checks, preserved meta) are all off
        # for this tracer; its generic copy of the module stack costs 10% of the trace.
        node = self.graph.create_node(kind, target, args, kwargs, name, type_expr)
        if self.module_stack:
            node.meta["nn_module_stack"] = OrderedDict(self.module_stack)
        return node


def _trace(model: nn.Module) -> fx.Graph:
    # Tracer.trace returns the graph without GraphModule code generation (symbolic_trace's).
    return _ThreadTracer().trace(model)


def _graph_rf(model: nn.Module, modules: dict[str, nn.Module], graph: fx.Graph,
              recorded: dict[str, list[Any]], input_meta: torch.Tensor) -> _GraphRF:
    """Walk the traced graph once: replay functions on meta tensors and propagate the RF."""
    env: dict[fx.Node, Any] = {}
    node_rf: dict[fx.Node, _RF] = {}
    longest: dict[fx.Node, int] = {}
    calls: dict[str, int] = defaultdict(int)
    last_by_key: dict[str, fx.Node] = {}
    key_path: dict[str, str] = {}
    order: dict[fx.Node, int] = {}
    exact, inexact_ops = True, []
    head_input: _RF | None = None
    head_where = ""
    has_head = "head" in modules
    first_placeholder = True
    output: _RF | None = None
    weight_types = (nn.modules.conv._ConvNd, nn.Linear)
    collapsing_types = (*_ADAPTIVE_MODULES, nn.Flatten, nn.Linear)

    def materialize(n: fx.Node) -> Any:
        v = env[n]
        return v.tensor() if isinstance(v, _Meta) else v

    for index, node in enumerate(graph.nodes):
        order[node] = index
        inputs = node.all_input_nodes
        ins = [a for a in inputs if a in node_rf]
        if not ins:
            base = None
        elif len(ins) == 1:
            base = node_rf[ins[0]]
        else:
            base = _max_rf(node_rf[a] for a in ins)
        longest[node] = max((longest[a] for a in inputs), default=0)
        op = node.op
        rf: _RF | None = None
        if op == "call_module":
            outs, k = recorded[node.target], calls[node.target]
            calls[node.target] += 1
            if k >= len(outs):
                raise RuntimeError(f"module {node.target} ran fewer times than traced")
            env[node] = outs[k]
        elif op in ("call_function", "call_method"):
            args, kwargs = node.args, node.kwargs
            values = [env[a] for a in inputs]
            if _fn_name(node) in _SAME_SHAPE_OPS and len({_shape(v) for v in values}) == 1 \
                    and _shape(values[0]) is not None:
                # add, relu, ... of equal shapes: skip the meta kernel (the slowest part here)
                env[node] = values[0]
            else:
                args = fx.node.map_arg(node.args, materialize)
                kwargs = fx.node.map_arg(node.kwargs, materialize)
                if op == "call_method":
                    env[node] = getattr(args[0], node.target)(*args[1:], **kwargs)
                else:
                    env[node] = node.target(*args, **kwargs)
        elif op == "placeholder":
            if first_placeholder:
                env[node], rf, first_placeholder = input_meta, _ONE, False
            else:
                env[node] = node.args[0] if node.args else None
        elif op == "get_attr":
            obj: Any = model
            for atom in str(node.target).split("."):
                obj = getattr(obj, atom)
            env[node] = _to_meta(obj)
        elif op == "output":
            output = base
            break
        out_shape = _shape(env[node]) if base is not None else None
        # Sizes and other Python values carry no receptive field; tuples of tensors do.
        if out_shape is not None:
            # The spatial input is the first argument that carries a receptive field.
            in_shape = _shape(env[ins[0]])
            if op == "call_module":
                module = modules[node.target]
                rf, ok = _module_rule(module, base, in_shape, out_shape)
            else:
                module = None
                rf, ok = _function_rule(_fn_name(node), args, kwargs, base, in_shape,
                                        out_shape)
            if not ok:
                exact = False
                inexact_ops.append(str(node.target))
            if not head_where:
                if has_head:
                    collapses = any(v[0] == "head" or str(v[0]).startswith("head.")
                                    for v in node.meta.get("nn_module_stack", {}).values())
                else:
                    collapses = _spatial(in_shape) is not None and (
                        _spatial(out_shape) is None
                        or isinstance(module, collapsing_types)
                        or (module is None and _fn_name(node) in _ADAPTIVE_FUNCS))
                if collapses:
                    head_input = base
                    head_where = "input of head" if has_head else (
                        f"input of {node.target if module is not None else node.name}")
        if op == "call_module":
            if isinstance(modules[node.target], weight_types):
                longest[node] += 1
        elif op == "call_function" and _fn_name(node) in _WEIGHT_FUNCS:
            longest[node] += 1
        if rf is not None:
            node_rf[node] = rf
            stack = node.meta.get("nn_module_stack")
            if stack:
                for key, value in stack.items():
                    last_by_key[key] = node
                    key_path[key] = value[0]
    out_node = next(n for n in reversed(graph.nodes) if n.op == "output")
    note = "exact, on the torch.fx graph"
    if not exact:
        note = ("approximate: these ops change the map's size in a way the rules do not cover: "
                + ", ".join(sorted(set(inexact_ops))))
    if not head_where:
        head_input, head_where = output, "network output"
    return _GraphRF(node_rf, last_by_key, key_path, output, head_input, head_where, exact,
                    longest.get(out_node, 0), note, order)


def _sequential_rf(summary: list[Any], reason: str) -> _GraphRF:
    """Fallback when tracing fails: follow the leaf layers in execution order as a chain."""
    rf = _ONE
    node_rf: dict[Any, _RF] = {}
    last_by_key: dict[str, Any] = {}
    head_input, head_where = None, ""
    counts: dict[int, int] = defaultdict(int)
    stack: list[tuple[int, str]] = []  # (depth, key) of the containers around the current row
    names = {id(m): n for n, m in summary[0].module.named_modules()} if summary else {}
    has_head = "head" in names.values()
    n_weight = 0
    for info in summary:
        if not info.executed:
            continue
        name = names.get(id(info.module), info.var_name)
        k = counts[id(info.module)]
        counts[id(info.module)] += 1
        key = name if k == 0 else f"{name}@{k}"
        while stack and stack[-1][0] >= info.depth:
            stack.pop()
        if info.depth > 0:
            stack.append((info.depth, key))
        if name == "head" and not head_where:
            head_input, head_where = rf, "input of head"
        if not info.is_leaf_layer:
            continue
        in_sp = _spatial(info.input_size)
        collapses = in_sp is not None and (
            _spatial(info.output_size) is None
            or isinstance(info.module, (*_ADAPTIVE_MODULES, nn.Flatten, nn.Linear)))
        if not head_where and not has_head and collapses:
            head_input, head_where = rf, f"input of {name}"
        rf, _ = _module_rule(info.module, rf, info.input_size or None, info.output_size or None)
        n_weight += isinstance(info.module, (nn.modules.conv._ConvNd, nn.Linear))
        for _, ckey in stack:
            node_rf[ckey] = rf
            last_by_key[ckey] = ckey
    if not head_where:
        head_input, head_where = rf, "network output"
    return _GraphRF(node_rf, last_by_key, {}, rf, head_input, head_where, False, n_weight,
                    f"approximate: {reason}, so the layers were treated as one chain in "
                    "execution order")


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
         shape: tuple[int, int, int]) -> tuple[list[Any], _GraphRF]:
    """torchinfo's forward pass plus the receptive fields, in eval mode, model left as it was."""
    device, dtype = _device_dtype(model)
    graph, reason = None, ""
    recorded: dict[str, list[Any]] = {}
    handles = []
    with _LOCK, _Untouched(model):
        try:
            graph = _trace(model)
        except Exception as exc:  # data-dependent control flow, untraceable Python, ...
            reason = _reason("torch.fx tracing", exc)
        try:
            if graph is not None:
                for node in graph.nodes:
                    if node.op == "call_module" and node.target not in recorded:
                        outs: list[Any] = []
                        recorded[node.target] = outs

                        def hook(_m: nn.Module, _i: Any, out: Any, _outs: list = outs) -> None:
                            _outs.append(_record(out))

                        handles.append(modules[node.target].register_forward_hook(hook))
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
        finally:
            for h in handles:
                h.remove()
    if graph is not None:
        try:
            meta_input = torch.empty((1, *shape), dtype=dtype, device="meta")
            return summary, _graph_rf(model, modules, graph, recorded, meta_input)
        except Exception as exc:
            reason = _reason("following the traced graph", exc)
    return summary, _sequential_rf(summary, reason)


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


def _table(modules: dict[str, nn.Module], summary: list[Any], rfs: _GraphRF,
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
        cols["receptive_field"].append(None if rf is None else rf[0])
        cols["receptive_field_w"].append(None if rf is None else rf[2])
        cols["jump"].append(None if rf is None else rf[1])
        cols["jump_w"].append(None if rf is None else rf[3])
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
    receptive_field/_w/_jump at the input of the classifier head (the module named ``head``,
    else the first node that collapses space), receptive_field_at, receptive_field_exact,
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
    head = rfs.head_input
    totals: dict[str, Any] = {
        "total_params": sum(p.numel() for p in params),
        "trainable_params": sum(p.numel() for p in params if p.requires_grad),
        "param_bytes": sum(p.numel() * p.element_size() for p in params),
        "total_macs": int(table["macs"].to_numpy()[leaf].sum()),
        "total_macs_lecture": int(table["macs_lecture"].to_numpy()[leaf].sum()),
        "activation_bytes": int(table["activation_bytes"].to_numpy()[leaf].sum()),
        "receptive_field": None if head is None else head[0],
        "receptive_field_w": None if head is None else head[2],
        "receptive_field_jump": None if head is None else head[1],
        "receptive_field_at": rfs.head_where,
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
    """Receptive field and jump along H at the output of every module (last call wins).

    The key "" is the whole network's output. Exact through residual adds and concatenations
    (the largest over the incoming paths); see ``analyze`` for the rules.
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
