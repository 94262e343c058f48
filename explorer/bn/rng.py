"""A seeded random generator local to one block of code in one thread (the demos' RNG).

``torch.manual_seed`` reseeds the one generator that every thread of the process draws from, so
a demo that seeds it changes the weights and dropout masks of a training run in another thread.
``local_rng(seed)`` instead hands a private ``torch.Generator`` to every random function called
inside the block: weight initialisation (``nn.init``, which every layer's ``reset_parameters``
uses), ``torch.rand``/``randn``/... and dropout. It works through a torch function mode, which
lives on a per-thread stack, so other threads never see it. Draws follow the same sequence as
after ``torch.manual_seed(seed)``: a model built inside ``local_rng(s)`` has the weights it would
have after ``torch.manual_seed(s)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

# Random functions that take a ``generator`` argument (torch 2.14).
_TAKES_GENERATOR: frozenset[Callable[..., Any]] = frozenset({
    torch.rand, torch.randn, torch.randint, torch.randperm, torch.rand_like, torch.randn_like,
    torch.randint_like, torch.bernoulli, torch.multinomial, torch.normal, torch.poisson,
    Tensor.uniform_, Tensor.normal_, Tensor.random_, Tensor.bernoulli_, Tensor.bernoulli,
    Tensor.exponential_, Tensor.geometric_, Tensor.log_normal_, Tensor.cauchy_,
    Tensor.multinomial,
    torch.nn.init.uniform_, torch.nn.init.normal_, torch.nn.init.trunc_normal_,
    torch.nn.init.kaiming_uniform_, torch.nn.init.kaiming_normal_,
    torch.nn.init.xavier_uniform_, torch.nn.init.xavier_normal_, torch.nn.init.orthogonal_,
    torch.nn.init.sparse_,
})
# Dropout has no generator argument: redone here with the generator (same distribution). The
# number is the ndim of a batched input of the channel-wise variants (0: element-wise).
_DROPOUT: dict[Callable[..., Any], int] = {F.dropout: 0, F.dropout1d: 3, F.dropout2d: 4,
                                           F.dropout3d: 5}
# Random functions with no generator argument and no rewrite here: refused rather than letting
# them draw from the shared generator unnoticed.
_REFUSED: frozenset[Callable[..., Any]] = frozenset({
    F.alpha_dropout, F.feature_alpha_dropout, F.rrelu, F.gumbel_softmax,
})


def _dropout(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
             g: torch.Generator) -> Tensor:
    """F.dropout/dropout1d/2d/3d with the mask drawn from ``g`` (whole channels for 1d-3d)."""
    names = ("input", "p", "training", "inplace")
    bound = dict(zip(names, args, strict=False)) | kwargs
    x, p = bound["input"], float(bound.get("p", 0.5))
    if not bound.get("training", True) or p == 0.0:
        return x
    if p == 1.0:
        return x.mul_(0) if bound.get("inplace", False) else x * 0
    batched_ndim = _DROPOUT[func]
    if batched_ndim == 0:
        shape = tuple(x.shape)
    else:  # whole channels: one draw per (N, C), or per C for an input without a batch
        lead = 2 if x.dim() == batched_ndim else 1
        shape = tuple(x.shape[:lead]) + (1,) * (x.dim() - lead)
    # Drawn on the CPU, where the generator lives, then moved to the input's device.
    keep = torch.empty(shape).bernoulli_(1.0 - p, generator=g).to(x.device, x.dtype)
    scaled = keep / (1.0 - p)
    return x.mul_(scaled) if bound.get("inplace", False) else x * scaled


class _LocalRandom(TorchFunctionMode):
    """Gives every random function called under it this mode's generator."""

    def __init__(self, generator: torch.Generator) -> None:
        super().__init__()
        self.generator = generator

    def __torch_function__(self, func: Callable[..., Any], types: Any,
                           args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
                           ) -> Any:
        kwargs = dict(kwargs or {})
        if func in _TAKES_GENERATOR and kwargs.get("generator") is None:
            kwargs["generator"] = self.generator
        elif func in _DROPOUT:
            return _dropout(func, args, kwargs, self.generator)
        elif func in _REFUSED:
            raise RuntimeError(f"{func.__name__} draws from the process-wide generator, which "
                               "local_rng does not replace; seed it outside the demo.")
        return func(*args, **kwargs)


@contextlib.contextmanager
def local_rng(seed: int) -> Iterator[torch.Generator]:
    """Run the block with a private CPU generator seeded with ``seed``; yields the generator."""
    g = torch.Generator().manual_seed(int(seed))
    with _LocalRandom(g):
        yield g
