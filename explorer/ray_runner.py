"""Runs on a Ray cluster: a dispatcher claims queued runs from the store and submits Ray tasks.

The store stays the single source of truth (Ray keeps no queued task across a restart): the
dispatcher claims a run only when the cluster has the resources to start it now, so the rest
wait in the store with their queue position. Each task opens the store itself and trains the
run with the local workers' code (``explorer.worker.Worker.execute``: its watcher beats, and
stops the run within a second). A task whose worker process or node dies leaves its run failed
with a sentence, or queued again once (``RunStore.settle_worker``); a dispatcher that dies takes
its tasks with it (Ray ends a driver's tasks) and stops beating, so ``RunStore.reap`` on any
server queues its runs again.

Started by the app instead of the local worker pool when ``$RAY_ADDRESS`` is set, or by hand:
``python -m explorer ray-dispatch``.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.exceptions as rex

from explorer import settings
from explorer.errors import ConfigError
from explorer.pool import OOM_HINT, Slot
from explorer.runs import RunStore

log = logging.getLogger(__name__)
TICK_S = 0.25  # how often the dispatcher collects, claims and submits
BEAT_S = 1.0  # how often it beats for its tasks (a task not started yet beats nowhere else)
STOP_FALLBACK_S = 2.0  # a stop the task's watcher has not carried out by then is forced
REAP_EVERY = 40  # ticks between sweeps for runs of dead workers elsewhere (10 s)
MIN_GPU_FRACTION = 0.1  # the smallest share of a GPU a run asks for
GPU_FRACTION_ENV = "EXPLORER_RAY_GPU_FRACTION"  # share of a GPU for a run of unknown footprint
GPU_MEMORY_ENV = "EXPLORER_RAY_GPU_MEMORY_GB"  # memory of one GPU (else asked of the cluster)
CPUS_ENV = "EXPLORER_RAY_CPUS"  # CPUs a run asks for
NODE_GONE = "the machine training it left the Ray cluster"
WORKER_GONE = "its Ray worker process died"


@dataclass(frozen=True)
class Settings:
    """What one run asks of the cluster (from the environment, see ``Settings.from_env``)."""

    gpu_fraction: float = 0.25  # share of a GPU for a run whose footprint is unknown
    gpu_memory: int | None = None  # bytes of one GPU's memory (None: asked of the cluster)
    cpus: float = 1.0  # CPUs per run (its torch threads)

    @classmethod
    def from_env(cls) -> Settings:
        """$EXPLORER_RAY_GPU_FRACTION, $EXPLORER_RAY_GPU_MEMORY_GB and $EXPLORER_RAY_CPUS."""
        memory = float(settings.read(GPU_MEMORY_ENV) or 0.0)
        return cls(gpu_fraction=float(settings.read(GPU_FRACTION_ENV)),  # type: ignore[arg-type]
                   gpu_memory=int(memory * 2**30) or None,
                   cpus=float(settings.read(CPUS_ENV)))  # type: ignore[arg-type]


def gpu_fraction(footprint: int | None, gpu_memory: int | None, default: float) -> float:
    """The share of one GPU a run asks for: its footprint over the GPU's memory, rounded up to
    a hundredth, at least MIN_GPU_FRACTION and at most a whole GPU; ``default`` when unknown."""
    if not footprint or not gpu_memory:
        return default
    share = math.ceil(footprint / gpu_memory * 100 - 1e-9) / 100
    return min(1.0, max(MIN_GPU_FRACTION, share))


def room(free: dict[str, float], settings: Settings, gpu_memory: int | None,
         gpus: bool) -> tuple[bool, int | None]:
    """Whether one more run can start now on resources ``free``, and the largest footprint
    (bytes) it may have (None: any). On GPUs the free share must hold a run of unknown size
    (``settings.gpu_fraction``), since a claim cannot pass over such runs."""
    if free.get("CPU", 0.0) + 1e-9 < settings.cpus:
        return False, None
    if not gpus:
        return True, None
    share = free.get("GPU", 0.0)
    if share + 1e-9 < max(MIN_GPU_FRACTION, settings.gpu_fraction):
        return False, None
    if share < 1.0 and gpu_memory:
        return True, int(share * gpu_memory)
    return True, None


def runtime_env() -> dict[str, Any]:
    """The tasks' environment: this checkout's ``explorer`` package, shipped by Ray to every
    node (so the nodes need only the same Python packages), and the app's settings."""
    shipped = {k: v for k, v in os.environ.items()
               if k.startswith("EXPLORER_") and k != "EXPLORER_TEACHER_KEY"}
    return {"py_modules": [str(Path(__file__).resolve().parent)], "env_vars": shipped}


