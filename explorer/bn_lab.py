"""Glue for the Batch norm page: recorded runs in the store, the LeNet ± BN experiment, demos.

The statistics themselves come from ``explorer.bn`` (d2l.ai §8.5; Ioffe & Szegedy 2015). This
module adds what a web page needs around them: a recorder that saves itself into the run store
while a run trains (so a finished or interrupted run reopens), activation histograms computed
inside the run (the weights are not stored, so they cannot be computed afterwards), the
lecture's one-click experiment, and small cached-size demonstrations.
"""

from __future__ import annotations

import dataclasses
import enum
import io
import logging
import math
import statistics
import threading
import time
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from explorer.bn import (
    DEFAULT_EVERY,
    QUANTITIES,
    BNStatsRecorder,
    ScratchBatchNorm,
    find_foldable,
    fold_bn,
    preserved,
)
from explorer.bn.rng import local_rng
from explorer.data import ImageDataset
from explorer.db import database_errors
from explorer.errors import ConfigError
from explorer.jobs import DataRef
from explorer.models import BUILDERS, build
from explorer.registry import PRESETS, get_preset
from explorer.runs import RunStore
from explorer.specs import SpecBase, spec_from_dict
from explorer.training import TrainConfig, train

log = logging.getLogger(__name__)

STATS_ARTIFACT = "bn_stats"  # the recorder's .npz, see BNStatsRecorder.to_bytes
HISTOGRAMS_ARTIFACT = "bn_histograms"  # HistogramSnapshots.to_bytes
RECORDED_PREFIX = "BN stats · "  # names of runs whose statistics this page recorded
MAX_ROWS = 200  # recorded steps per run: enough columns for a heatmap, few enough to draw fast
MAX_STATS_BYTES = 8_000_000  # a run's statistics stay within a few MB (bn.DEFAULT_EVERY note)
# One recorded step costs 0.36-0.47 of a training step on the CPU (bench/bench_bn_recorder.py:
# course ResNet-18 and BN-LeNet), so recording at most every 10th step keeps it under 5%.
MIN_EVERY = 10
HIST_BINS = 60
HIST_BATCH = 64  # test images in the one batch whose activations are histogrammed
EXPERIMENT_EPOCHS = 5  # both runs: 3-4 s on one idle CPU core (offline digits, measured)
BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, ScratchBatchNorm)


# --------------------------------------------------------------------------------------------
# Which models have batch norm, and how often to record
# --------------------------------------------------------------------------------------------


def bn_layers(model: nn.Module) -> dict[str, int]:
    """Qualified BN layer name → channels, in model order (BatchNorm1d/2d/3d, scratch BN)."""
    model = getattr(model, "_orig_mod", model)
    return {n: int(m.num_features) for n, m in model.named_modules() if isinstance(m, BN_TYPES)}


def spec_bn_layers(spec: SpecBase) -> dict[str, int]:
    """``bn_layers`` of a spec's model, built on the meta device (no weights allocated)."""
    with torch.device("meta"):
        model = BUILDERS[spec.family](spec)
    return bn_layers(model)


def bn_presets() -> list[str]:
    """Registry presets whose model has at least one batch-norm layer, in registry order."""
    return [name for name, p in PRESETS.items() if spec_bn_layers(p.spec)]


