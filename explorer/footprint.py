"""Training memory, estimated before Start: weights, gradients, optimizer state, activations.

A training step holds the parameters, their gradients (the previous step's stay alive through the
forward pass: the engine zeroes them just before ``backward``), the optimizer's state, and every
tensor autograd saves for the backward pass, once per image of the batch. This module counts the
saved tensors exactly, on PyTorch's meta device (no memory, no arithmetic): a forward pass in train
mode under ``torch.autograd.graph.saved_tensors_hooks`` sees each tensor that backward will read
(conv inputs, ReLU outputs, max-pool indices, batch-norm statistics), with its dtype.

What is approximate, and by how much the benchmark (bench/bench_estimate.py) measures: the
transient buffers of backward (taken as two of the largest layer outputs: the gradient flowing in
and the one flowing out), the allocator's rounding and caching, oneDNN/cuDNN workspaces, and under
bf16 autocast the saved tensors, taken as half their float32 size (batch-norm keeps some float32).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from explorer import settings
from explorer.errors import ConfigError
from explorer.models import meta_model
from explorer.specs import SpecBase

EVAL_BATCH = 256  # explorer.training.EVAL_BATCH: evaluation batches are at least this large
MEMORY_ENV = "EXPLORER_RUN_MEMORY_BYTES"  # read through explorer.settings
# Of the machine's memory, shared by the local workers. The rest is for the server and the OS,
# and covers what a process holds beyond this estimate: bench/bench_estimate.py measured the
# resident memory's rise at 1.1-1.5 times the estimated peak (allocator slack, oneDNN buffers).
RAM_FRACTION = 0.5
CUDA_CONTEXT_BYTES = 600 * 2**20  # what each process's CUDA context and kernels take on a GPU
GPU_USABLE_FRACTION = 0.9  # fragmentation and the caching allocator's slack
GPU_SLOTS_CAP = 8  # worker processes per GPU by default, at most
MB = 10**6  # the megabytes of the settings and of the sentences


@dataclass(frozen=True)
class DataSizes:
    """The sizes of a dataset that cost time and memory (no tensors needed)."""

    train_images: int
    test_images: int
    image_shape: tuple[int, int, int]  # C×H×W as stored (uint8), before the engine resizes
    num_classes: int

    @classmethod
    def of(cls, dataset: object) -> DataSizes:
        """The sizes of an ``explorer.data.ImageDataset``."""
        return cls(len(dataset.train_labels), len(dataset.test_labels),  # type: ignore[attr-defined]
                   tuple(dataset.image_shape), dataset.num_classes)  # type: ignore[attr-defined]

    @property
    def device_bytes(self) -> int:
        """The whole dataset as the engine holds it on the device: uint8 images, int64 labels."""
        return (self.train_images + self.test_images) * (math.prod(self.image_shape) + 8)


@dataclass(frozen=True)
class ActivationProfile:
    """Per-image activation sizes of a spec's model, from one meta-device pass in train mode."""

    saved_bytes: int  # float32 tensors autograd keeps for backward, per image
    saved_index_bytes: int  # integer and bool tensors kept (max-pool indices, dropout masks)
    output_elements: int  # sum of every leaf module's output elements, per image
    largest_output: int  # elements of the largest single leaf output, per image


