"""The training engine: a plain loop over device-resident uint8 data, with callbacks and a stop.

The loop is the lectures' ``train_ch6`` (d2l.ai, chapter "Convolutional Neural Networks") made
fast the way the fastest small-image scripts are: the whole uint8 dataset lives on the device,
batches are slices of a seeded shuffled index, resizing and normalisation run per batch on the
device, and the host reads numbers back (``.tolist()``) only every ``metrics_every`` steps. On
CUDA it adds bf16 autocast, channels_last and cudnn.benchmark; on the CPU channels_last (oneDNN's
fast layout for convolutions) and, on CPUs with native bfloat16 (AVX512-BF16, AMX), bf16 autocast
too (``precision="fp32"`` turns autocast off); Apple's MPS runs in plain float32.

Callbacks are objects with any of the optional methods of ``Callback``; the engine never imports
streamlit. A ``threading.Event`` checked after every step stops a run, keeping what it measured.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from explorer.data import BatchTransform, ImageDataset
from explorer.errors import ConfigError
from explorer.system import DEVICES, resolve_device  # noqa: F401 (resolve_device: public here too)

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "onecycle")
INITS = ("default", "xavier", "kaiming")
PRECISIONS = ("auto", "fp32", "bf16")
EVAL_BATCH = 256  # evaluation needs no gradients, so it can use larger batches than training


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs besides the model and the data; validated on creation."""

    optimizer: str = "sgd"  # sgd | adam | adamw (adamw decouples weight decay, Loshchilov 2019)
    lr: float = 0.1  # learning rate; the peak of the one-cycle schedule
    momentum: float = 0.9  # SGD momentum (adam/adamw ignore it); the lectures use 0
    weight_decay: float = 0.0  # L2 penalty (sgd, adam) or decoupled decay (adamw)
    batch_size: int = 128  # images per step; the last partial batch of an epoch is dropped
    epochs: int = 5  # passes over the training set
    schedule: str = "constant"  # constant | cosine | onecycle (Smith 2018), stepped every batch
    label_smoothing: float = 0.0  # 0.1 spreads 10% of the target over the classes (Szegedy 2016)
    init: str = "default"  # default (PyTorch's, redrawn from the seed) | xavier | kaiming
    seed: int = 0  # fixes initial weights, shuffling and dropout: same seed, same CPU losses
    device: str = "auto"  # auto picks cuda, then mps, then cpu
    precision: str = "auto"  # auto (bf16 where the chip computes it natively) | fp32 | bf16
    max_steps: int | None = None  # stop after this many steps (a partial last epoch is evaluated)
    metrics_every: int = 10  # read metrics back from the device every N steps (and at epoch end)

    def __post_init__(self) -> None:
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("init", self.init, INITS)
        _choice("device", self.device, DEVICES)
        _choice("precision", self.precision, PRECISIONS)
        _number("lr", self.lr, 0.0, math.inf, "a positive number such as 0.1", low_open=True)
        _number("momentum", self.momentum, 0.0, 1.0, "a number from 0 up to (not including) 1",
                high_open=True)
        _number("weight_decay", self.weight_decay, 0.0, math.inf, "0 or a small positive number "
                "such as 5e-4")
        _number("label_smoothing", self.label_smoothing, 0.0, 1.0, "a number from 0 up to (not "
                "including) 1, such as 0.1", high_open=True)
        _integer("batch_size", self.batch_size, 1, 65536)
        _integer("epochs", self.epochs, 1, 100_000)
        _integer("seed", self.seed, 0, 2**63 - 1)
        _integer("metrics_every", self.metrics_every, 1, 1_000_000)
        if self.max_steps is not None:
            _integer("max_steps", self.max_steps, 1, 10**9)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of the fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build from a dict (e.g. JSON); unknown fields are an error, missing ones default."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a training config must be a dict of fields, got "
                              f"{type(data).__name__}.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"training config field {unknown[0]!r} is unknown; the fields are "
                              f"{', '.join(sorted(known))}.")
        return cls(**dict(data))


def _choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}.")


