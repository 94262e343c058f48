"""Folding eval-mode BN into the preceding conv / linear layer (d2l §8.5: affine at test time)."""

from __future__ import annotations

import copy
import itertools
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from explorer.bn.conventions import (
    _bn_channels,
    _bn_tensors,
    _is_bn,
    _unwrap,
    bn_affine,
)
from explorer.bn.dataflow import find_flow
from explorer.bn.rng import local_rng

if TYPE_CHECKING:
    from explorer.specs import SpecBase

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


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN layer seeded running statistics, γ and β (as if trained), in place."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
                if m.affine:
                    m.weight.copy_(0.5 + torch.rand(c, generator=g))
                    m.bias.copy_(0.2 * torch.randn(c, generator=g))
    return model


def fold_check(spec: SpecBase, batch: int = 4, seed: int = 0) -> dict[str, Any]:
    """Fold a spec's model (randomised BN statistics) and compare eval outputs with the original.

    Returns the folded pairs, the BN layers that stay (with the reason), the maximum absolute
    difference of the outputs on ``batch`` seeded random inputs, and the largest output. The
    weights are those ``torch.manual_seed(seed)`` would give, drawn from a local generator, so a
    training run in another thread keeps its own random sequence.
    """
    from explorer.models import build  # the package itself builds no networks

    with local_rng(seed):
        model = build(spec)
    model = randomise_bn(model, seed).eval()
    plan = find_foldable(model, spec.input_shape)
    folded = fold_bn(model, plan)
    x = torch.randn((batch, *spec.input_shape), generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        ref, out = model(x), folded(x)
    return {
        "pairs": list(plan.pairs), "kept": list(plan.kept), "method": plan.method,
        "max_abs_diff": float((ref - out).abs().max()),
        "max_abs_output": float(ref.abs().max()),
        "model": model, "folded": folded,
    }


def time_fold(model: nn.Module, folded: nn.Module, x: Tensor, repeats: int = 5) -> dict[str, float]:
    """Eval-mode images/s of a model and its folded copy on the CPU, timed alternately (median)."""
    times: dict[str, list[float]] = {"unfolded": [], "folded": []}
    with torch.inference_mode():
        model(x), folded(x)  # warm-up: first calls allocate and pick kernels
        for _ in range(max(1, int(repeats))):
            for name, m in (("unfolded", model), ("folded", folded)):
                t0 = time.perf_counter()
                m(x)
                times[name].append(time.perf_counter() - t0)
    ips = {k: len(x) / statistics.median(v) for k, v in times.items()}
    return {"images_per_s_unfolded": ips["unfolded"], "images_per_s_folded": ips["folded"],
            "speedup": ips["folded"] / ips["unfolded"]}