def check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """Refuse a ``host:port`` address where nothing listens, with a sentence: ray.init would
    retry for minutes, holding the page that started the server."""
    host, _, port = (address or "").rpartition(":")
    if not host or "/" in host or not port.isdigit():
        return  # auto, ray://…, or none: Ray finds or starts the cluster itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConfigError(f"the Ray cluster at {address} ($RAY_ADDRESS) does not answer "
                          f"({exc.strerror or exc}); start its head with `ray start --head` or "
                          f"unset RAY_ADDRESS to train on this machine.") from None


def absolute_location(location: str | Path) -> str:
    """A store location that means the same in a Ray worker: a file path made absolute."""
    text = str(location)
    return text if "://" in text else str(Path(text).resolve())


# ---- the task ---------------------------------------------------------------------------------
_DATASETS: OrderedDict = OrderedDict()  # kept by a Ray worker process across the runs it trains


def train_run(location: str, run: dict[str, Any], ident: str, device: str,
              threads: int) -> str:
    """Train one claimed run in a Ray worker, as a local worker would; returns its status."""
    import torch

    from explorer.worker import Worker

    torch.set_num_threads(max(1, threads))
    store = RunStore(location)
    try:
        Worker(store, device, ident, datasets=_DATASETS).execute(run)
        return store.get_run(int(run["id"]))["status"]
    finally:
        store.close()


def _gpu_memory() -> int:
    """Bytes of memory of the GPU this task was given."""
    from explorer.system import gpu_memory

    return gpu_memory()[0]


# Ray must not run a crashed task again by itself: the store decides (settle_worker). A GPU
# run gets a fresh worker process: CUDA keeps the GPU it first saw, whatever Ray assigns next,
# and the process's exit gives the GPU's memory back.
_train_remote = ray.remote(max_retries=0)(train_run)
_train_gpu_remote = ray.remote(max_retries=0, max_calls=1)(train_run)
_probe_remote = ray.remote(max_retries=0, num_cpus=0, num_gpus=0.01)(_gpu_memory)


def settle_task(store: RunStore, ident: str, error: BaseException | None) -> list[int]:
    """Settle a finished task's run if it is still running: a lost node queues it again once,
    any other death fails it with a sentence. Returns the ids settled."""
    if error is None:
        return store.settle_worker(ident, "its Ray task ended without a final status")
    if isinstance(error, rex.NodeDiedError | rex.LocalRayletDiedError | rex.ObjectLostError):
        return store.settle_worker(ident, NODE_GONE, requeue=True)
    if isinstance(error, rex.OutOfMemoryError):
        return store.settle_worker(ident, "Ray ended it because its machine ran low on memory",
                                   OOM_HINT)
    if isinstance(error, rex.WorkerCrashedError):
        return store.settle_worker(ident, WORKER_GONE, OOM_HINT)
    if isinstance(error, rex.TaskCancelledError):
        return store.settle_worker(ident, "its Ray task was cancelled")
    if isinstance(error, rex.RayTaskError):
        cause = error.cause if error.cause is not None else error
        return store.settle_worker(ident, f"its Ray task raised {type(cause).__name__}: "
                                          f"{str(cause).strip()[:200]}")
    return store.settle_worker(ident, f"Ray reported {type(error).__name__}")


# ---- the dispatcher ---------------------------------------------------------------------------
@dataclass
class _Task:
    run_id: int
    ident: str
    request: dict[str, float]  # CPU / GPU
    stop_seen: float | None = None  # when the dispatcher first saw a stop asked for
    forced: bool = False


