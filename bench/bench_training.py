"""Benchmark: the training engine against the notebook-style loop, and the cost of live metrics.

Prints one JSON object per comparison (a line each). Every comparison runs both sides in this
one process, on the same model (built from the registry preset), data (the offline MNIST digits),
batch size and device, alternating the two sides ``--repeats`` times after a warm-up so that
noise from other processes hits both alike; the ratio is of the median images/s.

1. course LeNet-5 at 1×28×28; 2. course ResNet-18 at 1×96×96 (resized from 28×28): the engine
   (uint8 data on the device, per-batch resize/normalise, no DataLoader, channels_last on CPU
   and CUDA, bf16 autocast where the chip computes bf16 natively, .item() only every N steps),
   and the same engine with precision fp32 (autocast off), against the lectures' loop
   (a torchvision-style Dataset of PIL images with per-sample Resize/ToTensor/Normalize, a
   DataLoader, per-batch ``.to(device)``, float32, per-batch accuracy read back as d2l's
   ``train_ch6`` does).
3. live metrics: the engine with the callbacks a job runs with (metrics to the SQLite store,
   one commit per report, as a worker process writes them) against the engine alone, course
   LeNet-5, both in this thread.

Images/s count training steps only: from the first step to the end of the last, excluding set-up
and evaluation. Timings are figures, never pass/fail.

Usage: python bench/bench_training.py [--device auto] [--repeats 5] [--workers 0] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from explorer.data import ImageDataset, load_dataset  # noqa: E402
from explorer.models import build  # noqa: E402
from explorer.registry import get_preset  # noqa: E402
from explorer.runs import RunStore, StoreCallback  # noqa: E402
from explorer.training import (  # noqa: E402
    TrainConfig,
    initialize,
    resolve_device,
    resolve_precision,
    train,
)


class NotebookDataset(Dataset):
    """The lectures' data path: one PIL image per sample through torchvision transforms."""

    def __init__(self, data: ImageDataset, size: int) -> None:
        self.images, self.labels = data.train_images, data.train_labels
        steps = [transforms.ToTensor(), transforms.Normalize(data.mean, data.std)]
        if size != data.image_shape[1]:
            steps.insert(0, transforms.Resize(size))  # d2l's load_data_fashion_mnist(resize=)
        self.transform = transforms.Compose(steps)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = Image.fromarray(self.images[i, 0].numpy())  # a 2-D uint8 array is mode "L"
        return self.transform(image), int(self.labels[i])


def notebook_images_per_s(model: nn.Module, data: ImageDataset, size: int, cfg: TrainConfig,
                          steps: int, device: torch.device, workers: int) -> float:
    """d2l's train_ch6 loop for ``steps`` steps; images per second of training."""
    torch.manual_seed(cfg.seed)
    initialize(model, cfg.init)
    model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    loader = DataLoader(NotebookDataset(data, size), batch_size=cfg.batch_size, shuffle=True,
                        drop_last=True, num_workers=workers)
    seen, correct, loss_sum = 0, 0.0, 0.0
    t0 = time.perf_counter()
    for i, (x, y) in enumerate(loader):
        if i == steps:
            break
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        y_hat = model(x)
        loss = F.cross_entropy(y_hat, y)
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # d2l's Accumulator: host floats every batch
            loss_sum += float(loss) * len(y)
            correct += float((y_hat.argmax(1) == y).sum())
            seen += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - t0)


class Timer:
    """Callback: time from the run's start to the end of its last step (evaluation excluded)."""

    def __init__(self, steps: int) -> None:
        self.steps, self.t0, self.t1, self.images = steps, 0.0, 0.0, 0

    def on_run_start(self, ctx) -> None:
        self.t0 = time.perf_counter()

    def on_step_end(self, ctx, metrics) -> None:
        if ctx.step == self.steps:  # the last step always reads metrics back: the device synced
            self.t1 = time.perf_counter()
            self.images = ctx.step * ctx.config.batch_size

    @property
    def images_per_s(self) -> float:
        return self.images / (self.t1 - self.t0)


class Timed:
    """Wraps callbacks and adds up the time spent inside them (a noise-free cost figure)."""

    def __init__(self, *callbacks: object) -> None:
        self.callbacks, self.seconds = callbacks, 0.0

    def _call(self, hook: str, *args: object) -> None:
        t0 = time.perf_counter()
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)
            if fn is not None:
                fn(*args)
        self.seconds += time.perf_counter() - t0

    def on_run_start(self, ctx) -> None:
        self._call("on_run_start", ctx)

    def on_step_end(self, ctx, metrics) -> None:
        self._call("on_step_end", ctx, metrics)

    def on_epoch_end(self, ctx, metrics) -> None:
        self._call("on_epoch_end", ctx, metrics)


def engine_images_per_s(model: nn.Module, data: ImageDataset, shape: tuple[int, int, int],
                        cfg: TrainConfig, steps: int, device: torch.device,
                        live: tuple[RunStore, int] | None = None,
                        spent: list[float] | None = None) -> float:
    """The engine for ``steps`` steps; ``live`` adds the store callback a worker's run has.

    With ``live``, the share of the run spent inside those callbacks is appended to ``spent``.
    """
    timer = Timer(steps)
    cfg = TrainConfig(**{**cfg.to_dict(), "epochs": 10_000, "max_steps": steps})
    callbacks: list[object] = [timer]
    timed = Timed(StoreCallback(*live)) if live is not None else None
    if timed is not None:
        callbacks.append(timed)
    train(model, shape, 10, data, cfg, callbacks=callbacks, device=device)
    if timed is not None and spent is not None:
        spent.append(timed.seconds / (timer.t1 - timer.t0))
    return timer.images_per_s


