"""Runs in worker processes: the durable queue, stop, faults, isolation and ownership.

One pool of one CPU worker serves the whole module (a worker takes seconds to import torch);
each test uses its own visitor sessions, so the per-visitor limit never crosses tests. The queue
tests without workers run on SQLite and on PostgreSQL; one run trains end to end in a worker
on a PostgreSQL store.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pg_fixture import raw_sql

from explorer.data import OFFLINE
from explorer.errors import ConfigError
from explorer.jobs import DataRef, JobManager
from explorer.pool import Slot, WorkerPool
from explorer.registry import get_preset
from explorer.runs import RunStore
from explorer.training import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
LENET = get_preset("course_lenet5").spec
DIGITS = DataRef(OFFLINE)
SHORT = TrainConfig(epochs=1, batch_size=64, max_steps=8, metrics_every=2)
FOREVER = TrainConfig(epochs=200, batch_size=64, metrics_every=2)


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return tmp_path_factory.mktemp("workers") / "runs.sqlite"


@pytest.fixture(scope="module")
def pool(db):
    p = WorkerPool(db, [Slot("cpu", 1)])
    yield p
    p.close()


@pytest.fixture
def manager(db, pool):
    store = RunStore(db)
    yield JobManager(store, ["cpu"], max_active=1)
    store.close()


def until(predicate, timeout=120.0, what="the condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout:.0f} s"
        time.sleep(0.02)


def submit(manager, name, config=SHORT, session=None, spec=LENET, teacher=False, **kw):
    return manager.submit(name, spec.to_dict(), config, DIGITS,
                          session=session or f"s-{name}", teacher=teacher, **kw)


def test_a_run_in_a_worker_process_learns(manager, pool):
    job = submit(manager, "learns", TrainConfig(epochs=1, batch_size=64, lr=0.1,
                                                metrics_every=5))
    snap = manager.wait(job, timeout=300)
    assert snap.status == "completed", snap.error
    assert snap.total_steps == 4000 // 64  # the offline set's 4,000 training digits
    assert snap.step == snap.total_steps and snap.device == "cpu"
    # Chance is 10%; one epoch of LeNet on digits reaches well above 80%.
    assert snap.epoch_metrics[-1]["test_acc"] > 0.8
    assert manager.store.get_run(job)["device"] == "cpu"
    assert os.getpid() not in pool.pids  # trained elsewhere


def test_stop_ends_a_long_step_within_a_second_and_keeps_the_epochs(manager, pool):
    # A VGG-11 step on 3×224×224 images, batch 32, takes several seconds on this CPU.
    vgg = get_preset("vgg11").spec
    import dataclasses

    vgg = dataclasses.replace(vgg, num_classes=10)
    job = submit(manager, "long step", TrainConfig(epochs=1, batch_size=32, metrics_every=1),
                 spec=vgg)
    until(lambda: manager.store.get_run(job)["total_steps"] is not None, what="the first step")
    time.sleep(0.3)  # inside the first step now
    t0 = time.perf_counter()
    assert manager.stop(job, "s-long step", teacher=False) is True
    until(lambda: manager.store.get_run(job)["status"] != "running", timeout=5)
    assert time.perf_counter() - t0 < 1.0
    assert manager.get(job).status == "stopped"
    # The worker ended itself to stop the step; a new one takes its slot and trains on.
    after = submit(manager, "after the stop")
    assert manager.wait(after, timeout=120).status == "completed"


def test_a_sigkilled_worker_fails_only_its_run_and_the_next_one_completes(manager, pool):
    doomed = submit(manager, "doomed", FOREVER)
    nxt = submit(manager, "next")
    until(lambda: manager.get(doomed).step >= 2, what="the doomed run's first steps")
    victim = pool.pids[0]
    os.kill(victim, signal.SIGKILL)
    snap = manager.wait(doomed, timeout=30)
    assert snap.status == "failed"
    assert "SIGKILL" in snap.error and "out of memory" in snap.error
    assert snap.step >= 2 and snap.step_metrics  # what it measured is kept
    assert manager.wait(nxt, timeout=120).status == "completed"
    assert victim not in pool.pids


def test_an_fx_trace_beside_a_run_does_not_disturb_it(manager):
    """The reproduction: 15 resnet50 traces on the page side while a run trains."""
    import torch.fx
    import torchvision

    job = submit(manager, "beside fx", TrainConfig(epochs=1, batch_size=64, max_steps=40,
                                                   metrics_every=2))
    until(lambda: manager.get(job).status == "running", what="the run's start")
    net = torchvision.models.resnet50()
    for _ in range(15):
        torch.fx.symbolic_trace(net)
    snap = manager.wait(job, timeout=120)
    assert snap.status == "completed", snap.error


def test_queued_runs_survive_a_server_restart(tmp_path):
    path = tmp_path / "runs.sqlite"
    with RunStore(path) as store:  # the first server queued a run, then went down
        first = JobManager(store, ["cpu"])
        job = first.submit("queued before", LENET.to_dict(), SHORT, DIGITS, session="a")
    pool = WorkerPool(path, [Slot("cpu", 1)])  # the next server
    try:
        with RunStore(path) as store:
            assert JobManager(store).wait(job, timeout=120).status == "completed"
    finally:
        pool.close()


def test_on_a_postgresql_store_a_worker_trains_a_run_and_another_server_stops_one(
        postgres_url):
    # A password in the URL (the test server trusts local users and ignores it) must reach
    # neither the workers' command lines nor the messages.
    url = postgres_url.replace("explorer@", "explorer:s3cret@", 1)
    pool = WorkerPool(url, [Slot("cpu", 1)])
    try:
        with RunStore(url) as store:
            assert store.backend == "postgresql" and "s3cret" not in store.display
            job = JobManager(store).submit("on postgres", LENET.to_dict(), SHORT, DIGITS,
                                           session="pg")
            snap = JobManager(store).wait(job, timeout=180)
            assert snap.status == "completed", snap.error
            assert (snap.step, snap.total_steps, snap.device) == (8, 8, "cpu")  # max_steps=8
        # Reported after the first step and every 2 of the 8: 5 step rows, read back with the
        # plain driver.
        assert raw_sql(postgres_url, f"SELECT step FROM metrics WHERE run_id = {job} AND "
                       "kind = 'step' ORDER BY step") == [(1,), (2,), (4,), (6,), (8,)]
        for pid in pool.pids:
            assert b"s3cret" not in Path(f"/proc/{pid}/cmdline").read_bytes()
        # A second app process on the same database sees a run of this one live and stops it.
        with RunStore(url) as store:
            manager = JobManager(store)
            long = manager.submit("watched elsewhere", LENET.to_dict(), FOREVER, DIGITS,
                                  session="first server")
            until(lambda: manager.get(long).step >= 2, what="the long run's first steps")
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            seen = subprocess.run([sys.executable, "-c", SECOND_SERVER, url, str(long)], env=env,
                                  capture_output=True, text=True, timeout=120)
            assert seen.returncode == 0, seen.stderr
            status, step = seen.stdout.split()
            assert status == "running" and int(step) >= 2  # the live progress, read there
            assert manager.wait(long, timeout=30).status == "stopped"
    finally:
        pool.close()


SECOND_SERVER = """
import sys
from explorer.jobs import JobManager
from explorer.runs import RunStore
store = RunStore(sys.argv[1])
manager, run = JobManager(store), int(sys.argv[2])
snap = manager.get(run)
print(snap.status, snap.step)
assert manager.stop(run, "first server", teacher=False)  # the owner, from another server
"""


def test_a_run_of_a_closed_server_is_queued_again_once(tmp_path):
    path = tmp_path / "runs.sqlite"
    pool = WorkerPool(path, [Slot("cpu", 1)])
    store = RunStore(path)
    manager = JobManager(store)
    try:
        job = manager.submit("interrupted", LENET.to_dict(), FOREVER, DIGITS, session="a")
        until(lambda: manager.get(job).step >= 2, what="the first steps")
    finally:
        pool.close()
    run = store.get_run(job)
    assert run["status"] == "queued" and "queued again" in run["error"]
    assert store.metrics(job).empty  # it starts from the beginning
    store.close()


def test_a_hand_started_worker_that_dies_is_reaped_with_its_metrics(tmp_path):
    path = tmp_path / "runs.sqlite"
    store = RunStore(path)
    manager = JobManager(store)
    job = manager.submit("by hand", LENET.to_dict(), FOREVER, DIGITS, session="a")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "explorer", "worker", "--db", str(path),
                             "--threads", "1"], env=env, cwd=ROOT)
    try:
        until(lambda: manager.get(job).step >= 2, what="the first steps")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert store.get_run(job)["status"] == "running"  # nobody has looked yet
    assert store.reap() == [job]  # what a server does every few seconds
    snap = manager.get(job)
    assert snap.status == "failed" and "its process is gone" in snap.error
    assert snap.step >= 2
    store.close()


# ---- the queue, without workers -----------------------------------------------------------------
@pytest.fixture
def idle(store_url):
    store = RunStore(store_url)
    yield JobManager(store, ["cpu"], max_active=1)
    store.close()


def test_a_visitor_has_one_run_at_a_time_and_start_twice_queues_no_duplicate(idle):
    job = submit(idle, "mine", session="alice")
    with pytest.raises(ConfigError, match=f"already queued as run {job}"):
        submit(idle, "mine", session="alice")
    with pytest.raises(ConfigError, match="1 at a time"):
        submit(idle, "another", session="alice")
    other = submit(idle, "theirs", session="bob")  # another visitor is not held back
    # The teacher has no limit, but the same run twice is still a duplicate.
    t1 = submit(idle, "lesson", session="teacher", teacher=True)
    submit(idle, "lesson 2", session="teacher", teacher=True)
    with pytest.raises(ConfigError, match=f"already queued as run {t1}"):
        submit(idle, "lesson", session="teacher", teacher=True)
    assert [r["id"] for r in idle.store.live_runs("alice")] == [job]
    assert idle.store.get_run(other)["session"] == "bob"


def test_only_the_owner_or_the_teacher_stops_and_deletes(idle):
    job = submit(idle, "alice's", session="alice")
    with pytest.raises(ConfigError, match="another visitor"):
        idle.stop(job, "mallory", teacher=False)
    with pytest.raises(ConfigError, match="another visitor"):
        idle.delete(job, "mallory", teacher=False)
    with pytest.raises(ConfigError, match="another visitor"):
        idle.delete(job, None, teacher=False)  # no session is nobody's owner
    assert idle.store.get_run(job)["status"] == "queued"
    idle.delete(job, "alice", teacher=False)  # a queued run of one's own goes at once
    with pytest.raises(ConfigError, match="does not exist"):
        idle.get(job)
    theirs = submit(idle, "bob's", session="bob")
    assert idle.store.claim("w", "cpu", "cpu")["id"] == theirs
    with pytest.raises(ConfigError, match="is stopping now; delete it once it has stopped"):
        idle.delete(theirs, "teacher", teacher=True)  # a training run is stopped first
    assert idle.get(theirs).stopping
    idle.store.finish(theirs, "w", "stopped")
    idle.delete(theirs, "teacher", teacher=True)
    assert idle.store.list_runs() == []


def test_the_queue_takes_one_run_of_each_visitor_in_turn(idle):
    teacher = [submit(idle, f"t{i}", session="teacher", teacher=True) for i in range(3)]
    student = submit(idle, "student", session="student")
    assert [idle.queue_position(i) for i in [*teacher, student]] == [1, 2, 3, 4]
    first = idle.store.claim("w1", "cpu", "cpu")
    assert first["id"] == teacher[0]  # oldest first while nobody trains
    # The teacher now has a run training: the student's run goes before the teacher's others.
    assert idle.queue_position(student) == 1
    assert idle.store.claim("w2", "cpu", "cpu")["id"] == student
    assert idle.store.claim("w3", "cpu", "cpu")["id"] == teacher[1]


def test_before_start_a_visitor_reads_where_their_run_would_stand(idle):
    assert idle.outlook("carol") == "A worker is free: it would start at once."
    teacher = [submit(idle, f"t{i}", session="teacher", teacher=True) for i in range(2)]
    assert idle.store.claim("w1", "cpu", "cpu")["id"] == teacher[0]
    bob = submit(idle, "bob's", session="bob")
    # By hand: the teacher trains one run, so bob's (a visitor with none training) goes before
    # the teacher's second; carol's would come after bob's and before the teacher's: 2nd.
    assert idle.outlook("carol") == ("1 run is training and 2 waiting: yours would be 2nd in "
                                     "the queue.")
    # The queue's own order agrees once carol's run is queued.
    carol = submit(idle, "carol's", session="carol")
    assert [idle.queue_position(i) for i in (bob, carol, teacher[1])] == [1, 2, 3]
    # The teacher, with one run training, would queue after every other visitor: 4th.
    assert idle.outlook("teacher", teacher=True).endswith("yours would be 4th in the queue.")
    # A visitor with their one run queued is told that Start waits for it, not a place that
    # a second Start (refused) would never take.
    assert idle.outlook("bob") == (f"You have run #{bob} queued or training; each visitor may "
                                   f"have 1 at a time, so start another once it has finished.")
    with pytest.raises(ConfigError, match=f"you already have run #{bob} queued or training"):
        submit(idle, "bob's second", session="bob")
    # One free worker of two, but runs are waiting: a new run still queues.
    two = JobManager(idle.store, ["cpu", "cpu"])
    assert two.outlook("dave").startswith("1 run is training and 3 waiting")


def test_ordinals_of_a_queue_place():
    from explorer.jobs import _ordinal

    assert [_ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 101, 111, 112)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd", "101st",
        "111th", "112th"]


def test_a_run_waits_for_a_worker_of_its_device_and_memory(idle):
    gpu = idle.store.create_run("gpu", LENET.to_dict(), TrainConfig(device="cuda"),
                                job=DIGITS.to_job())
    big = submit(idle, "big", session="b", footprint=10**9)
    assert idle.store.claim("w", "cpu", "cpu", max_footprint=10**8) is None
    assert idle.store.claim("w", "cuda:0", "cuda", max_footprint=10**8)["id"] == gpu
    assert idle.store.claim("w", "cpu", "cpu", max_footprint=2 * 10**9)["id"] == big
    with pytest.raises(ConfigError, match="no worker"):
        idle.submit("mps", LENET.to_dict(), TrainConfig(device="mps"), DIGITS, session="c")


CLAIMER = """
import sys, time
from explorer.runs import RunStore
store, got = RunStore(sys.argv[1]), []
while True:
    run = store.claim(sys.argv[2], "cpu", "cpu")
    if run is None:
        break
    got.append(run["id"])
