"""Runs on a real local Ray cluster: dispatch, stop, a killed Ray worker, two app processes.

The module starts one Ray head in this process (2 CPUs, no dashboard, token authentication) and
one dispatcher on a SQLite store; each test uses its own visitor sessions. Runs are LeNet on the
offline digits, a few steps long, so that the 2-core machine is not held for long.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import ray
from ray import exceptions as rex

from explorer.data import OFFLINE
from explorer.errors import ConfigError
from explorer.jobs import DataRef, JobManager
from explorer.ray_runner import (
    MIN_GPU_FRACTION,
    NODE_GONE,
    WORKER_GONE,
    RayDispatcher,
    Settings,
    check_reachable,
    gpu_fraction,
    room,
    runtime_env,
    settle_task,
)
from explorer.registry import get_preset
from explorer.runs import RunStore
from explorer.training import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
LENET = get_preset("course_lenet5").spec
DIGITS = DataRef(OFFLINE)
SHORT = TrainConfig(epochs=1, batch_size=64, max_steps=8, metrics_every=2)
FOREVER = TrainConfig(epochs=200, batch_size=64, metrics_every=2)
GIB = 2**30


@pytest.fixture(scope="module")
def cluster():
    """A local Ray head: its address (the processes end with ray.shutdown)."""
    env = pytest.MonkeyPatch()
    env.setenv("RAY_USAGE_STATS_ENABLED", "0")  # offline: nothing is sent anywhere
    # A new local cluster takes token authentication by default (Ray reads its mode once per
    # process): ray.init makes ~/.ray/auth_token if missing, and processes that join read it.
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 10**6,
             runtime_env=runtime_env(), log_to_driver=False, _temp_dir=temp)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
    env.undo()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return tmp_path_factory.mktemp("ray") / "runs.sqlite"


@pytest.fixture(scope="module")
def dispatcher(cluster, db):
    d = RayDispatcher(db, cluster, Settings(cpus=1.0))
    yield d
    d.close()


@pytest.fixture
def manager(db, dispatcher):
    store = RunStore(db)
    yield JobManager(store, [s.device for s in dispatcher.slots], max_active=1)
    store.close()


def until(predicate, timeout=180.0, what="the condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout:.0f} s"
        time.sleep(0.05)


def submit(manager, name, config=SHORT, session=None):
    return manager.submit(name, LENET.to_dict(), config, DIGITS, session=session or f"s-{name}")


def task_pids(run_id: int) -> list[int]:
    """Processes whose title Ray set to the run's task name (read from /proc, not from Ray)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            title = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if title.split(b"\0")[0].strip() == f"ray::explorer-run-{run_id}".encode():
            pids.append(int(entry))
    return pids


# ---- through the cluster ------------------------------------------------------------------------
def test_a_run_on_ray_learns_and_writes_its_metrics_to_the_store(manager):
    job = submit(manager, "learns", TrainConfig(epochs=1, batch_size=64, lr=0.1, metrics_every=5))
    until(lambda: task_pids(job), what="the run's Ray task")
    assert os.getpid() not in task_pids(job)  # trained in a Ray worker process
    snap = manager.wait(job, timeout=300)
    assert snap.status == "completed", snap.error
    assert snap.device == "cpu (Ray)"
    assert snap.total_steps == 4000 // 64  # the offline set's 4,000 training digits
    assert snap.step == snap.total_steps
    # Chance is 10%; one epoch of LeNet on digits reaches well above 80%.
    assert snap.epoch_metrics[-1]["test_acc"] > 0.8


def test_a_short_run_reports_every_second_step(manager):
    snap = manager.wait(submit(manager, "short"), timeout=180)
    assert snap.status == "completed", snap.error
    # max_steps 8, a report after the first step and every 2 steps: 1, 2, 4, 6 and 8.
    assert [r["step"] for r in snap.step_metrics] == [1, 2, 4, 6, 8]


def test_stop_ends_a_ray_run_within_a_few_seconds_and_keeps_its_metrics(manager):
    job = submit(manager, "stop me", FOREVER)
    until(lambda: manager.get(job).step >= 4, what="the first steps")
    assert manager.stop(job, "s-stop me", teacher=False) is True
    until(lambda: manager.store.get_run(job)["status"] != "running", timeout=5,
          what="the stop")
    snap = manager.get(job)
    assert snap.status == "stopped" and snap.error is None
    assert snap.step >= 4 and snap.step_metrics
    until(lambda: not task_pids(job), timeout=10, what="the task's end")


