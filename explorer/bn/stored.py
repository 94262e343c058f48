"""Recorded runs: a statistics recorder that saves itself into the run store while a run trains.

The statistics are ``BNStatsRecorder``'s (d2l §8.5; Ioffe & Szegedy 2015); this module adds what
a web page needs around them: which models have BN, how often to record, activation histograms
saved with the statistics (so a finished or interrupted run reopens), and the queueing of a
recorded run on the workers.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

from torch import Tensor, nn

from explorer.bn.conventions import BN_TYPES
from explorer.bn.histograms import HIST_BINS, HistogramSnapshots, layer_histograms
from explorer.bn.recorder import DEFAULT_EVERY, QUANTITIES, BNStatsRecorder
from explorer.data import ImageDataset
from explorer.db import database_errors
from explorer.errors import ConfigError
from explorer.jobs import DataRef
from explorer.models import meta_model
from explorer.registry import PRESETS
from explorer.runs import RunStore
from explorer.specs import SpecBase
from explorer.training import TrainConfig

log = logging.getLogger("explorer.bn_lab")

STATS_ARTIFACT = "bn_stats"  # the recorder's .npz, see BNStatsRecorder.to_bytes
HISTOGRAMS_ARTIFACT = "bn_histograms"  # HistogramSnapshots.to_bytes
RECORDED_PREFIX = "BN stats · "  # names of runs whose statistics this page recorded
MAX_ROWS = 200  # recorded steps per run: enough columns for a heatmap, few enough to draw fast
MAX_STATS_BYTES = 8_000_000  # a run's statistics stay within a few MB (bn.DEFAULT_EVERY note)
# One recorded step costs 0.36-0.47 of a training step on the CPU (bench/bench_bn_recorder.py:
# course ResNet-18 and BN-LeNet), so recording at most every 10th step keeps it under 5%.
MIN_EVERY = 10
HIST_BATCH = 64  # test images in the one batch whose activations are histogrammed


def bn_layers(model: nn.Module) -> dict[str, int]:
    """Qualified BN layer name → channels, in model order (BatchNorm1d/2d/3d, scratch BN)."""
    model = getattr(model, "_orig_mod", model)
    return {n: int(m.num_features) for n, m in model.named_modules() if isinstance(m, BN_TYPES)}


def spec_bn_layers(spec: SpecBase) -> dict[str, int]:
    """``bn_layers`` of a spec's model, built on the meta device (no weights allocated)."""
    return bn_layers(meta_model(spec))


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

