"""Folding eval-mode BN into the preceding conv / linear layer (d2l §8.5: affine at test time)."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from explorer.bn.conventions import (
    _bn_channels,
    _bn_tensors,
    _is_bn,
    _unwrap,
    bn_affine,
)
from explorer.bn.dataflow import find_flow

METHOD = "meta-device forward pass"  # the plan's method when the data flow was traced
_FOLD_INTO = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class FoldPlan:
    """Which BN layers fold into which conv/linear layer, and why the others stay."""

    pairs: tuple[tuple[str, str], ...]  # (conv or linear name, BN name)
    kept: tuple[tuple[str, str], ...]  # (BN name, reason it cannot be folded)
    method: str  # METHOD, or the fallback used when the forward pass cannot run


def _fold_reason(producer: nn.Module | None, bn: nn.Module) -> str | None:
    """Why (producer, bn) cannot be folded, or None when it can."""
    mean, var, _, _ = _bn_tensors(bn)
    if mean is None or var is None:
        return "no running statistics (track_running_stats=False)"
    if producer is None or not isinstance(producer, _FOLD_INTO):
        return "its input is not a Conv or Linear layer"
    if isinstance(producer.weight, nn.parameter.UninitializedParameter):
        return "the preceding layer is not initialised yet"
    out = producer.out_features if isinstance(producer, nn.Linear) else producer.out_channels
    if out != _bn_channels(bn):
        return f"the preceding layer has {out} outputs but the BN {_bn_channels(bn)} channels"
    return None


def find_foldable(model: nn.Module, input_shape: Sequence[int] | None = None) -> FoldPlan:
    """Pairs (conv/linear → BN) on the model's data flow where the BN is the layer's only user.

    A BN folds when its input is the output of a Conv1d/2d/3d or Linear call whose only user is
    that BN, and neither module is called twice. BNs before a conv (DenseNet's BN-ReLU-conv), after
    an addition or concatenation, or without running statistics stay. The data flow comes from one
    forward pass on the meta device (``dataflow``: safe beside training threads, unlike torch.fx)
    with a batch of ``input_shape`` (C×H×W), or, without it, of the first shape that runs. When no
    pass runs (a forward that reads tensor values), only adjacent pairs inside plain nn.Sequential
    containers are folded.
    """
    model = _unwrap(model)
    modules = dict(model.named_modules())
    if any(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters()):
        # A lazy layer would allocate its weights during the pass: the model must not change.
        return _find_foldable_sequential(
            model, "nn.Sequential scan (the model has lazy layers that are not initialised)")
    try:
        flow = find_flow(model, input_shape)
    except Exception as e:  # noqa: BLE001 - any failed pass means: use the fallback
        return _find_foldable_sequential(
            model, f"nn.Sequential scan (the meta-device pass failed: {e})")
    calls: dict[str, int] = {}
    for call in flow.calls:
        calls[call.name] = calls.get(call.name, 0) + 1
    pairs: list[tuple[str, str]] = []
    kept: list[tuple[str, str]] = []
    seen: set[str] = set()
    for call in flow.calls:
        if not _is_bn(modules[call.name]) or call.name in seen:
            continue
        seen.add(call.name)
        src = None if call.source is None else flow.producer[call.source]
        reason = _fold_reason(None if src is None else modules[src], modules[call.name])
        if reason is None and calls[call.name] > 1:
            reason = "this BN module is called more than once"
        elif reason is None and calls[src] > 1:
            reason = "the preceding layer is called more than once (shared weights)"
        elif reason is None and len(flow.users[call.source]) != 1:
            reason = "the preceding layer's output also feeds other layers"
        if reason is None:
            pairs.append((src, call.name))
        else:
            kept.append((call.name, reason))
    for name, m in modules.items():
        if _is_bn(m) and name not in seen:
            kept.append((name, "not called in the traced forward pass"))
    return FoldPlan(tuple(pairs), tuple(kept), METHOD)


def _find_foldable_sequential(model: nn.Module, method: str) -> FoldPlan:
    counts: dict[int, int] = {}
    for _, m in model.named_modules(remove_duplicate=False):
        counts[id(m)] = counts.get(id(m), 0) + 1
    pairs: list[tuple[str, str]] = []
    for name, m in model.named_modules():
        if type(m) is not nn.Sequential:  # a subclass may override forward
            continue
        children = list(m.named_children())
        for (a_name, a), (b_name, b) in itertools.pairwise(children):
            if _is_bn(b) and _fold_reason(a, b) is None and counts[id(a)] == counts[id(b)] == 1:
                prefix = f"{name}." if name else ""
                pairs.append((prefix + a_name, prefix + b_name))
    folded = {bn for _, bn in pairs}
    kept = tuple(
        (n, "not directly after a Conv/Linear in a plain nn.Sequential")
        for n, m in model.named_modules()
        if _is_bn(m) and n not in folded
    )
    return FoldPlan(tuple(pairs), kept, method)


def fold_bn(model: nn.Module, plan: FoldPlan | None = None,
            input_shape: Sequence[int] | None = None) -> nn.Module:
    """A copy of the model in eval mode with each foldable BN merged into its conv/linear layer.

    At test time BN is y = s·x + t per channel with s = γ/√(σ²+ε), t = β - μ·s (d2l §8.5), so
    after W·x + b it becomes (s·W)·x + (s·b + t): the weights of output channel c are scaled by
    s_c and the BN becomes nn.Identity. Computed in float64 and cast back. The copy keeps the
    model's class and module names; it is meant for inference only (its BN layers are gone).
    """
    model = _unwrap(model)
    plan = find_foldable(model, input_shape) if plan is None else plan
    folded = copy.deepcopy(model).eval()
    with torch.no_grad():
        for layer_name, bn_name in plan.pairs:
            layer = folded.get_submodule(layer_name)
            scale, shift = bn_affine(folded.get_submodule(bn_name))
            w = layer.weight
            scale_w = scale.to(w.device).reshape((-1,) + (1,) * (w.dim() - 1))
            new_w = (w.double() * scale_w).to(w.dtype)
            old_b = (
                torch.zeros(w.shape[0], dtype=torch.float64, device=w.device)
                if layer.bias is None else layer.bias.double()
            )
            new_b = (old_b * scale.to(w.device) + shift.to(w.device)).to(w.dtype)
            layer.weight = nn.Parameter(new_w, requires_grad=w.requires_grad)
            layer.bias = nn.Parameter(new_b, requires_grad=w.requires_grad)
            parent_name, _, child = bn_name.rpartition(".")
            parent = folded.get_submodule(parent_name) if parent_name else folded
            setattr(parent, child, nn.Identity())
    return folded