def test_a_killed_ray_worker_fails_its_run_with_a_sentence_and_the_next_run_completes(manager):
    job = submit(manager, "doomed", FOREVER)
    until(lambda: manager.get(job).step >= 2, what="the doomed run's first steps")
    (pid,) = task_pids(job)
    os.kill(pid, signal.SIGKILL)
    snap = manager.wait(job, timeout=30)
    assert snap.status == "failed"
    assert WORKER_GONE in snap.error and "out of memory" in snap.error
    assert snap.step >= 2 and snap.step_metrics  # what it measured is kept
    after = submit(manager, "after the kill")
    assert manager.wait(after, timeout=180).status == "completed"


def test_only_runs_the_cluster_can_start_now_are_claimed(manager, dispatcher):
    # 2 CPUs, 1 per run: two train, the third keeps its place in the store's queue.
    jobs = [submit(manager, f"fill {i}", FOREVER) for i in range(3)]
    until(lambda: all(manager.get(j).step >= 2 for j in jobs[:2]), what="two runs training")
    for _ in range(8):  # eight rounds of the dispatcher
        assert manager.get(jobs[2]).status == "queued"
        assert manager.queue_position(jobs[2]) == 1
        time.sleep(0.25)
    assert set(dispatcher.running()) == set(jobs[:2])
    for i, job in enumerate(jobs):
        manager.stop(job, f"s-fill {i}", teacher=False)
    until(lambda: all(manager.get(j).done for j in jobs), timeout=10, what="the stops")
    assert [manager.get(j).status for j in jobs] == ["stopped"] * 3


WATCHER = """
import json, sys, time
from explorer.jobs import JobManager
from explorer.runs import RunStore
manager, job = JobManager(RunStore(sys.argv[1])), int(sys.argv[2])
steps = []
while len(set(steps)) < 3:
    steps.append(manager.get(job).step)
    time.sleep(0.05)
t0 = time.monotonic()
stopped = manager.stop(job, sys.argv[3], teacher=False)
final = manager.wait(job, timeout=30)
print(json.dumps({"steps": sorted(set(steps)), "stopped": stopped, "status": final.status,
                  "stop_s": time.monotonic() - t0}))
"""


def test_a_run_started_in_one_app_process_is_watched_and_stopped_from_another(manager, db):
    job = submit(manager, "two servers", FOREVER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", WATCHER, str(db), str(job), "s-two servers"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout)
    assert len(seen["steps"]) >= 3 and seen["steps"][-1] > 0  # it saw the run advance live
    assert seen["stopped"] is True and seen["status"] == "stopped"
    assert seen["stop_s"] < 30  # the wait ended on the stop, not on its timeout
    assert manager.get(job).status == "stopped"


def test_ray_dispatch_by_hand_and_a_dead_dispatcher_s_run_is_queued_again(cluster, tmp_path):
    path = tmp_path / "by-hand.sqlite"
    store = RunStore(path)
    manager = JobManager(store)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "explorer", "ray-dispatch", "--db", str(path),
                             "--address", cluster], env=env, cwd=ROOT)
    try:
        first = manager.submit("by hand", LENET.to_dict(), SHORT, DIGITS, session="a")
        assert manager.wait(first, timeout=300).status == "completed"
        job = manager.submit("orphan", LENET.to_dict(), FOREVER, DIGITS, session="a")
        until(lambda: manager.get(job).step >= 2, what="the orphan's first steps")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    # Ray ends the tasks of a driver that died; its run then stops beating.
    until(lambda: not task_pids(job), timeout=30, what="the orphan task's end")
    assert store.get_run(job)["status"] == "running"  # nobody has looked yet
    until(lambda: store.reap(stale_s=3.0) == [job], timeout=30, what="the reap")
    run = store.get_run(job)
    assert run["status"] == "queued" and "queued again" in run["error"]
    store.close()


