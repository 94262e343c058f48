"""The local worker pool: one worker process per device slot, restarted when one dies.

The app starts one pool per server (``make run`` stays the only command). A monitor thread
watches the processes: a worker that ends while it trains a run (killed by the kernel for
memory, a crash) leaves that run failed with a sentence, and a new worker takes its slot. The
workers end with the server; a queued run stays in the store for the next one.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from explorer import settings
from explorer.footprint import MB
from explorer.runs import RunStore
from explorer.worker import STOP_EXIT

log = logging.getLogger(__name__)
MONITOR_S = 0.5  # how often the pool looks at its processes
REAP_EVERY = 20  # monitor ticks between sweeps for runs of workers gone elsewhere (10 s)
OOM_HINT = ("Most often the machine ran out of memory: lower the batch size or the input size, "
            "or choose a smaller model.")


@dataclass(frozen=True)
class Slot:
    """One worker's place: its device, the torch threads it may use, and its device's budget."""

    device: str
    threads: int | None = None
    budget: int | None = None  # bytes the runs on this device may hold together (a GPU's)


def default_slots(gpu_memory: Sequence[int] | None = None,
                  cores: int | None = None) -> list[Slot]:
    """Slots from the server's settings and devices.

    On a CPU: $EXPLORER_SLOTS workers (default 1, with every core). On each GPU: as many workers
    as its memory holds runs (``explorer.footprint.plan_gpu``: $EXPLORER_GPU_SLOTS, else sized
    from the memory, $EXPLORER_GPU_MEMORY_MB, and a typical run's footprint), each with one
    thread and the GPU's budget, so that a run starts only when it fits beside the others; by
    default at most one worker per core, the cores shared evenly among the GPUs.

    Args:
        gpu_memory: total bytes of each GPU (default: the GPUs this machine has, read without
            initialising CUDA here); ``[]`` for none.
        cores: CPU cores (default: this machine's).
    """
    from explorer.footprint import plan_gpu
    from explorer.system import gpu_memory as machine_gpus

    memory = list(machine_gpus() if gpu_memory is None else gpu_memory)
    cores = cores or os.cpu_count() or 1
    if memory:
        slots = []
        for i, total in enumerate(memory):
            plan = plan_gpu(total, cores=max(1, cores // len(memory)))  # the GPUs share the cores
            slots += [Slot(f"cuda:{i}", 1, plan.budget)] * plan.slots
        return slots
    n = settings.read("EXPLORER_SLOTS") or 1
    return [Slot("cpu", max(1, cores // n)) for _ in range(n)]


class _Process:
    def __init__(self, slot: Slot, popen: subprocess.Popen, ident: str) -> None:
        self.slot, self.popen, self.ident = slot, popen, ident


class WorkerPool:
    """Start, watch and restart the worker processes of one server.

    Args:
        db: the run store, an SQLite file or a ``postgresql://`` URL (every worker opens its
            own connection).
        slots: the workers to run (``default_slots()``).
    """

    def __init__(self, db: str | Path, slots: list[Slot] | None = None) -> None:
        self.db = str(db)
        self.slots = list(slots) if slots is not None else default_slots()
        self.store = RunStore(self.db)
        self._procs: list[_Process] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.restarts = 0
        self.store.reap()  # runs left by workers of a server that is gone
        for slot in self.slots:
            self._procs.append(self._spawn(slot))
        self._monitor = threading.Thread(target=self._watch, daemon=True,
                                         name="explorer-worker-pool")
        self._monitor.start()

    def _spawn(self, slot: Slot) -> _Process:
        ident = f"{socket.gethostname()}:pool{os.getpid()}:{uuid.uuid4().hex[:8]}"
        # The store goes in the environment, not the command line, where `ps` would show a
        # PostgreSQL URL's password to every user of the machine.
        cmd = [sys.executable, "-m", "explorer", "worker", "--device", slot.device, "--id",
               ident, "--parent", str(os.getpid())]
        if slot.threads:
            cmd += ["--threads", str(slot.threads)]
        root = Path(__file__).resolve().parent.parent
        env = os.environ | {"EXPLORER_RUNS_DB": self.db, "PYTHONPATH": os.pathsep.join(
            p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)}
        if slot.budget is not None:  # the worker claims runs that fit in what its GPU has left
            env["EXPLORER_GPU_MEMORY_MB"] = f"{max(1.0, slot.budget / MB):.6f}"
        return _Process(slot, subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL), ident)

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids, slot by slot."""
        with self._lock:
            return [p.popen.pid for p in self._procs]

    def _watch(self) -> None:
        ticks = 0
        while not self._closed.wait(MONITOR_S):
            with self._lock:
                for i, proc in enumerate(self._procs):
                    code = proc.popen.poll()
                    if code is None or self._closed.is_set():
                        continue
                    self._settle(proc, code)
                    self._procs[i] = self._spawn(proc.slot)
                    self.restarts += 1
            ticks += 1
            if ticks % REAP_EVERY == 0:
                try:
                    self.store.reap()
                except Exception:
                    log.exception("could not sweep the store for runs of dead workers")

    def _settle(self, proc: _Process, code: int) -> None:
        if code == STOP_EXIT:
            why, hint = "it ended itself to stop the run", ""
        elif code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
            why = f"killed by signal {name}"
            hint = OOM_HINT if -code == signal.SIGKILL else ""
        else:
            why, hint = f"exit status {code}", ""
        try:
            ids = self.store.settle_worker(proc.ident, why, hint)
        except Exception:
            log.exception("could not settle the runs of worker %s", proc.ident)
            return
        if ids:
            log.warning("worker %s ended (%s) during run(s) %s", proc.ident, why, ids)

    def close(self, timeout: float = 5.0) -> None:
        """End the workers (a run in flight is queued again for the next server)."""
        self._closed.set()
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            if proc.popen.poll() is None:
                proc.popen.terminate()
        for proc in procs:
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()
            self.store.settle_worker(proc.ident, "the server stopped", requeue=True)
        self.store.close()
