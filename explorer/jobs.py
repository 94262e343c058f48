"""Training jobs as a page sees them: submit, watch, stop and delete runs that workers train.

A job is a row of the run store (``explorer.runqueue``) that a worker process claims; this
module holds no thread and no model, so any number of app servers can share one store. Each
browser session owns the runs it starts: by default it has at most one queued or running run,
and it stops and deletes only its own. A teacher (who typed the server's teacher key) has no
limit and can stop or delete any run.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from explorer.errors import ConfigError
from explorer.formatting import run_list
from explorer.runs import FINAL, LIVE, RunStore
from explorer.training import TrainConfig


@dataclass(frozen=True)
class DataRef:
    """The dataset a worker loads for a run: a name from ``explorer.data.DATASETS``."""

    name: str
    data_dir: str = ""  # blank: the server's default directory
    download: bool = False

    def to_job(self) -> dict[str, Any]:
        return {"dataset": self.name, "data_dir": self.data_dir, "download": self.download}


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
    session: str | None = None  # the browser session that owns the run

    @property
    def done(self) -> bool:
        """True once the job can no longer change."""
        return self.status in FINAL

    @property
    def images_per_s(self) -> float | None:
        """The speed to show: the last epoch's own rate once the run has ended, else the median
        of the last five reports. One report's rate swings (99 to 1,228 images/s within 20
        steps on a shared machine), and a stopped run's last report may cover a few images."""
        if self.done:
            ended = [e["images_per_s"] for e in self.epoch_metrics if e.get("images_per_s")]
            if ended:
                return ended[-1]
        recent = [s["images_per_s"] for s in self.step_metrics[-5:] if s.get("images_per_s")]
        return statistics.median(recent) if recent else None


def job_callbacks(store: RunStore, run_id: int, job: Mapping[str, Any],
                  spec: Any = None) -> list[object]:
    """The training callbacks of a job, made in the worker: its weights, and what the job asks
    for (e.g. a BN recorder)."""
    from explorer.weights import WeightsCallback

    # Every run keeps its final weights (small models every epoch's) for the Inspect page.
    callbacks: list[object] = [WeightsCallback(store.path, run_id, spec=spec,
                                               dataset=job.get("dataset"))]
    recorder = job.get("recorder")
    if isinstance(recorder, Mapping):
        from explorer.bn.stored import StoredBNRecorder

        # Saved every 2 s so that the Batch norm page, which reads the store, follows the run.
        callbacks.append(StoredBNRecorder(store, run_id, every=int(recorder["every"]),
                                          save_every_s=2.0))
    return callbacks


