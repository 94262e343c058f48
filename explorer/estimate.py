"""What a training run will cost before Start: its arithmetic, this device's speed, the budget.

The work of a run comes from the meta-device pass of ``explorer.layers`` (multiply-adds per image,
the lecture convention: conv and linear weights) and of ``explorer.footprint`` (every layer's
output elements). A training step costs about three forward passes (backward computes the
gradients of both the inputs and the weights, each about one forward), the test pass one.

Time per step is modelled as ``a + b·layers + macs/T + elements/E``: a fixed per-step cost (loss,
optimizer, batch slicing), a per-layer dispatch cost (what dominates small models on a CPU), the
multiply-adds at throughput T and the element-wise work (batch norm, activations, pooling) at rate
E. The four coefficients are fitted (least squares on relative error, all non-negative) to a quick
calibration (five small probe networks trained a few steps, about a second in all, cached per
device in a JSON file beside the run store by ``explorer.calibration``) and to every finished run
recorded since. A run whose work was measured before on this device is estimated by those
measurements themselves, other work by the model times its error on the nearest finished runs
(per-layer efficiency varies: a few conv channels run far below a wide layer's rate on a CPU,
which a class training LeNet after LeNet soon teaches the estimate). On a CPU shared with other
work, seconds are kept as at calibration and scaled by the slow-down a short reference kernel
measures now against its time at calibration (``slow_down``).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from explorer import settings
from explorer.errors import ConfigError
from explorer.footprint import EVAL_BATCH, DataSizes, activation_profile
from explorer.layers import meta_pass
from explorer.specs import SpecBase

BUDGET_ENV = "EXPLORER_RUN_BUDGET_S"
DEFAULT_BUDGET_S = 600.0  # ten minutes per run (the CPU default of the issue)
BACKWARD_FACTOR = 3  # forward + backward ≈ 3 forwards
FIX_SHARE = 0.9  # what a refusal's fixes aim at, of the per-run limit
INPUT_SIZES = (224, 192, 160, 128, 112, 96, 64, 48, 32, 28)  # smaller inputs a refusal may offer


@dataclass(frozen=True)
class Work:
    """The arithmetic of one training run on one dataset."""

    macs_per_image: int  # forward multiply-adds at the model's input
    elements_per_image: int  # outputs of every layer, plus the resized input
    layers: int  # conv, linear, batch-norm and pooling layers
    batch_size: int
    steps_per_epoch: int
    total_steps: int  # over all epochs, after max_steps
    epochs: int
    test_images: int

    def step_features(self) -> tuple[float, ...]:
        """One training step in the time model's terms: (1, layers, MACs, elements)."""
        b = self.batch_size * BACKWARD_FACTOR
        return (1.0, float(self.layers), float(self.macs_per_image * b),
                float(self.elements_per_image * b))

    def eval_features(self) -> tuple[float, ...]:
        """One epoch's test pass (forward only, batches of at least 256) in the same terms."""
        batches = math.ceil(self.test_images / max(self.batch_size, EVAL_BATCH))
        f = batches / BACKWARD_FACTOR  # per-batch costs of a forward pass: a third of a step
        return (f, f * self.layers, float(self.macs_per_image * self.test_images),
                float(self.elements_per_image * self.test_images))

    @property
    def macs_per_epoch(self) -> int:
        """Training (×3) and test (×1) multiply-adds of one epoch."""
        return self.macs_per_image * (BACKWARD_FACTOR * self.steps_per_epoch * self.batch_size
                                      + self.test_images)


@functools.lru_cache(maxsize=256)
def _macs_layers(spec: SpecBase) -> tuple[int, int]:
    mp = meta_pass(spec)
    return mp.macs_lecture, len(mp.layers)


def run_work(spec: SpecBase, config: Any, data: DataSizes) -> Work:
    """The work of training ``spec`` with ``config`` (a TrainConfig) on a dataset of ``data``."""
    macs, layers = _macs_layers(spec)
    elements = activation_profile(spec).output_elements
    if tuple(data.image_shape) != tuple(spec.input_shape):
        elements += math.prod(spec.input_shape)  # the engine resizes each batch on the device
    batch = int(config.batch_size)
    if batch > data.train_images:  # the engine's own refusal, before any estimate
        raise ConfigError(f"the batch size {batch} is larger than the {data.train_images} training "
                          f"images; choose at most {data.train_images}.")
    steps = data.train_images // batch
    total = steps * int(config.epochs)
    if config.max_steps is not None:
        total = min(total, int(config.max_steps))
    epochs = math.ceil(total / steps) if steps else 0
    return Work(macs, elements, layers, batch, steps, total, epochs, data.test_images)


