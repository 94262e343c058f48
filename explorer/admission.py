"""What Start shows and checks before a run is queued: time, memory and the number of classes.

A class shares one server, so a run is priced before it is queued (``explorer.estimate`` for
seconds, ``explorer.footprint`` for memory): the page says "about N s per epoch on this server",
and a run over the server's time budget or memory share is refused with a sentence that names
the cheaper fix. A model whose head does not match the dataset's classes is refused unless the
visitor asks for a head of the dataset's size.

Prices are for the device type the server's workers train on; a GPU is never touched here (the
web server initialises no CUDA): its figures come from what its workers recorded.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from typing import Any

import torch

from explorer.calibration import calibration_path, load_throughput
from explorer.errors import ConfigError
from explorer.estimate import check_budget, check_classes, estimate_run, with_classes
from explorer.footprint import (
    DataSizes,
    Footprint,
    available_memory,
    check_memory,
    estimate_footprint,
    memory_sentence,
)
from explorer.specs import SpecBase
from explorer.training import TrainConfig, resolve_precision


@dataclass(frozen=True)
class Price:
    """A run priced on this server, and what Start would refuse."""

    spec: SpecBase  # the model that would train (its head resized when asked for)
    epoch_s: float | None  # None while this device has no measurements (a GPU before its first run)
    total_s: float | None
    footprint: Footprint
    refusal: ConfigError | None  # over the time budget or the memory share

    @property
    def sentence(self) -> str:
        """'About 12 s per epoch on this server (about 1 min in all), about 40 MB of memory.'"""
        from explorer.estimate import duration_text, epoch_sentence

        memory = memory_sentence(self.footprint)
        if self.epoch_s is None:
            return (f"No time estimate yet: this server's first run on its GPU measures it; "
                    f"{memory}.")
        text = epoch_sentence(self.epoch_s)
        total = f" ({duration_text(self.total_s)} in all)" if self.total_s else ""
        return f"{text[0].upper()}{text[1:]}{total}, {memory}."


def head_for(spec: SpecBase, data: DataSizes, resize_head: bool, model: str = "this model",
             dataset: str = "the dataset") -> SpecBase:
    """The spec to train: a head of the dataset's classes when asked for, else a refusal
    when the head and the data disagree (``model`` and ``dataset`` name them in it)."""
    if spec.num_classes == data.num_classes:
        return spec
    if resize_head:
        return with_classes(spec, data.num_classes)
    problem = check_classes(spec.num_classes, data.num_classes, model, dataset)
    if problem is not None:
        raise problem
    return spec


def warm_up(device: str = "cpu", store_path: Any = None) -> threading.Thread | None:
    """Calibrate this server's CPU in the background (in a child process, see ``price``) as the
    server starts, so that a class's first estimate does not wait for the probes (about 3 s on
    an idle 2-core machine, 47 s at a load average of 10). A GPU is priced without probes."""
    dev = torch.device(device)
    if dev.type != "cpu":
        return None
    precision = resolve_precision(TrainConfig().precision, dev)
    thread = threading.Thread(target=load_throughput, name="calibration-warm-up", daemon=True,
                              args=(dev, precision, calibration_path(store_path)),
                              kwargs={"calibrate_if_missing": True, "in_child": True})
    thread.start()
    return thread


def slots_busy(store: Any, device_type: str, slots: int) -> bool:
    """True when the runs training on this machine's ``device_type`` (by any worker of
    ``store`` here) fill its ``slots``: a run started now waits for one of them to end."""
    running, _ = store.device_load(f"{socket.gethostname()}:", device_type)
    return slots > 0 and running >= slots


def price(spec: SpecBase, config: TrainConfig, data: DataSizes, device: str = "cpu",
          slots: int = 1, store_path: Any = None, busy: bool = False) -> Price:
    """Price a run on the device type ``device`` (``cpu`` or ``cuda``) shared by ``slots``.

    ``busy``: the server's runs fill the slots now (``slots_busy``); the run's time is then
    priced at the load measured without them (``explorer.estimate.slow_down``).
    """
    dev = torch.device(device)
    precision = resolve_precision(config.precision, dev) if dev.type == "cpu" else (
        "fp32" if config.precision == "fp32" else "bf16")
    footprint = estimate_footprint(spec, config, data, precision)
    calibration = calibration_path(store_path)
    throughput = load_throughput(dev, precision, calibration,
                                 calibrate_if_missing=dev.type == "cpu", in_child=True,
                                 busy=busy)
    refusal = None
    epoch_s = total_s = None
    if throughput is not None:
        estimate = estimate_run(spec, config, data, throughput)
        epoch_s, total_s = estimate.epoch_s, estimate.total_s
        refusal = check_budget(estimate)
    if refusal is None and dev.type in ("cpu", "cuda"):
        # On a GPU the whole budget of its runs: one that fits later waits in the queue.
        available = available_memory(dev, slots)
        refusal = None if available is None else check_memory(footprint, available)
    return Price(spec, epoch_s, total_s, footprint, refusal)

