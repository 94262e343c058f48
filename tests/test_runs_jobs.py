"""The SQLite run store and the job manager: queueing, stop, failures, crashes, export/import."""

import copy
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from explorer.data import ImageDataset
from explorer.errors import ConfigError
from explorer.jobs import JobManager
from explorer.runs import RunStore, StoreCallback
from explorer.training import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
SPEC = {"family": "tiny", "channels": 4}


pytestmark = pytest.mark.usefixtures("one_thread")


def synthetic(n_train: int = 128, n_test: int = 32, seed: int = 0) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n_train + n_test, 1, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n_train + n_test,), generator=g)
    return ImageDataset("synthetic", images[:n_train], labels[:n_train], images[n_train:],
                        labels[n_train:], tuple(str(i) for i in range(10)))


def tiny() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


CFG = TrainConfig(batch_size=32, epochs=2, metrics_every=2, device="cpu")


@pytest.fixture
def store(tmp_path):
    s = RunStore(tmp_path / "runs.sqlite")
    yield s
    s.close()


@pytest.fixture
def manager(store):
    m = JobManager(store, devices=["cpu"], concurrency=1)
    yield m
    m.shutdown()


def count_rows(path: Path) -> tuple[int, int]:
    with sqlite3.connect(path) as conn:  # a second reader, not the store's own code
        return (conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0],
                conn.execute("SELECT COUNT(*) FROM metrics").fetchone()[0])


# ---- the run store ------------------------------------------------------------------------------
def test_store_records_a_run_and_its_metrics_as_they_are_measured(store):
    run_id = store.create_run("tiny on synthetic", SPEC, CFG)
    assert store.get_run(run_id)["status"] == "queued"
    store.set_status(run_id, "running")
    result = train(tiny(), (1, 8, 8), 10, synthetic(), CFG,
                   callbacks=[StoreCallback(store, run_id)])
    store.set_status(run_id, result.status)
    run = store.get_run(run_id)
    assert run["spec"] == SPEC and TrainConfig.from_dict(run["config"]) == CFG
    assert run["status"] == "completed"
    assert run["created_at"] <= run["started_at"] <= run["finished_at"]
    frame = store.metrics(run_id)
    steps, epochs = frame[frame.kind == "step"], frame[frame.kind == "epoch"]
    # 128 // 32 = 4 steps per epoch, reported every 2 steps: steps 2, 4, 6, 8.
    assert steps.step.tolist() == [2, 4, 6, 8] and epochs.epoch.tolist() == [1, 2]
    assert steps.loss.tolist() == pytest.approx([m["loss"] for m in result.step_metrics])
    assert epochs.test_acc.tolist() == pytest.approx(
        [m["test_acc"] for m in result.epoch_metrics])
    assert store.metrics(run_id, "epoch").step.tolist() == [4, 8]
    assert [r["id"] for r in store.list_runs()] == [run_id]


def test_delete_refuses_live_runs_and_removes_finished_ones(store, tmp_path):
    run_id = store.create_run("r", SPEC, CFG, status="running")
    store.add_metrics(run_id, "epoch", [{"step": 4, "epoch": 1, "test_acc": 0.5}])
    with pytest.raises(ConfigError, match="still running"):
        store.delete_run(run_id)
    store.set_status(run_id, "stopped")
    store.delete_run(run_id)
    assert count_rows(tmp_path / "runs.sqlite") == (0, 0)
    with pytest.raises(ConfigError, match="does not exist"):
        store.get_run(run_id)


def test_export_import_round_trip(store):
    run_id = store.create_run("exported", SPEC, CFG)
    store.set_status(run_id, "running")
    train(tiny(), (1, 8, 8), 10, synthetic(), CFG, callbacks=[StoreCallback(store, run_id)])
    store.set_status(run_id, "completed")
    exported = json.loads(json.dumps(store.export_run(run_id)))  # through real JSON text
    new_id = store.import_run(exported)
    assert new_id != run_id
    original, copy_ = store.get_run(run_id), store.get_run(new_id)
    assert {k: v for k, v in copy_.items() if k != "id"} == \
        {k: v for k, v in original.items() if k != "id"}
    assert store.metrics(new_id).equals(store.metrics(run_id))


