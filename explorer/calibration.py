"""This device's speed, measured once and refined from finished runs (a JSON file per server).

``calibrate`` trains seven small probe networks for a few steps through the engine itself (a few
seconds on a CPU): a two-layer net at batch 1 (the fixed cost of a step), a deep thin one (the
cost per layer), two VGG blocks (multiply-adds, on a 16×16 map and with wide channels on a 4×4
one), a wide batch-norm layer (element-wise work), and a class's kind of run at two sizes (a
classic sigmoid LeNet at batch 128, a wide ReLU one at batch 64): similar networks are
corrected by the model's error on them. Each probe is timed three times and the fastest kept.
On a CPU it times them by CPU time (``idle_clock``), and beside them a fixed reference kernel
(``measure_reference``); later, the reference's wall time over that CPU time is the slow-down
a run sees (``explorer.estimate.slow_down``): the time other work takes from it, and the slower
CPU time of its steps while that work competes for caches and memory. The web server
calibrates in a child process (``calibrate_in_child``): the probes reseed torch and would compete
with the pages. The file beside the run store keeps, per device, precision and CPU thread count,
the probes with a time stamp, the reference, the torch and probe versions (another version
recalibrates), and the last finished runs; ``explorer.estimate.Throughput`` fits the time model
to all of them.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import math
import os
import platform
import statistics
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from explorer.estimate import (
    Record,
    Throughput,
    Work,
    cpu_share,
    reference_seconds,
    run_work,
    slow_down,
)
from explorer.footprint import DataSizes
from explorer.specs import LeNetSpec, SpecBase, VGGBlock, VGGSpec

CALIBRATION_SUFFIX = ".throughput.json"  # runs.sqlite.throughput.json, beside the run store
CALIBRATION_VERSION = 1
KEEP_RECORDS = 64  # finished runs kept per device; the oldest go first
PROBE_STEPS = 6  # timed steps per repeat of a calibration probe, after a warm-up step
PROBE_VERSION = 4  # another set of probes (or reference kernel) recalibrates a device


_lock = threading.Lock()
_child_lock = threading.Lock()  # one calibrating child per server process
log = logging.getLogger(__name__)


def calibration_path(store_path: str | Path | None = None) -> Path:
    """The calibration file beside the run store ($EXPLORER_RUNS_DB, else ./runs.sqlite).

    A store that is a database URL (PostgreSQL) has no folder: the file is then this machine's,
    in $XDG_CACHE_HOME/cnn-explorer (else ~/.cache/cnn-explorer), since the speed measured is
    the machine's own.
    """
    location = str(store_path or os.environ.get("EXPLORER_RUNS_DB") or "runs.sqlite")
    if "://" in location:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        return cache / "cnn-explorer" / ("throughput" + CALIBRATION_SUFFIX)
    store = Path(location)
    return store.with_name(store.name + CALIBRATION_SUFFIX)


def device_key(device: str | torch.device, precision: str) -> str:
    """Which measurements apply: device model, precision, and on a CPU its torch threads."""
    dev = torch.device(device)
    if dev.type == "cuda":
        # The name from a child process in the web server: it must not initialise CUDA.
        from explorer.system import gpus

        known, index = gpus(), dev.index or 0
        name = known[index][0] if index < len(known) else "unknown GPU"
        return f"cuda:{name}:{precision}"
    if dev.type == "cpu":
        return f"cpu:{_cpu_name()}:{torch.get_num_threads()} threads:{precision}"
    return f"{dev.type}:{precision}"


@functools.lru_cache(maxsize=1)
def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def probe_specs() -> list[SpecBase]:
    """The calibration networks: per-step cost, per-layer cost, arithmetic (on a large and a
    small map), element-wise work, and a class's kind of run at two sizes (a classic sigmoid
    LeNet at batch 128 and a wide ReLU one at batch 64, where a CPU's small-model throughput
    shows as a class's runs meet it; the estimate corrects similar networks by their error)."""
    return [
        LeNetSpec(input_shape=(1, 8, 8), conv_channels=(2,), kernel_size=3, hidden=()),
        LeNetSpec(input_shape=(1, 8, 8), conv_channels=(2,) * 3, kernel_size=1, hidden=(4,) * 6,
                  batch_norm=True),
        VGGSpec(input_shape=(1, 16, 16), arch=(VGGBlock(2, 32),), hidden=(), dropout=0.0),
        # Wide channels on a small map: a CPU's backward pass runs those far below its best.
        VGGSpec(input_shape=(1, 4, 4), arch=(VGGBlock(2, 128),), hidden=(), dropout=0.0),
        LeNetSpec(input_shape=(1, 32, 32), conv_channels=(16,), kernel_size=1, hidden=(),
                  batch_norm=True),
        LeNetSpec(input_shape=(1, 24, 24), conv_channels=(6, 16), kernel_size=5, hidden=(100,)),
        LeNetSpec(input_shape=(1, 28, 28), conv_channels=(32, 64), kernel_size=3,
                  hidden=(128,), activation="relu"),
    ]


