"""A worker process: claims queued runs from the store and trains them, one at a time.

The app starts one per device slot (``explorer.pool``); ``python -m explorer worker`` starts one
by hand. On a Ray cluster a task trains one claimed run with the same ``Worker.execute``
(``explorer.ray_runner``). Training never runs in the web server, so nothing a page does (fx
tracing, seeding, an out-of-memory kill) can reach a run, and a run that kills its worker takes
only itself down.

A watcher thread beside the training beats for the run in the store and polls for a stop: a stop
ends the run after the step in flight, and a step that does not end within ``STOP_GRACE_S``
ends with the process (the run is marked stopped first, its finished epochs kept; the pool
starts a new worker in its slot).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from explorer.calibration import calibration_path, idle_clock, record_result
from explorer.data import ImageDataset, load_dataset_for_visitor
from explorer.errors import ConfigError
from explorer.estimate import run_work
from explorer.footprint import DataSizes
from explorer.runs import RunStore, StoreCallback
from explorer.system import resolve_device
from explorer.training import TrainConfig, train

log = logging.getLogger(__name__)
POLL_S = 0.5  # how often an idle worker looks for a queued run
WATCH_S = 0.2  # how often the watcher checks for a stop (each check wakes a thread beside
# the training threads; on a CPU every wake-up can stall them)
BEAT_S = 1.0  # how often it records a heartbeat
STOP_GRACE_S = 0.4  # a step may finish this long after a stop, then the process ends
STOP_EXIT = 3  # exit status of a worker that ended itself to stop a run


DatasetCache = OrderedDict[tuple[str, str, bool], ImageDataset]  # the two last used


def _gpu_budget(device: torch.device) -> int:
    """The bytes the runs on this GPU may hold together (``explorer.footprint.plan_gpu``)."""
    from explorer.footprint import plan_gpu

    return plan_gpu(int(torch.cuda.get_device_properties(device).total_memory)).budget


def worker_id() -> str:
    """host:pid:token, unique even when a pid is reused."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Worker:
    """Claims and trains runs until ``stop()`` or, when started by a pool, its parent is gone.

    Args:
        store: the run store (the queue).
        device: ``auto``, ``cpu``, ``cuda:1``…: where this worker trains.
        ident: the worker's id in the store (the pool passes one so that it can settle a dead
            worker's run).
        parent: the pool's pid; the worker ends when that process is gone.
        max_footprint: bytes of device memory one run may need on this worker (None: any).
        budget: bytes the runs on this worker's device (of this host) may hold together; a run
            starts only when its footprint fits beside them. Default: on a GPU its budget from
            the settings (``explorer.footprint.plan_gpu``; the pool sets it), on a CPU none.
        datasets: the loaded datasets to reuse (a Ray worker process keeps one cache across
            the runs it trains); None: the worker's own.
    """

    def __init__(self, store: RunStore, device: str = "auto", ident: str | None = None,
                 parent: int | None = None, max_footprint: int | None = None,
                 datasets: DatasetCache | None = None, budget: int | None = None) -> None:
        self.store = store
        self.device = resolve_device(device)
        if self.device.type == "cuda" and self.device.index is None:
            # One name per GPU in the store: its runs' footprints are summed by it.
            self.device = torch.device("cuda", 0)
        self.budget = budget
        self.ident = ident or worker_id()
        self.parent = parent
        self.max_footprint = max_footprint
        self._datasets: DatasetCache = OrderedDict() if datasets is None else datasets
        self._quit = threading.Event()

    def stop(self) -> None:
        """End the loop after the current run."""
        self._quit.set()

    def orphaned(self) -> bool:
        return self.parent is not None and os.getppid() != self.parent

    def serve(self, max_runs: int | None = None) -> int:
        """Claim and train runs; returns how many ran. An idle worker polls every POLL_S."""
        done = 0
        if self.budget is None and self.device.type == "cuda":
            self.budget = _gpu_budget(self.device)
        while not self._quit.is_set() and not self.orphaned():
            if max_runs is not None and done >= max_runs:
                break
            run = self.store.claim(self.ident, str(self.device), self.device.type,
                                   self.max_footprint, self.budget)
            if run is None:
                self._quit.wait(POLL_S)
                continue
            self.execute(run)
            done += 1
        return done

    # ---- one run ------------------------------------------------------------------------------
    def execute(self, run: dict[str, Any]) -> None:
        """Train one claimed run; every outcome ends in a final status with a sentence."""
        run_id = int(run["id"])
        stop_event = threading.Event()
        finished = threading.Event()
        watcher = threading.Thread(target=self._watch, args=(run_id, stop_event, finished),
                                   daemon=True, name=f"watch-run-{run_id}")
        watcher.start()
        try:
            status, error = self._train(run, stop_event)
        finally:
            finished.set()
        self.store.finish(run_id, self.ident, status, error)
        watcher.join()

    def _watch(self, run_id: int, stop_event: threading.Event,
               finished: threading.Event) -> None:
        """Beat, poll for a stop, and end a step that outlives the grace time."""
        last_beat = 0.0
        asked: float | None = None
        while not finished.wait(WATCH_S):
            now = time.monotonic()
            try:
                if now - last_beat >= BEAT_S:
                    must_stop = self.store.beat(run_id, self.ident)
                    last_beat = now
                else:
                    must_stop = self.store.stop_wanted(run_id, self.ident)
            except Exception:  # a busy store: try again next tick
                log.exception("worker %s: could not reach the store", self.ident)
                continue
            if self.orphaned():
                # The server is gone: its successor's workers train the run again.
                self.store.settle_worker(self.ident, "the server stopped", requeue=True)
                os._exit(STOP_EXIT)
            if must_stop and asked is None:
                asked = now
                stop_event.set()
            if asked is not None and now - asked >= STOP_GRACE_S and not finished.is_set():
                # The step in flight is long (a big model on the CPU): end it with the process.
                self.store.finish(run_id, self.ident, "stopped", None)
                logging.shutdown()
                os._exit(STOP_EXIT)

    def _dataset(self, job: dict[str, Any]) -> ImageDataset:
        key = (str(job.get("dataset", "")), str(job.get("data_dir") or ""),
               bool(job.get("download", False)))
        if key not in self._datasets:
            # The folder a visitor typed, confined to $EXPLORER_DATA_DIR as on the page.
            self._datasets[key] = load_dataset_for_visitor(key[0], key[1] or None, key[2])
            while len(self._datasets) > 2:
                self._datasets.popitem(last=False)
        self._datasets.move_to_end(key)
        return self._datasets[key]

    def _train(self, run: dict[str, Any], stop_event: threading.Event) -> tuple[str, str | None]:
        from explorer.jobs import job_callbacks  # the job's own callbacks (BN recorder, weights)
        from explorer.models import build
        from explorer.specs import spec_from_dict

        run_id, job = int(run["id"]), run["job"]
        model = None
        try:
            spec = spec_from_dict(run["spec"])
            config = TrainConfig.from_dict(run["config"])
            data = self._dataset(job)
            model = build(spec)
            store = self.store

            class Progress:
                def on_run_start(self, ctx: Any) -> None:
                    store.set_total_steps(run_id, ctx.total_steps)

            callbacks = [Progress(), StoreCallback(store, run_id),
                         *job_callbacks(store, run_id, job, spec)]
            idle0 = idle_clock()
            result = train(model, spec.input_shape, spec.num_classes, data, config,
                           callbacks=callbacks, stop_event=stop_event, device=self.device)
            self._calibrate(spec, config, data, result, idle_clock() - idle0)
            return result.status, None
        except torch.OutOfMemoryError as exc:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            return "failed", (f"the {self.device} ran out of memory; lower the batch size or the "
                              f"input size, or wait for other runs to finish ({first}).")
        except ConfigError as exc:
            return "failed", str(exc)
        except Exception as exc:
            log.exception("run %s failed", run_id)
            return "failed", f"the run stopped with an error: {type(exc).__name__}: {exc}"
        finally:
            del model
            if self.device.type == "cuda":
                torch.cuda.empty_cache()


    def _calibrate(self, spec: Any, config: TrainConfig, data: ImageDataset, result: Any,
                   idle_seconds: float) -> None:
        """Refine the server's time estimate with what this run measured (never fails a run)."""
        try:
            path = calibration_path(str(self.store.path))
            record_result(run_work(spec, config, DataSizes.of(data)), result, path, idle_seconds)
        except Exception:
            log.warning("could not record run timings for the estimate", exc_info=True)


def main(db: str | Path | None, device: str = "auto", ident: str | None = None,
         parent: int | None = None, threads: int | None = None,
         max_runs: int | None = None) -> int:
    """``python -m explorer worker``: serve the store's queue until interrupted."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(message)s")
    if threads:
        torch.set_num_threads(threads)
    store = RunStore(db)
    worker = Worker(store, device, ident, parent)
    log.info("%s serving %s on %s", worker.ident, store.display, worker.device)
    try:
        worker.serve(max_runs)
    except KeyboardInterrupt:
        pass
    finally:
        store.close()
    return 0
