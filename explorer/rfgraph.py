"""Receptive fields on a model's data-flow graph, exact through adds and concatenations.

The graph is captured by one forward pass on the meta device (shapes, no arithmetic) under a
``torch.overrides.TorchFunctionMode``, which records every torch function and tensor method
called between layers (add, cat, flatten, F.max_pool2d, permute, ...) with the nodes its tensors
came from; forward hooks on the model's own modules mark where each layer starts and ends, and a
layer from ``torch.nn`` (other than a container) is one opaque node, as torch.fx would make it.
Nothing process-wide is touched: a function mode lives on a per-thread stack, the hooks act only
in the capturing thread and are removed afterwards, and the weights are read, never replaced
(each is passed to the meta kernels as a meta copy). So two visitors' analyses can run at once,
beside training (torch.fx's tracer patches ``nn.Module.__call__`` for the whole process, which
is why this module no longer uses it). When the capture fails (a forward that reads tensor
values), the leaf layers are followed as one chain in execution order instead.
The rules themselves are in ``explorer.receptive``.
"""

from __future__ import annotations

import threading
import weakref
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
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
# Functions whose output has their first argument's shape and dtype, and whose meta kernels are
# slow Python decompositions (batch norm: 3/4 of a ResNet-152 capture); an empty tensor of that
# shape stands for their result.
_SHAPE_KEEPING = {
    "batch_norm", "layer_norm", "group_norm", "instance_norm", "relu", "gelu", "silu", "sigmoid",
    "tanh", "hardswish", "hardsigmoid", "relu6", "elu", "leaky_relu", "mish",
}
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()
_UNHASHABLE = threading.RLock()  # shared by models that cannot be dictionary keys (rare)


def model_lock(model: nn.Module) -> threading.RLock:
    """The lock of one model object: one analysis or inspection of it at a time.

    Hooks and train/eval flags live on the module objects, so two threads running one shared
    (cached) model at once would record each other's layers; two different models need no lock
    between them, so one visitor's large analysis never waits for another's.
    """
    with _LOCKS_GUARD:  # held only for the lookup
        try:
            lock = _LOCKS.get(model)
            if lock is None:
                lock = _LOCKS[model] = threading.RLock()
        except TypeError:  # a module class that defines __eq__ without __hash__
            lock = _UNHASHABLE
        return lock


def _tensors(value: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)]


def _shape(value: Any) -> tuple[int, ...] | None:
    ts = _tensors(value)
    return None if not ts else tuple(ts[0].shape)


def _meta(t: torch.Tensor) -> torch.Tensor:
    return t if t.device.type == "meta" else t.to("meta")


def is_leaf(m: nn.Module) -> bool:
    """torch.fx's default leaf rule: a layer from torch.nn that is not a container."""
    return (m.__module__.startswith(("torch.nn", "torch.ao.nn"))
            and not isinstance(m, _CONTAINERS))


def _fn_name(func: Callable[..., Any]) -> str:
    """"conv2d", "max_pool2d", "add" (for Tensor.__add__), "view", ...: what the rules key on."""
    name = getattr(func, "__name__", str(func))
    if name.startswith("__") and name.endswith("__") and len(name) > 4:
        return name[2:-2]
    return name.lstrip("_")


class Node:
    """One value of the captured graph: the input, a layer's call, a function's call, the output.

    ``op`` is "input", "call_module" (``target``: the layer's qualified name), "call_function"
    (``target``: the function's name) or "output"; ``stack`` maps each enclosing module call's
    key ("layer1.0", "layer1.0.relu@1" for its second call) to its qualified name.
    """

    __slots__ = ("index", "op", "target", "args", "kwargs", "inputs", "value", "stack")

    def __init__(self, index: int, op: str, target: str, args: Sequence[Any],
                 kwargs: dict[str, Any], inputs: list[Node], value: Any,
                 stack: dict[str, str]):
        self.index, self.op, self.target = index, op, target
        self.args, self.kwargs, self.inputs = tuple(args), kwargs, inputs
        self.value, self.stack = value, stack

    @property
    def all_input_nodes(self) -> list[Node]:
        return self.inputs

    def __repr__(self) -> str:
        return f"Node({self.index}, {self.op}, {self.target})"


