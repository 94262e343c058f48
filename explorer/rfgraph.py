"""Receptive fields on a model's torch.fx graph, exact through adds and concatenations.

The model is traced with ``torch.fx`` so that every path of the data-flow graph is followed
(residual additions, Inception and DenseNet concatenations, squeeze-excitation products). The
spatial sizes the rules need come from the real forward pass that ``explorer.analysis`` runs:
hooks record each leaf module's output as a meta tensor, and the few functions between modules
(add, cat, flatten, permute, ...) are replayed on the meta device, where they cost no arithmetic.
When tracing fails, the leaf layers are followed as one chain in execution order instead.
The rules themselves are in ``explorer.receptive``.
"""

from __future__ import annotations

import operator
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map_only

from explorer.receptive import (
    CONV_FUNCS,
    Field,
    function_rule,
    input_field,
    merge,
    module_rule,
)

_WEIGHT_FUNCS = CONV_FUNCS | {"linear"}
# Element-wise ops: with inputs of one shape the output has that shape too.
_SAME_SHAPE_OPS = {
    "add", "iadd", "add_", "sub", "isub", "sub_", "mul", "imul", "mul_", "truediv", "div",
    "relu", "relu_", "relu6", "sigmoid", "sigmoid_", "tanh", "tanh_", "gelu", "silu", "elu",
    "leaky_relu", "hardswish", "hardsigmoid", "hardtanh", "dropout", "contiguous", "clone",
}


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


def record(value: Any) -> Any:
    """What a forward hook keeps of a module's output: sizes only, no data."""
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
class GraphRF:
    """Receptive fields on the fx graph (or the fallback chain), looked up by module call."""

    fields: dict[Any, Field]
    last_by_key: dict[str, Any]  # nn_module_stack key ("layer1.0.relu@1") -> its last node
    key_path: dict[str, str]  # nn_module_stack key -> qualified module name
    network: Field | None  # one unit of the last spatial feature map
    where: str  # "output of layer4.1.relu": where that map is
    exact: bool
    depth: int  # conv/linear layers on the longest input-to-output path
    note: str
    order: dict[Any, int] = field(default_factory=dict)  # node -> position in the graph

    def at(self, path: str, call: int) -> Field | None:
        """Field at the output of the call-th call of the module named path ("" = the model).

        None where the output is no longer a map (after a global pool, flatten, classifier).
        """
        if path == "":
            return self.network
        node = self.last_by_key.get(path if call == 0 else f"{path}@{call}")
        if node is None:  # a container never called itself (ModuleList): its last inner node
            prefix = path + "."
            inner = [n for k, n in self.last_by_key.items()
                     if self.key_path.get(k, "").startswith(prefix)]
            node = max(inner, key=lambda n: self.order.get(n, 0), default=None)
        f = None if node is None else self.fields.get(node)
        return f if f is not None and f.is_map else None


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


def trace(model: nn.Module) -> fx.Graph:
    """The model's fx graph (Tracer.trace: no GraphModule code generation)."""
    return _ThreadTracer().trace(model)


def _fn_name(node: fx.Node) -> str:
    """"conv2d", "max_pool2d", "add", "view", ...: the name the rules key on."""
    if node.op == "call_method":
        return str(node.target)
    if node.target is operator.getitem:
        return "getitem"
    return getattr(node.target, "__name__", str(node.target)).lstrip("_")


def _where(node: fx.Node) -> str:
    """The module (and function) that produced a node: "layer4.1.relu", "stage4.block2 (relu)"."""
    if node.op == "placeholder":
        return "the input image"
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack")
    inner = str(list(stack.values())[-1][0]) if stack else ""
    return f"{inner} ({_fn_name(node)})" if inner else _fn_name(node)


def _ancestors(out: fx.Node) -> set[fx.Node]:
    seen, todo = {out}, [out]
    while todo:
        for a in todo.pop().all_input_nodes:
            if a not in seen:
                seen.add(a)
                todo.append(a)
    return seen