def _valid_export(store):
    run_id = store.create_run("source", SPEC, CFG, status="completed")
    store.add_metrics(run_id, "step", [{"step": 2, "epoch": 1, "loss": 2.3}])
    store.add_metrics(run_id, "epoch", [{"step": 4, "epoch": 1, "test_acc": 0.25}])
    return store.export_run(run_id)


MALFORMED = {
    "not a dict": lambda d: [d],
    "wrong format": lambda d: {**d, "format": "something-else"},
    "future version": lambda d: {**d, "version": 2},
    "empty name": lambda d: {**d, "name": "  "},
    "spec not a dict": lambda d: {**d, "spec": "resnet18"},
    "bad config": lambda d: {**d, "config": {**d["config"], "lr": -1}},
    "unknown status": lambda d: {**d, "status": "finished"},
    "bad time": lambda d: {**d, "created_at": "yesterday"},
    # 1e20 s is far beyond any calendar pandas (or a person) can show; 2200-01-01 is the bound.
    "time in the year 3e12": lambda d: {**d, "created_at": 1e20},
    "time before 1970": lambda d: {**d, "finished_at": -1.0},
    "time in 2200": lambda d: {**d, "started_at": 7_258_118_400},
    "metrics not a list": lambda d: {**d, "metrics": {"step": 1}},
    # Valid up to the very last metric row, which must still stop the whole import.
    "last metric bad": lambda d: {**d, "metrics": d["metrics"] + [
        {"kind": "epoch", "step": -1, "epoch": 1, "values": {}}]},
    "metric value text": lambda d: {**d, "metrics": d["metrics"] + [
        {"kind": "step", "step": 3, "epoch": 1, "values": {"loss": "low"}}]},
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_import_raises_and_stores_nothing(store, tmp_path, case):
    exported = _valid_export(store)
    before_rows = count_rows(tmp_path / "runs.sqlite")
    before_runs = store.list_runs()
    bad = MALFORMED[case](copy.deepcopy(exported))
    with pytest.raises(ConfigError, match="cannot be imported"):
        store.import_run(bad)
    assert count_rows(tmp_path / "runs.sqlite") == before_rows
    assert store.list_runs() == before_runs


def test_reopening_marks_runs_of_dead_processes_interrupted_but_not_live_ones(tmp_path):
    path = tmp_path / "runs.sqlite"
    with RunStore(path) as first:
        live = first.create_run("live here", SPEC, CFG, status="running")
        dead = first.create_run("dead", SPEC, CFG, status="queued")
        with sqlite3.connect(path) as conn:  # pretend another, finished process queued it
            conn.execute("UPDATE runs SET owner='2147483646:gone' WHERE id=?", (dead,))
        with RunStore(path) as second:  # e.g. the CLI opening the store beside the server
            assert second.get_run(live)["status"] == "running"
            assert second.get_run(dead)["status"] == "interrupted"
            assert "ended before it finished" in second.get_run(dead)["error"]


KILLED_JOB = textwrap.dedent("""
    import sys, torch
    from torch import nn
    torch.set_num_threads(1)
    from explorer.data import ImageDataset
    from explorer.jobs import JobManager
    from explorer.runs import RunStore
    from explorer.training import TrainConfig
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (160, 1, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (160,), generator=g)
    ds = ImageDataset("synthetic", x[:128], y[:128], x[128:], y[128:], tuple("0123456789"))
    manager = JobManager(RunStore(sys.argv[1]), devices=["cpu"])
    job = manager.submit("killed mid-way", {"family": "tiny"},
                         TrainConfig(batch_size=32, epochs=100_000, device="cpu"),
                         lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), (1, 8, 8), ds)
    manager.wait(job)
""")


def test_a_killed_training_process_keeps_its_epochs_and_is_marked_interrupted(tmp_path):
    path = tmp_path / "runs.sqlite"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_JOB, str(path)], env=env, cwd=ROOT)
    try:
        seen = []
        deadline = time.monotonic() + 60
        while not seen and time.monotonic() < deadline:
            assert proc.poll() is None, "the training subprocess ended on its own"
            time.sleep(0.05)
            if path.exists():
                with sqlite3.connect(path, timeout=10) as conn:
                    try:
                        seen = conn.execute("SELECT run_id, step, epoch, data FROM metrics WHERE "
                                            "kind='epoch' ORDER BY rowid").fetchall()
                    except sqlite3.OperationalError:  # the schema is not there yet
                        seen = []
        assert seen, "the training subprocess wrote no epoch within 60 s"
        with RunStore(path) as peek:  # the process is alive: its run stays running
            assert peek.get_run(seen[0][0])["status"] == "running"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    with RunStore(path) as reopened:
        run = reopened.get_run(seen[0][0])
        assert run["status"] == "interrupted" and run["finished_at"] is not None
        epochs = reopened.metrics(run["id"], "epoch")
    assert len(epochs) >= len(seen)
    for (_, step, epoch, data), (_, row) in zip(seen, epochs.iterrows(), strict=False):
        assert (row.step, row.epoch) == (step, epoch)
        assert row.test_acc == pytest.approx(json.loads(data)["test_acc"])


