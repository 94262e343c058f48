"""Batch normalization lab: BN from scratch, statistics capture, train/eval, folding, other norms.

Follows d2l.ai §8.5 "Batch Normalization" (Ioffe & Szegedy, 2015, arXiv:1502.03167) and the
course notebooks built on it; layer, instance and group norm come from Ba et al. 2016, Ulyanov
et al. 2016 and Wu & He 2018 (arXiv:1803.08494).
"""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
import threading
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import Tensor, nn

from explorer.errors import ConfigError

__all__ = [
    "CONVENTIONS",
    "DEFAULT_EVERY",
    "QUANTITIES",
    "BNStatsRecorder",
    "Convention",
    "FoldPlan",
    "ScratchBatchNorm",
    "activation_histograms",
    "batch_norm",
    "batch_size_one",
    "batch_stat_noise",
    "bn_affine",
    "compare_with_torch",
    "find_foldable",
    "fold_bn",
    "norm_axes",
    "normalize_all",
    "train_vs_eval",
]


# --------------------------------------------------------------------------------------------
# Conventions and BN from scratch
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Statistics capture
# --------------------------------------------------------------------------------------------

QUANTITIES = ("batch_mean", "batch_var", "running_mean", "running_var", "gamma", "beta")

# A ResNet-18 run of 2,000 steps: 20 BN layers, 4,800 channels, 6 float32 numbers per channel
# = 115,200 bytes per recorded step; every 50 steps gives 40 rows (steps 0, 50, ..., 1950)
# ≈ 4.6 MB, and the curves still have 40 points.
DEFAULT_EVERY = 50


def _unwrap(model: nn.Module) -> nn.Module:
    # torch.compile wraps the model; hooks and names belong to the original.
    return getattr(model, "_orig_mod", model)