PROBE_BATCHES = (1, 2, 16, 32, 32, 128, 64)  # batch norm needs two values per channel
PROBE_REPEATS = 3  # each probe is timed this often; the fastest counts (a busy machine slows)


def idle_clock() -> float:
    """A clock that runs as wall time would on an idle CPU: this process's CPU time per thread.

    With one torch thread, the calling thread's own CPU time (other threads of a server do not
    count); with T threads, the process's CPU time over T (OpenMP's waiting threads spin, so an
    idle machine's wall time is about that).
    """
    threads = torch.get_num_threads()
    return time.thread_time() if threads == 1 else time.process_time() / threads


def _probe_seconds(spec: SpecBase, batch: int, device: torch.device, precision: str) -> float:
    """Median seconds of a training step of ``spec`` through the engine itself.

    On a CPU the steps are timed by ``idle_clock``, so that other work on the machine does not
    enter the calibration; on a GPU by the wall clock.
    """
    from explorer.data import ImageDataset
    from explorer.models import build
    from explorer.training import TrainConfig, train

    n = batch * (PROBE_STEPS + 2)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, *spec.input_shape), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, spec.num_classes, (n,), generator=gen)
    empty = images[:0]
    data = ImageDataset("probe", images, labels, empty, labels[:0],
                        tuple(str(i) for i in range(spec.num_classes)))
    stamps: list[float] = []
    clock = idle_clock if device.type == "cpu" else time.perf_counter

    class Clock:
        def on_step_end(self, _ctx: object, _metrics: object) -> None:
            stamps.append(clock())

    # metrics_every=1 reads the loss back every step: on a GPU that waits for the step to end.
    config = TrainConfig(batch_size=batch, epochs=1, lr=0.01, metrics_every=1,
                         precision=precision, device=str(device))
    train(build(spec), spec.input_shape, spec.num_classes, data, config, [Clock()])
    gaps = [b - a for a, b in itertools.pairwise(stamps)]  # the first step (warm-up) is not in
    return statistics.median(gaps)


def calibrate(device: str | torch.device = "cpu", precision: str = "fp32",
              repeats: int = PROBE_REPEATS) -> list[Record]:
    """Time the probe networks on ``device`` (a few seconds on a CPU); one record each.

    Each probe's median step is measured ``repeats`` times and the fastest kept: on a machine
    shared with other work, a slice of CPU time lost to it (cache misses, a migration) only ever
    adds time. Runs the training engine, which reseeds torch's global generator: call it in a
    worker or a child process (``calibrate_in_child``), never in the web server.
    """
    dev = torch.device(device)
    records = []
    for spec, batch in zip(probe_specs(), PROBE_BATCHES, strict=True):
        work = run_work(spec, _Config(batch), DataSizes(batch * (PROBE_STEPS + 2), 0,
                                                        spec.input_shape, spec.num_classes))
        seconds = min(_probe_seconds(spec, batch, dev, precision)
                      for _ in range(max(1, repeats)))
        records.append(Record(work.step_features(), seconds, "probe"))
    return records