class JobManager:
    """Submit, watch, stop and delete runs in the store for the worker processes.

    Args:
        store: the run store (the queue).
        devices: the server's worker slots by device (``cpu``, ``cuda:0``…), one entry a
            worker; a run that asks for another device type is refused with a sentence.
        max_active: queued or running runs a session may have at once (None: no limit).
    """

    def __init__(self, store: RunStore, devices: Sequence[str] = ("cpu",),
                 max_active: int | None = 1) -> None:
        self.store = store
        self.device_types = tuple(dict.fromkeys(d.split(":")[0] for d in devices))
        self.workers = max(1, len(devices))  # one worker per device slot
        self.max_active = max_active

    # ---- starting -----------------------------------------------------------------------------
    def submit(self, name: str, spec: Mapping[str, Any], config: TrainConfig | Mapping[str, Any],
               data: DataRef, *, session: str | None = None, teacher: bool = False,
               job: Mapping[str, Any] | None = None, footprint: int | None = None,
               allowance: int = 0) -> int:
        """Queue a run and return its id; refusals are sentences.

        Args:
            spec: the model spec as a dict (``SpecBase.to_dict()``).
            data: the dataset the worker loads.
            session: the browser session that owns the run.
            teacher: lifts the per-session limit.
            job: more for the worker, e.g. ``{"recorder": {"every": 5}}``.
            footprint: estimated bytes of device memory the run needs.
            allowance: runs of the session not to count (an experiment's second run).
        """
        if not isinstance(config, TrainConfig):
            config = TrainConfig.from_dict(config)
        if config.device != "auto" and config.device not in self.device_types:
            raise ConfigError(f"device {config.device!r} has no worker on this server (it "
                              f"trains on {', '.join(self.device_types)}); choose auto.")
        payload = {**data.to_job(), **dict(job or {})}
        mine = self.store.live_runs(session) if session is not None else []
        same = [r for r in mine if r["name"] == name.strip() and r["config"] == config.to_dict()
                and r["spec"] == json.loads(json.dumps(dict(spec)))]
        if same:
            raise ConfigError(f"this run is already {same[0]['status']} as run {same[0]['id']}; "
                              f"watch it below instead of starting it twice.")
        if not teacher and self._at_limit(mine, allowance):
            one = len(mine) == 1
            raise ConfigError(f"you already have {self._limit_text(mine)}, so stop "
                              f"{'it' if one else 'one'} or wait for {'it' if one else 'one'} "
                              f"to finish.")
        return self.store.create_run(name, spec, config, "queued", session=session,
                                     job=payload, footprint=footprint)

    # ---- watching -----------------------------------------------------------------------------
    def get(self, job_id: int) -> JobSnapshot:
        """The job's status, queue position and metrics, read from the store."""
        run = self.store.get_run(job_id)
        frame = self.store.metrics(job_id)

        def rows(kind: str) -> tuple[dict[str, Any], ...]:
            part = frame[frame["kind"] == kind].drop(columns="kind")
            part = part.astype(object).where(part.notna(), None)
            return tuple(part.to_dict("records"))

        steps, epochs = rows("step"), rows("epoch")
        position = self.store.queue_position(job_id) if run["status"] == "queued" else None
        return JobSnapshot(job_id, run["name"], run["status"], run["error"], position,
                           run["device"], int(steps[-1]["step"]) if steps else 0,
                           run["total_steps"], steps, epochs,
                           run["status"] == "running" and run["stop_requested"],
                           run["session"])

    def queue_position(self, job_id: int) -> int | None:
        """1 for the next job to start, 2 for the one after...; None unless queued."""
        return self.store.queue_position(job_id)

    def _at_limit(self, live: Sequence[Mapping[str, Any]], allowance: int = 0) -> bool:
        """True when a visitor's ``live`` runs fill their share (a teacher is never asked)."""
        return self.max_active is not None and len(live) >= self.max_active + allowance

    def _limit_text(self, live: Sequence[Mapping[str, Any]]) -> str:
        """'run #2 queued or training; each visitor may have 1 at a time'."""
        return (f"{'run' if len(live) == 1 else 'runs'} {run_list([r['id'] for r in live])} "
                f"queued or training; each visitor may have {self.max_active} at a time")

    def outlook(self, session: str | None, teacher: bool = False) -> str:
        """What a run started now would meet, before Start: "A worker is free: it would start
        at once." or "3 runs are training and 5 waiting: yours would be 4th in the queue.";
        for a visitor at their limit of live runs, that Start waits for those."""
        if not teacher and session is not None and self.max_active is not None:
            mine = self.store.live_runs(session)
            if self._at_limit(mine):
                return (f"You have {self._limit_text(mine)}, so start another once "
                        f"{'it has' if len(mine) == 1 else 'they have'} finished.")
        training, queued, place = self.store.outlook(session)
        if not queued and training < self.workers:
            return "A worker is free: it would start at once."
        runs = ("No run is" if not training else
                f"{training} run{'s' if training != 1 else ''} {'is' if training == 1 else 'are'}")
        return (f"{runs} training and {queued} waiting: yours would be {_ordinal(place)} in "
                f"the queue.")

    def wait(self, job_id: int, timeout: float | None = None, poll: float = 0.1) -> JobSnapshot:
        """Poll until the job finishes (or the timeout passes); returns its snapshot."""
        end = None if timeout is None else time.monotonic() + timeout
        while self.store.get_run(job_id)["status"] in LIVE:
            if end is not None and time.monotonic() >= end:
                break
            time.sleep(poll)
        return self.get(job_id)

    # ---- stopping and deleting ------------------------------------------------------------------
    @staticmethod
    def may_manage(run: Mapping[str, Any], session: str | None, teacher: bool) -> bool:
        """A teacher manages every run, a visitor the runs their session started."""
        return teacher or (session is not None and run.get("session") == session)

    def stop(self, job_id: int, session: str | None = None, teacher: bool = True) -> bool:
        """Stop a run: a queued one at once, a training one within a second. False when it had
        already finished; someone else's run is a sentence."""
        run = self.store.get_run(job_id)
        if not self.may_manage(run, session, teacher):
            raise ConfigError(f"run {job_id} was started by another visitor; only they or the "
                              f"teacher can stop it.")
        return self.store.request_stop(job_id) != "done"

    def delete(self, job_id: int, session: str | None = None, teacher: bool = True) -> None:
        """Delete a finished run of one's own (a teacher: any); a live one is stopped first
        and kept with a sentence unless it was only queued."""
        run = self.store.get_run(job_id)
        if not self.may_manage(run, session, teacher):
            raise ConfigError(f"run {job_id} was started by another visitor; only they or the "
                              f"teacher can delete it.")
        if run["status"] in LIVE and self.store.request_stop(job_id) == "stopping":
            raise ConfigError(f"run {job_id} was training and is stopping now; delete it once "
                              f"it has stopped.")
        self.store.delete_run(job_id)
        from explorer.weights import delete_weights

        delete_weights(self.store.path, job_id)


def _ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, 11th, 12th, 13th, 21st…"""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