class BNStatsRecorder:
    """Per-layer, per-channel BN statistics every k-th training step (d2l §8.5, the BN lab).

    Records, for every BatchNorm1d/2d/3d (and ScratchBatchNorm) found by ``named_modules()``:
    the batch mean and biased variance of its input (a forward pre-hook, training forwards
    only), and after the step its running mean and variance, γ and β. Stored as float32 arrays
    steps × channels per layer. Thread-safe: a page may read while a training thread records.

    Use as a training callback (``on_run_start(ctx)``, ``on_step_end(ctx, metrics)`` with
    ``ctx.model`` and ``ctx.step``), or by hand: ``with rec.recording(step): train_step()``, or
    ``rec.arm()`` before the forward and ``rec.commit(step)`` after the step. The first step of
    a run is always recorded, then every step whose number is a multiple of ``every``.
    """

    def __init__(self, model: nn.Module | None = None, every: int = DEFAULT_EVERY) -> None:
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ConfigError(f"every must be a whole number of steps ≥ 1, got {every!r}; try 50.")
        self.every = every
        self.model: nn.Module | None = None
        self._lock = threading.RLock()  # re-entrant: to_bytes reads series under one lock
        self._modules: dict[str, nn.Module] = {}
        self._channels: dict[str, int] = {}
        self._handles: list[Any] = []
        self._armed = False
        self._pending: dict[str, tuple[Tensor, Tensor]] = {}
        self._steps: list[int] = []
        self._rows: dict[str, dict[str, list[np.ndarray]]] = {}
        if model is not None:
            self.attach(model)

    # -- attaching -----------------------------------------------------------------------------
    def attach(self, model: nn.Module) -> BNStatsRecorder:
        """Find the model's BN layers and hook them (one recorder holds one model's run)."""
        model = _unwrap(model)
        self.detach()
        found = {name: m for name, m in model.named_modules() if _is_bn(m)}
        channels = {name: int(_bn_channels(m)) for name, m in found.items()}
        with self._lock:
            if self._steps and channels != self._channels:
                raise ConfigError(
                    "this recorder already holds statistics of a model with other BN layers; "
                    "create a new BNStatsRecorder for the new model."
                )
            self.model = model
            self._modules = found
            self._channels = channels
            for name in found:
                self._rows.setdefault(name, {q: [] for q in QUANTITIES})
        for name, m in found.items():
            self._handles.append(m.register_forward_pre_hook(self._make_hook(name)))
        return self

    def detach(self) -> None:
        """Remove the hooks; the recorded statistics stay."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self._armed = False
        self._pending = {}

    def _make_hook(self, name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            # Only training forwards: evaluation passes inside a step must not overwrite the
            # batch statistics; with several forwards per step (accumulation) the first wins.
            if not self._armed or not module.training or name in self._pending or not args:
                return
            x = args[0]
            if not isinstance(x, Tensor) or x.dim() < 2:
                return
            with torch.no_grad():
                var, mean = torch.var_mean(x.detach().float(), dim=_reduce_dims(x.dim()),
                                           correction=0)
            self._pending[name] = (mean, var)

        return hook

    # -- marking steps -------------------------------------------------------------------------
    def arm(self) -> None:
        """Record the next training forward (call before the step's forward pass)."""
        self._pending = {}
        self._armed = True

    def commit(self, step: int) -> bool:
        """Store the armed forward's statistics as ``step``; False when nothing was captured."""
        pending, self._pending, self._armed = self._pending, {}, False
        if not pending:
            return False
        names = list(self._modules)
        parts: list[Tensor] = []
        nan = torch.tensor(float("nan"))
        with torch.no_grad():
            for name in names:
                m, c = self._modules[name], self._channels[name]
                bmean, bvar = pending.get(name, (nan.expand(c), nan.expand(c)))
                rm, rv, g, b = _bn_tensors(m)
                rm = nan.expand(c) if rm is None else rm
                rv = nan.expand(c) if rv is None else rv
                g = torch.ones(c) if g is None else g
                b = torch.zeros(c) if b is None else b
                parts += [bmean, bvar, rm, rv, g, b]
            # One device-to-host copy per recorded step keeps GPU synchronisation rare.
            dev = next((p.device for p in parts if p.device.type != "cpu"), torch.device("cpu"))
            flat = torch.cat([p.detach().float().reshape(-1).to(dev) for p in parts]).cpu()
        values = flat.numpy().astype(np.float32, copy=False)
        with self._lock:
            pos = 0
            for name in names:
                c = self._channels[name]
                for q in QUANTITIES:
                    self._rows[name][q].append(values[pos:pos + c].copy())
                    pos += c
            self._steps.append(int(step))
        return True

    @contextlib.contextmanager
    def recording(self, step: int) -> Iterator[None]:
        """Context manager: record the training step run inside it as ``step``."""
        self.arm()
        try:
            yield
        finally:
            self.commit(step)

    # -- training-engine callback protocol -------------------------------------------------------
    def on_run_start(self, ctx: Any) -> None:
        """Engine callback: hook ``ctx.model`` (unless already hooked) and record the first step."""
        model = _unwrap(ctx.model)
        if model is not self.model or not self._handles:
            self.attach(model)
        self.arm()

    def on_step_end(self, ctx: Any, metrics: Any = None) -> None:
        """Engine callback: store step ``ctx.step`` if armed; arm when the next step is due."""
        step = int(ctx.step)
        if self._armed:
            self.commit(step)
        if (step + 1) % self.every == 0:
            self.arm()

    def on_run_end(self, ctx: Any = None, *args: Any, **kwargs: Any) -> None:
        """Engine callback: remove the hooks."""
        self.detach()

    # -- reading -------------------------------------------------------------------------------
    @property
    def layers(self) -> dict[str, int]:
        """Qualified layer name → number of channels, in model order."""
        return dict(self._channels)

    @property
    def steps(self) -> np.ndarray:
        """The recorded step numbers (int64)."""
        with self._lock:
            return np.asarray(self._steps, dtype=np.int64)

    def series(self, layer: str, quantity: str) -> np.ndarray:
        """One quantity of one layer as a float32 array steps × channels."""
        if layer not in self._channels:
            known = ", ".join(self._channels) or "none"
            raise ConfigError(f"layer {layer!r} is not a recorded BN layer; known: {known}.")
        if quantity not in QUANTITIES:
            raise ConfigError(
                f"quantity {quantity!r} is unknown; use one of {', '.join(QUANTITIES)}."
            )
        with self._lock:
            rows = self._rows[layer][quantity]
            if not rows:
                return np.zeros((0, self._channels[layer]), dtype=np.float32)
            return np.stack(rows)

    @property
    def nbytes(self) -> int:
        """Bytes held by the recorded arrays (float32 values and int64 step numbers)."""
        return len(self._steps) * self.bytes_per_step() + 8 * len(self._steps)

    def bytes_per_step(self) -> int:
        """Bytes one recorded step takes: 6 float32 numbers per channel."""
        return 4 * len(QUANTITIES) * sum(self._channels.values())

    def estimate_nbytes(self, n_steps: int) -> int:
        """Bytes a run of ``n_steps`` training steps will take with this ``every``."""
        rows = 1 + (max(int(n_steps), 1) - 1) // self.every  # step 0 plus every k-th
        return rows * (self.bytes_per_step() + 8)

    # -- storage -------------------------------------------------------------------------------
    def to_bytes(self, compress: bool = False) -> bytes:
        """The recorded statistics as an in-memory .npz (a blob for SQLite); see ``from_bytes``."""
        with self._lock:  # one consistent snapshot while a training thread may commit
            return self._to_bytes(compress)

    def _to_bytes(self, compress: bool) -> bytes:
        names = list(self._channels)
        arrays: dict[str, np.ndarray] = {
            "format": np.array([1], dtype=np.int64),
            "every": np.array([self.every], dtype=np.int64),
            "steps": self.steps,
            "names": np.array(names, dtype=np.str_),
            "channels": np.array([self._channels[n] for n in names], dtype=np.int64),
        }
        # One steps × (all channels) array per quantity keeps the archive's headers negligible.
        for q in QUANTITIES:
            parts = [self.series(name, q) for name in names]
            arrays[q] = (
                np.concatenate(parts, axis=1) if parts
                else np.zeros((len(arrays["steps"]), 0), dtype=np.float32)
            )
        buf = io.BytesIO()
        (np.savez_compressed if compress else np.savez)(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> BNStatsRecorder:
        """Reopen statistics saved by ``to_bytes``: a recorder with the data and no model."""
        try:
            with np.load(io.BytesIO(blob), allow_pickle=False) as z:
                rec = cls(every=int(z["every"][0]))
                names = [str(n) for n in z["names"]]
                rec._steps = [int(s) for s in z["steps"]]
                bounds = np.concatenate([[0], np.cumsum(z["channels"])]).astype(int)
                data = {q: z[q] for q in QUANTITIES}
                for i, name in enumerate(names):
                    lo, hi = bounds[i], bounds[i + 1]
                    rec._channels[name] = int(hi - lo)
                    rec._rows[name] = {q: list(data[q][:, lo:hi]) for q in QUANTITIES}
        except (OSError, KeyError, IndexError, ValueError, zipfile.BadZipFile) as e:
            raise ConfigError(
                "these bytes are not BN statistics saved by BNStatsRecorder.to_bytes; "
                "reopen the blob that the run stored."
            ) from e
        return rec

    def to_records(self, layer: str | None = None) -> list[dict[str, Any]]:
        """Long format: one dict per (layer, step, channel) with the six quantities."""
        out: list[dict[str, Any]] = []
        with self._lock:
            steps = self.steps
            names = [layer] if layer is not None else list(self._channels)
            all_series = {name: {q: self.series(name, q) for q in QUANTITIES} for name in names}
        for name in names:
            series = all_series[name]
            for i, step in enumerate(steps):
                for ch in range(self._channels[name]):
                    rec = {"layer": name, "step": int(step), "channel": ch}
                    rec.update({q: float(series[q][i, ch]) for q in QUANTITIES})
                    out.append(rec)
        return out

    @classmethod
    def from_records(
        cls, records: Iterable[dict[str, Any]], every: int = DEFAULT_EVERY
    ) -> BNStatsRecorder:
        """Rebuild a recorder (no model) from ``to_records`` output."""
        rows = list(records)
        layers: dict[str, int] = {}
        steps: set[int] = set()
        for r in rows:
            layers[r["layer"]] = max(layers.get(r["layer"], 0), int(r["channel"]) + 1)
            steps.add(int(r["step"]))
        order = sorted(steps)
        index = {s: i for i, s in enumerate(order)}
        data = {
            name: {q: np.full((len(order), c), np.nan, dtype=np.float32) for q in QUANTITIES}
            for name, c in layers.items()
        }
        for r in rows:
            for q in QUANTITIES:
                data[r["layer"]][q][index[int(r["step"])], int(r["channel"])] = r[q]
        rec = cls(every=every)
        rec._steps = order
        rec._channels = layers
        rec._rows = {n: {q: list(a) for q, a in d.items()} for n, d in data.items()}
        return rec


# --------------------------------------------------------------------------------------------
# Looking inside: histograms, train vs eval, batch-size noise
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def preserved(model: nn.Module) -> Iterator[None]:
    """Restore every module's mode and every buffer (running statistics) on exit."""
    modes = {m: m.training for m in model.modules()}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    try:
        yield
    finally:
        with torch.no_grad():
            for n, b in model.named_buffers():
                if n in buffers:
                    b.copy_(buffers[n])
        for m, mode in modes.items():
            m.training = mode


def _sample(values: Tensor, idx: Tensor | None) -> np.ndarray:
    flat = values.detach().float().reshape(-1).cpu()
    return (flat if idx is None else flat[idx]).numpy()


def activation_histograms(
    model: nn.Module,
    layer_name: str,
    batch: Tensor,
    *,
    training: bool | None = None,
    max_values: int = 20_000,
    seed: int = 0,
) -> dict[str, Any]:
    """Values entering and leaving one BN layer for one batch (paired samples for histograms).

    Runs the model without gradients and without side effects (running statistics and modes are
    restored). ``training`` None uses the model's current mode; True shows the normalisation
    with batch statistics (d2l §8.5), False with the running averages.
    """
    model = _unwrap(model)
    modules = dict(model.named_modules())
    bn_names = [n for n, m in modules.items() if _is_bn(m)]
    if layer_name not in bn_names:
        raise ConfigError(
            f"layer_name {layer_name!r} is not a batch-norm layer of this model; "
            f"pick one of: {', '.join(bn_names) or 'none (the model has no BN layer)'}."
        )
    if int(max_values) < 1:
        raise ConfigError(f"max_values must be at least 1, got {max_values}.")
    layer = modules[layer_name]
    captured: dict[str, Tensor] = {}

    def hook(_m: nn.Module, args: tuple[Any, ...], output: Tensor) -> None:
        if "input" not in captured:
            captured["input"], captured["output"] = args[0].detach(), output.detach()

    mode = model.training if training is None else bool(training)
    handle = layer.register_forward_hook(hook)
    try:
        with preserved(model), torch.no_grad():
            model.train(mode)
            model(batch)
    finally:
        handle.remove()
    if "input" not in captured:
        raise ConfigError(
            f"layer {layer_name!r} was not used by this model's forward pass; pick another layer."
        )
    x, y = captured["input"], captured["output"]
    n = x.numel()
    idx = None
    if n > max_values:
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(n, generator=g)[:max_values]
    xs, ys = _sample(x, idx), _sample(y, idx)
    return {
        "layer": layer_name,
        "mode": "train" if mode else "eval",
        "shape": tuple(x.shape),
        "n_values": n,
        "input": xs,
        "output": ys,
        "input_mean": float(x.float().mean()),
        "input_std": float(x.float().std(correction=0)),
        "output_mean": float(y.float().mean()),
        "output_std": float(y.float().std(correction=0)),
    }


def train_vs_eval(
    model: nn.Module, batch: Tensor, *, example: int = 0, bn_only: bool = False
) -> dict[str, Any]:
    """The same batch in training and prediction mode, and one example alone in training mode.

    d2l §8.5: in training mode BN uses the batch's statistics, so an example's output depends on
    the rest of its batch; in eval mode it uses the running averages. Forgetting model.eval() is
    the common bug. A batch of one in training mode fails where a BN layer sees one value per
    channel (N×D, or 1×1 feature maps); the message is returned in ``single["error"]``.
    ``bn_only`` puts only the BN layers in training mode, so dropout does not blur the
    comparison. No side effects: modes and running statistics are restored.
    """
    model = _unwrap(model)
    if batch.dim() < 2 or batch.shape[0] < 1:
        raise ConfigError(f"batch must hold at least one example, got shape {tuple(batch.shape)}.")
    if not 0 <= example < batch.shape[0]:
        raise ConfigError(
            f"example must index the batch (0 to {batch.shape[0] - 1}), got {example}."
        )

    def set_train() -> None:
        if bn_only:
            model.eval()
            for m in model.modules():
                if _is_bn(m):
                    m.train()
        else:
            model.train()

    def run(inp: Tensor) -> Tensor:
        out = model(inp)
        # Some models return (logits, aux...) in training mode, e.g. GoogLeNet's aux heads.
        return out if isinstance(out, Tensor) else out[0]

    def pred(out: Tensor) -> np.ndarray | None:
        return out.argmax(dim=1).cpu().numpy() if out.dim() == 2 else None

    x1 = batch[example:example + 1]
    with preserved(model), torch.no_grad():
        model.eval()
        out_eval = run(batch)
        single_eval = run(x1)
        set_train()
        out_train = run(batch)
    error: str | None = None
    single_train: Tensor | None = None
    with preserved(model), torch.no_grad():
        set_train()
        try:
            single_train = run(x1)
        except ValueError as e:  # nn.BatchNorm: "Expected more than 1 value per channel ..."
            error = str(e)
    diff = (out_train - out_eval).abs()
    p_train, p_eval = pred(out_train), pred(out_eval)
    ev = single_eval[0]
    return {
        "train_output": out_train.cpu().numpy(),
        "eval_output": out_eval.cpu().numpy(),
        "train_pred": p_train,
        "eval_pred": p_eval,
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "pred_disagreement": (
            None if p_train is None else float((p_train != p_eval).mean())
        ),
        "single": {
            "example": example,
            "eval_output": ev.cpu().numpy(),
            # Eval mode treats examples independently: alone or in the batch, same output.
            "eval_alone_vs_in_batch": float((ev - out_eval[example]).abs().max()),
            "train_output": None if single_train is None else single_train[0].cpu().numpy(),
            "train_in_batch_output": out_train[example].cpu().numpy(),
            "train_alone_vs_eval": (
                None if single_train is None else float((single_train[0] - ev).abs().max())
            ),
            "error": error,
        },
    }


def batch_stat_noise(
    x_population: Tensor,
    batch_sizes: Sequence[int] = (1, 2, 4, 8, 16, 32, 64, 128, 256),
    trials: int = 200,
    *,
    seed: int = 0,
) -> dict[str, Any]:
    """How noisy BN's batch mean and variance are, per batch size (d2l §8.5: batches of 50-100).

    Draws ``trials`` batches without replacement from the population for each size and measures,
    per channel, the spread (std over trials) of the batch mean and of the biased batch variance,
    averaged over channels. ``var_ratio`` is mean(batch var)/population var, about (m-1)/m for m
    values per channel (the bias that PyTorch's n/(n-1) removes); ``zero_var_fraction`` is 1 at
    batch size 1 on N×D inputs (one value per channel) and 0 on N×C×H×W inputs (H·W values).
    """
    x = x_population.detach()
    if x.dim() not in (2, 4):
        raise ConfigError(
            f"x_population must be N×D or N×C×H×W, got shape {tuple(x.shape)}."
        )
    N = x.shape[0]
    sizes = [int(b) for b in batch_sizes]
    if not sizes or min(sizes) < 1:
        raise ConfigError(f"batch_sizes must be positive whole numbers, got {list(batch_sizes)}.")
    if max(sizes) > N:
        raise ConfigError(
            f"batch_sizes: {max(sizes)} is larger than the {N} examples in x_population; "
            "use a larger population or drop that size."
        )
    if int(trials) < 2:
        raise ConfigError(f"trials must be at least 2 to measure a spread, got {trials}.")
    xd = x.double()
    dims = _reduce_dims(x.dim())
    pop_var, pop_mean = torch.var_mean(xd, dim=dims, correction=0)
    per_example = 1 if x.dim() == 2 else x.shape[2] * x.shape[3]
    g = torch.Generator().manual_seed(seed)
    rows = []
    for b in sizes:
        order = torch.rand((trials, N), generator=g).argsort(dim=1)[:, :b]
        batches = xd[order]  # trials × b × C [× H × W]
        var, mean = torch.var_mean(batches, dim=tuple(d + 1 for d in dims), correction=0)
        rows.append({
            "batch_size": b,
            "values_per_channel": b * per_example,
            "mean_std": float(mean.std(dim=0).mean()),
            "var_std": float(var.std(dim=0).mean()),
            "var_ratio": float((var.mean(dim=0) / pop_var.clamp_min(1e-300)).mean()),
            "zero_var_fraction": float((var == 0).double().mean()),
        })
    return {
        "layout": "N×D" if x.dim() == 2 else "N×C×H×W",
        "values_per_example": per_example,
        "population_mean": pop_mean.float().numpy(),
        "population_var": pop_var.float().numpy(),
        "rows": rows,
    }


def batch_size_one(x: Tensor, *, eps: float = 1e-5, seed: int = 0) -> dict[str, Any]:
    """One example through training-mode BN: on N×D the variance is 0, x̂ = 0 and y = β.

    d2l §8.5: BN on a fully connected layer is undefined at batch size 1 (nn.BatchNorm1d refuses
    it); after a convolution each channel still has H×W values, so it is well defined. Uses the
    book's biased convention with seeded γ, β and reports what nn.BatchNorm does with the input.
    """
    if x.dim() not in (2, 4):
        raise ConfigError(f"x must be N×D or N×C×H×W, got shape {tuple(x.shape)}.")
    x1 = x.detach()[:1].float()
    C = x1.shape[1]
    g = torch.Generator().manual_seed(seed)
    gamma = 1.0 + torch.rand(C, generator=g)
    beta = torch.randn(C, generator=g)
    shape = (1, C) + (1,) * (x1.dim() - 2)
    var, mean = torch.var_mean(x1, dim=_reduce_dims(x1.dim()), correction=0, keepdim=True)
    x_hat = (x1 - mean) / torch.sqrt(var + eps)
    y, _, _ = batch_norm(
        x1, gamma, beta, torch.zeros(C), torch.ones(C), eps, 0.1, True, convention="d2l"
    )
    torch_error: str | None = None
    ref = (nn.BatchNorm1d if x1.dim() == 2 else nn.BatchNorm2d)(C, eps=eps)
    try:
        with torch.no_grad():
            ref(x1)
    except ValueError as e:
        torch_error = str(e)
    beta_b = beta.reshape(shape).expand_as(y)
    return {
        "layout": "N×D" if x1.dim() == 2 else "N×C×H×W",
        "values_per_channel": x1.numel() // C,
        "batch_mean": mean.reshape(C).numpy(),
        "batch_var": var.reshape(C).numpy(),
        "x_hat": x_hat.numpy(),
        "output": y.detach().numpy(),
        "beta": beta.numpy(),
        "output_equals_beta": bool(torch.equal(y.detach(), beta_b)),
        "torch_error": torch_error,
    }


# --------------------------------------------------------------------------------------------
# Folding BN into the preceding conv / linear layer
# --------------------------------------------------------------------------------------------

_FOLD_INTO = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class FoldPlan:
    """Which BN layers fold into which conv/linear layer, and why the others stay."""

    pairs: tuple[tuple[str, str], ...]  # (conv or linear name, BN name)
    kept: tuple[tuple[str, str], ...]  # (BN name, reason it cannot be folded)
    method: str  # "torch.fx" or the fallback used when the model cannot be traced


class _LeafBNTracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        # ScratchBatchNorm checks shapes in Python, which a symbolic trace cannot run through.
        return isinstance(m, ScratchBatchNorm) or super().is_leaf_module(m, qualname)


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


def find_foldable(model: nn.Module) -> FoldPlan:
    """Pairs (conv/linear → BN) on the torch.fx graph where the BN is the layer's only consumer.

    A BN folds when its input is the output of a Conv1d/2d/3d or Linear call whose only user is
    that BN, and neither module is called twice. BNs before a conv (DenseNet's BN-ReLU-conv), after
    an addition or concatenation, or without running statistics stay. When torch.fx cannot trace
    the model, only adjacent pairs inside plain nn.Sequential containers are folded.
    """
    model = _unwrap(model)
    modules = dict(model.named_modules(remove_duplicate=False))
    bn_names = [n for n, m in model.named_modules() if _is_bn(m)]
    pairs: list[tuple[str, str]] = []
    kept: list[tuple[str, str]] = []
    try:
        graph = _LeafBNTracer().trace(model)
    except Exception as e:  # noqa: BLE001 - any trace failure means: use the fallback
        return _find_foldable_sequential(model, f"nn.Sequential scan (torch.fx failed: {e})")
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    seen: set[str] = set()
    for node in graph.nodes:
        if node.op != "call_module" or node.target not in bn_names or node.target in seen:
            continue
        seen.add(node.target)
        bn = modules[node.target]
        src = node.args[0] if node.args else None
        producer = None
        if isinstance(src, fx.Node) and src.op == "call_module":
            producer = modules[src.target]
        reason = _fold_reason(producer, bn)
        if reason is None and calls[node.target] > 1:
            reason = "this BN module is called more than once"
        elif reason is None and calls[src.target] > 1:
            reason = "the preceding layer is called more than once (shared weights)"
        elif reason is None and len(src.users) != 1:
            reason = "the preceding layer's output also feeds other layers"
        if reason is None:
            pairs.append((src.target, node.target))
        else:
            kept.append((node.target, reason))
    for name in bn_names:
        if name not in seen:
            kept.append((name, "not called in the traced forward pass"))
    return FoldPlan(tuple(pairs), tuple(kept), "torch.fx")


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


def fold_bn(model: nn.Module, plan: FoldPlan | None = None) -> nn.Module:
    """A copy of the model in eval mode with each foldable BN merged into its conv/linear layer.

    At test time BN is y = s·x + t per channel with s = γ/√(σ²+ε), t = β - μ·s (d2l §8.5), so
    after W·x + b it becomes (s·W)·x + (s·b + t): the weights of output channel c are scaled by
    s_c and the BN becomes nn.Identity. Computed in float64 and cast back. The copy keeps the
    model's class and module names; it is meant for inference only (its BN layers are gone).
    """
    model = _unwrap(model)
    plan = find_foldable(model) if plan is None else plan
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


# --------------------------------------------------------------------------------------------
# Batch, layer, instance and group norm side by side
# --------------------------------------------------------------------------------------------

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
