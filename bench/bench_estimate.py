"""Benchmark: how close the cost and memory estimates come to what a run measures on this machine.

Prints one JSON object. Time: a fresh calibration (explorer.calibration), then for each preset
(with a 10-way head, on the offline digits: 4,000 training and 1,000 test images, batch 128) the
estimated epoch time against a measured one. A measured epoch is the engine's own: ``train`` on
enough images for a full epoch (a fixed number of steps for the larger presets), the mean
seconds per step after the first (the first holds one-time set-up) times the steps of a full
epoch, plus the test pass (on a subset for the larger presets, scaled to the 1,000 images).

Each epoch is timed by two clocks and estimated three ways: ``ratio``, the page's estimate
before Start (the model times the slow-down ``slow_down`` measures then: the reference
kernel's wall time over its CPU time at calibration; ``cpu_share_before`` is the older measure,
wall over CPU time now, for comparison) against the wall clock; ``ratio_idle``, the time
model alone against the run's CPU time per thread (the run on an idle machine: this separates
the model's error from the machine's changing load); ``ratio_idle_refined``, the same after
refining with the other four presets' runs (leave one out, as a server refines from finished
runs). Goal: each ratio within a factor of 1.5.

Memory: for three presets (weights dominate in the first two, activations in NiN), the estimated
peak (explorer.footprint) against two measurements of a real run of a few steps through the
engine: the peak of torch's CPU allocator (torch.profiler's memory events, everything allocated
from the model's construction on) and the rise of the process's resident memory high-water mark
(VmHWM) in a fresh subprocess, which sees everything (oneDNN buffers, allocator slack) but also
the interpreter's own growth.

Timings are figures, never pass/fail; load averages before and after are in the output.

Usage: python bench/bench_estimate.py [--threads 1] [--precision auto] [--skip-time|--skip-memory]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from explorer.calibration import calibrate, device_key, idle_clock, measure_reference  # noqa: E402
from explorer.data import load_dataset  # noqa: E402
from explorer.estimate import (  # noqa: E402
    Record,
    Throughput,
    cpu_share,
    run_work,
    slow_down,
    with_classes,
)
from explorer.footprint import DataSizes, estimate_footprint  # noqa: E402
from explorer.models import build  # noqa: E402
from explorer.registry import get_preset  # noqa: E402
from explorer.training import TrainConfig, resolve_device, resolve_precision, train  # noqa: E402

# (preset, training steps measured (None: a full epoch), test images measured)
TIME_PRESETS = (
    ("course_lenet5", None, 1000),
    ("course_lenet", None, 1000),
    ("course_bn_lenet", None, 1000),
    ("course_resnet_3x4_28", 8, 256),
    ("course_vgg11_small", 4, 256),
)
MEMORY_PRESETS = (("course_lenet5", 128), ("course_resnet_3x4_28", 64), ("course_nin", 32))
BATCH = 128


def measure_epoch(name: str, steps: int | None, n_test: int, precision: str) -> dict:
    """One preset's measured epoch on the offline digits (scaled from ``steps`` steps).

    Timed twice: by the wall clock, and by ``idle_clock`` (CPU time per torch thread), which is
    what the same run takes on an idle machine and so what the time model itself predicts.
    """
    data = load_dataset()
    spec = with_classes(get_preset(name).spec, data.num_classes)
    full = run_work(spec, TrainConfig(batch_size=BATCH, epochs=1), DataSizes.of(data))
    steps = steps or full.steps_per_epoch
    sub = data.subset(steps * BATCH, n_test)
    stamps: list[tuple[float, float]] = []

    class Clock:
        def on_run_start(self, _ctx: object) -> None:
            stamps.append((time.perf_counter(), idle_clock()))

        def on_step_end(self, _ctx: object, _metrics: object) -> None:
            stamps.append((time.perf_counter(), idle_clock()))

        def on_epoch_end(self, _ctx: object, _metrics: object) -> None:
            stamps.append((time.perf_counter(), idle_clock()))

    config = TrainConfig(batch_size=BATCH, epochs=1, precision=precision, lr=0.01)
    train(build(spec), spec.input_shape, spec.num_classes, sub, config, [Clock()])
    scale = len(data.test_labels) / n_test
    out = {"spec": spec, "work": full, "steps_measured": steps, "test_images_measured": n_test}
    for clock, key in ((0, "wall"), (1, "idle")):
        t = [s[clock] for s in stamps]
        gaps = [b - a for a, b in zip(t[:-1], t[1:], strict=True)]
        step_gaps, eval_s = gaps[:-1], gaps[-1] * scale  # the last gap is the test pass
        step_s = statistics.mean(step_gaps[1:])  # the first step builds oneDNN's kernels once
        out[key] = {"step_s": step_s, "first_step_s": step_gaps[0], "eval_s": eval_s,
                    "epoch_s": full.steps_per_epoch * step_s + eval_s}
    return out


def time_figures(precision: str) -> dict:
    dev = resolve_device("cpu")
    t0 = time.perf_counter()
    probes = calibrate(dev, precision)
    reference = measure_reference(dev)
    calibration_s = time.perf_counter() - t0
    key = device_key(dev, precision)
    base = Throughput(key, probes)
    measured = {}
    for name, steps, n_test in TIME_PRESETS:
        # The slow-down the page measures before Start (and the older measure, for comparison).
        share_before = slow_down(reference, max_age_s=0)
        cpu_share_before = cpu_share(max_age_s=0)
        m = measure_epoch(name, steps, n_test, precision)
        m["share_before"], m["cpu_share_before"] = share_before, cpu_share_before
        measured[name] = m
    rows = []
    for name, m in measured.items():
        # Refined as a server refines from finished runs: the other presets' seconds as on an
        # idle machine (what explorer.calibration.record keeps), leaving this one out.
        others = [r for other, o in measured.items() if other != name
                  for r in (Record(o["work"].step_features(), o["idle"]["step_s"]),
                            Record(o["work"].eval_features(), o["idle"]["eval_s"]))]
        idle = base.epoch_seconds(m["work"])
        est = Throughput(key, probes, share=m["share_before"]).epoch_seconds(m["work"])
        refined_idle = Throughput(key, probes + others).epoch_seconds(m["work"])
        wall, cpu = m["wall"], m["idle"]
        rows.append({
            "preset": name, "input": list(m["spec"].input_shape),
            "macs_per_image": m["work"].macs_per_image,
            "steps_per_epoch": m["work"].steps_per_epoch, "steps_measured": m["steps_measured"],
            "measured_epoch_s": round(wall["epoch_s"], 2),
            "measured_step_s": round(wall["step_s"], 4),
            "measured_first_step_s": round(wall["first_step_s"], 3),
            "measured_test_pass_s": round(wall["eval_s"], 2),
            "load_share_before": round(m["share_before"], 2),
            "cpu_share_before": round(m["cpu_share_before"], 2),
            "load_share_measured": round(wall["epoch_s"] / cpu["epoch_s"], 2),
            "estimated_epoch_s": round(est, 2),
            "ratio": round(est / wall["epoch_s"], 3),
            "measured_idle_epoch_s": round(cpu["epoch_s"], 2),
            "estimated_idle_epoch_s": round(idle, 2),
            "ratio_idle": round(idle / cpu["epoch_s"], 3),
            "estimated_idle_epoch_s_refined": round(refined_idle, 2),
            "measured_idle_step_s": round(cpu["step_s"], 5),
            "estimated_idle_step_s": round(base.seconds(m["work"].step_features()), 5),
            "measured_idle_test_pass_s": round(cpu["eval_s"], 3),
            "estimated_idle_test_pass_s": round(base.seconds(m["work"].eval_features()), 3),
            "ratio_idle_refined": round(refined_idle / cpu["epoch_s"], 3),
        })

    def within(key: str) -> int:
        return sum(1 for r in rows if 1 / 1.5 <= r[key] <= 1.5)

    c = base.coefficients
    return {"calibration_s": round(calibration_s, 2), "reference_s": reference,
            "coefficients": {"step_s": c[0], "layer_s": c[1],
                             "macs_per_s": 1 / c[2] if c[2] else None,
                             "elements_per_s": 1 / c[3] if c[3] else None},
            "presets": rows, "of": len(rows),
            "within_1.5": within("ratio"), "within_1.5_idle": within("ratio_idle"),
            "within_1.5_idle_refined": within("ratio_idle_refined")}


def _peak_allocator_bytes(name: str, batch: int, precision: str) -> int:
    """Peak of torch's CPU allocator over model construction and a 3-step run."""
    from torch.profiler import ProfilerActivity, profile

    data = load_dataset().subset(3 * batch, 256)
    spec = with_classes(get_preset(name).spec, data.num_classes)
    config = TrainConfig(batch_size=batch, epochs=1, precision=precision, lr=0.01)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        train(build(spec), spec.input_shape, spec.num_classes, data, config)
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    level = peak = 0
    for _t, nbytes in events:
        level += nbytes
        peak = max(peak, level)
    return peak