# ---------------------------------------------------------------------------------------------
# The time model and its fit.


def _solve(rows: Sequence[Sequence[float]], times: Sequence[float],
           active: Sequence[int]) -> list[float] | None:
    """Least squares on relative error over the ``active`` coefficients (the rest are 0)."""
    a = torch.tensor([[r[j] / t for j in active] for r, t in zip(rows, times, strict=True)],
                     dtype=torch.float64)
    scale = a.abs().amax(dim=0).clamp_min(1e-300)  # columns span 1 to 1e12: solve them at 1
    b = torch.ones(len(rows), 1, dtype=torch.float64)
    sol = torch.linalg.lstsq(a / scale, b, driver="gelsd").solution.squeeze(1) / scale
    coef = [0.0] * len(rows[0])
    for j, v in zip(active, sol.tolist(), strict=True):
        coef[j] = v
    return coef if all(v >= 0 for v in coef) else None


def fit(rows: Sequence[Sequence[float]], times: Sequence[float]) -> tuple[float, ...]:
    """Non-negative coefficients c minimising the relative error of ``c·row`` against ``time``.

    Every subset of the coefficients is tried (there are four), keeping the best fit whose
    coefficients are all non-negative: a negative throughput would predict negative time.
    """
    if not rows or len(rows) != len(times) or min(times) <= 0:
        raise ValueError("fit needs one positive time per row")
    n = len(rows[0])
    best: tuple[float, tuple[float, ...]] | None = None
    for k in range(1, n + 1):
        for active in itertools.combinations(range(n), k):
            coef = _solve(rows, times, active)
            if coef is None:
                continue
            err = sum((sum(c * x for c, x in zip(coef, r, strict=True)) / t - 1) ** 2
                      for r, t in zip(rows, times, strict=True))
            if best is None or err < best[0] - 1e-12:
                best = (err, tuple(coef))
    assert best is not None  # a single coefficient always has a non-negative solution
    return best[1]


@dataclass(frozen=True)
class Record:
    """One measurement: the work in the model's terms and the seconds it took."""

    features: tuple[float, ...]
    seconds: float
    source: str = "run"  # probe (calibration) | run (a finished run)


NEIGHBOURS = 3  # finished runs whose error corrects an estimate of similar work
NEAR = 0.6  # how similar: distance in decades of (per-batch cost, layers, MACs, elements)


def _position(features: Sequence[float]) -> tuple[float, ...]:
    return tuple(math.log10(max(x, 1.0)) for x in features)


class Throughput:
    """This device's measured speed: the calibration probes and finished runs, fitted."""

    def __init__(self, key: str, records: Sequence[Record], calibrated_at: str = "",
                 share: float = 1.0) -> None:
        """Args: share: the slow-down the machine's load brings now (``slow_down``, or
        ``cpu_share`` without a reference); records hold seconds as at calibration."""
        if not records:
            raise ValueError("a throughput needs at least one measurement")
        self.key, self.records, self.calibrated_at = key, list(records), calibrated_at
        self.share = min(100.0, max(0.25, float(share)))
        self.coefficients = fit([r.features for r in self.records],
                                [r.seconds for r in self.records])

    @property
    def macs_per_s(self) -> float:
        """Effective multiply-adds per second (inf when the fit found them free)."""
        c = self.coefficients[2]
        return 1.0 / c if c > 0 else math.inf

    def model_seconds(self, features: Sequence[float]) -> float:
        """What the fitted model alone predicts, on an idle machine."""
        return sum(c * x for c, x in zip(self.coefficients, features, strict=True))

    def seconds(self, features: Sequence[float],
                like: Sequence[float] | None = None) -> float:
        """Predicted seconds now, learning from the probes and finished runs.

        Earlier runs of exactly this work give their median. Otherwise the model, corrected by
        how far off it was for the nearest measurements of similar work, probes and finished
        runs alike (a few conv channels or a sigmoid run far below a wide layer's throughput on
        a CPU; such effects are local, and the class-sized probes measure them before the first
        run). ``like``: the features whose neighbours correct (a test pass is corrected as its
        network's training steps are: the same layers, at the same efficiency).
        """
        key = tuple(features)
        same = [r.seconds for r in self.records if r.features == key]
        if same:
            return statistics.median(same) * self.share
        where = tuple(like) if like is not None else key
        return self.model_seconds(features) * self._correction(where) * self.share

    def _correction(self, features: tuple[float, ...]) -> float:
        """Geometric mean of measured/model over the nearest measurements, each weighted by
        the inverse of its distance (the nearest network says most; 1 when none is near)."""
        here = _position(features)
        near = sorted(((math.dist(here, _position(r.features)), r) for r in self.records),
                      key=lambda pair: pair[0])
        logs = [(1 / (d + 0.05), math.log(r.seconds / m)) for d, r in near[:NEIGHBOURS]
                if d <= NEAR and (m := self.model_seconds(r.features)) > 0]
        if not logs:
            return 1.0
        return math.exp(sum(w * x for w, x in logs) / sum(w for w, _x in logs))

    def epoch_seconds(self, work: Work) -> float:
        """One epoch: its training steps and its test pass."""
        steps = min(work.steps_per_epoch, work.total_steps)
        step = work.step_features()
        return steps * self.seconds(step) + self.seconds(work.eval_features(), like=step)

    def run_seconds(self, work: Work) -> float:
        """The whole run: every step, and the test pass after each epoch."""
        step = work.step_features()
        return (work.total_steps * self.seconds(step)
                + work.epochs * self.seconds(work.eval_features(), like=step))


