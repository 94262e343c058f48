"""Looking inside BN: histograms, train vs eval, batch-size noise, a batch of one (d2l §8.5)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from explorer.bn.conventions import _is_bn, _reduce_dims, _unwrap, batch_norm
from explorer.bn.rng import local_rng
from explorer.errors import ConfigError


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
        # Dropout in training mode draws from a local generator, never the process-wide one.
        with preserved(model), torch.no_grad(), local_rng(seed):
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
    model: nn.Module, batch: Tensor, *, example: int = 0, bn_only: bool = False, seed: int = 0
) -> dict[str, Any]:
    """The same batch in training and prediction mode, and one example alone in training mode.

    d2l §8.5: in training mode BN uses the batch's statistics, so an example's output depends on
    the rest of its batch; in eval mode it uses the running averages. Forgetting model.eval() is
    the common bug. A batch of one in training mode fails where a BN layer sees one value per
    channel (N×D, or 1×1 feature maps); the message is returned in ``single["error"]``.
    ``bn_only`` puts only the BN layers in training mode, so dropout does not blur the
    comparison; otherwise dropout draws from a generator seeded with ``seed`` (``local_rng``).
    No side effects: modes, running statistics and the process-wide RNG stay as they were.
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
    with preserved(model), torch.no_grad(), local_rng(seed):
        model.eval()
        out_eval = run(batch)
        single_eval = run(x1)
        set_train()
        out_train = run(batch)
    error: str | None = None
    single_train: Tensor | None = None
    with preserved(model), torch.no_grad(), local_rng(seed + 1):
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


def bn_inputs(model: nn.Module, batch: Tensor) -> dict[str, Tensor]:
    """What each BN layer receives for ``batch`` in eval mode (one forward, hooks removed)."""
    got: dict[str, Tensor] = {}
    handles = []
    for name, m in model.named_modules():
        if _is_bn(m):
            handles.append(m.register_forward_pre_hook(
                lambda _m, args, name=name: got.setdefault(name, args[0].detach())))
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return got



def standardise_channels(x: Tensor) -> Tensor:
    """Each channel shifted and scaled to mean 0 and (biased) std 1 over the whole population.

    Batch statistics of the result are those of ``x`` in units of each channel's population
    mean and std, so layers of different scales compare on one chart.
    """
    dims = (0,) if x.dim() == 2 else (0, *range(2, x.dim()))
    var, mean = torch.var_mean(x.double(), dim=dims, correction=0, keepdim=True)
    return ((x.double() - mean) / var.sqrt().clamp_min(1e-12)).to(x.dtype)
