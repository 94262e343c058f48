"""Activation histograms of every BN layer, one forward pass at a few moments of a run.

What enters and leaves each BN layer (d2l §8.5: BN keeps a layer's inputs at a steady mean and
scale); taken inside the run, because the run store keeps no weights to compute them afterwards.
"""

from __future__ import annotations

import io
import threading
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from explorer.bn.conventions import BN_TYPES
from explorer.bn.demos import preserved
from explorer.errors import ConfigError

HIST_BINS = 60


def _hist(values: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.linspace(0.0, 1.0, bins + 1), np.zeros(bins, dtype=np.int64)
    lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:  # all values equal (batch of one after BN): a narrow bin around them
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = np.histogram(finite, bins=bins, range=(lo, hi))
    return edges, counts.astype(np.int64)


def layer_histograms(model: nn.Module, batch: Tensor, *, bins: int = HIST_BINS,
                     max_values: int = 100_000, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Histograms of what enters and leaves every BN layer, for one batch, in one forward pass.

    The BN layers normalise with the batch's own statistics, as in training (d2l §8.5); every
    other layer runs in eval mode, so dropout does not blur the picture. No side effects: the
    modes and the running statistics are restored. Above ``max_values`` values per layer a
    seeded sample (the same positions for input and output) is histogrammed; means and standard
    deviations use every value.
    """
    if int(bins) < 1:
        raise ConfigError(f"bins must be at least 1, got {bins}.")
    model = getattr(model, "_orig_mod", model)
    bns = {n: m for n, m in model.named_modules() if isinstance(m, BN_TYPES)}
    captured: dict[str, tuple[Tensor, Tensor]] = {}

    def make_hook(name: str):
        def hook(_m: nn.Module, args: tuple[Any, ...], output: Tensor) -> None:
            if name not in captured and args and isinstance(args[0], Tensor):
                captured[name] = (args[0].detach(), output.detach())
        return hook

    handles = [m.register_forward_hook(make_hook(n)) for n, m in bns.items()]
    try:
        with preserved(model), torch.no_grad():  # modes and running statistics come back
            model.eval()
            for m in bns.values():
                m.train()
            model(batch)
    finally:
        for h in handles:
            h.remove()
    out: dict[str, dict[str, Any]] = {}
    g = torch.Generator().manual_seed(seed)
    for name in bns:
        if name not in captured:
            continue  # a BN layer the forward pass does not use
        x, y = captured[name]
        n = x.numel()
        xf, yf = x.float().reshape(-1), y.float().reshape(-1)
        if n > max_values:
            idx = torch.randperm(n, generator=g)[:max_values].to(x.device)
            xs, ys = xf[idx], yf[idx]
        else:
            xs, ys = xf, yf
        in_edges, in_counts = _hist(xs.cpu().numpy(), bins)
        out_edges, out_counts = _hist(ys.cpu().numpy(), bins)
        xd, yd = xf.double(), yf.double()
        out[name] = {
            "shape": tuple(x.shape), "n_values": n,
            "in_edges": in_edges, "in_counts": in_counts,
            "out_edges": out_edges, "out_counts": out_counts,
            "in_mean": float(xd.mean()), "in_std": float(xd.std(correction=0)),
            "out_mean": float(yd.mean()), "out_std": float(yd.std(correction=0)),
        }
    return out


class HistogramSnapshots:
    """Activation histograms of every BN layer at a few moments of a run (thread-safe)."""

    FIELDS = ("in_edges", "in_counts", "out_edges", "out_counts")
    STATS = ("in_mean", "in_std", "out_mean", "out_std")

    def __init__(self, bins: int = HIST_BINS) -> None:
        self.bins = int(bins)
        self._lock = threading.Lock()
        self._snaps: list[tuple[int, int, dict[str, dict[str, Any]]]] = []

    def add(self, step: int, epoch: int, layers: Mapping[str, dict[str, Any]]) -> None:
        """Keep one moment: ``layer_histograms`` output at optimizer step ``step``."""
        with self._lock:
            self._snaps.append((int(step), int(epoch), dict(layers)))

    def moments(self) -> list[tuple[int, int]]:
        """(step, epoch) of each snapshot, oldest first; epoch 0 is before training."""
        with self._lock:
            return [(s, e) for s, e, _ in self._snaps]

    def get(self, index: int) -> dict[str, dict[str, Any]]:
        """The layers' histograms of snapshot ``index`` (negative counts from the end)."""
        with self._lock:
            if not self._snaps:
                raise ConfigError("no activation histograms were recorded yet; they are taken "
                                  "before the first step and at the end of every epoch.")
            return self._snaps[index][2]

    def __len__(self) -> int:
        with self._lock:
            return len(self._snaps)

    def to_bytes(self) -> bytes:
        """An in-memory .npz (a blob for the run store); see ``from_bytes``."""
        with self._lock:
            snaps = list(self._snaps)
        names: list[str] = []
        for _, _, layers in snaps:
            names += [n for n in layers if n not in names]
        S, L, B = len(snaps), len(names), self.bins
        arrays: dict[str, np.ndarray] = {
            "format": np.array([1], dtype=np.int64), "bins": np.array([B], dtype=np.int64),
            "names": np.array(names, dtype=np.str_),
            "steps": np.array([s for s, _, _ in snaps], dtype=np.int64),
            "epochs": np.array([e for _, e, _ in snaps], dtype=np.int64),
            "present": np.zeros((S, L), dtype=bool),
            "n_values": np.zeros((S, L), dtype=np.int64),
            "shapes": np.zeros((S, L, 5), dtype=np.int64),  # up to N×C×D×H×W; 0 = absent
            "stats": np.full((S, L, 4), np.nan),
            "in_edges": np.zeros((S, L, B + 1)), "out_edges": np.zeros((S, L, B + 1)),
            "in_counts": np.zeros((S, L, B), dtype=np.int64),
            "out_counts": np.zeros((S, L, B), dtype=np.int64),
        }
        for i, (_, _, layers) in enumerate(snaps):
            for j, name in enumerate(names):
                h = layers.get(name)
                if h is None:
                    continue
                arrays["present"][i, j] = True
                arrays["n_values"][i, j] = h["n_values"]
                arrays["shapes"][i, j, :len(h["shape"])] = h["shape"]
                arrays["stats"][i, j] = [h[k] for k in self.STATS]
                for k in self.FIELDS:
                    arrays[k][i, j] = h[k]
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> HistogramSnapshots:
        """Reopen snapshots saved by ``to_bytes``."""
        try:
            with np.load(io.BytesIO(blob), allow_pickle=False) as z:
                snaps = cls(int(z["bins"][0]))
                names = [str(n) for n in z["names"]]
                for i, (step, epoch) in enumerate(zip(z["steps"], z["epochs"], strict=True)):
                    layers = {}
                    for j, name in enumerate(names):
                        if not z["present"][i, j]:
                            continue
                        shape = tuple(int(s) for s in z["shapes"][i, j] if s > 0)
                        h: dict[str, Any] = {"shape": shape, "n_values": int(z["n_values"][i, j])}
                        h.update({k: z[k][i, j] for k in cls.FIELDS})
                        h.update({k: float(v) for k, v in zip(cls.STATS, z["stats"][i, j],
                                                              strict=True)})
                        layers[name] = h
                    snaps.add(int(step), int(epoch), layers)
        except (OSError, KeyError, IndexError, ValueError, zipfile.BadZipFile) as e:
            raise ConfigError("these bytes are not activation histograms saved by the BN lab; "
                              "reopen the blob that the run stored.") from e
        return snaps

