"""The batch-norm lecture's experiment: LeNet with and without BN at learning rate 1.0.

d2l §8.5's BN-LeNet (sigmoid, max pooling, Xavier init, plain SGD at lr 1.0, batch 256) against
the same network without BN, on the same data with the same seed; the verdict is data
(``Verdict.outcome``) with the sentence a page shows. Also the briefly trained BN-LeNet that the
page's demonstrations use.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from explorer.bn.rng import local_rng
from explorer.bn.stored import RECORDED_PREFIX, start_recorded_run
from explorer.data import ImageDataset
from explorer.errors import ConfigError
from explorer.jobs import DataRef
from explorer.models import build
from explorer.registry import get_preset
from explorer.runs import RunStore
from explorer.specs import SpecBase, spec_from_dict
from explorer.training import TrainConfig, train

BN_NAME = "LeNet with BN, lr 1.0"  # the two runs' names (a recorded run gets a prefix)
PLAIN_NAME = "LeNet without BN, lr 1.0"
EXPERIMENT_EPOCHS = 5  # both runs: 3-4 s on one idle CPU core (offline digits, measured)


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


def latest_experiment(store: RunStore, limit: int = 200) -> Experiment | None:
    """The newest experiment in the store, whoever started it, or None (issue 12: the result
    reappears on a fresh visit once its runs exist).

    The pair is the newest run of the LeNet without BN and the newest BN-LeNet queued before it
    (``start_experiment`` queues the BN run first) with the same training setting and data.
    """
    bn_spec, plain_spec = (json.loads(s.to_json()) for s in experiment_specs())
    runs = store.list_runs(limit=limit)
    for i, plain in enumerate(runs):
        if plain["spec"] != plain_spec or not plain["name"].startswith(PLAIN_NAME):
            continue
        for bn in runs[i + 1:]:  # newest first: the older runs
            if (bn["spec"] == bn_spec and bn["name"].startswith(RECORDED_PREFIX + BN_NAME)
                    and bn["config"] == plain["config"]
                    and bn["dataset"] == plain["dataset"]):
                return Experiment(bn["id"], plain["id"])
    return None


def start_experiment(manager: Any, data: DataRef, dataset: ImageDataset,
                     epochs: int = EXPERIMENT_EPOCHS, seed: int = 0, *,
                     session: str | None = None, teacher: bool = False) -> Experiment:
    """Queue LeNet with BN (recording its statistics) and without, same data and seed."""
    bn_spec, plain_spec = experiment_specs()
    config = experiment_config(epochs, seed)
    # Every step: the runs last seconds, and the heatmap needs all 75 columns (the recorder
    # then costs about 45% of the BN run's CPU time, about 2 s; bench/bench_bn_recorder.py).
    bn_job = start_recorded_run(manager, BN_NAME, bn_spec, config, data,
                                dataset, every=1, session=session, teacher=teacher)
    try:
        plain_job = manager.submit(f"{PLAIN_NAME} · {dataset.name}",
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

