"""Benchmark: what the BN lab's statistics recorder costs inside the real training engine.

Prints one JSON object per model. Each model trains through ``explorer.training.train`` on the
offline digits with no recorder and with ``explorer.bn_lab.StoredBNRecorder`` (which also saves
itself and end-of-epoch activation histograms into a run store) at several ``every``, the
configurations interleaved ``--repeats`` times so that other processes disturb all alike. The
cost is measured in *process CPU time* per training step (``time.process_time``, one torch
thread), which other processes on a shared machine barely disturb; wall-clock images/s are
printed too. Also prints what ``explorer.bn_lab.choose_every`` picks for the run and the bytes
the statistics take. Timings are figures, never pass/fail.

Usage: python bench/bench_bn_recorder.py [--repeats 5] [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from explorer.bn.stored import StoredBNRecorder, choose_every  # noqa: E402
from explorer.data import load_dataset  # noqa: E402
from explorer.models import build  # noqa: E402
from explorer.registry import get_preset  # noqa: E402
from explorer.runs import RunStore  # noqa: E402
from explorer.training import TrainConfig, train  # noqa: E402


class _Clock:
    """Training callback: CPU and wall seconds from the first step's end to the last's."""

    def on_step_end(self, ctx, metrics) -> None:
        if ctx.step == 1:
            self.cpu0, self.wall0 = time.process_time(), time.perf_counter()
        self.cpu1, self.wall1, self.steps = time.process_time(), time.perf_counter(), ctx.step - 1


def bench(preset: str, batch: int, steps: int, everies: list[int], repeats: int) -> dict:
    spec = get_preset(preset).spec
    data = load_dataset("offline-mnist")
    store = RunStore(Path(tempfile.mkdtemp()) / "runs.sqlite")
    config = TrainConfig(optimizer="sgd", lr=0.05, momentum=0.0, batch_size=batch, epochs=1000,
                         max_steps=steps + 1, metrics_every=10, seed=0)
    names = ["none", *(f"every={k}" for k in everies)]
    cpu: dict[str, list[float]] = {n: [] for n in names}
    wall: dict[str, list[float]] = {n: [] for n in names}
    sizes: dict[str, int] = {}
    for rep in range(repeats + 1):  # the first round warms up and is not counted
        order = names[rep % len(names):] + names[:rep % len(names)]
        for name in order:
            clock = _Clock()
            callbacks: list[object] = []
            rec = None
            if name != "none":
                run_id = store.create_run(name, spec.to_dict(), config)
                rec = StoredBNRecorder(store, run_id, every=int(name.split("=")[1]))
                callbacks.append(rec)
            train(build(spec), spec.input_shape, spec.num_classes, data, config,
                  callbacks=[*callbacks, clock], device="cpu")
            if rep:
                cpu[name].append((clock.cpu1 - clock.cpu0) / clock.steps)
                wall[name].append((clock.wall1 - clock.wall0) / clock.steps)
            if rec is not None:
                sizes[name] = rec.nbytes
    base = statistics.median(cpu["none"])
    out = {
        "model": preset, "input": [batch, *spec.input_shape], "device": "cpu",
        "threads": torch.get_num_threads(), "timed_steps": steps, "repeats": repeats,
        "cpu_ms_per_step_no_recorder": round(1000 * base, 2),
        "images_per_s_no_recorder_wall": round(batch / statistics.median(wall["none"]), 1),
    }
    for name in names[1:]:
        t = statistics.median(cpu[name])
        out[name] = {"cpu_ms_per_step": round(1000 * t, 2),
                     "overhead_pct_cpu": round(100 * (t / base - 1), 2),
                     "images_per_s_wall": round(batch / statistics.median(wall[name]), 1),
                     "stats_bytes": sizes[name]}
    probe = StoredBNRecorder(store, None)
    probe.attach(build(spec))
    channels = sum(probe.layers.values())
    out["bn_layers"], out["channels"] = len(probe.layers), channels
    out["choose_every"] = {n: choose_every(n, channels) for n in (75, 2000, 20000)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=30, help="timed training steps per run")
    a = p.parse_args()
    torch.set_num_threads(1)
    print(json.dumps({"machine": platform.processor() or platform.machine(),
                      "torch": torch.__version__}))
    print(json.dumps(bench("course_bn_lenet", 256, a.steps, [1, 5, 50], a.repeats)))
    print(json.dumps(bench("course_resnet18", 16, max(4, a.steps // 6), [1, 5], a.repeats)))


if __name__ == "__main__":
    main()