class _Capture(TorchFunctionMode):
    """Runs the forward pass on meta tensors and records its graph, in the calling thread only."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        super().__init__()
        self.thread = threading.get_ident()
        self.modules = modules
        self.nodes: list[Node] = []
        self.node_of: dict[int, Node] = {}  # id(tensor) -> the node that last produced it
        self.alive: list[torch.Tensor] = []  # keeps every noted tensor, so no id is reused
        self.stack: list[tuple[str, str]] = []  # (key, path) of the module calls in progress
        self.calls: dict[str, int] = defaultdict(int)
        self.depth = 0  # > 0 inside an opaque layer, whose inner operations are not recorded
        self.leaf_inputs: list[Node] = []

    def _inputs(self, tree: Any) -> list[Node]:
        seen: dict[int, Node] = {}
        for t in _tensors(tree):
            n = self.node_of.get(id(t))
            if n is not None:
                seen.setdefault(n.index, n)
        return list(seen.values())

    def add(self, op: str, target: str, args: Sequence[Any], kwargs: dict[str, Any],
            inputs: list[Node], value: Any) -> Node:
        node = Node(len(self.nodes), op, target, args, kwargs, inputs, value, dict(self.stack))
        self.nodes.append(node)
        for t in _tensors(value):
            self.node_of[id(t)] = node
            self.alive.append(t)
        return node

    def __torch_function__(self, func: Callable[..., Any], types: Any,
                           args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
                           ) -> Any:
        kwargs = kwargs or {}
        first = args[0] if args else None
        args, kwargs = tree_map_only(torch.Tensor, _meta, (args, kwargs))
        name = _fn_name(func)
        if name in _SHAPE_KEEPING and isinstance(first, torch.Tensor) \
                and not kwargs.get("inplace"):
            out = torch.empty_like(args[0])
        else:
            out = func(*args, **kwargs)
        if (out is args[0] if args else False) and isinstance(first, torch.Tensor) \
                and first is not out:
            # An in-place op on a real tensor (a buffer: ``self.calls += 1``) ran on its meta
            # copy; hand back the real one, unchanged, so that the forward does not rebind the
            # model's attribute to a meta tensor.
            out = first
        if self.depth == 0 and _tensors(out):
            self.add("call_function", name, args, kwargs,
                     self._inputs((args, kwargs)), out)
        return out

    def hooks(self, path: str) -> tuple[Callable[..., None], Callable[..., None]]:
        """A forward pre-hook and hook for the module named ``path`` (inert in other threads)."""
        leaf = is_leaf(self.modules[path])

        def before(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if threading.get_ident() != self.thread:
                return
            if self.depth > 0:
                self.depth += 1
                return
            k = self.calls[path]
            self.calls[path] += 1
            self.stack.append((path if k == 0 else f"{path}@{k}", path))
            if leaf:
                self.leaf_inputs = self._inputs((args, kwargs))
                self.leaf_args = tree_map_only(torch.Tensor, _meta, (args, kwargs))
                self.depth = 1

        def after(_m: nn.Module, _args: tuple[Any, ...], _kwargs: dict[str, Any],
                  output: Any) -> None:
            if threading.get_ident() != self.thread:
                return
            if self.depth > 1:
                self.depth -= 1
                return
            if self.depth == 1:
                self.depth = 0
                args, kwargs = self.leaf_args
                self.add("call_module", path, args, kwargs, self.leaf_inputs, output)
            if self.stack:
                self.stack.pop()

        return before, after


def capture(model: nn.Module, input_meta: torch.Tensor) -> list[Node]:
    """The model's data-flow graph from one forward pass of ``input_meta`` on the meta device.

    The model must be in the mode wanted (``explorer.analysis`` sets eval mode); nothing of it
    is changed (hooks are added and removed). Raises what the forward pass raises, e.g. for a
    forward that reads tensor values (``if x.sum() > 0``), which meta tensors do not have.
    """
    modules = dict(model.named_modules())
    cap = _Capture(modules)
    handles = []
    # A forward may assign to its attributes (``self.state = x``); whatever it assigns here is
    # a meta tensor, so every module's parameters and buffers are put back as they were.
    state = [(m, dict(m._parameters), dict(m._buffers)) for m in modules.values()]
    try:
        for path, m in modules.items():
            if path:
                before, after = cap.hooks(path)
                handles.append(m.register_forward_pre_hook(before, with_kwargs=True))
                handles.append(m.register_forward_hook(after, with_kwargs=True,
                                                       always_call=True))
        cap.add("input", "input", (), {}, [], input_meta)
        with torch.no_grad(), cap:
            out = model(input_meta)
        cap.add("output", "output", (), {}, cap._inputs(out), out)
    finally:
        for h in handles:
            h.remove()
        for m, params, buffers in state:
            m._parameters.update(params)
            m._buffers.update(buffers)
    return cap.nodes


@dataclass
class GraphRF:
    """Receptive fields on the captured graph (or the fallback chain), looked up by module call."""

    fields: dict[Any, Field]
    last_by_key: dict[str, Any]  # module-call key ("layer1.0.relu@1") -> its last node
    key_path: dict[str, str]  # module-call key -> qualified module name
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


def _where(node: Node) -> str:
    """The module (and function) that produced a node: "layer4.1.relu", "stage4.block2 (relu)"."""
    if node.op == "input":
        return "the input image"
    if node.op == "call_module":
        return node.target
    inner = list(node.stack.values())[-1] if node.stack else ""
    return f"{inner} ({node.target})" if inner else node.target


def _ancestors(out: Node) -> set[Node]:
    seen, todo = {out}, [out]
    while todo:
        for a in todo.pop().inputs:
            if a not in seen:
                seen.add(a)
                todo.append(a)
    return seen


def graph_rf(modules: dict[str, nn.Module], nodes: list[Node]) -> GraphRF:
    """Propagate the fields along the captured graph (``capture``), in execution order."""
    fields: dict[Node, Field] = {}
    longest: dict[Node, int] = {}
    last_by_key: dict[str, Node] = {}
    key_path: dict[str, str] = {}
    order: dict[Node, int] = {}
    inexact_ops: list[str] = []
    mixed_at: Node | None = None  # where a pooled vector first re-entered a map (SE)
    weight_types = (nn.modules.conv._ConvNd, nn.Linear)
    out_node: Node | None = None

    for node in nodes:
        order[node] = node.index
        inputs = node.inputs
        ins = [a for a in inputs if a in fields]
        base, mixed = merge([fields[a] for a in ins])
        longest[node] = max((longest[a] for a in inputs), default=0)
        op = node.op
        f: Field | None = None
        if op == "output":
            out_node = node
            break
        if op == "input":
            f = input_field(node.value.dim())
        else:
            out_shape = _shape(node.value) if base is not None else None
            # Sizes and other Python values carry no receptive field; tuples of tensors do.
            if out_shape is not None and base is not None:
                # The spatial input is the first argument that is still a map (else the first).
                lead = next((a for a in ins if fields[a].is_map), ins[0])
                in_shape = _shape(lead.value)
                if op == "call_module":
                    f, ok = module_rule(modules[node.target], base, in_shape, out_shape)
                else:
                    f, ok = function_rule(node.target, node.args, node.kwargs, base, in_shape,
                                          out_shape)
                if not ok:
                    inexact_ops.append(node.target)
                if mixed and mixed_at is None:
                    mixed_at = node
            if op == "call_module":
                if isinstance(modules[node.target], weight_types):
                    longest[node] += 1
            elif node.target in _WEIGHT_FUNCS:
                longest[node] += 1
        if f is not None:
            fields[node] = f
            for key, path in node.stack.items():
                last_by_key[key] = node
                key_path[key] = path
    if out_node is None:
        raise RuntimeError("the captured graph has no output")
    # The last spatial map: the last node (in execution order) that the output depends on and
    # that is still a map. Everything after it is global pooling, flatten or the classifier.
    feeds = _ancestors(out_node)
    maps = [n for n in fields if n in feeds and fields[n].is_map]
    last = max(maps, key=order.__getitem__, default=None)
    note = "exact, on the model's data-flow graph"
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
    """Fallback when the capture fails: follow the leaf layers in execution order as a chain."""
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


__all__ = ["GraphRF", "Node", "capture", "graph_rf", "is_leaf", "model_lock", "sequential_rf"]
