"""The job manager: a queue of training runs and one worker thread per device.

One manager per server (the page keeps it in ``st.cache_resource``). When a whole class presses
Start at once, runs queue instead of fighting over the GPU; each student can ask their place in
the queue, reattach after a page reload by job id (the run id in the store), and stop their run.
Workers never touch streamlit: they write metrics to the run store and to a lock-protected
in-memory buffer that a page reads cheaply. A failing run (GPU out-of-memory included) is marked
failed with its message; the manager and the other runs carry on.
"""

from __future__ import annotations

import collections
import gc
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from explorer.data import ImageDataset
from explorer.errors import ConfigError
from explorer.runs import FINAL, RunStore, StoreCallback
from explorer.training import TrainConfig, resolve_device, train

log = logging.getLogger(__name__)
SHUTDOWN_MESSAGE = "the server shut down before this run started."


def default_devices() -> list[str]:
    """Every CUDA GPU, else Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        return ["mps"]
    return ["cpu"]


@dataclass(frozen=True)
class JobSnapshot:
    """A job as a page sees it: status, place in the queue and the metrics measured so far."""

    job_id: int
    name: str
    status: str  # queued | running | completed | stopped | failed | interrupted
    error: str | None
    queue_position: int | None  # 1 = next to start; None unless queued
    device: str | None
    step: int  # optimizer steps reported so far
    total_steps: int | None
    step_metrics: tuple[dict[str, Any], ...]
    epoch_metrics: tuple[dict[str, Any], ...]
    stopping: bool = False  # running, with a stop asked for: the step in flight ends first

    @property
    def done(self) -> bool:
        """True once the job can no longer change."""
        return self.status in FINAL


class MetricsBuffer:
    """A run's step and epoch metrics in memory, filled as a training callback, read under a lock.

    A page polls ``read()`` a few times a second; it copies only tuples of references, and the
    lock is held for the append or the copy, never while training.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._total_steps: int | None = None
        self._steps: list[dict[str, Any]] = []
        self._epochs: list[dict[str, Any]] = []

    def on_run_start(self, ctx: Any) -> None:
        """Remember the run's total number of steps (for a progress bar)."""
        with self._lock:
            self._total_steps = ctx.total_steps

    def on_step_end(self, ctx: Any, metrics: Mapping[str, Any] | None) -> None:
        """Keep the reported step metrics (None between reports)."""
        if metrics is not None:
            row = dict(metrics)
            with self._lock:
                self._steps.append(row)

    def on_epoch_end(self, ctx: Any, metrics: Mapping[str, Any]) -> None:
        """Keep the epoch metrics."""
        row = dict(metrics)
        with self._lock:
            self._epochs.append(row)

    def read(self) -> tuple[int | None, tuple[dict[str, Any], ...], tuple[dict[str, Any], ...]]:
        """(total_steps, step rows, epoch rows) as they stand; treat the rows as read-only."""
        with self._lock:
            return self._total_steps, tuple(self._steps), tuple(self._epochs)


class _Job:
    """A queued or running job; status, error and device change only under the manager's lock."""

    def __init__(self, job_id: int, name: str, config: TrainConfig,
                 model_fn: Callable[[], nn.Module], input_shape: tuple[int, int, int],
                 dataset: ImageDataset | Callable[[], ImageDataset], num_classes: int | None,
                 callbacks: Sequence[object]) -> None:
        self.id, self.name, self.config = job_id, name, config
        self.model_fn, self.input_shape, self.dataset = model_fn, input_shape, dataset
        self.num_classes, self.callbacks = num_classes, tuple(callbacks)
        self.stop_event = threading.Event()
        self.buffer = MetricsBuffer()
        self.status: str = "queued"
        self.error: str | None = None
        self.device: str | None = None


