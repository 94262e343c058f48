"""Which layer's output feeds which layer: one forward pass on the meta device, in one thread.

torch.fx's tracer patches ``nn.Module.__call__`` for the whole process while it traces, so a
training thread running at the same moment fails ("... is not installed as a submodule"). This
records the same facts that folding reads from an fx graph, with nothing process-wide: forward
hooks on the traced model's own layers (they act only in the tracing thread) and a torch function
mode (a per-thread stack) that runs every operation on meta tensors, which have shapes but no
data, so the pass costs no arithmetic and changes no weight or running statistic.

Like fx, a layer from ``torch.nn`` (other than containers) is one opaque call, everything else
(torchvision blocks, the explorer's blocks) is followed inside; ``ScratchBatchNorm`` is opaque too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from explorer.bn.conventions import ScratchBatchNorm

# Spatial sizes tried, in order, when no input shape is given: common image sizes first, then
# every small size (a size that reaches a Linear layer with the right number of features).
_SIZES = (224, 32, 28, 64, 96, 299, 227, 128, 256, *range(1, 65))
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


@dataclass
class LayerCall:
    """One call of an opaque layer: its name and the graph node of its first input."""

    name: str
    source: int | None  # node number of args[0], None when no layer or function produced it


@dataclass
class Flow:
    """The data flow of one forward pass between opaque layers and functions."""

    calls: list[LayerCall] = field(default_factory=list)  # opaque layer calls, in order
    producer: list[str | None] = field(default_factory=list)  # node → layer name (None: function)
    users: list[set[int]] = field(default_factory=list)  # node → numbers of the calls using it


def is_opaque(m: nn.Module) -> bool:
    """fx's default leaf rule (a torch.nn layer that is not a container), plus ScratchBatchNorm."""
    if isinstance(m, ScratchBatchNorm):
        return True
    return m.__module__.startswith(("torch.nn", "torch.ao.nn")) and not isinstance(m, _CONTAINERS)


def _tensors(tree: Any) -> list[Tensor]:
    return [t for t in pytree.tree_leaves(tree) if isinstance(t, Tensor)]


def _meta(t: Tensor) -> Tensor:
    return t if t.device.type == "meta" else t.to("meta")


class _Recorder(TorchFunctionMode):
    """Runs every operation on meta tensors and notes which node each operation reads."""

    def __init__(self) -> None:
        super().__init__()
        self.flow = Flow()
        self.thread = threading.get_ident()
        self.depth = 0  # > 0 inside an opaque layer, whose inner operations are not recorded
        self.node_of: dict[int, int] = {}  # id(tensor) → node of the call that last produced it
        self.alive: list[Tensor] = []  # every tensor noted, so that no id is reused meanwhile
        self.events = 0

    def _use(self, tree: Any) -> tuple[int, list[int]]:
        event, self.events = self.events, self.events + 1
        nodes = [self.node_of[id(t)] for t in _tensors(tree) if id(t) in self.node_of]
        for n in nodes:
            self.flow.users[n].add(event)
        return event, nodes

    def _produce(self, tree: Any, name: str | None) -> None:
        for t in _tensors(tree):
            self.node_of[id(t)] = len(self.flow.producer)
            self.flow.producer.append(name)
            self.flow.users.append(set())
            self.alive.append(t)

    def __torch_function__(self, func: Callable[..., Any], types: Any,
                           args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
                           ) -> Any:
        kwargs = kwargs or {}
        args, kwargs = pytree.tree_map_only(Tensor, _meta, (args, kwargs))
        out = func(*args, **kwargs)
        if self.depth == 0:
            self._use((args, kwargs))
            self._produce(out, None)
        return out

    def hooks(self, name: str) -> tuple[Callable[..., None], Callable[..., None]]:
        """A forward pre-hook and hook that note one opaque layer's call (in this thread only)."""
        def before(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if threading.get_ident() != self.thread:
                return
            if self.depth == 0:
                first = _tensors(args[:1])
                source = self.node_of.get(id(first[0])) if first else None
                self._use((args, kwargs))
                self.flow.calls.append(LayerCall(name, source))
            self.depth += 1

        def after(_m: nn.Module, _args: tuple[Any, ...], _kwargs: dict[str, Any],
                  output: Any) -> None:
            if threading.get_ident() != self.thread:
                return
            self.depth -= 1
            if self.depth == 0:
                self._produce(output, name)

        return before, after


def trace_flow(model: nn.Module, input_shape: Sequence[int]) -> Flow:
    """The data flow of ``model`` on a meta batch of 2 × ``input_shape``; raises what it raises.

    A model whose forward reads tensor values (``if x.sum() > 0``) fails here, as it does in fx.
    """
    rec = _Recorder()
    handles = []
    try:
        for name, m in model.named_modules():
            if name and is_opaque(m):
                before, after = rec.hooks(name)
                handles.append(m.register_forward_pre_hook(before, with_kwargs=True))
                handles.append(m.register_forward_hook(after, with_kwargs=True, always_call=True))
        # Batch 2: training-mode BN refuses one value per channel.
        x = torch.empty((2, *input_shape), device="meta")
        rec._produce(x, None)
        with torch.no_grad(), rec:
            out = model(x)
        rec._use(out)  # the model's output counts as one more user, as fx's output node does
    finally:
        for h in handles:
            h.remove()
    return rec.flow


def guess_input_shapes(model: nn.Module) -> list[tuple[int, ...]]:
    """Input shapes (without the batch) to try, from the first layer that fixes the channels."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            return [(m.in_features,)]
        if isinstance(m, nn.Conv1d):
            return [(m.in_channels, s) for s in _SIZES]
        if isinstance(m, nn.Conv2d | nn.BatchNorm2d):
            c = m.in_channels if isinstance(m, nn.Conv2d) else m.num_features
            return [(c, s, s) for s in _SIZES]
        if isinstance(m, nn.Conv3d | nn.BatchNorm3d):
            c = m.in_channels if isinstance(m, nn.Conv3d) else m.num_features
            return [(c, s, s, s) for s in _SIZES if s <= 64]
        if isinstance(m, nn.BatchNorm1d):
            return [(m.num_features,)] + [(m.num_features, s) for s in _SIZES]
        if isinstance(m, ScratchBatchNorm):
            c = m.num_features
            return [(c,)] if m.num_dims == 2 else [(c, s, s) for s in _SIZES]
    return []


def find_flow(model: nn.Module, input_shape: Sequence[int] | None = None) -> Flow:
    """``trace_flow`` with the given input shape, or the first guessed shape that runs.

    Raises the first error when no shape runs, or at once when the failure is not about shapes
    (a forward pass that reads tensor values cannot run on meta tensors whatever their shape).
    """
    shapes = [tuple(input_shape)] if input_shape is not None else guess_input_shapes(model)
    if not shapes:
        raise ValueError("no layer tells the input's channels; pass input_shape")
    first: Exception | None = None
    for shape in shapes:
        try:
            return trace_flow(model, shape)
        except Exception as e:  # noqa: BLE001 - a wrong guess fails with any kind of error
            first = first or e
            if "meta" in str(e).lower():  # e.g. "Tensor.item() cannot be called on meta tensors"
                raise
    assert first is not None
    raise first