_share_cache: list[float] = []  # [measured at (perf_counter), share]


def cpu_share(sample_s: float = 0.1, max_age_s: float = 15.0) -> float:
    """How much slower than on an idle machine a CPU-bound thread runs now (≥ 1).

    Measured, not inferred: a short busy probe (small matrix products, ``sample_s`` of wall
    time) compares the wall clock with the thread's CPU time. The load average proved a poor
    guide on a shared machine (it counted twice the slow-down runs saw). Cached ``max_age_s``.
    """
    now = time.perf_counter()
    if _share_cache and now - _share_cache[0] < max_age_s:
        return _share_cache[1]
    a = torch.full((48, 48), 0.01)
    wall0, cpu0 = time.perf_counter(), time.thread_time()
    while time.perf_counter() - wall0 < sample_s:
        for _ in range(10):
            a = torch.tanh(a @ a)
    wall, cpu = time.perf_counter() - wall0, time.thread_time() - cpu0
    share = max(1.0, wall / cpu) if cpu > 0 else 1.0
    _share_cache[:] = [time.perf_counter(), share]
    return share


def _reference_step() -> Any:
    """One training step of a fixed small LeNet at batch 128 (forward, backward, SGD): the
    reference kernel, on the same code paths as a class's runs."""
    from explorer.models import build
    from explorer.specs import LeNetSpec

    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):  # the initial weights leave torch's generator be
        model = build(LeNetSpec(input_shape=(1, 16, 16), conv_channels=(4, 8), kernel_size=3,
                                hidden=(32,)))
    x = torch.rand(128, 1, 16, 16, generator=gen)
    y = torch.randint(0, 10, (128,), generator=gen)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step() -> None:
        opt.zero_grad(set_to_none=False)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def reference_seconds(sample_s: float = 0.2, clock: Any = time.perf_counter,
                      windows: int = 5) -> float:
    """Seconds per step of the reference kernel by ``clock``: the fastest of ``windows`` windows
    of ``sample_s / windows`` of wall time each.

    Other work only ever adds time to a window, so the fastest is the machine's speed now: a
    burst (another thread's analysis, a page rendering) slows one window, while load that
    lasts (another program training) slows every window and stays in the figure. The
    calibration times it by CPU time beside the probes (``explorer.calibration``); timed by the
    wall clock now, the ratio of the two is the slow-down a run would see (``slow_down``).
    It leaves torch's global generator as it was.
    """
    step = _reference_step()
    step()  # allocations and kernel choice, once
    times = []
    for _ in range(max(1, windows)):
        n, start, wall0 = 0, clock(), time.perf_counter()
        while time.perf_counter() - wall0 < sample_s / max(1, windows) or n < 2:
            step()
            n += 1
        times.append((clock() - start) / n)
    return min(times)


_slow_cache: dict[float, tuple[float, float]] = {}  # reference → (measured at, slow-down)
# One measurement at a time in a process: two at once would each time the other (torch's
# threads of both on the same cores: 12 times the idle time on 2 cores), and callers who come
# meanwhile take the figure the first one measured.
_slow_lock = threading.Lock()


