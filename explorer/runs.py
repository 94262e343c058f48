"""The run store: training runs, their configs, status and metrics in one database.

The database is an SQLite file (the default, one machine) or a PostgreSQL server
(``postgresql://`` URL: several app servers and machines share the runs); ``explorer.db`` holds
what differs between the two. Every write batch is its own transaction, so a killed process
loses nothing already written. The store is also the durable queue of the worker processes
(``explorer.runqueue``): a queued run is a row that a worker claims, so it survives a restart of
the server.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from explorer.bounded import shown
from explorer.db import Tx, mask, open_database
from explorer.errors import ConfigError
from explorer.runqueue import QueueOps

STATUSES = ("queued", "running", "completed", "stopped", "failed", "interrupted")
LIVE = ("queued", "running")
FINAL = ("completed", "stopped", "failed", "interrupted")
KINDS = ("step", "epoch")
EXPORT_FORMAT = "cnn-explorer-run"
EXPORT_VERSION = 1
INTERRUPTED_MESSAGE = ("the process running this run ended before it finished (a server restart "
                       "or a crash); the metrics written until then are kept.")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,         -- the model spec, JSON
    config TEXT NOT NULL,       -- the TrainConfig, JSON
    status TEXT NOT NULL,
    error TEXT,
    created_at REAL NOT NULL,   -- Unix seconds
    started_at REAL,
    finished_at REAL,
    owner TEXT                  -- "pid:token" of the process that queued or runs it (v1)
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,         -- step | epoch
    step INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    data TEXT NOT NULL          -- the other metric values, JSON object
);
CREATE INDEX IF NOT EXISTS metrics_by_run ON metrics(run_id, kind, step);
CREATE TABLE IF NOT EXISTS artifacts (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    name TEXT NOT NULL,         -- e.g. bn_stats (explorer.bn.stored)
    data BLOB NOT NULL,
    PRIMARY KEY (run_id, name)
);
"""

SCHEMA_VERSION = 2
# Version 2: runs are jobs that worker processes claim from the store (explorer.runqueue).
_COLUMNS_V2 = {
    "session": "TEXT",          # the browser session that owns the run (None: imported, CLI)
    "job": "TEXT",              # what a worker needs besides spec and config, JSON
    "wants": "TEXT",            # device type the run asks for: auto | cpu | cuda | mps
    "footprint": "INTEGER",     # estimated bytes of device memory the run needs
    "stop_requested": "REAL",   # when a stop was asked for (Unix seconds)
    "worker": "TEXT",           # the worker that claimed the run
    "device": "TEXT",           # where it trains, e.g. cuda:0
    "heartbeat": "REAL",        # the worker's last sign of life
    "total_steps": "INTEGER",   # optimizer steps the run will take
    "attempts": "INTEGER NOT NULL DEFAULT 0",  # times a worker claimed it
}

_owner_cache: tuple[int, str] | None = None


def process_owner() -> str:
    """This process's owner tag: pid, a random token (pids are reused after restarts) and the
    host (a store on PostgreSQL is shared by several machines)."""
    global _owner_cache
    pid = os.getpid()
    if _owner_cache is None or _owner_cache[0] != pid:  # a forked child gets its own token
        _owner_cache = (pid, f"{pid}:{uuid.uuid4().hex}@{socket.gethostname()}")
    return _owner_cache[1]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # it exists but belongs to someone else
    return True


def default_store_path() -> str:
    """The store: $EXPLORER_RUNS_DB when set (an SQLite file or a ``postgresql://`` URL), else
    ./runs.sqlite."""
    return os.environ.get("EXPLORER_RUNS_DB") or "runs.sqlite"


def _json(value: Any, what: str) -> str:
    try:
        return json.dumps(value, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what} must be JSON data (dicts, lists, strings, finite numbers); "
                          f"{exc}.") from exc


