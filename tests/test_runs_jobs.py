"""The run store on SQLite and on PostgreSQL (every test runs on both): runs, metrics,
thread-era recovery, export and import (the job queue and its worker processes are tested in
test_workers.py)."""

import copy
import json
import sqlite3
from pathlib import Path

import pytest
import torch
from pg_fixture import raw_sql
from torch import nn

from explorer.data import ImageDataset
from explorer.errors import ConfigError
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
def store(store_url):
    s = RunStore(store_url)
    yield s
    s.close()


def count_rows(location: str) -> tuple[int, int]:
    # A second reader through the plain driver, not the store's own code.
    return (raw_sql(location, "SELECT COUNT(*) FROM runs")[0][0],
            raw_sql(location, "SELECT COUNT(*) FROM metrics")[0][0])


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
    # 128 // 32 = 4 steps per epoch, reported after the first step and every 2 steps.
    assert steps.step.tolist() == [1, 2, 4, 6, 8] and epochs.epoch.tolist() == [1, 2]
    assert steps.loss.tolist() == pytest.approx([m["loss"] for m in result.step_metrics])
    assert epochs.test_acc.tolist() == pytest.approx(
        [m["test_acc"] for m in result.epoch_metrics])
    assert store.metrics(run_id, "epoch").step.tolist() == [4, 8]
    assert [r["id"] for r in store.list_runs()] == [run_id]


def test_delete_refuses_live_runs_and_removes_finished_ones(store, store_url):
    run_id = store.create_run("r", SPEC, CFG, status="running")
    store.add_metrics(run_id, "epoch", [{"step": 4, "epoch": 1, "test_acc": 0.5}])
    with pytest.raises(ConfigError, match="still running"):
        store.delete_run(run_id)
    store.set_status(run_id, "stopped")
    store.delete_run(run_id)
    assert count_rows(store_url) == (0, 0)
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
def test_malformed_import_raises_and_stores_nothing(store, store_url, case):
    exported = _valid_export(store)
    before_rows = count_rows(store_url)
    before_runs = store.list_runs()
    bad = MALFORMED[case](copy.deepcopy(exported))
    with pytest.raises(ConfigError, match="cannot be imported"):
        store.import_run(bad)
    assert count_rows(store_url) == before_rows
    assert store.list_runs() == before_runs


def test_reopening_marks_runs_of_dead_processes_interrupted_but_not_live_ones(store_url):
    with RunStore(store_url) as first:
        live = first.create_run("live here", SPEC, CFG, status="running")
        dead = first.create_run("dead", SPEC, CFG, status="queued")
        elsewhere = first.create_run("on another machine", SPEC, CFG, status="running")
        # Pretend that a finished process of this machine queued one (an owner tag of the
        # thread era, without a host) and that a process of another machine sharing the
        # store runs another; pid 2147483646 exists on neither.
        raw_sql(store_url, f"UPDATE runs SET owner='2147483646:gone' WHERE id={dead}")
        raw_sql(store_url, "UPDATE runs SET owner='2147483646:token@another-host' "
                           f"WHERE id={elsewhere}")
        with RunStore(store_url) as second:  # e.g. the CLI opening the store beside the server
            assert second.get_run(live)["status"] == "running"
            assert second.get_run(dead)["status"] == "interrupted"
            assert "ended before it finished" in second.get_run(dead)["error"]
            assert second.get_run(elsewhere)["status"] == "running"  # not this machine's to judge