print(" ".join(map(str, got)))
"""


def test_claims_from_four_processes_at_once_take_every_run_exactly_once(store_url):
    with RunStore(store_url) as store:
        ids = [store.create_run(f"r{i}", {"family": "lenet"}, {}, job=DIGITS.to_job())
               for i in range(200)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, store_url, f"w{k}"], env=env,
                              stdout=subprocess.PIPE, text=True) for k in range(4)]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    claimed = [int(i) for out in outs for i in out]
    assert sorted(claimed) == ids  # none lost, none twice
    # A second reader through the plain driver, not the store's own code.
    rows = raw_sql(store_url, "SELECT worker, COUNT(*) FROM runs GROUP BY worker")
    assert {w: n for w, n in rows} == {f"w{k}": len(o) for k, o in enumerate(outs) if o}


def test_a_stopped_queued_run_never_starts_and_a_beat_sees_the_stop(idle):
    job = submit(idle, "stop me", session="a")
    assert idle.stop(job, "a", teacher=False) is True
    assert idle.get(job).status == "stopped"
    assert idle.store.claim("w", "cpu", "cpu") is None
    running = submit(idle, "beating", session="b")
    assert idle.store.claim("w", "cpu", "cpu")["id"] == running
    assert idle.store.beat(running, "w") is False
    assert idle.store.beat(running, "another worker") is True  # not its run
    idle.stop(running, "b", teacher=False)
    assert idle.get(running).stopping is True
    assert idle.store.beat(running, "w") is True
    assert idle.store.finish(running, "w", "stopped")
    assert not idle.store.finish(running, "w", "completed")  # a final status is final
    assert idle.stop(running, "b", teacher=False) is False


def test_a_worker_beat_thread_is_not_needed_to_read_a_snapshot(idle):
    """Pages read everything from the store: a snapshot needs no worker in this process."""
    job = submit(idle, "read", session="a")
    idle.store.claim("w", "cpu", "cpu")
    idle.store.set_total_steps(job, 10)
    idle.store.add_metrics(job, "step", [{"step": 2, "epoch": 1, "loss": 2.0}])
    snap = idle.get(job)
    assert (snap.status, snap.step, snap.total_steps, snap.device) == ("running", 2, 10, "cpu")
    assert snap.step_metrics[0]["loss"] == 2.0 and snap.queue_position is None


def test_runs_without_a_session_count_as_one_visitor_in_the_queue(idle):
    """Null-safe equality: runs queued without a session (CLI, imports) share one turn."""
    cli = [idle.store.create_run(f"cli {i}", LENET.to_dict(), SHORT, job=DIGITS.to_job())
           for i in range(2)]
    student = submit(idle, "student", session="student")
    assert idle.store.claim("w1", "cpu", "cpu")["id"] == cli[0]
    # A session-less run now trains and the student has none: the student's run goes first.
    assert [idle.queue_position(i) for i in (student, cli[1])] == [1, 2]
    assert idle.store.claim("w2", "cpu", "cpu")["id"] == student


def test_a_claim_on_postgresql_skips_a_run_another_server_is_claiming(postgres_url):
    import threading

    import psycopg

    with RunStore(postgres_url) as store:
        first, second = (store.create_run(f"r{i}", LENET.to_dict(), SHORT, job=DIGITS.to_job())
                         for i in range(2))
        got = []
        with psycopg.connect(postgres_url) as other:  # another server, in the middle of a claim
            other.execute(f"SELECT id FROM runs WHERE id = {first} FOR UPDATE")
            claimer = threading.Thread(target=lambda: got.append(store.claim("w", "cpu", "cpu")),
                                       daemon=True)
            claimer.start()
            claimer.join(30)
            assert got and got[0]["id"] == second  # taken at once, not after waiting
        assert store.claim("w", "cpu", "cpu")["id"] == first  # free again once the lock ends


def test_a_worker_reads_a_visitors_data_folder_inside_the_data_directory(tmp_path, monkeypatch):
    """The job keeps the folder as the visitor typed it; the worker confines it as the page."""
    from explorer.worker import Worker

    monkeypatch.setenv("EXPLORER_DATA_DIR", str(tmp_path / "data"))
    with RunStore(tmp_path / "runs.sqlite") as store:
        worker = Worker(store, "cpu")
        with pytest.raises(ConfigError, match="EXPLORER_DATA_DIR/course") as caught:
            worker._dataset({"dataset": "fashion-mnist", "data_dir": "course"})
        assert str(tmp_path) not in str(caught.value)  # no server path in the sentence
        with pytest.raises(ConfigError):
            worker._dataset({"dataset": "fashion-mnist", "data_dir": "/etc"})


def test_a_browser_enters_the_teacher_key_once_and_wrong_guesses_are_slowed(monkeypatch):
    from explorer.ownership import TeacherBrowsers

    monkeypatch.setenv("EXPLORER_TEACHER_KEY", "blackboard")
    now = [1000.0]
    teachers = TeacherBrowsers(tries=3, window=60, clock=lambda: now[0])
    assert not teachers.knows("laptop")
    assert teachers.enter("laptop", "blackboard") and teachers.knows("laptop")
    assert not teachers.knows("a student")  # another browser is not the teacher's
    # A new key on the server: the browser that entered the old one is no longer the teacher.
    monkeypatch.setenv("EXPLORER_TEACHER_KEY", "whiteboard")
    assert not teachers.knows("laptop")
    assert teachers.enter("laptop", "whiteboard") and teachers.knows("laptop")
    teachers.forget("laptop")
    assert not teachers.knows("laptop")
    # Three wrong keys in a minute: the fourth try waits, even with the right key, until the
    # first wrong one is 60 s old (tried at 1000, 1010, 1020; at 1030 there are 30 s left).
    for _ in range(3):
        assert not teachers.enter("a student", "guess")
        now[0] += 10
    assert teachers.wait_s("a student") == 30
    assert not teachers.enter("a student", "whiteboard") and not teachers.knows("a student")
    assert teachers.wait_s("laptop") == 0  # other browsers are not held up
    now[0] = 1061  # the first wrong key is over a minute old: two remain, one more try
    assert teachers.wait_s("a student") == 0
    assert teachers.enter("a student", "whiteboard") and teachers.knows("a student")
    monkeypatch.delenv("EXPLORER_TEACHER_KEY")
    assert not teachers.knows("a student")  # no key on the server: nobody is the teacher
