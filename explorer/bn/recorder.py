"""Per-layer, per-channel BN statistics recorded during training (the BN lab's curves)."""

from __future__ import annotations

import contextlib
import io
import threading
import zipfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from explorer.bn.conventions import _bn_channels, _bn_tensors, _is_bn, _reduce_dims, _unwrap
from explorer.errors import ConfigError

QUANTITIES = ("batch_mean", "batch_var", "running_mean", "running_var", "gamma", "beta")

# A ResNet-18 run of 2,000 steps: 20 BN layers, 4,800 channels, 6 float32 numbers per channel
# = 115,200 bytes per recorded step; every 50 steps gives 40 rows (steps 0, 50, ..., 1950)
# ≈ 4.6 MB, and the curves still have 40 points.
DEFAULT_EVERY = 50


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
