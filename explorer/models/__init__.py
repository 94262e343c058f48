"""``build(spec)``: one builder per family turns a spec into an ``nn.Module``.

Building validates: every builder follows the feature-map shape as it creates layers (a block that
would shrink the map to 0×0 is a ConfigError naming that block), and ``validate`` first builds on
PyTorch's meta device, where no weight is allocated, to check the size limits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from explorer.errors import ConfigError
from explorer.models.common import count_params
from explorer.specs import SpecBase


def __getattr__(name: str) -> Any:
    """``BUILDERS`` (family → builder), derived from the family registry.

    Lazy (PEP 562) because the family modules import the builders in this package.
    """
    if name == "BUILDERS":
        from explorer.families import families

        return {f.name: f.build for f in families()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class SizeLimits:
    """Largest model the app builds; the defaults admit vgg19 and resnet152 at 3×224×224."""

    max_params: int = 250_000_000  # vgg19 has 143.7 M
    max_activation_bytes: int = 1024**3  # float32 outputs of every layer at batch 1; the
    # largest preset, resnext101_32x8d at 3×224×224, needs 352 MiB


DEFAULT_LIMITS = SizeLimits()


@dataclass(frozen=True)
class Estimate:
    """Size of a model measured on the meta device (no weights allocated)."""

    params: int
    activation_bytes: int  # sum of every leaf layer's float32 output at batch 1
    output_shape: tuple[int, ...]


def _builder(spec: SpecBase) -> Callable[..., nn.Module]:
    if not isinstance(spec, SpecBase):
        raise ConfigError(f"build() takes a spec from explorer.specs, not {type(spec).__name__}.")
    from explorer.families import get_family

    return get_family(spec.family).build


def meta_model(spec: SpecBase) -> nn.Module:
    """The spec's model on PyTorch's meta device: every shape and parameter count, no weights.

    Not validated against the size limits (``validate`` calls it to measure them); a spec that
    shrinks a map to 0×0 still raises its ConfigError.
    """
    builder = _builder(spec)
    with torch.device("meta"):
        return builder(spec)


def estimate(spec: SpecBase) -> Estimate:
    """Build on the meta device and run one meta forward pass to size params and activations."""
    model = meta_model(spec)
    total = 0

    def hook(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * 4

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if not list(m.children())]
    try:
        with torch.no_grad():
            out = model.eval()(torch.empty(1, *spec.input_shape, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return Estimate(count_params(model), total, tuple(out.shape[1:]))


def minimum_input_size(spec: SpecBase, limit: int = 2048) -> int | None:
    """Smallest square H = W at which the spec builds, or None if none up to ``limit`` does."""
    def fits(size: int) -> bool:
        s = dataclasses.replace(spec, input_shape=(spec.input_shape[0], size, size))
        try:
            meta_model(s)
            return True
        except ConfigError:
            return False

    if not fits(limit):
        return None
    lo, hi = 1, limit  # fits(hi) is True; sizes only ever help once the map stops shrinking
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid + 1, hi)
    return lo


def validate(spec: SpecBase, limits: SizeLimits = DEFAULT_LIMITS) -> Estimate:
    """Check that ``spec`` builds within ``limits``; raise ConfigError with a sentence if not."""
    try:
        est = estimate(spec)
    except ConfigError as exc:
        if "would shrink" in str(exc):
            need = minimum_input_size(spec)
            if need is not None:
                c = spec.input_shape[0]
                raise ConfigError(f"{exc} This network needs at least a {c}×{need}×{need} "
                                  f"input.") from None
        raise
    if est.params > limits.max_params:
        raise ConfigError(
            f"this model has {est.params / 1e6:,.1f} M parameters, above the limit of "
            f"{limits.max_params / 1e6:,.0f} M; use fewer or narrower layers.")
    if est.activation_bytes > limits.max_activation_bytes:
        raise ConfigError(
            f"one image through this model needs {est.activation_bytes / 2**30:,.2f} GiB of "
            f"activations, above the limit of {limits.max_activation_bytes / 2**30:,.2f} GiB; "
            f"use a smaller input or fewer channels.")
    return est


def build(spec: SpecBase, limits: SizeLimits = DEFAULT_LIMITS,
          device: str | torch.device | None = None) -> nn.Module:
    """Validate ``spec``, then build its ``nn.Module`` (float32, train mode, PyTorch's init).

    Other initialisations are the training engine's (``explorer.training.initialize``).
    """
    validate(spec, limits)
    with torch.device(device or "cpu"):
        return _builder(spec)(spec)


__all__ = ["BUILDERS", "DEFAULT_LIMITS", "Estimate", "SizeLimits", "build", "estimate",
           "meta_model", "minimum_input_size", "validate"]