# ---- the job manager ----------------------------------------------------------------------------
class Gate:
    """A callback that holds a run at its start until released, and logs start/end order."""

    def __init__(self, name, log, hold=False):
        self.name, self.log = name, log
        self.release = threading.Event()
        self.started = threading.Event()
        if not hold:
            self.release.set()

    def on_run_start(self, ctx):
        self.log.append(("start", self.name))
        self.started.set()
        assert self.release.wait(20)

    def on_run_end(self, ctx, status):
        self.log.append(("end", self.name))


def test_jobs_on_one_worker_run_one_after_the_other_with_queue_positions(manager, store):
    log = []
    gates = {n: Gate(n, log, hold=(n == "a")) for n in "abc"}
    ids = {n: manager.submit(f"job {n}", SPEC, CFG, tiny, (1, 8, 8), synthetic(),
                             callbacks=[gates[n]]) for n in "abc"}
    assert gates["a"].started.wait(20)
    assert manager.get(ids["a"]).status == "running"
    assert manager.queue_position(ids["a"]) is None
    assert manager.queue_position(ids["b"]) == 1 and manager.queue_position(ids["c"]) == 2
    assert manager.get(ids["c"]).queue_position == 2
    assert store.get_run(ids["b"])["status"] == "queued"
    gates["a"].release.set()
    for n in "abc":
        assert manager.wait(ids[n], timeout=20).status == "completed"
    assert log == [("start", "a"), ("end", "a"), ("start", "b"), ("end", "b"),
                   ("start", "c"), ("end", "c")]
    assert manager.queue_position(ids["c"]) is None


def test_stop_by_job_id_for_a_running_and_a_queued_job(manager, store):
    log = []
    long = TrainConfig(batch_size=16, epochs=100_000, device="cpu")
    first = manager.submit("long", SPEC, long, tiny, (1, 8, 8), synthetic())
    second = manager.submit("waiting", SPEC, CFG, tiny, (1, 8, 8), synthetic(),
                            callbacks=[Gate("w", log)])
    deadline = time.monotonic() + 20
    while manager.get(first).step < 10 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert manager.stop(second) is True  # queued: leaves the queue without running
    assert manager.get(second).status == "stopped" and log == []
    t0 = time.perf_counter()
    assert manager.stop(first) is True
    snap = manager.wait(first, timeout=5)
    assert time.perf_counter() - t0 < 1.0
    assert snap.status == "stopped" and snap.step >= 10  # kept what it measured
    assert store.get_run(first)["status"] == "stopped"
    assert manager.stop(first) is False  # already finished


def test_a_running_job_reads_stopping_until_its_step_in_flight_ends(manager, store):
    """A big model on the CPU can spend a minute in one step: the page says "stopping"."""
    in_step, finish_step = threading.Event(), threading.Event()

    class SlowStep:
        def on_step_end(self, ctx, metrics):
            in_step.set()
            assert finish_step.wait(20)

    job = manager.submit("slow", SPEC, TrainConfig(batch_size=16, epochs=3, device="cpu"), tiny,
                         (1, 8, 8), synthetic(), callbacks=[SlowStep()])
    assert in_step.wait(20)
    assert manager.get(job).stopping is False
    assert manager.stop(job) is True
    snap = manager.get(job)
    assert snap.status == "running" and snap.stopping is True
    finish_step.set()
    snap = manager.wait(job, timeout=10)
    assert snap.status == "stopped" and snap.stopping is False
    assert manager.get(job).stopping is False


