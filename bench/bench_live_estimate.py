"""Benchmark: how steady the Train page's estimate is in a live server, before and after.

Prints one JSON object. The price of course_lenet5 on the offline digits (``explorer.admission
.price``, what the page shows as "about N s per epoch on this server"), sampled in four
conditions a class's server meets, each with a fresh measurement of the load:

- ``quiet``: nothing else runs;
- ``two_at_once``: two students press at the same moment (two threads of the server price);
- ``page_bursts``: another student's Build page analyses a ResNet-18 in the server for about
  0.3 s every second;
- ``own_run_training``: the server's own worker trains a long run on its one CPU slot (a run
  priced now waits in the queue, then trains alone: its true speed is the quiet one).

Each condition is priced by the server's method (``explorer.estimate.slow_down``: the fastest
of five windows of the reference kernel, one measurement at a time per process, and the figure
measured without the server's own runs while they fill the slots) and by the baseline, the
method before it (the median of three windows, measured by every caller at once, whatever
trains), kept here as ``baseline_slow_down``. Figures: each condition's median estimate over the
quiet median (goal: within 1.5 of it, except page_bursts, whose load a run does partly see), and
its largest over its smallest sample. Timings are figures, never pass/fail.

Usage: python bench/bench_live_estimate.py [--samples 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from explorer import calibration, estimate  # noqa: E402
from explorer.admission import price, slots_busy  # noqa: E402
from explorer.analysis import analyze  # noqa: E402
from explorer.data import OFFLINE, load_dataset  # noqa: E402
from explorer.footprint import DataSizes  # noqa: E402
from explorer.jobs import DataRef, JobManager  # noqa: E402
from explorer.pool import WorkerPool, default_slots  # noqa: E402
from explorer.registry import get_preset  # noqa: E402
from explorer.runs import RunStore  # noqa: E402
from explorer.training import TrainConfig  # noqa: E402

SPEC = get_preset("course_lenet5").spec
CONFIG = TrainConfig(epochs=20)


def baseline_slow_down(reference_s: float, sample_s: float = 0.2, max_age_s: float = 15.0,
                       busy: bool = False) -> float:
    """The method before: the median of three windows, by each caller, whatever trains."""
    step = estimate._reference_step()
    step()
    windows = []
    for _ in range(3):
        n, wall0 = 0, time.perf_counter()
        while time.perf_counter() - wall0 < sample_s / 3 or n < 2:
            step()
            n += 1
        windows.append((time.perf_counter() - wall0) / n)
    return min(100.0, max(0.25, statistics.median(windows) / reference_s))


class Pricer:
    """Prices the run as the page does (``busy`` from the store), by one of the two methods."""

    def __init__(self, store: RunStore, cal: Path, data: DataSizes) -> None:
        self.store, self.cal, self.data = store, cal, data

    def __call__(self, method: str) -> float:
        calibration.slow_down = estimate.slow_down if method == "server" else baseline_slow_down
        # Every sample measures anew (a page's figure lives 15 s); a figure kept for a busy
        # server stays.
        for key, (_at, value) in list(estimate._slow_cache.items()):
            estimate._slow_cache[key] = (-1e9, value)
        busy = slots_busy(self.store, "cpu", 1)
        return price(SPEC, CONFIG, self.data, "cpu", 1, self.cal, busy).epoch_s


def sample(pricer: Pricer, method: str, n: int, together: int = 1) -> list[float]:
    out: list[float] = []
    for _ in range(n):
        threads = [threading.Thread(target=lambda: out.append(pricer(method)))
                   for _ in range(together)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(0.5)
    return out


def page_bursts(stop: threading.Event) -> None:
    spec = get_preset("resnet18").spec
    while not stop.is_set():
        analyze(spec)
        stop.wait(1.0)


def figures(samples: dict[str, dict[str, list[float]]]) -> dict:
    out: dict = {}
    for method, by_condition in samples.items():
        quiet = statistics.median(by_condition["quiet"])
        out[method] = {cond: {"median_over_quiet": round(statistics.median(v) / quiet, 2),
                              "largest_over_smallest": round(max(v) / min(v), 2),
                              "epoch_s": [round(x, 3) for x in v]}
                       for cond, v in by_condition.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=5)
    args = parser.parse_args()
    n = args.samples
    data = DataSizes.of(load_dataset(OFFLINE))
    samples: dict[str, dict[str, list[float]]] = {"server": {}, "baseline": {}}
    load = {"before": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "runs.sqlite"
        cal = calibration.calibration_path(db)
        store = RunStore(db)
        calibration.load_throughput("cpu", "fp32", cal, in_child=True)  # the server's warm-up
        pricer = Pricer(store, cal, data)
        for method in ("baseline", "server"):
            samples[method]["quiet"] = sample(pricer, method, n)
            samples[method]["two_at_once"] = sample(pricer, method, (n + 1) // 2, together=2)
            stop = threading.Event()
            burst = threading.Thread(target=page_bursts, args=(stop,), daemon=True)
            burst.start()
            samples[method]["page_bursts"] = sample(pricer, method, n)
            stop.set()
            burst.join()
        slots = [s for s in default_slots() if s.device == "cpu"][:1]
        pool = WorkerPool(db, slots)
        manager = JobManager(store, ["cpu"])
        try:
            run = manager.submit("long run", SPEC.to_dict(), TrainConfig(epochs=50),
                                 DataRef(OFFLINE))
            while manager.get(run).status != "running" or not manager.get(run).step:
                time.sleep(0.5)
            for method in ("server", "baseline"):
                samples[method]["own_run_training"] = sample(pricer, method, n)
            manager.stop(run)
        finally:
            pool.close()
            store.close()
    load["after"] = os.getloadavg()[0]
    print(json.dumps({"bench": "live_estimate", "model": "course_lenet5, offline digits",
                      "cores": os.cpu_count(), "load_average": load,
                      "goal_median_over_quiet": 1.5, **figures(samples)}, indent=1))


if __name__ == "__main__":
    main()