def _number(name: str, value: object, low: float, high: float, hint: str,
            low_open: bool = False, high_open: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (
            value < high if high_open else value <= high)
    if not ok:
        raise ConfigError(f"{name} must be {hint}, got {value!r}.")


def _integer(name: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"{name} must be a whole number from {low} to {high}, got {value!r}.")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 in hardware (Ampere+ GPUs; AVX512-BF16/AMX CPUs)."""
    try:
        if device.type == "cuda":
            return torch.cuda.is_bf16_supported(including_emulation=False)
        if device.type == "cpu":
            return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    except (AttributeError, RuntimeError):  # private CPU probes may move between releases
        return False
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``fp32`` or ``bf16`` for a config's precision on ``device``.

    ``auto`` means bf16 autocast (matmuls and convolutions in bfloat16, weights, loss and
    optimizer in float32) where the hardware computes bfloat16 natively, float32 elsewhere; the
    emulated bf16 of older chips would be slower than float32.
    """
    _choice("precision", precision, PRECISIONS)
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision == "bf16" and device.type == "mps":
        raise ConfigError("precision bf16 is not offered on Apple's mps device; choose auto or "
                          "fp32.")
    return precision


def initialize(model: nn.Module, init: str) -> None:
    """Redraw every weight: PyTorch's defaults, then Xavier or Kaiming on conv/linear weights.

    ``xavier`` is the lectures' ``init_cnn``: xavier_uniform_ on every Conv and Linear weight
    (Glorot & Bengio 2010), biases left at PyTorch's default. ``kaiming`` uses kaiming_normal_
    with the ReLU gain and fan_in (He et al. 2015). Redrawing the defaults too makes the seed,
    not the model's history, decide the starting point.
    """
    _choice("init", init, INITS)
    for m in model.modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset) and not isinstance(m, nn.modules.lazy.LazyModuleMixin):
            reset()
    if init == "default":
        return
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd | nn.Linear):
            if init == "xavier":
                nn.init.xavier_uniform_(m.weight)
            else:
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer the config names, over all trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters; add a layer with weights.")
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig,
                   total_steps: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    """A per-step learning-rate schedule over ``total_steps`` (None for constant)."""
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))
    if config.schedule == "onecycle":
        # cycle_momentum would silently turn on momentum for plain SGD; keep the user's value.
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr,
                                                   total_steps=max(2, total_steps),
                                                   cycle_momentum=False)
    return None


@dataclass
class RunContext:
    """What callbacks see: the live model and optimizer and where the run is.

    ``step`` counts optimizer steps done so far (1 after the first batch); ``epoch`` is the
    current epoch, 1-based.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    config: TrainConfig
    device: torch.device
    precision: str  # fp32 | bf16 (autocast)
    input_shape: tuple[int, int, int]
    num_classes: int
    dataset: ImageDataset
    transform: BatchTransform  # uint8 batch on the device → model input (for probes)
    steps_per_epoch: int
    total_steps: int
    total_epochs: int
    stop_event: threading.Event
    step: int = 0
    epoch: int = 0


class Callback:
    """The callback protocol; subclassing is optional, any object with some of these works.

    on_run_start(ctx) once before the first step; on_step_end(ctx, metrics) after every
    optimizer step, where ``metrics`` is None except on the steps that read numbers back from the
    device (the first step, every ``metrics_every`` steps, each epoch's last step and the step a
    stop arrives): reading them every step would synchronise the GPU; on_epoch_end(ctx, metrics)
    after each epoch's evaluation; on_run_end(ctx, status) once with completed, stopped or
    failed.
    """

    def on_run_start(self, ctx: RunContext) -> None:
        """Called once before the first step."""

    def on_step_end(self, ctx: RunContext, metrics: dict[str, float] | None) -> None:
        """Called after every step with the step metrics, or None between reports."""

    def on_epoch_end(self, ctx: RunContext, metrics: dict[str, float]) -> None:
        """Called with epoch metrics (train and test loss and accuracy)."""

    def on_run_end(self, ctx: RunContext, status: str) -> None:
        """Called once at the end, also when the run fails."""


HOOKS = ("on_run_start", "on_step_end", "on_epoch_end", "on_run_end")


@dataclass
class TrainResult:
    """What a run measured: every step's loss, the reported step and epoch metrics."""

    status: str  # completed | stopped
    steps: int
    epochs_completed: int
    device: str
    precision: str
    losses: list[float] = field(default_factory=list)  # one per optimizer step
    step_metrics: list[dict[str, float]] = field(default_factory=list)
    epoch_metrics: list[dict[str, float]] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def test_accuracy(self) -> float | None:
        """Test accuracy after the last evaluated epoch (None before the first)."""
        for m in reversed(self.epoch_metrics):
            if m.get("test_acc") is not None:
                return m["test_acc"]
        return None


