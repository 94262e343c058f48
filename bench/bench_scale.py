"""Benchmark: the engine's overhead per run, Ray tasks against the local worker pool.

The same short runs (course LeNet-5 on the offline digits, ``--steps`` optimizer steps) go
through the local worker pool (one worker process, ``explorer.pool``) and through a local Ray
cluster (a head started here, ``explorer.ray_runner.RayDispatcher``), each on its own SQLite
store. Each engine first trains one warm-up run (its worker starts and imports torch: the cold
start, reported apart), then:

- sequential: ``--runs`` runs one after another, each submitted when the last has finished.
  Latency is submit → completed as a page polling every 20 ms sees it. The engine's overhead per
  run is that latency minus the time the run itself reports for training and evaluation
  (``elapsed_s`` of its one epoch's row): queueing, the claim, loading the data and
  building the model, the store's writes and the page noticing the end. Subtracting the run's
  own figure keeps the noise of a shared machine out of the overhead;
- batch: ``--runs`` runs submitted at once; the wall time until all have completed, per run,
  and the same per-run overhead.

Both engines train one run at a time with ``--threads`` torch threads (one pool slot; Ray tasks
ask for that many CPUs on a cluster of that many), so only the engines differ. Prints one JSON
object. Timings are figures, never pass/fail.

Usage: python bench/bench_scale.py [--runs 5] [--steps 16] [--threads 2]
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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # before Ray is imported: offline

import torch  # noqa: E402

from explorer.data import OFFLINE  # noqa: E402
from explorer.jobs import DataRef, JobManager  # noqa: E402
from explorer.registry import get_preset  # noqa: E402
from explorer.runs import RunStore  # noqa: E402
from explorer.training import TrainConfig  # noqa: E402

SPEC = get_preset("course_lenet5").spec


def config(steps: int) -> TrainConfig:
    return TrainConfig(epochs=1, batch_size=64, max_steps=steps, metrics_every=4, device="cpu")


def wait_done(store: RunStore, ids: list[int], timeout: float = 600.0) -> float:
    """Poll as a page does (every 20 ms) until every run is final; returns the time."""
    end = time.monotonic() + timeout
    while any(store.get_run(i)["status"] in ("queued", "running") for i in ids):
        if time.monotonic() > end:
            raise TimeoutError(f"runs {ids} did not finish within {timeout:.0f} s")
        time.sleep(0.02)
    bad = [store.get_run(i) for i in ids if store.get_run(i)["status"] != "completed"]
    if bad:
        raise RuntimeError(f"run {bad[0]['id']} ended {bad[0]['status']}: {bad[0]['error']}")
    return time.perf_counter()


def measure(store: RunStore, steps: int, runs: int, tag: str) -> dict[str, Any]:
    """Warm-up, sequential and batch figures of one engine serving ``store``."""
    manager = JobManager(store, ["cpu"], max_active=None)

    def submit(name: str) -> int:
        return manager.submit(name, SPEC.to_dict(), config(steps), DataRef(OFFLINE),
                              session=f"bench-{tag}-{name}")

    def trained(job: int) -> float:
        """Seconds the run reports from its first step to the end of its evaluation."""
        frame = store.metrics(job)
        return float(frame[frame["kind"] == "epoch"].iloc[-1]["elapsed_s"])

    t0 = time.perf_counter()
    cold = wait_done(store, [submit("warm-up")]) - t0
    latencies, overheads, pickups = [], [], []
    for i in range(runs):
        t0 = time.perf_counter()
        job = submit(f"seq {i}")
        latencies.append(wait_done(store, [job]) - t0)
        overheads.append(latencies[-1] - trained(job))
        run = store.get_run(job)
        pickups.append(run["started_at"] - run["created_at"])  # queued → claimed
    t0 = time.perf_counter()
    ids = [submit(f"batch {i}") for i in range(runs)]
    batch = wait_done(store, ids) - t0
    batch_trained = sum(trained(i) for i in ids)
    return {"cold_start_s": round(cold, 3),
            "median_latency_s": round(statistics.median(latencies), 3),
            "median_trained_s": round(statistics.median(
                a - b for a, b in zip(latencies, overheads, strict=True)), 3),
            "overhead_per_run_s": [round(x, 3) for x in overheads],
            "median_overhead_per_run_s": round(statistics.median(overheads), 3),
            "median_pickup_s": round(statistics.median(pickups), 3),
            "batch_wall_s": round(batch, 3),
            "batch_overhead_per_run_s": round((batch - batch_trained) / runs, 3)}


def local_pool(steps: int, runs: int, threads: int, folder: Path) -> dict[str, Any]:
    from explorer.pool import Slot, WorkerPool

    path = folder / "pool.sqlite"
    pool = WorkerPool(path, [Slot("cpu", threads)])
    try:
        with RunStore(path) as store:
            return measure(store, steps, runs, "pool")
    finally:
        pool.close()


def ray_cluster(steps: int, runs: int, threads: int, folder: Path) -> dict[str, Any]:
    import ray

    from explorer.ray_runner import RayDispatcher, Settings, runtime_env

    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    t0 = time.perf_counter()
    ray.init(num_cpus=threads, include_dashboard=False, object_store_memory=100 * 10**6,
             runtime_env=runtime_env(), log_to_driver=False, _temp_dir=temp)
    head = time.perf_counter() - t0
    path = folder / "ray.sqlite"
    dispatcher = RayDispatcher(path, ray.get_runtime_context().gcs_address,
                               Settings(cpus=float(threads)))
    try:
        with RunStore(path) as store:
            return {"head_start_s": round(head, 3), **measure(store, steps, runs, "ray")}
    finally:
        dispatcher.close()
        ray.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pool = local_pool(args.steps, args.runs, args.threads, Path(tmp))
        on_ray = ray_cluster(args.steps, args.runs, args.threads, Path(tmp))
    import ray

    print(json.dumps({
        "what": "course_lenet5, offline digits, batch 64, one run at a time per engine",
        "runs": args.runs, "steps": args.steps, "threads": args.threads,
        "local_pool": pool, "ray": on_ray,
        "ray_version": ray.__version__, "torch": torch.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }, indent=2))


if __name__ == "__main__":
    main()