def _config_dict(config: Any) -> dict[str, Any]:
    to_dict = getattr(config, "to_dict", None)
    data = to_dict() if callable(to_dict) else config
    if not isinstance(data, Mapping):
        raise ConfigError(f"the training config must be a TrainConfig or a dict, got "
                          f"{type(config).__name__}.")
    return dict(data)


class RunStore(QueueOps):
    """A thread-safe handle on the run store (``explorer.db``: SQLite or PostgreSQL).

    Args:
        path: an SQLite file or a ``postgresql://`` URL (default: ``default_store_path()``);
            kept as ``self.path``, a string that worker processes open again.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = str(path) if path is not None else default_store_path()
        self._db = open_database(self.path)
        try:
            with self._db.tx() as tx:
                self._db.script(tx, _SCHEMA)
                self._migrate(tx)
            self._recover()
        except BaseException:
            self._db.close()
            raise

    @property
    def display(self) -> str:
        """The location for messages and logs, without a password."""
        return mask(self.path)

    @property
    def backend(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._db.kind

    def _migrate(self, tx: Tx) -> None:
        """Bring an older store up to SCHEMA_VERSION (in the caller's transaction)."""
        if self._db.version(tx) >= SCHEMA_VERSION:
            return
        have = self._db.columns(tx, "runs")
        for name, kind in _COLUMNS_V2.items():
            if name not in have:
                tx.execute(self._db.ddl(f"ALTER TABLE runs ADD COLUMN {name} {kind}"))
        tx.execute("CREATE INDEX IF NOT EXISTS runs_by_status ON runs(status, id)")
        self._db.set_version(tx, SCHEMA_VERSION)

    def _recover(self) -> None:
        """Mark runs that no worker can carry on as interrupted.

        Runs queued as jobs (with a ``job``) stay queued: a worker claims them after a restart.
        Runs of the thread-era store (no ``job``) whose process on this machine is gone cannot
        be run again; a claimed run whose worker died is the worker pool's to settle (``reap``).
        """
        me, host = process_owner(), socket.gethostname()
        with self._db.tx() as tx:
            rows = tx.all("SELECT id, owner FROM runs WHERE status IN ('queued', 'running') "
                          "AND job IS NULL AND worker IS NULL")
        dead = []
        for row in rows:
            owner = row["owner"] or ""
            pid_text = owner.split(":", 1)[0]
            if owner == me or ("@" in owner and owner.rsplit("@", 1)[1] != host):
                continue  # this process's, or another machine's: not ours to judge
            if pid_text.isdigit() and int(pid_text) != os.getpid() and _pid_alive(int(pid_text)):
                continue
            dead.append(row["id"])
        if dead:
            with self._db.tx() as tx:
                tx.many("UPDATE runs SET status='interrupted', error=?, finished_at=? "
                        "WHERE id=? AND status IN ('queued', 'running')",
                        [(INTERRUPTED_MESSAGE, time.time(), i) for i in dead])

    def close(self) -> None:
        """Close the connection(s)."""
        self._db.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- writing --------------------------------------------------------------------------
    def create_run(self, name: str, spec: Mapping[str, Any], config: Any,
                   status: str = "queued", *, session: str | None = None,
                   job: Mapping[str, Any] | None = None, footprint: int | None = None) -> int:
        """Store a new run (spec: the model spec dict; config: a TrainConfig or its dict).

        A run with a ``job`` (what a worker needs to load its data) is queued for the worker
        processes; ``session`` names the browser session that owns it.
        """
        if not isinstance(name, str) or not name.strip():
            raise ConfigError("a run needs a name; type a few words that describe it.")
        if not isinstance(spec, Mapping):
            raise ConfigError(f"the model spec must be a dict, got {type(spec).__name__}.")
        if status not in STATUSES:
            raise ConfigError(f"status must be one of {', '.join(STATUSES)}, got {status!r}.")
        spec_text = _json(dict(spec), "the model spec")
        config = _config_dict(config)
        config_text = _json(config, "the training config")
        job_text = None if job is None else _json(dict(job), "the job")
        now = time.time()
        with self._db.tx() as tx:
            row = tx.one(
                "INSERT INTO runs (name, spec, config, status, created_at, started_at, "
                "finished_at, owner, session, job, wants, footprint) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (name.strip(), spec_text, config_text, status, now,
                 now if status == "running" else None,
                 now if status in FINAL else None, process_owner(), session, job_text,
                 str(config.get("device", "auto")), footprint))
            return int(row["id"])

    def set_status(self, run_id: int, status: str, error: str | None = None) -> None:
        """Move a run to ``status``; running stamps started_at, a final status finished_at."""
        if status not in STATUSES:
            raise ConfigError(f"status must be one of {', '.join(STATUSES)}, got {status!r}.")
        now = time.time()
        with self._db.tx() as tx:
            self._require(tx, run_id)
            if status == "running":
                tx.execute("UPDATE runs SET status=?, error=?, started_at=?, owner=? WHERE id=?",
                           (status, error, now, process_owner(), run_id))
            elif status in FINAL:
                tx.execute("UPDATE runs SET status=?, error=?, finished_at=? WHERE id=?",
                           (status, error, now, run_id))
            else:
                tx.execute("UPDATE runs SET status=?, error=? WHERE id=?", (status, error, run_id))

    def add_metrics(self, run_id: int, kind: str, rows: Iterable[Mapping[str, Any]]) -> None:
        """Append metric rows (dicts with step, epoch and values) in one committed transaction."""
        if kind not in KINDS:
            raise ConfigError(f"metrics kind must be one of {', '.join(KINDS)}, got {kind!r}.")
        records = []
        for row in rows:
            # NaN/inf become null so that every stored run can be exported and imported again.
            values = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                      for k, v in row.items() if k not in ("step", "epoch", "kind")}
            records.append((run_id, kind, int(row["step"]), int(row["epoch"]),
                            json.dumps(values, sort_keys=True)))
        if not records:
            return
        with self._db.tx() as tx:
            tx.many(
                "INSERT INTO metrics (run_id, kind, step, epoch, data) VALUES (?, ?, ?, ?, ?)",
                records)

    def delete_run(self, run_id: int) -> None:
        """Delete a finished run and its metrics."""
        with self._db.tx() as tx:
            row = self._require(tx, run_id)
            if row["status"] in LIVE:
                raise ConfigError(f"run {run_id} is still {row['status']}; stop it before "
                                  f"deleting it.")
            tx.execute("DELETE FROM runs WHERE id=?", (run_id,))

    def save_artifact(self, run_id: int, name: str, data: bytes) -> None:
        """Store (or replace) a named blob with a run, e.g. its BN statistics; deleted with it."""
        if not isinstance(name, str) or not name.strip():
            raise ConfigError("an artifact needs a name; use a short word such as 'bn_stats'.")
        if not isinstance(data, bytes | bytearray | memoryview):
            raise ConfigError(f"artifact {name!r} must be bytes, got {type(data).__name__}.")
        with self._db.tx() as tx:
            self._require(tx, run_id)
            tx.execute(
                "INSERT INTO artifacts (run_id, name, data) VALUES (?, ?, ?) "
                "ON CONFLICT(run_id, name) DO UPDATE SET data=excluded.data",
                (run_id, name, bytes(data)))

    def load_artifact(self, run_id: int, name: str) -> bytes | None:
        """The blob stored under ``name`` with a run, or None when there is none."""
        with self._db.tx() as tx:
            row = tx.one("SELECT data FROM artifacts WHERE run_id=? AND name=?",
                         (run_id, name))
        return None if row is None else bytes(row["data"])

    # ---- reading --------------------------------------------------------------------------
    @staticmethod
    def _require(tx: Tx, run_id: int) -> Any:
        """The run's row, read in ``tx``; a sentence when it does not exist."""
        row = tx.one("SELECT * FROM runs WHERE id=?", (run_id,))
        if row is None:
            raise ConfigError(f"run {run_id} does not exist (it may have been deleted); pick "
                              f"one from the list of runs.")
        return row

    @staticmethod
    def _run_dict(row: Any) -> dict[str, Any]:
        return {
            "id": row["id"], "name": row["name"], "spec": json.loads(row["spec"]),
            "config": json.loads(row["config"]), "status": row["status"],
            "error": row["error"], "created_at": row["created_at"],
            "started_at": row["started_at"], "finished_at": row["finished_at"],
            "session": row["session"], "device": row["device"],
            "total_steps": row["total_steps"], "footprint": row["footprint"],
            "stop_requested": row["stop_requested"] is not None,
            # The dataset a worker trained it on (runs queued as jobs), for Inspect.
            "dataset": json.loads(row["job"]).get("dataset") if row["job"] else None,
        }

    def get_run(self, run_id: int) -> dict[str, Any]:
        """One run as a dict: id, name, spec, config, status, error and the three times."""
        with self._db.tx() as tx:
            return self._run_dict(self._require(tx, run_id))

    def list_runs(self, limit: int | None = None,
                  session: str | None = None) -> list[dict[str, Any]]:
        """All runs, newest first (without their metrics); with ``limit``, the newest ``limit``.

        With ``session`` too, that session's own newest ``limit`` are added however many runs
        others started or imported since: a visitor's runs never leave their own lists.
        """
        sql = "SELECT * FROM runs ORDER BY id DESC"
        with self._db.tx() as tx:
            if limit is None:
                rows = tx.all(sql)
            else:
                rows = tx.all(sql + " LIMIT ?", (int(limit),))
                if session is not None:
                    rows += tx.all("SELECT * FROM runs WHERE session = ? ORDER BY id DESC "
                                   "LIMIT ?", (session, int(limit)))
        unique = {r["id"]: r for r in rows}
        return [self._run_dict(unique[i]) for i in sorted(unique, reverse=True)]

    def count_runs(self, session: str) -> int:
        """How many runs, of any status, belong to ``session``."""
        with self._db.tx() as tx:
            return int(tx.one("SELECT COUNT(*) AS n FROM runs WHERE session = ?",
                              (session,))["n"])

    def runs_with_spec(self, spec: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Runs whose stored model spec equals ``spec`` (a spec's ``to_dict()``), newest first."""
        want = json.loads(_json(dict(spec), "the spec"))
        return [r for r in self.list_runs() if r["spec"] == want]

    def metrics(self, run_id: int, kind: str | None = None) -> pd.DataFrame:
        """A run's metrics in the order written: columns kind, step, epoch, then the values."""
        with self._db.tx() as tx:
            self._require(tx, run_id)
            if kind is None:
                rows = tx.all("SELECT kind, step, epoch, data FROM metrics WHERE run_id=? "
                              "ORDER BY rowid", (run_id,))
            else:
                rows = tx.all("SELECT kind, step, epoch, data FROM metrics WHERE run_id=? "
                              "AND kind=? ORDER BY rowid", (run_id, kind))
        records = [{"kind": r["kind"], "step": r["step"], "epoch": r["epoch"],
                    **json.loads(r["data"])} for r in rows]
        if not records:
            return pd.DataFrame(columns=["kind", "step", "epoch"])
        return pd.DataFrame.from_records(records)

    # ---- export / import ------------------------------------------------------------------
    def export_run(self, run_id: int) -> dict[str, Any]:
        """A run with all its metrics as a JSON-ready dict (see ``import_run``)."""
        with self._db.tx() as tx:
            run = self._run_dict(self._require(tx, run_id))
            rows = tx.all("SELECT kind, step, epoch, data FROM metrics WHERE run_id=? "
                          "ORDER BY rowid", (run_id,))
        for key in ("id", "session", "device", "total_steps", "footprint", "stop_requested",
                    "dataset"):
            run.pop(key)
        return {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, **run,
                "metrics": [{"kind": r["kind"], "step": r["step"], "epoch": r["epoch"],
                             "values": json.loads(r["data"])} for r in rows]}

    def import_run(self, data: Mapping[str, Any], session: str | None = None) -> int:
        """Store an exported run under a new id; malformed input raises ConfigError, stores nothing.

        A run exported while queued or running is imported as interrupted.
        """
        return self.import_runs([data], session)[0]

    def import_runs(self, items: Sequence[Mapping[str, Any]],
                    session: str | None = None) -> list[int]:
        """Store several exported runs in one transaction: every one is validated first, and a
        malformed one raises ConfigError (naming it) with nothing stored."""
        if len(items) > MAX_IMPORT_RUNS:
            raise _bad(f"it holds {len(items):,} runs; import at most {MAX_IMPORT_RUNS} at once")
        rows = sum(len(d.get("metrics", ())) for d in items if isinstance(d, Mapping)
                   and isinstance(d.get("metrics"), list))
        if rows > MAX_IMPORT_ROWS:
            raise _bad(f"its runs hold {rows:,} metric rows in all; at most {MAX_IMPORT_ROWS:,} "
                       f"are imported at once, so import fewer runs")
        checked = []
        for i, data in enumerate(items, 1):
            try:
                checked.append(_validate_export(data))
            except ConfigError as exc:
                if len(items) == 1:
                    raise
                raise ConfigError(f"run {i} of {len(items)}: {exc} Nothing was imported.") \
                    from None
        ids = []
        with self._db.tx() as tx:  # one transaction: all rows or none
            for run, metrics in checked:
                row = tx.one(
                    "INSERT INTO runs (name, spec, config, status, error, created_at, "
                    "started_at, finished_at, owner, session) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, ?) RETURNING id",
                    (run["name"], run["spec"], run["config"], run["status"], run["error"],
                     run["created_at"], run["started_at"], run["finished_at"], session))
                run_id = int(row["id"])
                tx.many(
                    "INSERT INTO metrics (run_id, kind, step, epoch, data) VALUES (?, ?, ?, ?, ?)",
                    [(run_id, *m) for m in metrics])
                ids.append(run_id)
        return ids


LATEST_TIME = 7_258_118_400  # 2200-01-01 UTC: imported times must lie before it
MAX_IMPORT_RUNS = 50  # runs in one import
MAX_IMPORT_ROWS = 100_000  # metric rows in one import
MAX_RUN_ROWS = 20_000  # metric rows of one run: a 2,000-step run logs about 2,100
MAX_RUN_STEP = 10**9  # a step or epoch number (SQLite holds 2**63; nobody trains that long)
MAX_SPEC_CHARS = 64 * 1024  # the largest preset's spec is under 2 KiB
MAX_ERROR_CHARS = 4_000
MAX_VALUES = 64  # metric names in one row


def _bad(message: str) -> ConfigError:
    return ConfigError(f"This run file cannot be imported: {message}.")


def _validate_export(data: Any) -> tuple[dict[str, Any], list[tuple[str, int, int, str]]]:
    """Check an exported run completely before anything is written."""
    if not isinstance(data, Mapping):
        raise _bad(f"it must be a JSON object, got {type(data).__name__}")
    if data.get("format") != EXPORT_FORMAT:
        raise _bad(f"its 'format' must be {EXPORT_FORMAT!r}, got {shown(data.get('format'))}")
    if data.get("version") != EXPORT_VERSION:
        raise _bad(f"its 'version' must be {EXPORT_VERSION}, got {shown(data.get('version'))}")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 500:
        raise _bad("'name' must be a non-empty text of at most 500 characters")
    if not isinstance(data.get("spec"), Mapping):
        raise _bad("'spec' must be an object (the model spec)")
    spec_json = _json(dict(data["spec"]), "the model spec")
    if len(spec_json) > MAX_SPEC_CHARS:
        raise _bad(f"its spec is {len(spec_json):,} characters long; a model spec is at most "
                   f"{MAX_SPEC_CHARS:,}")
    if not isinstance(data.get("config"), Mapping):
        raise _bad("'config' must be an object (the training config)")
    from explorer.training import TrainConfig  # the store itself does not need torch

    try:
        config = TrainConfig.from_dict(data["config"]).to_dict()
    except ConfigError as exc:
        raise _bad(f"its training config is invalid ({exc})") from exc
    except (OverflowError, ValueError, TypeError):  # e.g. a 400-digit learning rate
        raise _bad("its training config holds a value that is not a usable number") from None
    status = data.get("status")
    if status not in STATUSES:
        raise _bad(f"'status' must be one of {', '.join(STATUSES)}, got {shown(status)}")
    error = data.get("error")
    if error is not None and not isinstance(error, str):
        raise _bad("'error' must be text or null")
    if error is not None and len(error) > MAX_ERROR_CHARS:
        raise _bad(f"'error' is {len(error):,} characters long; at most {MAX_ERROR_CHARS:,} are "
                   f"kept")
    times = {}
    for key in ("created_at", "started_at", "finished_at"):
        value = data.get(key)
        if value is not None and not (_finite(value) and 0 <= value < LATEST_TIME):
            raise _bad(f"'{key}' must be Unix seconds between 1970 and 2200 or null, got "
                       f"{shown(value)}")
        times[key] = value
    if times["created_at"] is None:
        times["created_at"] = time.time()
    if status in LIVE:
        status, error = "interrupted", error or INTERRUPTED_MESSAGE
    rows = data.get("metrics", [])
    if not isinstance(rows, list):
        raise _bad("'metrics' must be a list")
    if len(rows) > MAX_RUN_ROWS:
        raise _bad(f"it holds {len(rows):,} metric rows; a run has at most {MAX_RUN_ROWS:,}")
    metrics = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping) or row.get("kind") not in KINDS:
            raise _bad(f"metrics row {i} must be an object with kind 'step' or 'epoch'")
        for key in ("step", "epoch"):
            v = row.get(key)
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= MAX_RUN_STEP:
                raise _bad(f"metrics row {i} needs a whole '{key}' from 0 to {MAX_RUN_STEP:,}, "
                           f"got {shown(v)}")
        values = row.get("values")
        if not isinstance(values, Mapping) or len(values) > MAX_VALUES or not all(
                isinstance(k, str) and len(k) <= 64 and (v is None or _finite(v))
                for k, v in values.items()):
            raise _bad(f"metrics row {i} needs 'values', an object of at most {MAX_VALUES} "
                       f"names to numbers or null")
        metrics.append((row["kind"], row["step"], row["epoch"],
                        json.dumps(dict(values), sort_keys=True)))
    run = {"name": name.strip(), "spec": spec_json,
           "config": json.dumps(config, sort_keys=True), "status": status, "error": error,
           **times}
    return run, metrics


def _finite(value: Any) -> bool:
    """A real number that a float holds: a 400-digit int is not (math.isfinite overflows)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(value, int):
        return abs(value) < 2**1000  # float's range ends near 1.8e308 = 2**1024
    return math.isfinite(value)


class StoreCallback:
    """Training callback that writes step and epoch metrics to the store as they are measured."""

    def __init__(self, store: RunStore, run_id: int) -> None:
        self.store, self.run_id = store, run_id

    def on_step_end(self, ctx: Any, metrics: Mapping[str, Any] | None) -> None:
        """One committed row per reported step (metrics is None between reports)."""
        if metrics is not None:
            self.store.add_metrics(self.run_id, "step", [metrics])

    def on_epoch_end(self, ctx: Any, metrics: Mapping[str, Any]) -> None:
        """One committed row per epoch."""
        self.store.add_metrics(self.run_id, "epoch", [metrics])