def slow_down(reference_s: float, sample_s: float = 0.2, max_age_s: float = 15.0,
              busy: bool = False) -> float:
    """How much slower than at calibration a run goes now: the reference kernel's wall time now
    over its CPU time at calibration (``reference_s``).

    Both the time the machine's other work takes from a run (which ``cpu_share`` sees) and the
    slower CPU time of every step when that work competes for caches and memory (which it does
    not) enter it; the calibration's probes were timed under the same conditions as
    ``reference_s``, so what contention they saw cancels. Between 0.25 and 100; cached
    ``max_age_s``.

    Args:
        busy: this server's own workers fill this machine's CPU slots now. A run started now
            waits for them in the queue and then trains without them, so their load is not its
            own: the last figure measured without them stands (1, the calibrated speed, when
            there is none), and nothing is measured.
    """
    with _slow_lock:
        now = time.perf_counter()
        cached = _slow_cache.get(reference_s)
        if busy:
            return cached[1] if cached else 1.0
        if cached and now - cached[0] < max_age_s:
            return cached[1]
        share = min(100.0, max(0.25, reference_seconds(sample_s) / reference_s))
        _slow_cache[reference_s] = (time.perf_counter(), share)
        return share


def estimate_epoch_seconds(spec: SpecBase, config: Any, data: DataSizes,
                           throughput: Throughput) -> float:
    """Seconds one epoch of this run takes on the device ``throughput`` measured."""
    return throughput.epoch_seconds(run_work(spec, config, data))


def duration_text(seconds: float) -> str:
    """'2.4 s', '12 s', '4 min', '1.5 h': a duration rounded as a student reads it. Under 10 s
    with a decimal: '2 s per epoch (7 s in all)' for 3 epochs of 2.4 s read as a sum gone wrong."""
    if seconds < 1:
        return "under 1 s"
    if seconds < 9.95:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def epoch_sentence(seconds: float) -> str:
    """'about 40 s per epoch on this server'."""
    text = duration_text(seconds)
    return f"{'' if text.startswith('under') else 'about '}{text} per epoch on this server"




# ---------------------------------------------------------------------------------------------
# What Start may refuse: over the time budget, a head that does not match the data.


@dataclass(frozen=True)
class RunEstimate:
    """A run priced on one device: its work, seconds per epoch and in all."""

    spec: SpecBase
    config: Any  # the TrainConfig
    data: DataSizes
    work: Work
    epoch_s: float
    total_s: float
    throughput: Throughput  # to price the cheaper alternatives a refusal names

    @property
    def sentence(self) -> str:
        """'about 40 s per epoch on this server'."""
        return epoch_sentence(self.epoch_s)


def estimate_run(spec: SpecBase, config: Any, data: DataSizes,
                 throughput: Throughput) -> RunEstimate:
    """Price training ``spec`` with ``config`` on ``data`` on the device ``throughput`` measured."""
    work = run_work(spec, config, data)
    return RunEstimate(spec, config, data, work, throughput.epoch_seconds(work),
                       throughput.run_seconds(work), throughput)


def budget_seconds() -> float:
    """The longest run the server accepts: $EXPLORER_RUN_BUDGET_S, else ten minutes."""
    return float(settings.read(BUDGET_ENV))  # type: ignore[arg-type]


def _cheaper_input(est: RunEstimate, budget: float) -> tuple[SpecBase, float] | None:
    """The largest square input below the model's that builds and fits the whole run.

    A binary search over ``INPUT_SIZES``: the cost grows with the input, and each try is a
    meta-device pass (a second for a DenseNet on a busy CPU).
    """
    c, h, w = est.spec.input_shape

    def total(size: int) -> float | None:
        try:
            spec = dataclasses.replace(est.spec, input_shape=(c, size, size))
            return est.throughput.run_seconds(run_work(spec, est.config, est.data))
        except ConfigError:  # too small for this network
            return None

    sizes = sorted(s for s in INPUT_SIZES if s < min(h, w))  # ascending
    best: tuple[SpecBase, float] | None = None
    lo, hi = 0, len(sizes) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        t = total(sizes[mid])
        if t is None:  # does not build: only larger inputs can
            lo = mid + 1
        elif t <= budget:
            best = (dataclasses.replace(est.spec, input_shape=(c, sizes[mid], sizes[mid])), t)
            lo = mid + 1
        else:
            hi = mid - 1
    return best


