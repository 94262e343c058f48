"""What analysing a spec will cost, measured on the meta device before any real allocation.

``analyze`` runs one real forward pass on the CPU; its time grows with the multiply-adds, and the
time of tracing and tabulating grows with the number of layers. A link with two 500-channel
31×31 convs on a 3×256×256 input holds 16 T multiply-adds (about 160 s and 2.5 GB on a 2-core
server) yet passes the parameter and activation limits; ``check_cost`` refuses it in
milliseconds, naming the layer to shrink. vgg19 at 3×224×224 (19.6 G, the largest preset) and
densenet201 (609 layers, the deepest) pass.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import torch
from torch import nn

from explorer import models
from explorer.errors import ConfigError
from explorer.models import validate
from explorer.specs import SpecBase

MAX_MACS = 25_000_000_000  # multiply-adds per image; vgg19 at 3×224×224 has 19.6 G
MAX_LAYERS = 1_000  # leaf modules; densenet201 has 609 (721 modules in all)


@dataclass(frozen=True)
class Cost:
    """Multiply-adds per image (lecture convention: conv and linear weights, no bias)."""

    macs: int
    layers: int  # leaf modules
    largest: str  # the module with the most multiply-adds
    largest_macs: int


class _TooManyModules(Exception):
    """Raised from inside a builder once it has created more modules than are counted."""


# Building 2,000 dense layers takes seconds even on the meta device, so the count stops a
# builder part way. PyTorch's registration hook is process-wide: it counts only in the thread
# that asked (``_budget.left``) and costs the others one attribute lookup.
_budget = threading.local()
_hook_lock = threading.Lock()
_hook_installed = False


def _count_registration(_parent: nn.Module, _name: str, _child: object) -> None:
    left = getattr(_budget, "left", None)
    if left is None:
        return
    if left <= 0:
        raise _TooManyModules
    _budget.left = left - 1


class _ModuleBudget:
    """Within this block, this thread may create at most ``max_modules`` modules."""

    def __init__(self, max_modules: int) -> None:
        self.max_modules = max_modules

    def __enter__(self) -> None:
        global _hook_installed
        with _hook_lock:
            if not _hook_installed:
                nn.modules.module.register_module_module_registration_hook(_count_registration)
                _hook_installed = True
        _budget.left = self.max_modules

    def __exit__(self, *exc: object) -> None:
        _budget.left = None


def _meta_model(spec: SpecBase, max_modules: int) -> nn.Module:
    """``spec``'s model on the meta device; more than ``max_modules`` modules stop the build."""
    with _ModuleBudget(max_modules):
        return models.meta_model(spec)


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if next(m.children(), None) is None]


def meta_model(spec: SpecBase, max_layers: int = MAX_LAYERS) -> nn.Module:
    """``spec``'s model on the meta device, refused once it holds more than ``max_layers``
    leaf modules (the build itself is stopped part way: see ``_count_registration``)."""
    too_many = ConfigError(f"this model has more than {max_layers:,} layers, the limit on this "
                           f"server; use fewer blocks or fewer layers per block.")
    try:
        # Containers count too: densenet201 has 609 leaves in 721 modules.
        model = _meta_model(spec, max_layers + max_layers // 4)
    except _TooManyModules:
        raise too_many from None
    if len(_leaves(model)) > max_layers:
        raise too_many
    return model


def estimate_cost(spec: SpecBase, model: nn.Module | None = None,
                  max_layers: int = MAX_LAYERS) -> Cost:
    """Multiply-adds of ``spec`` counted with one forward pass on the meta device (``model``:
    its ``meta_model``, built here when not given)."""
    model = meta_model(spec, max_layers) if model is None else model
    leaves = _leaves(model)
    per_module: dict[str, int] = {}

    def hook(name: str):
        def count(mod: nn.Module, _inp: object, out: torch.Tensor) -> None:
            if isinstance(mod, nn.modules.conv._ConvNd):
                n = out.numel() * math.prod(mod.weight.shape[1:])  # per output: C_in/g×Kh×Kw
            else:  # nn.Linear
                n = out.numel() * mod.in_features
            per_module[name] = per_module.get(name, 0) + n
        return count

    handles = [m.register_forward_hook(hook(n)) for n, m in leaves
               if isinstance(m, nn.modules.conv._ConvNd | nn.Linear)]
    try:
        with torch.no_grad():
            model.eval()(torch.empty(1, *spec.input_shape, device="meta"))
    finally:
        for h in handles:
            h.remove()
    largest = max(per_module, key=per_module.__getitem__, default="")
    return Cost(sum(per_module.values()), len(leaves), largest, per_module.get(largest, 0))


def _g(n: float) -> str:
    return f"{n / 1e12:,.1f} T" if n >= 1e12 else f"{n / 1e9:,.1f} G"


def check_spec(spec: SpecBase, max_macs: int = MAX_MACS, max_layers: int = MAX_LAYERS) -> Cost:
    """Every limit a spec must pass before anything real is built, the cheapest first: layers
    and shapes (a budgeted meta build), ``validate``'s parameters and activations, then
    multiply-adds; a refusal is a sentence that names what to shrink."""
    try:
        model = meta_model(spec, max_layers)
    except ConfigError as exc:
        if "would shrink" not in str(exc):
            raise
        # validate adds the smallest input that works, found by a dozen builds: worth it for a
        # small model only, so the builds share a budget of a few times the limit.
        try:
            with _ModuleBudget(4 * max_layers):
                validate(spec)
        except _TooManyModules:
            pass
        raise
    validate(spec)
    cost = estimate_cost(spec, model)
    if cost.macs > max_macs:
        c, h, w = spec.input_shape
        raise ConfigError(
            f"one {c}×{h}×{w} image through this model takes {_g(cost.macs)} multiply-adds, "
            f"above this server's limit of {_g(max_macs)}; {cost.largest} alone takes "
            f"{_g(cost.largest_macs)}: give it fewer channels or a smaller kernel, or use a "
            f"smaller input.")
    return cost