class JobManager:
    """A thread-safe queue of training jobs with ``concurrency`` worker threads per device.

    Args:
        store: the run store the workers write to (a job id is the run id there).
        devices: the devices to run on, e.g. ["cuda:0", "cuda:1"]; ``default_devices()``.
        concurrency: worker threads per device (1 keeps a GPU to one run at a time; with more,
            concurrent runs share PyTorch's global RNG, so dropout stops being reproducible).
        keep_finished: finished jobs whose buffers stay in memory; older ones are read back
            from the store.
    """

    def __init__(self, store: RunStore, devices: Sequence[str] | None = None,
                 concurrency: int = 1, keep_finished: int = 100) -> None:
        if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
            raise ConfigError(f"concurrency must be a whole number of at least 1, got "
                              f"{concurrency!r}.")
        self.store = store
        self.devices = [str(resolve_device(d)) for d in (devices or default_devices())]
        self.keep_finished = keep_finished
        self._cond = threading.Condition()
        self._jobs: dict[int, _Job] = {}
        self._queue: list[_Job] = []
        self._finished: collections.deque[int] = collections.deque()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, args=(dev,), daemon=True,
                             name=f"explorer-worker-{dev}-{k}")
            for dev in self.devices for k in range(concurrency)]
        for t in self._threads:
            t.start()

    # ---- the page's side ------------------------------------------------------------------
    def submit(self, name: str, spec: Mapping[str, Any], config: TrainConfig | Mapping[str, Any],
               model_fn: Callable[[], nn.Module], input_shape: Sequence[int],
               dataset: ImageDataset | Callable[[], ImageDataset],
               num_classes: int | None = None, callbacks: Sequence[object] = ()) -> int:
        """Queue a training run and return its job id (also its run id in the store).

        Args:
            spec: the model spec as a dict, stored with the run.
            model_fn: builds the model in the worker, so queued jobs hold no weights.
            dataset: an ImageDataset, or a function that loads one in the worker.
            num_classes: the model's outputs; defaults to the dataset's classes.
            callbacks: extra training callbacks (e.g. a batch-norm statistics recorder).
        """
        if not isinstance(config, TrainConfig):
            config = TrainConfig.from_dict(config)
        if not callable(model_fn):
            raise ConfigError("model_fn must be a function that builds the model.")
        if not (isinstance(dataset, ImageDataset) or callable(dataset)):
            raise ConfigError("dataset must be an ImageDataset or a function that loads one.")
        try:
            c, h, w = (int(s) for s in input_shape)
        except (TypeError, ValueError):
            c = h = w = 0
        if min(c, h, w) < 1:
            raise ConfigError(f"input shape must be C×H×W, three positive whole numbers, got "
                              f"{input_shape!r}.")
        if config.device != "auto" and not any(self._fits(config, d) for d in self.devices):
            raise ConfigError(f"device {config.device!r} has no worker on this server (it "
                              f"trains on {', '.join(self.devices)}); choose auto.")
        with self._cond:
            if self._closed:
                raise ConfigError("the job manager is shut down; restart the server.")
            job_id = self.store.create_run(name, spec, config, status="queued")
            job = _Job(job_id, name, config, model_fn, (c, h, w), dataset, num_classes,
                       callbacks)
            self._jobs[job_id] = job
            self._queue.append(job)
            self._cond.notify_all()
        return job_id

    def queue_position(self, job_id: int) -> int | None:
        """1 for the next job to start, 2 for the one after...; None unless queued."""
        with self._cond:
            for i, job in enumerate(self._queue):
                if job.id == job_id:
                    return i + 1
        return None

    def get(self, job_id: int) -> JobSnapshot:
        """The job's status and metrics; after a restart they come from the run store."""
        with self._cond:
            job = self._jobs.get(job_id)
            position = next((i + 1 for i, j in enumerate(self._queue) if j.id == job_id), None)
            if job is not None:
                status, error, device = job.status, job.error, job.device
                stopping = status == "running" and job.stop_event.is_set()
        if job is None:
            return self._from_store(job_id)
        total, steps, epochs = job.buffer.read()
        return JobSnapshot(job.id, job.name, status, error, position, device,
                           steps[-1]["step"] if steps else 0, total, steps, epochs, stopping)

    def _from_store(self, job_id: int) -> JobSnapshot:
        run = self.store.get_run(job_id)
        frame = self.store.metrics(job_id)

        def rows(kind: str) -> tuple[dict[str, Any], ...]:
            part = frame[frame["kind"] == kind].drop(columns="kind")
            part = part.astype(object).where(part.notna(), None)
            return tuple(part.to_dict("records"))

        steps, epochs = rows("step"), rows("epoch")
        return JobSnapshot(job_id, run["name"], run["status"], run["error"], None, None,
                           int(steps[-1]["step"]) if steps else 0, None, steps, epochs)

    def jobs(self) -> list[JobSnapshot]:
        """Snapshots of the jobs in memory (queued, running and recently finished)."""
        with self._cond:
            ids = list(self._jobs)
        return [self.get(i) for i in ids]

    def stop(self, job_id: int) -> bool:
        """Stop a job: a queued one leaves the queue, a running one stops within a step.

        Returns False when the job had already finished.
        """
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None:
                self.store.get_run(job_id)  # an unknown id is an error, a finished one is not
                return False
            if job.status == "queued" and job in self._queue:
                self._queue.remove(job)
                self._finish(job, "stopped", None)
                return True
            if job.status == "running":
                job.stop_event.set()
                return True
            return False

    def wait(self, job_id: int, timeout: float | None = None) -> JobSnapshot:
        """Block until the job finishes (or the timeout passes); returns its snapshot."""
        with self._cond:
            job = self._jobs.get(job_id)
            if job is not None:
                self._cond.wait_for(lambda: job.status in FINAL, timeout=timeout)
        return self.get(job_id)

    def shutdown(self, wait: bool = True, timeout: float | None = 10.0) -> None:
        """Stop running jobs, mark queued ones interrupted and end the workers."""
        with self._cond:
            self._closed = True
            for job in self._queue:
                self._finish(job, "interrupted", SHUTDOWN_MESSAGE)
            self._queue.clear()
            for job in self._jobs.values():
                job.stop_event.set()
            self._cond.notify_all()
        if wait:
            for t in self._threads:
                t.join(timeout)

    # ---- the workers' side ----------------------------------------------------------------
    @staticmethod
    def _fits(config: TrainConfig, device: str) -> bool:
        return config.device == "auto" or torch.device(device).type == config.device

    def _finish(self, job: _Job, status: str, error: str | None) -> None:
        """Record a final status (caller holds self._cond)."""
        try:
            self.store.set_status(job.id, status, error)
        except Exception:  # the store must not take the manager down
            log.exception("could not record status %s for run %s", status, job.id)
        job.status, job.error = status, error
        self._finished.append(job.id)
        while len(self._finished) > self.keep_finished:
            self._jobs.pop(self._finished.popleft(), None)
        self._cond.notify_all()

    def _work(self, device: str) -> None:
        while True:
            with self._cond:
                job = None
                while not self._closed:
                    job = next((j for j in self._queue if self._fits(j.config, device)), None)
                    if job is not None:
                        break
                    self._cond.wait()
                if job is None:
                    return
                self._queue.remove(job)
                job.status, job.device = "running", device
            try:
                self.store.set_status(job.id, "running")
            except Exception:
                log.exception("could not mark run %s running", job.id)
            status, error = self._run(job, device)
            with self._cond:
                self._finish(job, status, error)

    def _run(self, job: _Job, device: str) -> tuple[str, str | None]:
        """Train one job; every exception becomes a failed status with its message."""
        model = None
        try:
            model = job.model_fn()
            dataset = job.dataset if isinstance(job.dataset, ImageDataset) else job.dataset()
            num_classes = job.num_classes or dataset.num_classes
            callbacks = [StoreCallback(self.store, job.id), job.buffer, *job.callbacks]
            result = train(model, job.input_shape, num_classes, dataset, job.config,
                           callbacks=callbacks, stop_event=job.stop_event, device=device)
            return result.status, None
        except torch.OutOfMemoryError as exc:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            return "failed", (f"the {device} ran out of memory; lower batch_size or the input "
                              f"size, or wait for other runs to finish ({first}).")
        except ConfigError as exc:
            return "failed", str(exc)
        except Exception as exc:
            log.exception("run %s failed", job.id)
            return "failed", f"{type(exc).__name__}: {exc}"
        finally:
            del model
            if torch.device(device).type == "cuda":
                gc.collect()
                torch.cuda.empty_cache()