def graph_rf(model: nn.Module, modules: dict[str, nn.Module], graph: fx.Graph,
             recorded: dict[str, list[Any]], input_meta: torch.Tensor) -> GraphRF:
    """Walk the traced graph once: replay functions on meta tensors and propagate the fields."""
    env: dict[fx.Node, Any] = {}
    fields: dict[fx.Node, Field] = {}
    longest: dict[fx.Node, int] = {}
    calls: dict[str, int] = defaultdict(int)
    last_by_key: dict[str, fx.Node] = {}
    key_path: dict[str, str] = {}
    order: dict[fx.Node, int] = {}
    inexact_ops: list[str] = []
    mixed_at: fx.Node | None = None  # where a pooled vector first re-entered a map (SE)
    first_placeholder = True
    weight_types = (nn.modules.conv._ConvNd, nn.Linear)
    out_node: fx.Node | None = None

    def materialize(n: fx.Node) -> Any:
        v = env[n]
        return v.tensor() if isinstance(v, _Meta) else v

    for index, node in enumerate(graph.nodes):
        order[node] = index
        inputs = node.all_input_nodes
        ins = [a for a in inputs if a in fields]
        base, mixed = merge([fields[a] for a in ins])
        longest[node] = max((longest[a] for a in inputs), default=0)
        op = node.op
        f: Field | None = None
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
                env[node], first_placeholder = input_meta, False
                f = input_field(input_meta.dim())
            else:
                env[node] = node.args[0] if node.args else None
        elif op == "get_attr":
            obj: Any = model
            for atom in str(node.target).split("."):
                obj = getattr(obj, atom)
            env[node] = _to_meta(obj)
        elif op == "output":
            out_node = node
            break
        out_shape = _shape(env[node]) if base is not None else None
        # Sizes and other Python values carry no receptive field; tuples of tensors do.
        if out_shape is not None and base is not None:
            # The spatial input is the first argument that is still a map (else the first).
            lead = next((a for a in ins if fields[a].is_map), ins[0])
            in_shape = _shape(env[lead])
            if op == "call_module":
                f, ok = module_rule(modules[node.target], base, in_shape, out_shape)
            else:
                f, ok = function_rule(_fn_name(node), args, kwargs, base, in_shape, out_shape)
            if not ok:
                inexact_ops.append(str(node.target))
            if mixed and mixed_at is None:
                mixed_at = node
        if op == "call_module":
            if isinstance(modules[node.target], weight_types):
                longest[node] += 1
        elif op == "call_function" and _fn_name(node) in _WEIGHT_FUNCS:
            longest[node] += 1
        if f is not None:
            fields[node] = f
            stack = node.meta.get("nn_module_stack")
            if stack:
                for key, value in stack.items():
                    last_by_key[key] = node
                    key_path[key] = value[0]
    if out_node is None:
        raise RuntimeError("the traced graph has no output")
    # The last spatial map: the last node (in execution order) that the output depends on and
    # that is still a map. Everything after it is global pooling, flatten or the classifier.
    feeds = _ancestors(out_node)
    maps = [n for n in fields if n in feeds and fields[n].is_map]
    last = max(maps, key=order.__getitem__, default=None)
    note = "exact, on the torch.fx graph"
    if inexact_ops:
        note = ("approximate: these ops change the map's size in a way the rules do not cover: "
                + ", ".join(sorted(set(inexact_ops))))
    if mixed_at is not None and last is not None and order[last] >= order[mixed_at]:
        note += (f"; from {_where(mixed_at)} on, a globally pooled vector is multiplied or added "
                 "back onto the map (squeeze-excitation), so every unit depends on the whole map")
    return GraphRF(fields, last_by_key, key_path, None if last is None else fields[last],
                   "no spatial map" if last is None else f"output of {_where(last)}",
                   not inexact_ops, longest.get(out_node, 0), note, order)


def sequential_rf(summary: list[Any], reason: str) -> GraphRF:
    """Fallback when tracing fails: follow the leaf layers in execution order as a chain."""
    field_ = input_field(4)
    fields: dict[Any, Field] = {}
    last_by_key: dict[str, Any] = {}
    counts: dict[int, int] = defaultdict(int)
    stack: list[tuple[int, str]] = []  # (depth, key) of the containers around the current row
    names = {id(m): n for n, m in summary[0].module.named_modules()} if summary else {}
    network, where, n_weight = field_, "output of the input image", 0
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
        if not info.is_leaf_layer:
            continue
        in_size, out_size = info.input_size or None, info.output_size or None
        if out_size is not None and in_size is not None:
            if isinstance(info.module, nn.Linear) and len(in_size) > 2:
                pass  # per position: a linear layer collapses the map only on a 2-D input
            else:
                field_, _ = module_rule(info.module, field_, in_size, out_size)
            if field_.is_map:
                network, where = field_, f"output of {name}"
        n_weight += isinstance(info.module, (nn.modules.conv._ConvNd, nn.Linear))
        for _, ckey in stack:
            fields[ckey] = field_
            last_by_key[ckey] = ckey
    return GraphRF(fields, last_by_key, {}, network, where, False, n_weight,
                   f"approximate: {reason}, so the layers were treated as one chain in "
                   "execution order")


__all__ = ["GraphRF", "graph_rf", "record", "sequential_rf", "trace"]
