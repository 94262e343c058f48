"""The run store's artifacts: named blobs kept with a run (the BN lab's statistics), on SQLite
and on PostgreSQL."""

import pytest
from pg_fixture import raw_sql

from explorer.errors import ConfigError
from explorer.runs import RunStore


@pytest.fixture
def store(store_url):
    with RunStore(store_url) as s:
        yield s


def new_run(store: RunStore) -> int:
    return store.create_run("tiny", {"family": "lenet"}, {"lr": 0.1}, status="completed")


def test_save_load_replace_and_missing(store):
    run = new_run(store)
    assert store.load_artifact(run, "bn_stats") is None  # nothing saved yet
    blob = bytes(range(256)) * 10  # every byte value, NULs included
    store.save_artifact(run, "bn_stats", blob)
    assert store.load_artifact(run, "bn_stats") == blob
    store.save_artifact(run, "bn_stats", b"second")  # a later save replaces the first
    assert store.load_artifact(run, "bn_stats") == b"second"
    store.save_artifact(run, "other", bytearray(b"x"))
    assert store.load_artifact(run, "other") == b"x"
    assert store.load_artifact(run, "bn_stats") == b"second"  # names are independent


def test_artifacts_survive_reopening_the_store(store_url):
    with RunStore(store_url) as s:
        run = new_run(s)
        s.save_artifact(run, "bn_stats", b"abc")
    with RunStore(store_url) as s:
        assert s.load_artifact(run, "bn_stats") == b"abc"


def test_deleting_the_run_deletes_its_artifacts(store):
    run = new_run(store)
    store.save_artifact(run, "bn_stats", b"abc")
    store.delete_run(run)
    assert store.load_artifact(run, "bn_stats") is None
    # The row itself is gone (ON DELETE CASCADE), not just hidden.
    assert raw_sql(store.path, "SELECT COUNT(*) FROM artifacts") == [(0,)]


def test_mistakes_are_sentences(store):
    run = new_run(store)
    with pytest.raises(ConfigError, match="run 9999 does not exist"):
        store.save_artifact(9999, "bn_stats", b"abc")
    with pytest.raises(ConfigError, match="needs a name"):
        store.save_artifact(run, " ", b"abc")
    with pytest.raises(ConfigError, match="must be bytes"):
        store.save_artifact(run, "bn_stats", "text")


def test_export_leaves_artifacts_out(store):
    run = new_run(store)
    store.save_artifact(run, "bn_stats", b"abc")
    exported = store.export_run(run)
    assert "artifacts" not in exported and b"abc" not in repr(exported).encode()
    copy = store.import_run(exported)
    assert store.load_artifact(copy, "bn_stats") is None