def _input_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    try:
        c, h, w = (int(s) for s in shape)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"input shape must be C×H×W, three whole numbers, got {shape!r}.") \
            from exc
    if min(c, h, w) < 1:
        raise ConfigError(f"input shape must be positive, got {c}×{h}×{w}.")
    return (c, h, w)


def train(model: nn.Module, input_shape: Sequence[int], num_classes: int,
          dataset: ImageDataset, config: TrainConfig, callbacks: Sequence[object] = (),
          stop_event: threading.Event | None = None,
          device: str | torch.device | None = None) -> TrainResult:
    """Train ``model`` on ``dataset`` as ``config`` says; returns what was measured.

    Args:
        model: any nn.Module mapping B×C×H×W to B×num_classes logits; moved to the device and
            reinitialised from the seed (see ``initialize``); left in eval mode at the end.
        input_shape: the C×H×W the model reads; images are resized and their channels adapted
            on the device, per batch.
        num_classes: the model's outputs (at least the dataset's number of classes).
        callbacks: objects with any of ``Callback``'s methods.
        stop_event: set it from another thread to stop after the step in flight.
        device: overrides ``config.device`` (the job manager passes its worker's device).
    """
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"config must be a TrainConfig, got {type(config).__name__}.")
    return _Run(model, _input_shape(input_shape), int(num_classes), dataset, config,
                callbacks, stop_event or threading.Event(),
                resolve_device(device if device is not None else config.device)).run()