# ---- without a cluster ---------------------------------------------------------------------------
def test_a_run_asks_for_its_share_of_a_gpu():
    # 20 GiB of an 80 GiB GPU is a quarter; 4 GiB (0.05) is raised to the smallest share.
    assert gpu_fraction(20 * GIB, 80 * GIB, 0.25) == 0.25
    assert gpu_fraction(4 * GIB, 80 * GIB, 0.25) == MIN_GPU_FRACTION == 0.1
    # 10 GiB of 24 GiB is 0.4166…, rounded up to the next hundredth.
    assert gpu_fraction(10 * GIB, 24 * GIB, 0.25) == 0.42
    assert gpu_fraction(100 * GIB, 80 * GIB, 0.25) == 1.0  # at most one whole GPU
    assert gpu_fraction(None, 80 * GIB, 0.3) == 0.3  # unknown footprint: the default
    assert gpu_fraction(4 * GIB, None, 0.3) == 0.3  # unknown GPU: the default


def test_a_run_is_claimed_only_when_the_free_resources_hold_it():
    one_cpu = Settings(gpu_fraction=0.25, cpus=1.0)
    assert room({"CPU": 2.0}, one_cpu, None, gpus=False) == (True, None)
    assert room({"CPU": 0.5}, one_cpu, None, gpus=False) == (False, None)
    # Half of an 80 GiB GPU free: a run of up to 40 GiB fits.
    assert room({"CPU": 2.0, "GPU": 0.5}, one_cpu, 80 * GIB, gpus=True) == (True, 40 * GIB)
    # 0.2 free cannot hold a run of unknown size (0.25), nor anything without a free CPU.
    assert room({"CPU": 2.0, "GPU": 0.2}, one_cpu, 80 * GIB, gpus=True) == (False, None)
    assert room({"CPU": 0.0, "GPU": 1.0}, one_cpu, 80 * GIB, gpus=True) == (False, None)
    # A whole GPU or more free, or an unknown GPU size: any run.
    assert room({"CPU": 2.0, "GPU": 1.5}, one_cpu, 80 * GIB, gpus=True) == (True, None)
    assert room({"CPU": 2.0, "GPU": 0.5}, one_cpu, None, gpus=True) == (True, None)


def test_an_address_where_no_cluster_listens_is_a_sentence_not_minutes_of_retries(tmp_path):
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConfigError, match=rf"the Ray cluster at 127.0.0.1:{port} \(\$RAY_ADDRESS\) "
                                          r"does not answer .*unset RAY_ADDRESS"):
        check_reachable(f"127.0.0.1:{port}", timeout=2.0)
    check_reachable("auto")  # Ray looks for it itself
    check_reachable(None)


def test_settings_come_from_the_environment_and_bad_ones_are_sentences(monkeypatch):
    monkeypatch.setenv("EXPLORER_RAY_GPU_FRACTION", "0.5")
    monkeypatch.setenv("EXPLORER_RAY_GPU_MEMORY_GB", "24")
    monkeypatch.setenv("EXPLORER_RAY_CPUS", "2")
    assert Settings.from_env() == Settings(gpu_fraction=0.5, gpu_memory=24 * GIB, cpus=2.0)
    monkeypatch.setenv("EXPLORER_RAY_GPU_FRACTION", "0.01")
    with pytest.raises(ConfigError, match=r"EXPLORER_RAY_GPU_FRACTION must be a number from "
                                          r"0.1 to 1, got '0.01'"):
        Settings.from_env()


def test_a_lost_node_queues_its_run_again_once_then_fails_it(tmp_path):
    with RunStore(tmp_path / "s.sqlite") as store:
        job = store.create_run("n", LENET.to_dict(), SHORT, job=DIGITS.to_job())
        store.claim("t1", "cpu (Ray)", "cpu")
        assert settle_task(store, "t1", rex.NodeDiedError("node 1 died")) == [job]
        run = store.get_run(job)
        assert run["status"] == "queued" and NODE_GONE in run["error"]
        store.claim("t2", "cpu (Ray)", "cpu")  # its second attempt
        assert settle_task(store, "t2", rex.NodeDiedError("node 2 died")) == [job]
        run = store.get_run(job)
        assert run["status"] == "failed" and NODE_GONE in run["error"]


def test_a_task_that_ended_after_its_run_finished_changes_nothing(tmp_path):
    with RunStore(tmp_path / "s.sqlite") as store:
        job = store.create_run("n", LENET.to_dict(), SHORT, job=DIGITS.to_job())
        store.claim("t1", "cpu (Ray)", "cpu")
        assert store.finish(job, "t1", "stopped")  # the watcher's stop, then its process ended
        assert settle_task(store, "t1", rex.WorkerCrashedError()) == []
        assert store.get_run(job)["status"] == "stopped"
