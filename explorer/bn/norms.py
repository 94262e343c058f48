"""Batch, layer, instance and group norm side by side.

Layer norm: Ba, Kiros & Hinton 2016; instance norm: Ulyanov, Vedaldi & Lempitsky 2016; group
norm: Wu & He 2018 (arXiv:1803.08494).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from explorer.errors import ConfigError

_NORMS: dict[str, dict[str, Any]] = {
    "batch": {
        "over": ("N", "H", "W"), "per": ("C",), "torch": "nn.BatchNorm2d",
        "paper": "Ioffe & Szegedy 2015", "train_eval_differ": True,
        "text": "one mean and variance per channel, over the batch and all positions",
    },
    "layer": {
        "over": ("C", "H", "W"), "per": ("N",), "torch": "nn.LayerNorm([C, H, W])",
        "paper": "Ba, Kiros & Hinton 2016", "train_eval_differ": False,
        "text": "one mean and variance per example, over all its channels and positions",
    },
    "instance": {
        "over": ("H", "W"), "per": ("N", "C"), "torch": "nn.InstanceNorm2d",
        "paper": "Ulyanov, Vedaldi & Lempitsky 2016", "train_eval_differ": False,
        "text": "one mean and variance per example and channel, over its positions",
    },
    "group": {
        "over": ("C/G", "H", "W"), "per": ("N", "G"), "torch": "nn.GroupNorm(G, C)",
        "paper": "Wu & He 2018", "train_eval_differ": False,
        "text": "one mean and variance per example and group of C/G channels",
    },
}


def _set_ids(kind: str, n: int, c: int, h: int, w: int, groups: int) -> np.ndarray:
    nn_, cc = np.meshgrid(np.arange(n), np.arange(c), indexing="ij")
    if kind == "batch":
        ids = cc
    elif kind == "layer":
        ids = nn_
    elif kind == "instance":
        ids = nn_ * c + cc
    else:
        ids = nn_ * groups + cc // (c // groups)
    return np.broadcast_to(ids[:, :, None, None], (n, c, h, w)).astype(np.int64)


def _check_groups(c: int, groups: int) -> None:
    if int(groups) < 1 or c % int(groups):
        raise ConfigError(
            f"groups must divide the {c} channels, got {groups}; "
            f"try one of {[g for g in range(1, c + 1) if c % g == 0]}."
        )


def norm_axes(shape: Sequence[int] = (4, 6, 2, 2), groups: int = 3) -> dict[str, dict[str, Any]]:
    """Which axes of an N×C×H×W tensor batch, layer, instance and group norm normalise over.

    For each kind: the axes averaged over ("over") and those with one statistic each ("per"),
    the torch module, the paper, whether train and eval differ, and ``set_id``: an N×C×H×W int
    array in which elements sharing one mean and variance carry the same number (to colour the
    classic cube figure of Wu & He 2018).
    """
    if len(shape) != 4 or min(shape) < 1:
        raise ConfigError(f"shape must be four positive sizes N, C, H, W, got {tuple(shape)}.")
    n, c, h, w = (int(s) for s in shape)
    _check_groups(c, groups)
    out: dict[str, dict[str, Any]] = {}
    for kind, info in _NORMS.items():
        ids = _set_ids(kind, n, c, h, w, int(groups))
        n_sets = int(ids.max()) + 1
        out[kind] = {
            **info,
            "set_id": ids,
            "n_sets": n_sets,
            "values_per_set": ids.size // n_sets,
        }
    return out


def normalize_all(x: Tensor, groups: int, eps: float = 1e-5) -> dict[str, dict[str, Tensor]]:
    """Batch, layer, instance and group norm of one N×C×H×W tensor, computed by hand (γ=1, β=0).

    Returns, per kind, "mean" and "var" (biased, one per normalisation set: C for batch, N for
    layer, N×C for instance, N×G for group) and "output" (x - mean)/√(var + eps).
    """
    if x.dim() != 4:
        raise ConfigError(f"x must be N×C×H×W, got shape {tuple(x.shape)}.")
    if float(eps) < 0:
        raise ConfigError(f"eps must be zero or positive, got {eps}; try 1e-5.")
    n, c, h, w = x.shape
    _check_groups(c, groups)
    x = x.detach()

    def norm(t: Tensor, dims: tuple[int, ...]) -> tuple[Tensor, Tensor, Tensor]:
        mean = t.mean(dim=dims, keepdim=True)
        var = ((t - mean) ** 2).mean(dim=dims, keepdim=True)
        return (t - mean) / torch.sqrt(var + eps), mean, var

    out: dict[str, dict[str, Tensor]] = {}
    y, m, v = norm(x, (0, 2, 3))
    out["batch"] = {"mean": m.reshape(c), "var": v.reshape(c), "output": y}
    y, m, v = norm(x, (1, 2, 3))
    out["layer"] = {"mean": m.reshape(n), "var": v.reshape(n), "output": y}
    y, m, v = norm(x, (2, 3))
    out["instance"] = {"mean": m.reshape(n, c), "var": v.reshape(n, c), "output": y}
    xg = x.reshape(n, groups, c // groups, h, w)
    y, m, v = norm(xg, (2, 3, 4))
    out["group"] = {
        "mean": m.reshape(n, groups), "var": v.reshape(n, groups), "output": y.reshape(n, c, h, w)
    }
    return out


def norms_vs_torch(x: Tensor, groups: int, eps: float = 1e-5) -> dict[str, float]:
    """Max |hand-computed − torch module| for batch, layer, instance and group norm (γ=1, β=0).

    The hand computation is ``bn.normalize_all``; the modules are nn.BatchNorm2d (training
    mode), nn.LayerNorm over C×H×W, nn.InstanceNorm2d and nn.GroupNorm, all without affine.
    """
    hand = normalize_all(x, groups, eps)
    c = x.shape[1]
    modules = {
        "batch": nn.BatchNorm2d(c, eps=eps, affine=False).train(),
        "layer": nn.LayerNorm(list(x.shape[1:]), eps=eps, elementwise_affine=False),
        "instance": nn.InstanceNorm2d(c, eps=eps, affine=False),
        "group": nn.GroupNorm(groups, c, eps=eps, affine=False),
    }
    with torch.no_grad():
        return {k: float((hand[k]["output"] - m(x)).abs().max()) for k, m in modules.items()}