def test_a_failing_job_is_marked_failed_and_the_next_one_runs(manager, store):
    class Exploding(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            raise ValueError("kaboom in forward")

    class OutOfMemory(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    def broken_builder():
        raise RuntimeError("the builder broke")

    failing = [manager.submit("explodes", SPEC, CFG, Exploding, (1, 8, 8), synthetic()),
               manager.submit("oom", SPEC, CFG, OutOfMemory, (1, 8, 8), synthetic()),
               manager.submit("no model", SPEC, CFG, broken_builder, (1, 8, 8), synthetic())]
    fine = manager.submit("fine", SPEC, CFG, tiny, (1, 8, 8), lambda: synthetic(seed=1))
    snaps = [manager.wait(j, timeout=20) for j in failing]
    assert [s.status for s in snaps] == ["failed"] * 3
    assert "kaboom in forward" in snaps[0].error
    assert "ran out of memory" in snaps[1].error and "batch_size" in snaps[1].error
    assert "the builder broke" in snaps[2].error
    assert store.get_run(failing[1])["error"] == snaps[1].error
    assert manager.wait(fine, timeout=20).status == "completed"


def test_buffer_matches_the_store_and_a_reload_reattaches_by_job_id(manager, store):
    job = manager.submit("watched", SPEC, CFG, tiny, (1, 8, 8), synthetic())
    live = manager.wait(job, timeout=20)
    assert live.status == "completed" and live.total_steps == 8 and live.step == 8
    assert [m["step"] for m in live.step_metrics] == [2, 4, 6, 8]
    # A new manager on the same store (a server restart) finds the run by its id.
    other = JobManager(store, devices=["cpu"])
    try:
        again = other.get(job)
    finally:
        other.shutdown()
    assert again.status == "completed"
    assert [m["step"] for m in again.epoch_metrics] == [m["step"] for m in live.epoch_metrics]
    assert [m["test_acc"] for m in again.epoch_metrics] == pytest.approx(
        [m["test_acc"] for m in live.epoch_metrics])
    with pytest.raises(ConfigError, match="does not exist"):
        manager.get(job + 1000)


def test_submit_rejects_a_device_without_a_worker(manager):
    with pytest.raises(ConfigError, match="no worker"):
        manager.submit("gpu please", SPEC, TrainConfig(device="mps"), tiny, (1, 8, 8),
                       synthetic())


def test_import_runs_is_all_or_none_and_finds_runs_by_spec(tmp_path):
    from explorer.io import read_runs, runs_to_json

    store = RunStore(tmp_path / "a.sqlite")
    spec = {"family": "lenet", "num_classes": 10}
    first = store.create_run("one", spec, {"epochs": 1}, status="queued")
    store.add_metrics(first, "epoch", [{"step": 3, "epoch": 1, "test_acc": 0.5}])
    store.set_status(first, "running")
    store.set_status(first, "completed")
    exported = [store.export_run(first)]
    other = RunStore(tmp_path / "b.sqlite")
    broken = dict(exported[0], metrics="not a list")
    with pytest.raises(ConfigError, match="run 2 of 2.*Nothing was imported"):
        other.import_runs(read_runs(runs_to_json(exported + [broken])))
    assert other.list_runs() == []
    ids = other.import_runs(read_runs(runs_to_json(exported + exported)))
    assert len(ids) == 2
    assert [r["id"] for r in other.runs_with_spec(spec)] == sorted(ids, reverse=True)
    assert other.runs_with_spec({"family": "vgg"}) == []
    assert other.metrics(ids[0])["test_acc"].tolist() == [0.5]
    with pytest.raises(ConfigError, match="no exported run"):
        read_runs(b'{"family": "vgg"}', "spec.json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        read_runs(b"{", "x.json")