class RayDispatcher:
    """Claims queued runs that the Ray cluster can start now and trains each as a Ray task.

    Args:
        store_location: the run store (a SQLite path, or a database URL that every node
            reaches: a SQLite file serves a one-machine cluster only).
        address: the cluster (``$RAY_ADDRESS``: ``host:6379``, or ``auto`` on a node).
        settings: what a run asks for (default: from the environment).
    """

    def __init__(self, store_location: str | Path, address: str | None = None,
                 settings: Settings | None = None) -> None:
        self.location = absolute_location(store_location)
        self.settings = settings or Settings.from_env()
        self.store = RunStore(self.location)
        self.address = address
        self.prefix = f"{socket.gethostname()}:ray{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.gpus = 0.0
        self.device_type = "cpu"
        self.slots = [Slot("cpu")]
        self.gpu_memory = self.settings.gpu_memory
        self._owns_ray = False
        self._count = 0
        self._tasks: dict[Any, _Task] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._ready = threading.Event()
        self._shutdown = threading.Event()
        self._failure: BaseException | None = None
        # Ray is joined from the dispatcher's own thread: the processes of a cluster that
        # ray.init starts die with the thread that started them (PR_SET_PDEATHSIG), and a
        # Streamlit script thread ends after every rerun.
        self._thread = threading.Thread(target=self._run, daemon=True, name="explorer-ray")
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            self.store.close()
            raise self._failure

    def _connect(self) -> None:
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            check_reachable(self.address)
            ray.init(address=self.address, runtime_env=runtime_env(), log_to_driver=False,
                     namespace="cnn-explorer", logging_level=logging.WARNING)
        self.gpus = float(ray.cluster_resources().get("GPU", 0.0))
        self.device_type = "cuda" if self.gpus > 0 else "cpu"
        # What the app's pages read: the device type runs may ask for (JobManager).
        self.slots = [Slot(self.device_type)]
        if "://" not in self.location and len([n for n in ray.nodes() if n["Alive"]]) > 1:
            log.warning("the run store %s is a file on this machine, but the Ray cluster has "
                        "several nodes: use a database every node reaches (EXPLORER_RUNS_DB)",
                        self.location)
        self.store.reap()  # runs left by a dispatcher or workers that are gone

    # ---- the loop ------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._connect()
        except BaseException as exc:
            self._failure = exc
            return
        finally:
            self._ready.set()
        self._loop()
        if self._owns_ray:
            self._shutdown.wait()  # the cluster lives until close() has used it
            ray.shutdown()

    def _loop(self) -> None:
        ticks, last_beat = 0, 0.0
        if self.gpus > 0 and self.gpu_memory is None:
            self.gpu_memory = self._probe()
        while not self._closed.wait(TICK_S):
            try:
                with self._lock:
                    self._collect()
                    if time.monotonic() - last_beat >= BEAT_S:
                        last_beat = time.monotonic()
                        self._beat()
                    self._dispatch()
                    ticks += 1
                    if ticks % REAP_EVERY == 0:
                        self.store.reap()
            except Exception:  # a busy store or a Ray hiccup: try again next tick
                log.exception("the Ray dispatcher could not finish a round")

    def _probe(self) -> int | None:
        """Ask a GPU node for its GPU's memory (None when it does not answer in a minute)."""
        try:
            return int(ray.get(_probe_remote.remote(), timeout=60))
        except Exception:
            log.warning("could not read the GPUs' memory; runs ask for %.2f of a GPU each (set "
                        "$%s)", self.settings.gpu_fraction, GPU_MEMORY_ENV)
            return None

    def _collect(self) -> None:
        """Settle the tasks that ended: their run is final already, or is settled now."""
        if not self._tasks:
            return
        done, _ = ray.wait(list(self._tasks), num_returns=len(self._tasks), timeout=0)
        for ref in done:
            task = self._tasks.pop(ref)
            try:
                ray.get(ref)
                error = None
            except rex.RayError as exc:
                error = exc
            ids = settle_task(self.store, task.ident, error)
            if ids:
                log.warning("run(s) %s settled after their Ray task ended (%s)", ids, error)

    def _beat(self) -> None:
        """Keep the runs of tasks alive in the store, and force a stop the task did not do."""
        now = time.monotonic()
        for ref, task in self._tasks.items():
            if not self.store.beat(task.run_id, task.ident):
                continue
            if task.stop_seen is None:
                task.stop_seen = now
            elif now - task.stop_seen >= STOP_FALLBACK_S and not task.forced:
                # Not started yet, or stuck: the run is stopped with what it measured.
                self.store.finish(task.run_id, task.ident, "stopped", None)
                ray.cancel(ref, force=True)
                task.forced = True

    def free(self) -> dict[str, float]:
        """CPUs and GPUs the cluster can give now (Ray's figure lags its newest tasks, so the
        dispatcher also subtracts what its own tasks hold)."""
        total, avail = ray.cluster_resources(), ray.available_resources()
        mine = {k: sum(t.request.get(k, 0.0) for t in self._tasks.values()) for k in ("CPU", "GPU")}
        return {k: max(0.0, min(avail.get(k, 0.0), total.get(k, 0.0) - mine[k]))
                for k in ("CPU", "GPU")}

    def _dispatch(self) -> None:
        """Claim and submit runs while the cluster has room for one more."""
        free = self.free()
        while not self._closed.is_set():
            fits, max_footprint = room(free, self.settings, self.gpu_memory,
                                       self.device_type == "cuda")
            if not fits:
                return
            self._count += 1
            ident = f"{self.prefix}-{self._count}"
            run = self.store.claim(ident, f"{self.device_type} (Ray)", self.device_type,
                                   max_footprint)
            if run is None:
                return
            request = {"CPU": self.settings.cpus}
            if self.device_type == "cuda":
                request["GPU"] = gpu_fraction(run.get("footprint"), self.gpu_memory,
                                              self.settings.gpu_fraction)
            self._submit(run, ident, request)
            free = {k: free[k] - request.get(k, 0.0) for k in free}

    def _submit(self, run: dict[str, Any], ident: str, request: dict[str, float]) -> None:
        run_id = int(run["id"])
        try:
            remote = _train_gpu_remote if request.get("GPU") else _train_remote
            ref = remote.options(
                name=f"explorer-run-{run_id}", num_cpus=request["CPU"],
                num_gpus=request.get("GPU", 0.0)).remote(
                self.location, run, ident, self.device_type, max(1, int(request["CPU"])))
        except Exception as exc:  # the cluster refused it: the run must not stay "running"
            self.store.settle_worker(ident, f"the Ray cluster did not take it ({exc})",
                                     requeue=True)
            raise
        self._tasks[ref] = _Task(run_id, ident, request)

    # ---- reading and closing -------------------------------------------------------------------
    def running(self) -> dict[int, str]:
        """The runs this dispatcher's tasks train: run id → worker id in the store."""
        with self._lock:
            return {t.run_id: t.ident for t in self._tasks.values()}

    def close(self, timeout: float = 10.0) -> None:
        """End the tasks (their runs are queued again for the next server) and disconnect."""
        self._closed.set()
        with self._lock:  # the loop is between rounds from here on
            tasks = dict(self._tasks)
            self._tasks.clear()
        for ref in tasks:
            ray.cancel(ref, force=True)
        if tasks:
            ray.wait(list(tasks), num_returns=len(tasks), timeout=timeout)
        for task in tasks.values():
            self.store.settle_worker(task.ident, "the server stopped", requeue=True)
        self.store.close()
        self._shutdown.set()
        self._thread.join(timeout)


def main(db: str | Path | None, address: str | None) -> int:
    """``python -m explorer ray-dispatch``: feed the store's queue to Ray until interrupted."""
    import signal

    from explorer.runs import default_store_path

    logging.basicConfig(level=logging.INFO, format="%(asctime)s ray-dispatch %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    dispatcher = RayDispatcher(db or default_store_path(), address or os.environ.get("RAY_ADDRESS"))
    log.info("%s feeding %s to the Ray cluster (%s)", dispatcher.prefix, dispatcher.location,
             dispatcher.device_type)
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        dispatcher.close()
    return 0