@functools.lru_cache(maxsize=256)
def activation_profile(spec: SpecBase) -> ActivationProfile:
    """What one image costs in activations: saved for backward, and output by every layer."""
    if not isinstance(spec, SpecBase):
        raise ConfigError(f"expected a spec from explorer.specs, not {type(spec).__name__}.")
    model = meta_model(spec)
    model.train()
    params = {id(p) for p in model.parameters()}
    kept: dict[int, torch.Tensor] = {}  # by id of the storage's owner: one tensor, saved twice
    outputs = [0, 0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        owner = t._base if t._base is not None else t
        if id(owner) not in params:
            kept[id(owner)] = owner  # holding it keeps ids unique while the pass runs
        return t

    def leaf_output(_m: nn.Module, _i: object, out: object) -> None:
        if isinstance(out, torch.Tensor):  # out[0]: one image of the batch
            outputs[0] += out[0].numel()
            outputs[1] = max(outputs[1], out[0].numel())

    handles = [m.register_forward_hook(leaf_output) for m in model.modules()
               if not list(m.children())]
    batch = 2  # batch norm refuses one value per channel in train mode
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(torch.empty(batch, *spec.input_shape, device="meta"))
    finally:
        for h in handles:
            h.remove()
    floats = sum(t.numel() * t.element_size() for t in kept.values() if t.is_floating_point())
    others = sum(t.numel() * t.element_size() for t in kept.values() if not t.is_floating_point())
    return ActivationProfile(floats // batch, others // batch, outputs[0], outputs[1])


@functools.lru_cache(maxsize=256)
def param_counts(spec: SpecBase) -> tuple[int, int]:
    """Parameters of the spec's model and of its largest tensor, counted on the meta device."""
    model = meta_model(spec)
    sizes = [p.numel() for p in model.parameters()]
    return sum(sizes), max(sizes, default=0)


def optimizer_slots(optimizer: str, momentum: float) -> int:
    """Tensors of the parameters' size the optimizer keeps: SGD momentum 1, Adam/AdamW 2."""
    if optimizer in ("adam", "adamw"):
        return 2  # exp_avg and exp_avg_sq
    return 1 if momentum > 0 else 0  # plain SGD keeps no buffer


@dataclass(frozen=True)
class Footprint:
    """Bytes a training run holds at its peak, by kind; ``peak_bytes`` is the sum that matters."""

    params_bytes: int
    grads_bytes: int
    optimizer_bytes: int
    data_bytes: int  # the dataset on the device
    workspace_bytes: int  # weight copies: layout reorders, bf16 autocast's cast cache
    batch_size: int
    train_image_bytes: int  # per image of a training batch: saved activations and transients
    eval_image_bytes: int  # per image of an evaluation batch (no activations are saved)
    test_images: int  # the test pass takes batches of max(batch_size, 256) of them

    @property
    def eval_batch(self) -> int:
        """Images per batch of the test pass (explorer.training's rule)."""
        return min(max(self.batch_size, EVAL_BATCH), self.test_images)

    @property
    def fixed_bytes(self) -> int:
        """What does not depend on the batch size."""
        return (self.params_bytes + self.grads_bytes + self.optimizer_bytes + self.data_bytes
                + self.workspace_bytes)

    @property
    def activations_bytes(self) -> int:
        """Saved activations and transients of one training batch."""
        return self.batch_size * self.train_image_bytes

    @property
    def peak_bytes(self) -> int:
        """The larger of a training step and an evaluation batch, plus the fixed part."""
        return self.fixed_bytes + max(self.activations_bytes,
                                      self.eval_batch * self.eval_image_bytes)

    def with_batch(self, batch_size: int) -> Footprint:
        """The same run at another batch size."""
        return dataclasses.replace(self, batch_size=batch_size)


def estimate_footprint(spec: SpecBase, config: Any, data: DataSizes,
                       precision: str = "fp32") -> Footprint:
    """The peak memory of training ``spec`` with ``config`` (a TrainConfig) on ``data``.

    Args:
        precision: ``fp32`` or ``bf16`` (autocast: activations are taken at half size; weights,
            gradients and optimizer state stay float32).
    """
    act = activation_profile(spec)
    n, largest = param_counts(spec)
    half = precision == "bf16"
    saved = act.saved_bytes // 2 if half else act.saved_bytes
    act_bytes = 2 if half else 4
    # The batch as the transform makes it (float32 at the stored size, then resized), and the
    # gradients of backward: the one flowing into a layer and the one it passes on.
    source = math.prod(data.image_shape)
    transient = 4 * (source + math.prod(spec.input_shape)) + 2 * act_bytes * act.largest_output
    train_image = saved + act.saved_index_bytes + transient
    # Evaluation keeps nothing for backward: the input and two layer outputs at a time.
    eval_image = 4 * (source + math.prod(spec.input_shape)) + 2 * act_bytes * act.largest_output
    batch = int(config.batch_size)
    slots = optimizer_slots(config.optimizer, float(config.momentum))
    # oneDNN and cuDNN reorder a weight into their own layout while a layer runs (two copies of
    # the largest at a time); autocast keeps a bfloat16 copy of every weight for the step.
    workspace = 2 * 4 * largest + (2 * n if half else 0)
    return Footprint(4 * n, 4 * n, 4 * n * slots, data.device_bytes, workspace,
                     batch, train_image, eval_image, data.test_images)


def largest_batch(footprint: Footprint, available_bytes: int) -> int:
    """The largest batch size whose peak fits in ``available_bytes`` (0 when none does)."""
    lo, hi = 0, footprint.batch_size
    while lo < hi:  # peak_bytes grows with the batch size
        mid = (lo + hi + 1) // 2
        if footprint.with_batch(mid).peak_bytes <= available_bytes:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:,.0f} bytes"


def memory_sentence(footprint: Footprint) -> str:
    """'about 51.2 MB of memory at batch size 128', for the page before Start."""
    return f"about {_size(footprint.peak_bytes)} of memory at batch size {footprint.batch_size}"


def check_memory(footprint: Footprint, available_bytes: int) -> ConfigError | None:
    """None when the run fits in ``available_bytes``, else a sentence with the batch that fits."""
    if footprint.peak_bytes <= available_bytes:
        return None
    need, have = _size(footprint.peak_bytes), _size(available_bytes)
    fits = largest_batch(footprint, available_bytes)
    if fits >= 1:
        return ConfigError(f"this run needs about {need} of memory at batch size "
                           f"{footprint.batch_size}, more than the {have} a run may use on this "
                           f"server; choose a batch size of at most {fits}.")
    one = footprint.with_batch(1)
    if one.fixed_bytes + one.train_image_bytes <= available_bytes:
        # Training one image fits; the engine's test pass, at least 256 images at once, does not.
        return ConfigError(f"testing this model {one.eval_batch} images at a time needs about "
                           f"{_size(one.peak_bytes)} of memory, more than the {have} a run may "
                           f"use on this server; choose a smaller input or a smaller model.")
    return ConfigError(f"this run needs about {need} of memory even at batch size 1 "
                       f"(weights, gradients, optimizer state and data take "
                       f"{_size(footprint.fixed_bytes)}), more than the {have} a run may use on "
                       f"this server; choose a smaller model or a smaller input.")


def machine_memory_bytes() -> int:
    """Physical memory, or the container's limit (cgroup v2 ``memory.max``) when lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit.isdigit():
            total = min(total, int(limit))
    except OSError:
        pass
    return total


def available_memory(device: str | torch.device = "cpu", slots: int = 1) -> int | None:
    """Bytes one run may use: $EXPLORER_RUN_MEMORY_BYTES, else a share of the device's memory.

    On the CPU: half the machine's memory divided among ``slots`` local workers; on CUDA: the
    GPU's whole budget for runs (``plan_gpu``), since a run alone on it may use all of it (its
    workers start a run only when it fits beside the others); None when this machine has no
    GPU to read (a Ray cluster's GPUs are elsewhere: their dispatcher sizes runs itself).
    """
    setting = settings.read(MEMORY_ENV)
    if setting is not None:
        return int(setting)
    dev = torch.device(device)
    slots = max(1, int(slots))
    if dev.type == "cuda":
        from explorer.system import gpu_memory

        memory = gpu_memory()
        return plan_gpu(memory[dev.index or 0]).budget if memory else None
    return int(machine_memory_bytes() * RAM_FRACTION) // slots


def gpu_slots(total_bytes: int, footprints: Sequence[Footprint]) -> int:
    """How many runs fit side by side on one GPU of ``total_bytes``, each any of these.

    Sized for the largest footprint (a slot may get any run), each run with its own process's
    CUDA context, within 90 % of the memory; at least 1.
    """
    if not footprints:
        return 1
    largest = max(f.peak_bytes for f in footprints) + CUDA_CONTEXT_BYTES
    return max(1, int(total_bytes * GPU_USABLE_FRACTION // largest))


@functools.lru_cache(maxsize=1)
def typical_run_bytes() -> int:
    """The footprint of a class's typical run: course LeNet-5 at the default settings on the
    offline digits (4,000 training and 1,000 test images of 1×28×28), in bf16 as on a GPU."""
    from explorer.registry import get_preset
    from explorer.training import TrainConfig

    spec = get_preset("course_lenet5").spec
    return estimate_footprint(spec, TrainConfig(), DataSizes(4000, 1000, (1, 28, 28), 10),
                              "bf16").peak_bytes


@dataclass(frozen=True)
class GpuPlan:
    """How one GPU is shared: its worker processes and the memory their runs may hold."""

    slots: int  # worker processes (runs at once at most)
    budget: int  # bytes the runs on it may hold together (CUDA contexts and reserve excluded)


def plan_gpu(total_bytes: int, typical_bytes: int | None = None,
             cores: int | None = None) -> GpuPlan:
    """Slots and run budget of a GPU of ``total_bytes``, from the server's settings.

    The budget is $EXPLORER_GPU_MEMORY_MB when set; else the GPU's memory less a reserve
    ($EXPLORER_GPU_RESERVE_MB, default a tenth: fragmentation, the caching allocator's slack)
    and less each worker's CUDA context. The slots are $EXPLORER_GPU_SLOTS when set; else as
    many typical runs (``typical_run_bytes``, each with its context) as the memory holds, at
    most GPU_SLOTS_CAP and one per CPU core (each worker's Python drives its GPU work).
    """
    typical = max(1, int(typical_bytes or typical_run_bytes()))
    cap = max(1, min(GPU_SLOTS_CAP, cores or os.cpu_count() or 1))
    fixed_slots = settings.read("EXPLORER_GPU_SLOTS") or settings.read("EXPLORER_SLOTS")
    memory_mb = settings.read("EXPLORER_GPU_MEMORY_MB")
    if memory_mb is not None:
        budget = int(memory_mb * MB)
        slots = fixed_slots or max(1, min(cap, budget // typical))
        return GpuPlan(int(slots), budget)
    reserve_mb = settings.read("EXPLORER_GPU_RESERVE_MB")
    reserve = int(reserve_mb * MB) if reserve_mb is not None else int(total_bytes * 0.1)
    usable = max(0, int(total_bytes) - reserve)
    slots = fixed_slots or max(1, min(cap, usable // (typical + CUDA_CONTEXT_BYTES)))
    return GpuPlan(int(slots), max(0, usable - int(slots) * CUDA_CONTEXT_BYTES))


__all__ = ["ActivationProfile", "DataSizes", "Footprint", "activation_profile",
           "GpuPlan", "available_memory", "check_memory", "estimate_footprint", "gpu_slots",
           "plan_gpu", "typical_run_bytes",
           "largest_batch", "machine_memory_bytes", "memory_sentence", "optimizer_slots",
           "param_counts"]