@dataclass(frozen=True)
class _Config:
    """The fields of a TrainConfig that ``run_work`` reads (probes need no more)."""

    batch_size: int
    epochs: int = 1
    max_steps: int | None = None


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CALIBRATION_VERSION:
        return {}
    return data


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)  # readers see the old file or the new one, never half of one


@contextlib.contextmanager
def _locked(path: Path):  # type: ignore[no-untyped-def]
    """Several workers update the file: read-modify-write under an advisory file lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _lock, open(path.with_name(f"{path.name}.lock"), "a") as handle:
        try:
            import fcntl
        except ImportError:  # not on POSIX: the thread lock alone
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _entry_records(entry: dict[str, Any], kind: str) -> list[Record]:
    out = []
    for r in entry.get(kind, []):
        with contextlib.suppress(TypeError, ValueError, KeyError):
            features, seconds = tuple(float(x) for x in r["features"]), float(r["seconds"])
            if len(features) == 4 and seconds > 0 and all(map(math.isfinite, features)):
                out.append(Record(features, seconds, "probe" if kind == "probes" else "run"))
    return out


def load_throughput(device: str | torch.device = "cpu", precision: str = "fp32",
                    path: str | Path | None = None, calibrate_if_missing: bool = True,
                    in_child: bool = False, busy: bool = False) -> Throughput | None:
    """This device's throughput from the calibration file, calibrating once when it has none.

    Args:
        in_child: calibrate in a child process (the web server: the probes train, which
            reseeds torch's generator and competes with the pages for this process's cores);
            the child writes the file, this process reads it.
        busy: this server's workers fill the device's slots now (``explorer.estimate.slow_down``:
            their load is not a queued run's).
    """
    file = Path(path) if path else calibration_path()
    key = device_key(device, precision)
    entry = _read(file).get("devices", {}).get(key, {})
    probes = _entry_records(entry, "probes")
    if _stale(entry, probes) and calibrate_if_missing and in_child:
        with _child_lock:  # a second caller waits for the first's child instead of starting one
            entry = _read(file).get("devices", {}).get(key, {})
            probes = _entry_records(entry, "probes")
            if _stale(entry, probes):
                calibrate_in_child(device, precision, file)
                entry = _read(file).get("devices", {}).get(key, {})
                probes = _entry_records(entry, "probes")
    if _stale(entry, probes):
        if not calibrate_if_missing:
            return None
        probes = calibrate(device, precision)
        entry = {"torch": torch.__version__, "probe_version": PROBE_VERSION,
                 "calibrated_at": _now(), "reference_s": measure_reference(device),
                 "probes": [_record_json(r) for r in probes], "runs": entry.get("runs", [])}
        try:
            with _locked(file):
                data = _read(file) or {"version": CALIBRATION_VERSION, "devices": {}}
                entry["runs"] = data["devices"].get(key, {}).get("runs", entry["runs"])
                data["devices"][key] = entry
                _write(file, data)
        except OSError:  # a read-only store: the estimate still works, once per process
            log.warning("could not write the calibration file %s", file, exc_info=True)
    share = 1.0
    if torch.device(device).type == "cpu":
        reference = entry.get("reference_s")
        valid = isinstance(reference, float) and math.isfinite(reference) and reference > 0
        share = slow_down(reference, busy=busy) if valid else cpu_share()
    return Throughput(key, probes + _entry_records(entry, "runs"), entry.get("calibrated_at", ""),
                      share)


def measure_reference(device: str | torch.device = "cpu", repeats: int = PROBE_REPEATS
                      ) -> float | None:
    """The reference kernel's CPU time per iteration (``idle_clock``), the fastest of
    ``repeats``, measured beside the probes: later, its wall time over this is the slow-down a
    run sees (``explorer.estimate.slow_down``). None off the CPU."""
    if torch.device(device).type != "cpu":
        return None
    return min(reference_seconds(clock=idle_clock) for _ in range(max(1, repeats)))


def _stale(entry: dict[str, Any], probes: list[Record]) -> bool:
    """True when a device's entry lacks this version's probes (another torch, older probes)."""
    return (len(probes) != len(PROBE_BATCHES) or entry.get("torch") != torch.__version__
            or entry.get("probe_version") != PROBE_VERSION)


def calibrate_in_child(device: str | torch.device, precision: str, path: str | Path,
                       timeout: float = 300.0) -> None:
    """Calibrate in a fresh process with this one's torch threads; it writes ``path``.

    A failure is logged, never raised: the caller then calibrates itself.
    """
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    env = os.environ | {"PYTHONPATH": os.pathsep.join(
        p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)}
    cmd = [sys.executable, "-m", "explorer.calibration", "--device", str(device),
           "--precision", precision, "--threads", str(torch.get_num_threads()),
           "--path", str(path)]
    try:
        subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                       timeout=timeout, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("calibrating in a child process failed (%s); calibrating here", exc)


def record(device: str | torch.device, precision: str, work: Work, step_seconds: float,
           eval_seconds: float | None = None, path: str | Path | None = None,
           share: float | None = None) -> None:
    """Keep a finished run's measured seconds per step (and per test pass) to refine the fit.

    Seconds are kept as on an idle machine: divided by ``share``, the slow-down the run saw
    (its wall time over its ``idle_clock`` time on a CPU; 1 on a GPU). Without it, a CPU run's
    slow-down is measured as it ends (``cpu_share``), a rougher guess.
    """
    file = Path(path) if path else calibration_path()
    if share is None:
        share = cpu_share() if torch.device(device).type == "cpu" else 1.0
    share = max(1.0, float(share))
    new = [Record(work.step_features(), float(step_seconds) / share)]
    if eval_seconds is not None and work.test_images:
        new.append(Record(work.eval_features(), float(eval_seconds) / share))
    new = [r for r in new if r.seconds > 0 and math.isfinite(r.seconds)]
    if not new:
        return
    try:
        with _locked(file):
            data = _read(file) or {"version": CALIBRATION_VERSION, "devices": {}}
            entry = data["devices"].setdefault(device_key(device, precision), {})
            runs = entry.setdefault("runs", [])
            runs.extend(_record_json(r) for r in new)
            del runs[:-KEEP_RECORDS]
            _write(file, data)
    except OSError:  # refining is a bonus: a finished run never fails for it
        log.warning("could not record the run in %s", file, exc_info=True)


def record_result(work: Work, result: Any, path: str | Path | None = None,
                  idle_seconds: float | None = None) -> None:
    """``record`` from a ``TrainResult``: seconds per step and per test pass of its epochs.

    Args:
        idle_seconds: the run's ``idle_clock`` time (read it before and after ``train`` in the
            worker); with the result's wall time it gives the slow-down the run saw.
    """
    epochs = [m for m in result.epoch_metrics if m.get("images_per_s")]
    if not epochs:
        return
    step = statistics.median(work.batch_size / m["images_per_s"] for m in epochs)
    evals = [m["eval_time_s"] for m in epochs if m.get("test_acc") is not None]
    elapsed = float(getattr(result, "elapsed_s", 0.0) or 0.0)
    share = elapsed / idle_seconds if idle_seconds and elapsed > 0 else None
    record(result.device, result.precision, work, step,
           statistics.median(evals) if evals else None, path, share)


def _record_json(r: Record) -> dict[str, Any]:
    return {"features": list(r.features), "seconds": r.seconds, "at": _now()}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def main(argv: list[str] | None = None) -> int:
    """``python -m explorer.calibration``: calibrate a device into a calibration file."""
    import argparse

    parser = argparse.ArgumentParser(description="calibrate this device's training speed")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--path")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_throughput(args.device, args.precision, args.path or None)
    return 0


__all__ = ["calibrate", "calibrate_in_child", "calibration_path", "device_key", "idle_clock",
           "load_throughput", "measure_reference", "probe_specs", "record", "record_result"]


if __name__ == "__main__":
    raise SystemExit(main())