def test_import_runs_is_all_or_none_and_finds_runs_by_spec(store_url, tmp_path):
    from explorer.io import read_runs, runs_to_json

    store = RunStore(tmp_path / "a.sqlite")  # runs move from any store to any other
    spec = {"family": "lenet", "num_classes": 10}
    first = store.create_run("one", spec, {"epochs": 1}, status="queued")
    store.add_metrics(first, "epoch", [{"step": 3, "epoch": 1, "test_acc": 0.5}])
    store.set_status(first, "running")
    store.set_status(first, "completed")
    exported = [store.export_run(first)]
    store.close()
    other = RunStore(store_url)
    broken = dict(exported[0], metrics="not a list")
    with pytest.raises(ConfigError, match="run 2 of 2.*Nothing was imported"):
        other.import_runs(read_runs(runs_to_json(exported + [broken])))
    assert other.list_runs() == []
    ids = other.import_runs(read_runs(runs_to_json(exported + exported)))
    assert len(ids) == 2
    assert [r["id"] for r in other.runs_with_spec(spec)] == sorted(ids, reverse=True)
    assert other.runs_with_spec({"family": "vgg"}) == []
    assert other.metrics(ids[0])["test_acc"].tolist() == [0.5]
    other.close()
    with pytest.raises(ConfigError, match="no exported run"):
        read_runs(b'{"family": "vgg"}', "spec.json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        read_runs(b"{", "x.json")


def test_a_visitors_own_runs_stay_in_their_list_however_many_come_after(store):
    mine = [store.create_run(f"mine {i}", SPEC, CFG, status="completed", session="me")
            for i in range(2)]
    others = [store.create_run(f"theirs {i}", SPEC, CFG, status="completed", session="them")
              for i in range(5)]
    # The newest three are all someone else's: a list of three alone would lose mine.
    assert [r["id"] for r in store.list_runs(limit=3)] == [others[4], others[3], others[2]]
    assert [r["id"] for r in store.list_runs(limit=3, session="me")] == \
        [others[4], others[3], others[2], mine[1], mine[0]]
    # My own come at most ``limit`` of them too: the newest.
    assert [r["id"] for r in store.list_runs(limit=1, session="me")] == [others[4], mine[1]]
    assert [store.count_runs(s) for s in ("me", "them", "nobody")] == [2, 5, 0]


def test_a_visitor_imports_no_more_runs_than_a_visitor_may_keep(store):
    from explorer.io import import_runs_file, runs_to_json

    one = store.create_run("source", SPEC, CFG, status="completed", session="me")
    text = runs_to_json([store.export_run(one)] * 2)  # a file of two runs
    ids, _ = import_runs_file(store, text, "two.json", session="me", max_kept=3)
    assert len(ids) == 2 and store.count_runs("me") == 3  # 1 + 2 = 3: at the limit
    with pytest.raises(ConfigError, match=r"two.json holds 2 runs and you keep 3 on this server; "
                                          r"a visitor keeps at most 3"):
        import_runs_file(store, text, "two.json", session="me", max_kept=3)
    assert store.count_runs("me") == 3  # nothing of the refused file was stored
    # Another visitor, and the teacher (no limit), import it still.
    assert len(import_runs_file(store, text, "two.json", session="you", max_kept=3)[0]) == 2
    assert len(import_runs_file(store, text, "two.json", session="me", max_kept=None)[0]) == 2


V1_ROWS = """
INSERT INTO runs (name, spec, config, status, created_at, finished_at)
    VALUES ('from the thread era', '{"family": "lenet"}', '{"epochs": 1}', 'completed', 1.0, 2.0);
INSERT INTO metrics (run_id, kind, step, epoch, data)
    VALUES (1, 'epoch', 5, 1, '{"test_acc": 0.5}');
"""
# The schema as the first round wrote it.
V1_SQLITE = """
CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, spec TEXT NOT NULL,
    config TEXT NOT NULL, status TEXT NOT NULL, error TEXT, created_at REAL NOT NULL,
    started_at REAL, finished_at REAL, owner TEXT);
CREATE TABLE metrics (run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    kind TEXT NOT NULL, step INTEGER NOT NULL, epoch INTEGER NOT NULL, data TEXT NOT NULL);
""" + V1_ROWS
# The same version 1 in PostgreSQL's types, with its version recorded in schema_version and the
# rowid column that SQLite has implicitly (it keeps metrics in the order written).
V1_POSTGRES = """
CREATE TABLE runs (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL, spec TEXT NOT NULL,
    config TEXT NOT NULL, status TEXT NOT NULL, error TEXT, created_at DOUBLE PRECISION NOT NULL,
    started_at DOUBLE PRECISION, finished_at DOUBLE PRECISION, owner TEXT);
CREATE TABLE metrics (rowid BIGSERIAL PRIMARY KEY,
    run_id BIGINT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    kind TEXT NOT NULL, step BIGINT NOT NULL, epoch BIGINT NOT NULL, data TEXT NOT NULL);
CREATE TABLE schema_version (version INTEGER NOT NULL);
INSERT INTO schema_version VALUES (1);
""" + V1_ROWS


def test_a_store_of_the_thread_era_opens_migrated_with_its_runs(store_url):
    postgres = store_url.startswith("postgresql://")
    if postgres:
        raw_sql(store_url, V1_POSTGRES)
    else:
        with sqlite3.connect(store_url) as conn:
            conn.executescript(V1_SQLITE)
    with RunStore(store_url) as store:
        run = store.get_run(1)
        assert (run["name"], run["status"], run["session"]) == ("from the thread era",
                                                                "completed", None)
        assert store.metrics(1)["test_acc"].tolist() == [0.5]
        new = store.create_run("new", {"family": "lenet"}, {"epochs": 1}, session="s",
                               job={"dataset": "offline-mnist"})
        assert store.claim("w", "cpu", "cpu")["id"] == new
    if postgres:
        assert raw_sql(store_url, "SELECT version FROM schema_version") == [(2,)]
        columns = {r[0] for r in raw_sql(
            store_url, "SELECT column_name FROM information_schema.columns "
                       "WHERE table_name = 'runs'")}
    else:
        assert raw_sql(store_url, "PRAGMA user_version") == [(2,)]
        columns = {r[1] for r in raw_sql(store_url, "PRAGMA table_info(runs)")}
    assert {"session", "job", "worker", "heartbeat", "stop_requested"} <= columns


# ---- the location of a PostgreSQL store ---------------------------------------------------------
def test_a_store_url_is_shown_without_its_password():
    from explorer.db import is_url, mask

    assert mask("postgresql://ann:pa:ss@db.example:5432/runs") == \
        "postgresql://ann:***@db.example:5432/runs"
    assert mask("postgres://ann@db/runs?password=pass&sslmode=require") == \
        "postgres://ann@db/runs?password=***&sslmode=require"
    assert mask("postgresql://db/runs") == "postgresql://db/runs"
    assert mask("/srv/runs.sqlite") == "/srv/runs.sqlite"
    assert is_url("postgresql://db/runs") and not is_url("postgresql.sqlite")


def test_an_unreachable_postgresql_store_is_a_sentence_without_the_password(monkeypatch):
    import socket

    import explorer.db

    monkeypatch.setattr(explorer.db, "CONNECT_TIMEOUT_S", 1.0)
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConfigError, match="cannot be reached") as caught:
        RunStore(f"postgresql://ann:s3cret@127.0.0.1:{port}/runs?connect_timeout=1")
    assert "s3cret" not in str(caught.value)
    assert f"postgresql://ann:***@127.0.0.1:{port}/runs" in str(caught.value)


def test_a_postgresql_store_carries_on_after_the_server_restarts():
    from pg_fixture import start_postgres

    with start_postgres() as server:  # its own server: the session's is not restarted
        server.admin("CREATE DATABASE restarts")
        with RunStore(server.url("restarts")) as store:
            run_id = store.create_run("before", SPEC, CFG, job={"dataset": "offline-mnist"})
            server.restart()  # the pooled connection is now broken
            # The pool replaces it before handing it out: the next call works, nothing lost.
            assert store.get_run(run_id)["status"] == "queued"
            assert store.claim("w", "cpu", "cpu")["id"] == run_id


def test_the_speed_shown_is_a_median_while_training_and_the_epochs_own_once_ended():
    from explorer.jobs import JobSnapshot

    def snap(status, rates, epoch_rates=()):
        return JobSnapshot(1, "run", status, None, None, "cpu", len(rates), 10,
                           tuple({"step": i, "images_per_s": r} for i, r in enumerate(rates)),
                           tuple({"epoch": i, "images_per_s": r}
                                 for i, r in enumerate(epoch_rates)))

    rates = [100, 1000, 200, 300, 250, 5000, 220]
    # The last five reports, 200 300 250 5000 220, sorted 200 220 250 300 5000: median 250.
    assert snap("running", rates).images_per_s == 250
    # Ended: the last epoch's own rate (its images over its training time), not a report's.
    assert snap("stopped", rates, [236, 240]).images_per_s == 240
    # Stopped before its first epoch ended: the reports still.
    assert snap("stopped", rates).images_per_s == 250
    assert snap("queued", []).images_per_s is None