def summary(name: str, a_name: str, a: list[float], b_name: str, b: list[float],
            extra: dict) -> dict:
    ma, mb = statistics.median(a), statistics.median(b)
    return {"comparison": name, **extra,
            f"{a_name}_images_per_s": round(ma, 1), f"{b_name}_images_per_s": round(mb, 1),
            "ratio": round(ma / mb, 3),
            f"{a_name}_runs": [round(v, 1) for v in a], f"{b_name}_runs": [round(v, 1) for v in b]}


def compare_with_notebook(preset: str, batch: int, steps: int, repeats: int,
                          device: torch.device, workers: int, data: ImageDataset) -> dict:
    spec = get_preset(preset).spec
    shape = tuple(spec.input_shape)
    cfg = TrainConfig(lr=0.01, momentum=0.9, batch_size=batch, epochs=1, seed=0,
                      device=device.type)
    fp32 = TrainConfig(**{**cfg.to_dict(), "precision": "fp32"})
    engine, engine_fp32, notebook = [], [], []
    # Warm-up: oneDNN/cuDNN pick their kernels on the first steps of each layout and precision.
    engine_images_per_s(build(spec), data, shape, cfg, 2, device)
    engine_images_per_s(build(spec), data, shape, fp32, 2, device)
    notebook_images_per_s(build(spec), data, shape[1], cfg, 2, device, workers)
    for _ in range(repeats):
        engine.append(engine_images_per_s(build(spec), data, shape, cfg, steps, device))
        engine_fp32.append(engine_images_per_s(build(spec), data, shape, fp32, steps, device))
        notebook.append(notebook_images_per_s(build(spec), data, shape[1], cfg, steps, device,
                                              workers))
    out = summary(f"engine vs notebook loop, {preset}", "engine", engine, "notebook", notebook,
                  {"input_shape": list(shape), "batch_size": batch, "steps": steps,
                   "dataloader_workers": workers,
                   "engine_precision": resolve_precision("auto", device)})
    # The same engine with autocast off: what layout and data path alone buy.
    out["engine_fp32_images_per_s"] = round(statistics.median(engine_fp32), 1)
    out["ratio_fp32"] = round(out["engine_fp32_images_per_s"] / out["notebook_images_per_s"], 3)
    out["engine_fp32_runs"] = [round(v, 1) for v in engine_fp32]
    return out


def compare_live_metrics(batch: int, steps: int, repeats: int, device: torch.device,
                         data: ImageDataset) -> dict:
    spec = get_preset("course_lenet5").spec
    shape = tuple(spec.input_shape)
    cfg = TrainConfig(lr=0.01, momentum=0.9, batch_size=batch, epochs=1, seed=0,
                      device=device.type)
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(Path(tmp) / "runs.sqlite")
        try:
            live = (store, store.create_run("bench", {"bench": True}, cfg, status="running"))
            engine_images_per_s(build(spec), data, shape, cfg, 2, device, live)
            engine_images_per_s(build(spec), data, shape, cfg, 2, device)
            with_metrics, bare, spent = [], [], []
            for _ in range(repeats):
                with_metrics.append(engine_images_per_s(build(spec), data, shape, cfg, steps,
                                                        device, live, spent))
                bare.append(engine_images_per_s(build(spec), data, shape, cfg, steps, device))
            rows = len(store.metrics(live[1]))
        finally:
            store.close()
    out = summary("live metrics: engine + SQLite store vs engine alone, "
                  "course_lenet5", "with_metrics", with_metrics, "without", bare,
                  {"batch_size": batch, "steps": steps, "metrics_every": cfg.metrics_every,
                   "metric_rows_written": rows})
    out["overhead_percent"] = round(100 * (1 - out["ratio"]), 2)
    out["overhead_percent_best_of"] = round(100 * (1 - max(with_metrics) / max(bare)), 2)
    # Time measured inside the store callback, as a share of the run: the same
    # cost without the noise of comparing two separately timed runs.
    out["time_in_metric_callbacks_percent"] = round(100 * statistics.median(spent), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=0,
                        help="DataLoader workers of the notebook loop (d2l uses 4; 0 keeps the "
                             "per-sample work on the cores that train, as on a 2-core machine)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1 is steadier on a shared machine)")
    parser.add_argument("--lenet-steps", type=int, default=15)
    parser.add_argument("--resnet-steps", type=int, default=4)
    parser.add_argument("--resnet-batch", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    data = load_dataset().subset(4000, 32)  # a tiny test split: evaluation is not measured
    env = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
           "date": time.strftime("%Y-%m-%d %H:%M"),
           "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
    print(json.dumps({"environment": env}), flush=True)
    print(json.dumps(compare_with_notebook("course_lenet5", 256, args.lenet_steps, args.repeats,
                                           device, args.workers, data)), flush=True)
    print(json.dumps(compare_with_notebook("course_resnet18", args.resnet_batch,
                                           args.resnet_steps, args.repeats, device,
                                           args.workers, data)), flush=True)
    print(json.dumps(compare_live_metrics(256, args.lenet_steps * 4, args.repeats + 2, device,
                                          data)), flush=True)


if __name__ == "__main__":
    main()