def _rss_child(name: str, batch: int, precision: str) -> None:
    """In a fresh process: the rise of VmHWM over a 3-step run, printed as JSON."""
    data = load_dataset().subset(3 * batch, 256)
    spec = with_classes(get_preset(name).spec, data.num_classes)
    config = TrainConfig(batch_size=batch, epochs=1, precision=precision, lr=0.01)
    status = Path("/proc/self/status")

    def kib(field: str) -> int:
        line = next(x for x in status.read_text().splitlines() if x.startswith(field))
        return int(line.split()[1]) * 1024

    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = kib("VmRSS:")
    train(build(spec), spec.input_shape, spec.num_classes, data, config)
    print(json.dumps({"rss_rise_bytes": kib("VmHWM:") - before}))


def memory_figures(precision: str, threads: int) -> list[dict]:
    rows = []
    for name, batch in MEMORY_PRESETS:
        data = load_dataset()
        spec = with_classes(get_preset(name).spec, data.num_classes)
        sizes = DataSizes(3 * batch, 256, data.image_shape, data.num_classes)
        fp = estimate_footprint(spec, TrainConfig(batch_size=batch), sizes, precision)
        allocator = _peak_allocator_bytes(name, batch, precision)
        child = subprocess.run(
            [sys.executable, __file__, "--rss-child", name, str(batch), precision,
             "--threads", str(threads)], capture_output=True, text=True, check=True)
        rss = json.loads(child.stdout.strip().splitlines()[-1])["rss_rise_bytes"]
        est = fp.peak_bytes - fp.data_bytes  # both load the dataset before they count
        rows.append({"preset": name, "batch": batch, "precision": precision,
                     "estimated_peak_mb": round(est / 1e6, 1),
                     "of_which_activations_mb": round(fp.activations_bytes / 1e6, 1),
                     "measured_allocator_peak_mb": round(allocator / 1e6, 1),
                     "ratio_allocator": round(est / allocator, 3),
                     "measured_rss_rise_mb": round(rss / 1e6, 1),
                     "ratio_rss": round(est / rss, 3)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--rss-child", nargs=3, metavar=("PRESET", "BATCH", "PRECISION"))
    parser.add_argument("--skip-time", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.rss_child:
        name, batch, precision = args.rss_child
        _rss_child(name, int(batch), precision)
        return
    precision = resolve_precision(args.precision, torch.device("cpu"))
    load_before = os.getloadavg()
    out = {"benchmark": "estimate", "device": "cpu", "cpu": platform.processor() or
           platform.machine(), "threads": args.threads, "precision": precision,
           "torch": torch.__version__, "cores": os.cpu_count(),
           "load_average_before": [round(x, 2) for x in load_before]}
    if not args.skip_time:
        out["time"] = time_figures(precision)
    if not args.skip_memory:
        out["memory"] = memory_figures(precision, args.threads)
    out["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