class _Run:
    """One training run's state; ``run()`` is the loop."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, int, int], num_classes: int,
                 dataset: ImageDataset, cfg: TrainConfig, callbacks: Sequence[object],
                 stop: threading.Event, dev: torch.device) -> None:
        n_train = len(dataset.train_labels)
        if cfg.batch_size > n_train:
            raise ConfigError(f"the batch size {cfg.batch_size} is larger than the {n_train} "
                              f"training images; choose at most {n_train}.")
        if num_classes < dataset.num_classes:
            raise ConfigError(f"the model has {num_classes} outputs but {dataset.name} has "
                              f"{dataset.num_classes} classes; set the number of classes to "
                              f"{dataset.num_classes}.")
        self.cfg, self.stop, self.dev = cfg, stop, dev
        self.hooks: dict[str, list[Callable[..., Any]]] = {
            h: [getattr(cb, h) for cb in callbacks if callable(getattr(cb, h, None))]
            for h in HOOKS}
        # Everything that can refuse the config runs before the model is touched.
        precision = resolve_precision(cfg.precision, dev)
        # channels_last is oneDNN's and cuDNN's fast layout for convolutions; MPS lacks kernels.
        fast_layout = dev.type in ("cpu", "cuda")
        transform = BatchTransform(dataset.image_shape, input_shape, dataset.mean, dataset.std,
                                   dev, channels_last=fast_layout)
        # Global seed: reset_parameters, xavier/kaiming and dropout draw from it.
        torch.manual_seed(cfg.seed)
        initialize(model, cfg.init)
        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = True
        model.to(device=dev)
        if fast_layout:
            model.to(memory_format=torch.channels_last)
        model.train()
        optimizer = make_optimizer(model, cfg)
        steps_per_epoch = n_train // cfg.batch_size
        total = steps_per_epoch * cfg.epochs
        if cfg.max_steps is not None:
            total = min(total, cfg.max_steps)
        self.autocast: Callable[[], contextlib.AbstractContextManager[Any]] = (
            (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if precision == "bf16"
            else contextlib.nullcontext)
        self.train_x = dataset.train_images.to(dev)
        self.train_y = dataset.train_labels.to(dev)
        self.test_x = dataset.test_images.to(dev)
        self.test_y = dataset.test_labels.to(dev)
        self.ctx = RunContext(model, optimizer, make_scheduler(optimizer, cfg, total), cfg, dev,
                              precision, input_shape, num_classes, dataset, transform,
                              steps_per_epoch, total, math.ceil(total / steps_per_epoch), stop)
        self.result = TrainResult("completed", 0, 0, str(dev), precision)
        self.eval_times: list[float] = []
        self.train_time = 0.0  # seconds spent in training steps (for the ETA)
        self.pending: list[torch.Tensor] = []  # this window's per-step losses, on the device
        self.window_correct = torch.zeros((), dtype=torch.int64, device=dev)
        self.window_seen = 0
        self.lr = optimizer.param_groups[0]["lr"]

    def _emit(self, hook: str, *args: Any) -> None:
        for fn in self.hooks[hook]:
            fn(self.ctx, *args)

    def run(self) -> TrainResult:
        ctx = self.ctx
        self.t_start = time.perf_counter()
        try:
            self._emit("on_run_start")
            self._loop()
        except BaseException:
            with contextlib.suppress(Exception):
                self._emit("on_run_end", "failed")
            raise
        finally:
            ctx.model.eval()
        self.result.steps = ctx.step
        self.result.elapsed_s = time.perf_counter() - self.t_start
        self._emit("on_run_end", self.result.status)
        return self.result

    def _loop(self) -> None:
        ctx, cfg = self.ctx, self.cfg
        gen = torch.Generator().manual_seed(cfg.seed)
        n_train = len(self.train_y)
        for epoch in range(1, ctx.total_epochs + 1):
            ctx.epoch = epoch
            perm = torch.randperm(n_train, generator=gen).to(self.dev)
            steps = min(ctx.steps_per_epoch, ctx.total_steps - ctx.step)
            t_epoch = self.window_t0 = time.perf_counter()
            self.epoch_loss, self.epoch_correct, self.epoch_seen = 0.0, 0, 0
            if self.stop.is_set():  # set between epochs: nothing is pending
                self.result.status = "stopped"
                return
            for i in range(steps):
                idx = perm[i * cfg.batch_size:(i + 1) * cfg.batch_size]
                self._step(self.train_x.index_select(0, idx), self.train_y.index_select(0, idx))
                # Checked after every step, so a stop costs at most the step in flight and the
                # steps since the last report are flushed, not lost.
                stopping = self.stop.is_set()
                # Step 1 reports too, so that a page shows progress and an ETA from the first
                # step on instead of a frozen "step 0" for a slow model.
                report = (ctx.step % cfg.metrics_every == 0 or i == steps - 1 or stopping
                          or ctx.step == 1)
                self._emit("on_step_end", self._flush() if report else None)
                if stopping:
                    self.result.status = "stopped"
                    return
            train_time = time.perf_counter() - t_epoch
            t_eval = time.perf_counter()
            test = self._evaluate()
            eval_time = time.perf_counter() - t_eval
            if test is not None:
                self.eval_times.append(eval_time)
            metrics = {
                "step": ctx.step, "epoch": epoch,
                "train_loss": self.epoch_loss / steps,
                "train_acc": self.epoch_correct / self.epoch_seen,
                "test_loss": None if test is None else test[0],
                "test_acc": None if test is None else test[1],
                "lr": self.lr, "images_per_s": self.epoch_seen / train_time,
                "epoch_time_s": train_time + eval_time, "eval_time_s": eval_time,
                "elapsed_s": time.perf_counter() - self.t_start, "eta_s": self._eta(epoch),
            }
            self.result.epoch_metrics.append(metrics)
            self.result.epochs_completed = epoch
            self._emit("on_epoch_end", metrics)
            finished = epoch == ctx.total_epochs and (test is not None or not len(self.test_y))
            if self.stop.is_set() and not finished:
                self.result.status = "stopped"
                return

    def _step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        ctx = self.ctx
        x = ctx.transform(images)
        with self.autocast():
            out = self._first_forward(x) if ctx.step == 0 else ctx.model(x)
            loss = F.cross_entropy(out.float(), labels, label_smoothing=self.cfg.label_smoothing)
        ctx.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.lr = ctx.optimizer.param_groups[0]["lr"]  # the rate this step used
        ctx.optimizer.step()
        if ctx.scheduler is not None:
            ctx.scheduler.step()
        ctx.step += 1
        self.pending.append(loss.detach())
        self.window_correct += (out.detach().argmax(dim=1) == labels).sum()
        self.window_seen += len(labels)

    def _first_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The first forward pass, turning shape mistakes into sentences."""
        c, h, w = self.ctx.input_shape
        try:
            out = self.ctx.model(x)
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as exc:
            raise ConfigError(f"the model cannot read {c}×{h}×{w} inputs ({exc}); check the "
                              f"input shape it was built for.") from exc
        want = (x.shape[0], self.ctx.num_classes)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(f"the model returns {got} for a batch of {x.shape[0]} images; it "
                              f"must return {want}, one score per class.")
        return out

    def _flush(self) -> dict[str, float]:
        """Read this window's losses and accuracy back from the device (the only sync)."""
        ctx = self.ctx
        values = torch.stack([*self.pending, self.window_correct.float()]).tolist()
        losses, correct = values[:-1], values[-1]
        first = ctx.step - len(losses) + 1
        for k, v in enumerate(losses):
            if not math.isfinite(v):
                raise ConfigError(f"the training loss became {v} at step {first + k}; lower the "
                                  f"learning rate (lr is {self.cfg.lr}) or use init xavier.")
        now = time.perf_counter()
        window_time = now - self.window_t0
        self.train_time += window_time
        self.result.losses.extend(losses)
        self.epoch_loss += sum(losses)
        self.epoch_correct += int(correct)
        self.epoch_seen += self.window_seen
        metrics = {
            "step": ctx.step, "epoch": ctx.epoch, "loss": sum(losses) / len(losses),
            "train_acc": correct / self.window_seen, "lr": self.lr,
            "images_per_s": self.window_seen / max(window_time, 1e-9),
            "elapsed_s": now - self.t_start, "eta_s": self._eta(ctx.epoch - 1),
        }
        self.pending = []
        self.window_correct = torch.zeros((), dtype=torch.int64, device=self.dev)
        self.window_seen = 0
        self.result.step_metrics.append(metrics)
        self.window_t0 = time.perf_counter()
        return metrics

    def _eta(self, epochs_evaluated: int) -> float:
        ctx = self.ctx
        per_step = self.train_time / max(ctx.step, 1)
        per_eval = sum(self.eval_times) / len(self.eval_times) if self.eval_times else 0.0
        return ((ctx.total_steps - ctx.step) * per_step
                + (ctx.total_epochs - epochs_evaluated) * per_eval)

    def _evaluate(self) -> tuple[float, float] | None:
        """Test loss and accuracy in eval mode; None when stopped or there is no test set."""
        ctx = self.ctx
        n = len(self.test_y)
        if n == 0:
            return None
        ctx.model.eval()
        batch = max(self.cfg.batch_size, EVAL_BATCH)
        try:
            with torch.inference_mode(), self.autocast():
                loss_sum = torch.zeros((), device=self.dev)
                correct = torch.zeros((), dtype=torch.int64, device=self.dev)
                for i in range(0, n, batch):
                    if self.stop.is_set():
                        return None
                    x = ctx.transform(self.test_x[i:i + batch])
                    y = self.test_y[i:i + batch]
                    out = ctx.model(x)
                    loss_sum += F.cross_entropy(out.float(), y, reduction="sum")
                    correct += (out.argmax(dim=1) == y).sum()
                total_loss, total_correct = torch.stack([loss_sum, correct.float()]).tolist()
        finally:
            ctx.model.train()
        return total_loss / n, total_correct / n