def choose_every(total_steps: int, channels: int, *, max_rows: int = MAX_ROWS,
                 max_bytes: int = MAX_STATS_BYTES, min_every: int = MIN_EVERY) -> int:
    """Record every k-th step: at most ``max_rows`` rows and ``max_bytes`` for the whole run.

    A row is 6 float32 numbers per channel plus its step number (``BNStatsRecorder``); a
    torchvision ResNet-18 (4,800 channels, 115 KB a row) is capped at 69 rows by the byte
    budget, i.e. k = 30 for 2,000 steps. k is never below ``min_every`` (10 keeps the cost
    under 5% of the training time; a run of a few seconds may pass 1 to see every step).
    """
    if int(total_steps) < 1 or int(channels) < 1:
        raise ConfigError(f"choose_every needs at least one step and one channel, got "
                          f"{total_steps} steps and {channels} channels.")
    per_row = 4 * len(QUANTITIES) * int(channels) + 8
    rows = max(2, min(int(max_rows), int(max_bytes) // per_row))
    # Rows are step 0 and every k-th step after it: 1 + (n - 1) // k ≤ rows.
    return max(1, int(min_every), math.ceil((int(total_steps) - 1) / (rows - 1)))


# --------------------------------------------------------------------------------------------
# Activation histograms of every BN layer from one forward pass
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# The recorder that saves itself into the run store
# --------------------------------------------------------------------------------------------


class StoredBNRecorder(BNStatsRecorder):
    """``BNStatsRecorder`` that also keeps activation histograms and saves both into the store.

    Saves the statistics (artifact ``bn_stats``) and histograms (``bn_histograms``) at every
    epoch end, at the end of the run (completed, stopped or failed), and after a recorded step
    when ``save_every_s`` seconds have passed since the last save, so a killed server keeps what
    was recorded. Histograms are taken before the first step and at every epoch end, inside the
    run, because the run store keeps no weights to compute them from afterwards; each costs one
    forward pass of ``hist_batch`` test images. A failure to save or histogram is logged and kept
    in ``errors``; it never stops the training run.

    Args:
        run_id: the run to save into; pass None and call ``bind`` once the job manager has
            given the id (a save waits up to 30 s for it).
    """

    def __init__(self, store: RunStore, run_id: int | None = None, every: int = DEFAULT_EVERY,
                 *, save_every_s: float = 30.0, hist_batch: int = HIST_BATCH,
                 bins: int = HIST_BINS) -> None:
        super().__init__(every=every)
        self.store = store
        self.run_id: int | None = None
        self._bound = threading.Event()
        if run_id is not None:
            self.bind(run_id)
        self.save_every_s = float(save_every_s)
        self.hist_batch = int(hist_batch)
        self.histograms = HistogramSnapshots(bins)
        self.errors: list[str] = []
        self.saves = 0
        self._last_save = time.monotonic()
        self._probe: Tensor | None = None
        self._last_hist_step = -1

    def bind(self, run_id: int) -> None:
        """The run id to save into (known only after the job manager queued the run)."""
        self.run_id = int(run_id)
        self._bound.set()

    # -- engine callbacks ----------------------------------------------------------------------
    def on_run_start(self, ctx: Any) -> None:
        """Hook the model, histogram the untrained network, and arm the first step."""
        data: ImageDataset = ctx.dataset
        images = data.test_images if len(data.test_labels) else data.train_images
        try:
            self._probe = ctx.transform(images[:self.hist_batch].to(ctx.device))
        except Exception as e:  # noqa: BLE001 - a probe problem must not stop the run
            self._fail("preparing the histogram batch", e)
        self._snapshot(ctx)
        super().on_run_start(ctx)

    def on_step_end(self, ctx: Any, metrics: Any = None) -> None:
        """Record every k-th step; save now and then so a killed server keeps the statistics."""
        rows = len(self._steps)
        super().on_step_end(ctx, metrics)
        if len(self._steps) > rows and time.monotonic() - self._last_save >= self.save_every_s:
            self.save()

    def on_epoch_end(self, ctx: Any, metrics: Any = None) -> None:
        """Histogram the layers after this epoch and save everything."""
        self._snapshot(ctx)
        self.save()

    def on_run_end(self, ctx: Any = None, status: str | None = None, *args: Any,
                   **kwargs: Any) -> None:
        """Histogram a run stopped mid-epoch, remove the hooks and save."""
        if ctx is not None and status != "failed":
            self._snapshot(ctx)
        super().on_run_end(ctx)
        self._probe = None
        self.save()

    # -- helpers -------------------------------------------------------------------------------
    def _fail(self, what: str, exc: BaseException) -> None:
        message = f"{what} failed: {type(exc).__name__}: {exc}"
        log.warning("BN lab recorder (run %s): %s", self.run_id, message)
        self.errors.append(message)

    def _snapshot(self, ctx: Any) -> None:
        step = int(ctx.step)
        if self._probe is None or step == self._last_hist_step:
            return
        # The histogram forward must not reach this recorder's own hooks as a training step.
        armed, pending = self._armed, self._pending
        self._armed = False
        try:
            layers = layer_histograms(ctx.model, self._probe, bins=self.histograms.bins)
            self.histograms.add(step, int(ctx.epoch) if step else 0, layers)
            self._last_hist_step = step
        except Exception as e:  # noqa: BLE001 - histograms are a bonus, the run goes on
            self._fail(f"histograms at step {step}", e)
        finally:
            self._armed, self._pending = armed, pending

    def save(self) -> bool:
        """Write the statistics and histograms into the run store now; False when it could not."""
        if not self._bound.wait(timeout=30.0):
            self._fail("saving", ConfigError("no run id was bound to the recorder"))
            return False
        self._last_save = time.monotonic()
        try:
            self.store.save_artifact(self.run_id, STATS_ARTIFACT, self.to_bytes())
            self.store.save_artifact(self.run_id, HISTOGRAMS_ARTIFACT, self.histograms.to_bytes())
        except (ConfigError, *database_errors()) as e:  # e.g. the run was deleted meanwhile
            self._fail("saving", e)
            return False
        self.saves += 1
        return True


def load_stats(store: RunStore, run_id: int) -> BNStatsRecorder | None:
    """A run's recorded BN statistics from the store (no model attached), or None."""
    blob = store.load_artifact(run_id, STATS_ARTIFACT)
    return None if blob is None else BNStatsRecorder.from_bytes(blob)


def load_histograms(store: RunStore, run_id: int) -> HistogramSnapshots | None:
    """A run's activation histograms from the store, or None."""
    blob = store.load_artifact(run_id, HISTOGRAMS_ARTIFACT)
    return None if blob is None else HistogramSnapshots.from_bytes(blob)


def recorded_runs(store: RunStore, limit: int = 200) -> list[dict[str, Any]]:
    """Runs started with a statistics recorder (by name), newest first."""
    return [r for r in store.list_runs(limit=limit) if r["name"].startswith(RECORDED_PREFIX)]


def start_recorded_run(manager: Any, label: str, spec: SpecBase, config: TrainConfig,
                       data: DataRef, dataset: ImageDataset, every: int | None = None,
                       min_every: int = MIN_EVERY, *, session: str | None = None,
                       teacher: bool = False, allowance: int = 0,
                       footprint: int | None = None) -> int:
    """Queue a run of ``spec`` whose worker records its BN statistics; returns the run id.

    ``every`` None chooses from the run's length and the model's channels (``choose_every``);
    a given ``every`` whose statistics would exceed 4 × ``MAX_STATS_BYTES`` is refused. The
    worker's ``StoredBNRecorder`` saves into the store, where the page reads it.
    """
    layers = spec_bn_layers(spec)
    if not layers:
        raise ConfigError(f"{label} has no batch-norm layer, so there are no statistics to "
                          f"record; choose a model with BN (e.g. course_bn_lenet or a ResNet).")
    steps = len(dataset.train_labels) // config.batch_size * config.epochs
    if config.max_steps is not None:
        steps = min(steps, config.max_steps)
    channels = sum(layers.values())
    if every is None:
        every = choose_every(max(steps, 1), channels, min_every=min_every)
    every = max(1, int(every))
    # BNStatsRecorder.estimate_nbytes' formula: step 1 and every k-th step after it.
    size = (1 + (max(steps, 1) - 1) // every) * (4 * len(QUANTITIES) * channels + 8)
    if size > 4 * MAX_STATS_BYTES:
        raise ConfigError(f"recording every {every} step(s) of this {steps:,}-step run would "
                          f"keep {size / 1e6:,.0f} MB of statistics; record less often "
                          f"(e.g. auto) or train fewer epochs.")
    return manager.submit(f"{RECORDED_PREFIX}{label} · {dataset.name}", spec.to_dict(), config,
                          data, session=session, teacher=teacher,
                          job={"recorder": {"every": every}}, allowance=allowance,
                          footprint=footprint)


# --------------------------------------------------------------------------------------------
# The lecture's experiment: LeNet with and without BN at lr 1.0
# --------------------------------------------------------------------------------------------


def experiment_specs() -> tuple[SpecBase, SpecBase]:
    """(BN-LeNet, the same LeNet without BN): sigmoid, max pooling, d2l §8.5's network."""
    bn_spec = get_preset("course_bn_lenet").spec
    return bn_spec, dataclasses.replace(bn_spec, batch_norm=False)


def experiment_config(epochs: int = EXPERIMENT_EPOCHS, seed: int = 0) -> TrainConfig:
    """d2l §8.5's BN-LeNet setting: plain SGD (no momentum), lr 1.0, batch 256, Xavier init."""
    return TrainConfig(optimizer="sgd", lr=1.0, momentum=0.0, batch_size=256, epochs=int(epochs),
                       init="xavier", seed=int(seed), metrics_every=1)


@dataclasses.dataclass(frozen=True)
class Experiment:
    """The two runs of the one-click experiment."""

    bn_run: int
    plain_run: int


def linked_experiment(store: RunStore, bn_run: int, plain_run: int) -> Experiment:
    """The experiment a link names, once its two runs are checked to be the experiment's: the
    BN-LeNet and the same LeNet without BN (any other pair of runs is a sentence)."""
    bn_spec, plain_spec = experiment_specs()
    for run_id, want, what in ((bn_run, bn_spec, "BN-LeNet"),
                               (plain_run, plain_spec, "LeNet without BN")):
        try:
            spec = spec_from_dict(store.get_run(run_id)["spec"])
        except ConfigError:
            raise ConfigError(f"the link names run {run_id}, which is not on this server; "
                              f"start the experiment with Train both.") from None
        if spec != want:
            raise ConfigError(f"run {run_id} of the link is not the experiment's {what}; start "
                              f"the experiment with Train both.")
    return Experiment(bn_run, plain_run)


def start_experiment(manager: Any, data: DataRef, dataset: ImageDataset,
                     epochs: int = EXPERIMENT_EPOCHS, seed: int = 0, *,
                     session: str | None = None, teacher: bool = False) -> Experiment:
    """Queue LeNet with BN (recording its statistics) and without, same data and seed."""
    bn_spec, plain_spec = experiment_specs()
    config = experiment_config(epochs, seed)
    # Every step: the runs last seconds, and the heatmap needs all 75 columns (the recorder
    # then costs about 45% of the BN run's CPU time, about 2 s; bench/bench_bn_recorder.py).
    bn_job = start_recorded_run(manager, "LeNet with BN, lr 1.0", bn_spec, config, data,
                                dataset, every=1, session=session, teacher=teacher)
    try:
        plain_job = manager.submit(f"LeNet without BN, lr 1.0 · {dataset.name}",
                                   plain_spec.to_dict(), config, data, session=session,
                                   teacher=teacher, allowance=1)
    except ConfigError:
        manager.stop(bn_job, session, teacher)  # the pair or nothing
        raise
    return Experiment(bn_job, plain_job)


def _num(row: Mapping[str, Any], key: str) -> float | None:
    v = row.get(key)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


class Outcome(enum.StrEnum):
    """What the BN experiment showed so far."""

    PENDING = "pending"  # neither run has finished an epoch that the other has finished too
    NO_LOSS = "no_loss"  # a finished epoch has no training loss to compare
    HAPPENED = "happened"  # BN's loss is below 70% of the plain network's
    REVERSED = "reversed"  # the plain network's loss is below 70% of BN's
    UNCLEAR = "unclear"  # neither is clearly lower


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The experiment's verdict as data (``outcome``) and as the sentence a page shows."""

    outcome: Outcome
    text: str
    epoch: int  # the epoch both runs finished and that is compared (0 while pending)

    @property
    def happened(self) -> bool:
        """True when BN made LeNet at lr 1.0 learn clearly faster."""
        return self.outcome is Outcome.HAPPENED


def experiment_verdict(bn_epochs: Sequence[Mapping[str, Any]],
                       plain_epochs: Sequence[Mapping[str, Any]],
                       num_classes: int = 10) -> Verdict:
    """Did BN make LeNet at lr 1.0 learn faster, judged at the same epoch?

    Compares the training loss after the last epoch both runs finished (a clear win is a loss
    below 70% of the other's) and names ln(classes), the loss of a uniform guess.
    """
    n = min(len(bn_epochs), len(plain_epochs))
    if n == 0:
        return Verdict(Outcome.PENDING,
                       "The verdict comes when both runs have finished their first epoch.", 0)
    b, p = bn_epochs[n - 1], plain_epochs[n - 1]
    bl, pl = _num(b, "train_loss"), _num(p, "train_loss")
    if bl is None or pl is None:
        return Verdict(Outcome.NO_LOSS,
                       "The verdict needs both runs' training loss, and one of them has none.", n)
    chance = math.log(num_classes)
    ba, pa = _num(b, "test_acc"), _num(p, "test_acc")
    acc = (f", and test accuracy is {ba:.0%} against {pa:.0%}"
           if ba is not None and pa is not None else "")
    at = f"after {n} epoch{'s' if n > 1 else ''}"
    stuck = (f" (ln {num_classes} ≈ {chance:.2f} is the loss of a uniform guess: without BN the "
             f"network has not started to learn)" if abs(pl - chance) < 0.1 * chance else "")
    if bl < 0.7 * pl:
        return Verdict(Outcome.HAPPENED,
                       f"It happened: {at} the training loss with BN is {bl:.2f} against "
                       f"{pl:.2f} without BN{stuck}{acc}.", n)
    if pl < 0.7 * bl:
        return Verdict(Outcome.REVERSED,
                       f"It did not happen this time: {at} the loss without BN ({pl:.2f}) is "
                       f"below the loss with BN ({bl:.2f}){acc}; check the settings (lr 1.0, "
                       f"sigmoid).", n)
    return Verdict(Outcome.UNCLEAR,
                   f"No clear difference yet: {at} the training loss is {bl:.2f} with BN and "
                   f"{pl:.2f} without{acc}; more epochs may separate them.", n)


# --------------------------------------------------------------------------------------------
# Demonstrations: a briefly trained BN-LeNet, BN inputs, folding
# --------------------------------------------------------------------------------------------


def demo_model(dataset: ImageDataset, steps: int = 45, seed: int = 0) -> nn.Module:
    """BN-LeNet trained for a few steps of the lecture's setting (lr 1.0), in eval mode on CPU."""
    spec, _ = experiment_specs()
    config = dataclasses.replace(experiment_config(epochs=1000, seed=seed), max_steps=int(steps),
                                 device="cpu", precision="fp32", metrics_every=max(1, steps))
    # The test pass after the last step is not needed here: train on a set with no test images.
    train_only = dataset.subset(len(dataset.train_labels), 0)
    with local_rng(seed):  # the engine redraws every weight from config.seed anyway
        model = build(spec)
    # The engine seeds the process-wide generator (its weights and dropout draw from it); the
    # fork puts the generator's state back afterwards.
    with torch.random.fork_rng(devices=[]):
        train(model, spec.input_shape, spec.num_classes, train_only, config)
    return model.eval().to(memory_format=torch.contiguous_format)


def demo_batch(dataset: ImageDataset, n: int, input_shape: Sequence[int],
               offset: int = 0) -> Tensor:
    """``n`` test images from ``offset`` on, resized and normalised as the engine does."""
    from explorer.data import prepare_batch

    images = dataset.test_images[offset:offset + n]
    if len(images) < n:
        raise ConfigError(f"the test set has {len(dataset.test_labels)} images; ask for at most "
                          f"{len(dataset.test_labels) - offset} from position {offset}.")
    return prepare_batch(images, tuple(input_shape), dataset.mean, dataset.std)


def bn_inputs(model: nn.Module, batch: Tensor) -> dict[str, Tensor]:
    """What each BN layer receives for ``batch`` in eval mode (one forward, hooks removed)."""
    got: dict[str, Tensor] = {}
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, BN_TYPES):
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


def norms_vs_torch(x: Tensor, groups: int, eps: float = 1e-5) -> dict[str, float]:
    """Max |hand-computed − torch module| for batch, layer, instance and group norm (γ=1, β=0).

    The hand computation is ``bn.normalize_all``; the modules are nn.BatchNorm2d (training
    mode), nn.LayerNorm over C×H×W, nn.InstanceNorm2d and nn.GroupNorm, all without affine.
    """
    from explorer.bn import normalize_all

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


def standardise_channels(x: Tensor) -> Tensor:
    """Each channel shifted and scaled to mean 0 and (biased) std 1 over the whole population.

    Batch statistics of the result are those of ``x`` in units of each channel's population
    mean and std, so layers of different scales compare on one chart.
    """
    dims = (0,) if x.dim() == 2 else (0, *range(2, x.dim()))
    var, mean = torch.var_mean(x.double(), dim=dims, correction=0, keepdim=True)
    return ((x.double() - mean) / var.sqrt().clamp_min(1e-12)).to(x.dtype)