def _cheaper_model(est: RunEstimate, budget: float) -> tuple[str, float, int] | None:
    """A course preset of the same family (with the data's classes) that fits.

    Returns (name, seconds, epochs): the most expensive one that fits all the epochs; failing
    that, the cheapest, with the epochs of it that fit (None when not even one does). Only the
    course presets: torchvision's are the large ones, and each costs a meta-device pass.
    """
    from explorer.registry import get_preset, preset_names

    priced = []
    for name in preset_names(group="course", family=est.spec.family):
        spec = with_classes(get_preset(name).spec, est.data.num_classes)
        if spec == est.spec:
            continue
        try:
            work = run_work(spec, est.config, est.data)
        except ConfigError:
            continue
        total = est.throughput.run_seconds(work)
        if total < est.total_s:  # only smaller models
            priced.append((total, est.throughput.epoch_seconds(work), name))
    fitting = [p for p in priced if p[0] <= budget]
    if fitting:
        total, _epoch, name = max(fitting)
        return name, total, est.work.epochs
    if not priced:
        return None
    _total, epoch, name = min(priced)
    epochs = int(budget // epoch) if epoch > 0 else 0
    return (name, epochs * epoch, epochs) if epochs >= 1 else None


def check_budget(estimate: RunEstimate, budget_s: float | None = None) -> ConfigError | None:
    """None when the run fits the server's time budget, else a sentence naming cheaper fixes."""
    budget = budget_seconds() if budget_s is None else float(budget_s)
    if estimate.total_s <= budget:
        return None
    fixes = []
    # A fix aims at 90 % of the limit: one priced right at it ("about 10 min" for a limit of
    # 10 min) is refused again as soon as the machine is a little busier.
    target = FIX_SHARE * budget
    fit_epochs = int(target // estimate.epoch_s) if estimate.epoch_s > 0 else 0
    if 1 <= fit_epochs < estimate.work.epochs:
        fixes.append(f"at most {fit_epochs} epoch{'s' if fit_epochs > 1 else ''}")
    smaller = _cheaper_input(estimate, target)
    if smaller:
        c, h, w = smaller[0].input_shape
        fixes.append(f"a smaller input such as {c}×{h}×{w}, set on the Build page (about "
                     f"{duration_text(smaller[1])})")
    model = _cheaper_model(estimate, target)
    if model and model[2] == estimate.work.epochs:
        fixes.append(f"a smaller model such as {model[0]} (about {duration_text(model[1])})")
    elif model:
        fixes.append(f"a smaller model such as {model[0]} with at most {model[2]} "
                     f"epoch{'s' if model[2] > 1 else ''}")
    if not fixes:
        fixes.append("a smaller model or a smaller input")
    choose = fixes[0] if len(fixes) == 1 else f"{', '.join(fixes[:-1])} or {fixes[-1]}"
    epochs = estimate.work.epochs
    return ConfigError(
        f"this run would take about {duration_text(estimate.total_s)} on this server "
        f"({epochs} epoch{'s' if epochs != 1 else ''} of about "
        f"{duration_text(estimate.epoch_s)}), over the limit of {duration_text(budget)} per "
        f"run; choose {choose}.")


def head_option(dataset_classes: int) -> str:
    """The label of the box that trains a model with a head of the dataset's size."""
    return f"Train with a {dataset_classes}-way head"


def check_classes(spec_classes: int, dataset_classes: int, model: str = "this model",
                  dataset: str = "the dataset") -> ConfigError | None:
    """None when the model's head matches the dataset's classes, else a sentence with the fixes.

    Args:
        model: how the page names the model ('vgg16'); dataset: how it names the data, with
            its article ('the offline digits').
    """
    if int(spec_classes) == int(dataset_classes):
        return None
    return ConfigError(
        f"{model} has a {spec_classes}-way head but {dataset} "
        f"{'has' if dataset_classes == 1 else 'have'} {dataset_classes} classes; tick "
        f"'{head_option(dataset_classes)}' or choose a course preset.")


def with_classes(spec: SpecBase, num_classes: int) -> SpecBase:
    """``spec`` with its classifier resized to ``num_classes`` outputs (validated anew)."""
    if spec.num_classes == num_classes:  # type: ignore[attr-defined]
        return spec
    return dataclasses.replace(spec, num_classes=int(num_classes))  # type: ignore[call-arg]


__all__ = ["BUDGET_ENV", "DEFAULT_BUDGET_S", "Record", "RunEstimate", "Throughput", "Work",
           "budget_seconds", "check_budget", "check_classes", "cpu_share", "duration_text",
           "reference_seconds", "slow_down",
           "epoch_sentence", "estimate_epoch_seconds", "estimate_run", "fit", "head_option",
           "run_work", "with_classes"]
