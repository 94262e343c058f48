"""Batch norm from scratch in the conventions that lectures, books and frameworks use.

Follows d2l.ai §8.5 "Batch Normalization" (Ioffe & Szegedy, 2015, arXiv:1502.03167): the
``batch_norm`` function, the ``ScratchBatchNorm`` layer, test-time BN as an affine map, and a
comparison with nn.BatchNorm. Also the small helpers the other modules of the package share.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from explorer.errors import ConfigError


@dataclass(frozen=True)
class Convention:
    """One way of writing batch norm that a lecture, book or framework uses."""

    name: str
    momentum: float  # the default momentum, in this convention's own meaning
    momentum_weights: str  # "batch": new = (1-m)·old + m·batch; "old": new = m·old + (1-m)·batch
    unbiased_running_var: bool  # running_var tracks the batch variance times n/(n-1)
    sigma_plus_eps: bool  # divide by (σ + ε) instead of √(σ² + ε)
    description: str  # one line for the page


CONVENTIONS: dict[str, Convention] = {
    "pytorch": Convention(
        "pytorch", 0.1, "batch", True, False,
        "PyTorch nn.BatchNorm: momentum 0.1 means new = 0.9·old + 0.1·batch; normalises with the "
        "biased batch variance but updates running_var with the unbiased one (× n/(n-1)).",
    ),
    "d2l": Convention(
        "d2l", 0.1, "batch", False, False,
        "d2l.ai from-scratch batch_norm (PyTorch edition): same momentum as PyTorch, biased "
        "variance everywhere, so running_var is smaller than PyTorch's by (n-1)/n per update.",
    ),
    "mxnet": Convention(
        "mxnet", 0.9, "old", False, False,
        "MXNet notebook: momentum 0.9 weights the OLD value, new = 0.9·old + 0.1·batch, i.e. the "
        "same update as PyTorch's 0.1; biased variance everywhere.",
    ),
    "sigma_eps": Convention(
        "sigma_eps", 0.1, "batch", False, True,
        "Notebook variant dividing by (σ + ε) instead of √(σ² + ε); otherwise like d2l. "
        "Differs noticeably only when σ is small compared with ε.",
    ),
}


def _convention(name: str) -> Convention:
    if name not in CONVENTIONS:
        raise ConfigError(
            f"convention {name!r} is unknown; use one of {', '.join(CONVENTIONS)}."
        )
    return CONVENTIONS[name]


def _check_momentum_eps(momentum: float, eps: float) -> None:
    if not 0.0 <= float(momentum) <= 1.0:
        raise ConfigError(f"momentum must lie between 0 and 1, got {momentum}; try 0.1.")
    if float(eps) < 0:
        raise ConfigError(f"eps must be zero or positive, got {eps}; try 1e-5.")


def _reduce_dims(ndim: int) -> tuple[int, ...]:
    # Statistics are per channel (dim 1): over N for vectors, over N,H,W (or N,L) for feature maps.
    return (0, *range(2, ndim))


def batch_norm(
    X: Tensor,
    gamma: Tensor,
    beta: Tensor,
    moving_mean: Tensor,
    moving_var: Tensor,
    eps: float,
    momentum: float,
    training: bool,
    *,
    convention: str = "pytorch",
) -> tuple[Tensor, Tensor, Tensor]:
    """Batch norm as d2l.ai §8.5 derives it; returns (Y, new moving_mean, new moving_var).

    Training: μ and σ² per channel over the batch (N for N×D, N,H,W for N×C×H×W: m·p·q values),
    x̂ = (x-μ)/√(σ²+ε), y = γ·x̂ + β, and the moving averages are updated. Prediction: x̂ uses the
    moving averages and nothing is updated. The book decides the mode with torch.is_grad_enabled();
    here it is the explicit ``training`` flag, so no_grad() evaluation of a training model is not
    silently switched to the moving statistics.

    Conventions (``CONVENTIONS`` holds the same lines for the page):
      - "pytorch": new = (1-m)·old + m·batch with m=0.1; running_var gets the unbiased n/(n-1) var.
      - "d2l": the book's from-scratch version: same update, biased variance everywhere.
      - "mxnet": new = m·old + (1-m)·batch with m=0.9 (the same update as PyTorch's 0.1); biased.
      - "sigma_eps": like "d2l" but divides by (σ + ε) instead of √(σ² + ε).

    Args:
        moving_mean, moving_var: C values, shaped (C,) like nn.BatchNorm or (1,C[,1,1]) like the
            book; the returned tensors have the same shape.
    """
    conv = _convention(convention)
    _check_momentum_eps(momentum, eps)
    if X.dim() < 2:
        raise ConfigError(
            f"batch_norm needs a batch shaped N×D or N×C×H×W, got shape {tuple(X.shape)}; "
            "add the batch dimension."
        )
    C = X.shape[1]
    shape = (1, C) + (1,) * (X.dim() - 2)
    m = float(momentum)

    def normalise(mean: Tensor, var: Tensor) -> Tensor:
        if conv.sigma_plus_eps:
            return (X - mean) / (torch.sqrt(var) + eps)
        return (X - mean) / torch.sqrt(var + eps)

    if training:
        dims = _reduce_dims(X.dim())
        n = X.numel() // max(C, 1)
        if conv.unbiased_running_var and n < 2:
            # nn.BatchNorm raises here too: n/(n-1) would divide by zero.
            raise ConfigError(
                f"training-mode batch norm with the pytorch convention needs more than one value "
                f"per channel, got shape {tuple(X.shape)}; use a batch of 2 or more, or eval mode."
            )
        mean = X.mean(dim=dims, keepdim=True)
        var = ((X - mean) ** 2).mean(dim=dims, keepdim=True)  # biased: divides by n
        X_hat = normalise(mean, var)
        with torch.no_grad():
            run_var = var * (n / (n - 1)) if conv.unbiased_running_var else var
            w = m if conv.momentum_weights == "batch" else 1.0 - m  # weight of the batch value
            new_mean = (1.0 - w) * moving_mean + w * mean.detach().reshape(moving_mean.shape)
            new_var = (1.0 - w) * moving_var + w * run_var.detach().reshape(moving_var.shape)
    else:
        X_hat = normalise(moving_mean.reshape(shape), moving_var.reshape(shape))
        new_mean, new_var = moving_mean, moving_var
    Y = gamma.reshape(shape) * X_hat + beta.reshape(shape)
    return Y, new_mean, new_var


class ScratchBatchNorm(nn.Module):
    """The d2l.ai §8.5 ``BatchNorm`` layer: learnable γ, β and moving statistics per channel.

    Args:
        num_features: channels C (features D for N×D inputs).
        num_dims: 2 after a fully connected layer (N×D), 4 after a convolution (N×C×H×W).
        momentum: None takes the convention's default (0.9 for "mxnet", 0.1 otherwise).
        convention: one of ``CONVENTIONS`` (see ``batch_norm``).
    """

    def __init__(
        self,
        num_features: int,
        num_dims: int = 4,
        eps: float = 1e-5,
        momentum: float | None = None,
        convention: str = "pytorch",
    ) -> None:
        super().__init__()
        conv = _convention(convention)
        if num_dims not in (2, 4):
            raise ConfigError(
                f"num_dims must be 2 (after a linear layer) or 4 (after a conv), got {num_dims}."
            )
        if int(num_features) < 1:
            raise ConfigError(f"num_features must be at least 1, got {num_features}.")
        self.num_features = int(num_features)
        self.num_dims = num_dims
        self.eps = float(eps)
        self.momentum = conv.momentum if momentum is None else float(momentum)
        _check_momentum_eps(self.momentum, self.eps)
        self.convention = convention
        self.gamma = nn.Parameter(torch.ones(num_features))
        self.beta = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("moving_mean", torch.zeros(num_features))
        self.register_buffer("moving_var", torch.ones(num_features))

    def forward(self, X: Tensor) -> Tensor:
        if X.dim() != self.num_dims or X.shape[1] != self.num_features:
            want = "N×D" if self.num_dims == 2 else "N×C×H×W"
            raise ConfigError(
                f"ScratchBatchNorm({self.num_features}, num_dims={self.num_dims}) expects {want} "
                f"with {self.num_features} channels, got shape {tuple(X.shape)}; "
                "check num_features and num_dims."
            )
        Y, mean, var = batch_norm(
            X, self.gamma, self.beta, self.moving_mean, self.moving_var, self.eps,
            self.momentum, self.training, convention=self.convention,
        )
        if self.training:
            # In place, so hooks and .to(device) keep seeing the same buffers.
            with torch.no_grad():
                self.moving_mean.copy_(mean)
                self.moving_var.copy_(var)
        return Y

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, num_dims={self.num_dims}, eps={self.eps}, "
            f"momentum={self.momentum}, convention={self.convention!r}"
        )


_TORCH_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_BN_TYPES = (*_TORCH_BN, ScratchBatchNorm)
BN_TYPES = _BN_TYPES  # every layer the package counts as batch norm


def _is_bn(m: nn.Module) -> bool:
    return isinstance(m, _BN_TYPES)


def _bn_tensors(m: nn.Module) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """(running_mean, running_var, gamma, beta) of a torch or scratch BN; None where absent."""
    if isinstance(m, ScratchBatchNorm):
        return m.moving_mean, m.moving_var, m.gamma, m.beta
    return m.running_mean, m.running_var, m.weight, m.bias


def _bn_channels(m: nn.Module) -> int:
    return int(m.num_features)


def bn_affine(bn: nn.Module) -> tuple[Tensor, Tensor]:
    """Prediction-mode BN as y = scale·x + shift per channel (d2l §8.5: affine at test time)."""
    mean, var, gamma, beta = _bn_tensors(bn)
    if mean is None or var is None:
        raise ConfigError(
            "this batch-norm layer has no running statistics (track_running_stats=False), so it "
            "is not an affine map at test time; build it with track_running_stats=True."
        )
    mean64, var64 = mean.detach().double(), var.detach().double()
    g = torch.ones_like(mean64) if gamma is None else gamma.detach().double()
    b = torch.zeros_like(mean64) if beta is None else beta.detach().double()
    if isinstance(bn, ScratchBatchNorm) and CONVENTIONS[bn.convention].sigma_plus_eps:
        scale = g / (var64.sqrt() + bn.eps)
    else:
        scale = g / (var64 + bn.eps).sqrt()
    return scale, b - mean64 * scale


def compare_with_torch(
    x: Tensor,
    n_steps: int = 5,
    *,
    eps: float = 1e-5,
    seed: int = 0,
    conventions: Iterable[str] = tuple(CONVENTIONS),
) -> dict[str, dict[str, float]]:
    """Scratch BN in each convention against nn.BatchNorm1d/2d: max |difference| per quantity.

    Step t of training feeds ``x·a_t + b_t`` with seeded per-channel a_t, b_t (so each step's
    statistics differ and the moving averages have something to track) to both layers, which
    share seeded γ and β; then both run ``x`` in eval mode. nn.BatchNorm uses momentum 0.1, each
    convention its own default momentum. Returns {convention: {"momentum", "train_output",
    "eval_output", "running_mean", "running_var"}}; ``pandas.DataFrame(result).T`` is the table.
    """
    if x.dim() not in (2, 4):
        raise ConfigError(
            f"x must be a batch shaped N×D or N×C×H×W, got shape {tuple(x.shape)}."
        )
    if int(n_steps) < 1:
        raise ConfigError(f"n_steps must be at least 1, got {n_steps}.")
    names = list(conventions)
    for name in names:
        _convention(name)
    x = x.detach()
    C = x.shape[1]
    shape = (1, C) + (1,) * (x.dim() - 2)
    g = torch.Generator().manual_seed(seed)
    scales = (0.5 + 1.5 * torch.rand((n_steps, *shape), generator=g)).to(x)
    shifts = torch.randn((n_steps, *shape), generator=g).to(x)
    gamma = (1.0 + 0.5 * torch.randn(C, generator=g)).to(x)
    beta = (0.5 * torch.randn(C, generator=g)).to(x)
    batches = [x * scales[t] + shifts[t] for t in range(n_steps)]

    ref = (nn.BatchNorm1d if x.dim() == 2 else nn.BatchNorm2d)(C, eps=eps, momentum=0.1).to(x)
    with torch.no_grad():
        ref.weight.copy_(gamma)
        ref.bias.copy_(beta)
        ref.train()
        ref_train = [ref(b) for b in batches]
        ref.eval()
        ref_eval = ref(x)

    out: dict[str, dict[str, float]] = {}
    for name in names:
        bn = ScratchBatchNorm(C, num_dims=x.dim(), eps=eps, convention=name).to(x)
        with torch.no_grad():
            bn.gamma.copy_(gamma)
            bn.beta.copy_(beta)
            bn.train()
            train_diff = max(
                (bn(b) - r).abs().max().item() for b, r in zip(batches, ref_train, strict=True)
            )
            bn.eval()
            eval_diff = (bn(x) - ref_eval).abs().max().item()
        out[name] = {
            "momentum": bn.momentum,
            "train_output": train_diff,
            "eval_output": eval_diff,
            "running_mean": (bn.moving_mean - ref.running_mean).abs().max().item(),
            "running_var": (bn.moving_var - ref.running_var).abs().max().item(),
        }
    return out


def _unwrap(model: nn.Module) -> nn.Module:
    # torch.compile wraps the model; hooks and names belong to the original.
    return getattr(model, "_orig_mod", model)


def one_step_running_var(x: Tensor, momentum: float = 0.1) -> dict[str, float]:
    """Channel 0's running variance after one training step from 1, in PyTorch and the book.

    PyTorch normalises with the biased variance (÷n) but puts the unbiased one (÷(n-1)) into
    running_var; d2l's scratch version uses the biased one in both places.
    """
    if x.dim() not in (2, 4):
        raise ConfigError(f"x must be N×D or N×C×H×W, got shape {tuple(x.shape)}.")
    ref = (nn.BatchNorm1d if x.dim() == 2 else nn.BatchNorm2d)(x.shape[1], momentum=momentum)
    book = ScratchBatchNorm(x.shape[1], num_dims=x.dim(), momentum=momentum, convention="d2l")
    with torch.no_grad():
        ref.train()(x)
        book.train()(x)
    c0 = x.detach().double().transpose(0, 1).reshape(x.shape[1], -1)[0]
    return {
        "n": int(c0.numel()),
        "biased_var": float(c0.var(correction=0)), "unbiased_var": float(c0.var(correction=1)),
        "torch_running_var": float(ref.running_var[0]),
        "book_running_var": float(book.moving_var[0]),
    }
