"""A training run in a thread beside the test's own work: for checks that nothing process-wide
(fx tracing, torch.export, seeding) reaches a run that is training at the same moment."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from explorer.data import ImageDataset
from explorer.training import TrainConfig, train


def noise_digits(n: int = 256) -> ImageDataset:
    """Random 1×8×8 uint8 images with random labels: enough for a run to take steps."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (n,), generator=g)
    return ImageDataset("noise", x, y, x[:32], y[:32], tuple(str(i) for i in range(10)))


@dataclass
class Background:
    """What the thread's run saw: one value of ``probe`` per step, and how it ended."""

    seen: list[Any] = field(default_factory=list)
    result: Any = None
    error: BaseException | None = None


@contextmanager
def training_beside(probe: Callable[[Any], Any] = lambda ctx: ctx.step) -> Iterator[Background]:
    """Train a small BN net in a thread until the block ends; ``probe(ctx)`` is noted at every
    step. The block starts once the run has taken its first step."""
    out, stop, started = Background(), threading.Event(), threading.Event()

    class Watch:
        def on_step_end(self, ctx, metrics):
            out.seen.append(probe(ctx))
            started.set()

    def run() -> None:
        try:
            model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                  nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
            out.result = train(model, (1, 8, 8), 10, noise_digits(),
                               TrainConfig(batch_size=32, epochs=100_000, device="cpu"),
                               callbacks=[Watch()], stop_event=stop)
        except BaseException as e:  # noqa: BLE001 - the test reports whatever the run raised
            out.error = e
        finally:
            started.set()

    worker = threading.Thread(target=run)
    worker.start()
    try:
        assert started.wait(60)
        yield out
    finally:
        stop.set()
        worker.join(60)
