"""The run store as a durable queue: worker processes claim queued runs, beat, stop and finish.

Every change of a run's state is one SQL statement guarded by the state it expects, so two
workers (or a worker and a page) can never both win: a claim takes a queued run only while it is
still queued, a finish only lands while the run is still this worker's and running. On SQLite
one statement holds the file's only write lock; on PostgreSQL the claim's subquery locks the row
it picks (``FOR UPDATE SKIP LOCKED``), so claims from many machines neither collide nor wait
for each other.

Claim order is class-fair: the next run is the oldest one of the session with the fewest runs
training, so one visitor's queued runs cannot hold the whole class back.
"""

from __future__ import annotations

import json
import os
import socket
import time
import zlib
from collections.abc import Callable
from typing import Any

# A run whose worker has not beaten for this long is taken for dead (a worker beats every second).
STALE_S = 30.0
MAX_ATTEMPTS = 2  # a run whose worker's machine died is queued again once, then fails
WORKER_DIED = ("the worker process training this run ended unexpectedly ({why}); the metrics "
               "written until then are kept. {hint}")
REQUEUED = "its worker stopped ({why}); it was queued again and will start from the beginning."

# The queued runs in the order workers take them (see the module docstring).
_ORDER = ("(SELECT COUNT(*) FROM runs r WHERE r.status = 'running' "
          "AND r.session IS NOT DISTINCT FROM q.session), q.id")


def local_worker_gone(worker: str) -> bool:
    """True when ``worker`` ("host:pid:token" or "host:poolPID:token") ran on this machine and
    its process (or its pool's) has ended."""
    host, _, rest = worker.partition(":")
    pid_text = rest.split(":", 1)[0].removeprefix("pool")
    if host != socket.gethostname() or not (pid_text.isascii() and pid_text.isdigit()):
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, OSError):
        return False
    return False


class QueueOps:
    """Queue operations of ``RunStore`` (it provides ``_db``, ``_require`` and ``_run_dict``)."""

    _db: Any

    def claim(self, worker: str, device: str, device_type: str,
              max_footprint: int | None = None, budget: int | None = None
              ) -> dict[str, Any] | None:
        """Take the next queued run this worker can train, or None; atomic across processes.

        Args:
            worker: the worker's id ("host:…"), recorded with the run.
            device: where the worker trains, e.g. ``cuda:0``.
            device_type: ``cpu``, ``cuda`` or ``mps``: runs that ask for it or for ``auto``.
            max_footprint: bytes of device memory the worker may give a run (None: any).
            budget: bytes of memory the runs on this device of this host may hold together
                (a GPU shared by several workers; None: no such limit). The next run in the
                class-fair order starts only when its footprint fits in what the device's
                running runs leave; until then it waits and no later run overtakes it (a large
                run is not starved by small ones). A run larger than the whole budget never
                fits here and is passed over (admission refuses such runs). A run of unknown
                footprint counts as none: the device's slots alone bound those.
        """
        if budget is not None:
            return self._claim_within(worker, device, device_type, max_footprint, int(budget))
        now = time.time()
        limit = -1 if max_footprint is None else int(max_footprint)
        with self._db.tx() as tx:
            row = tx.one(
                "UPDATE runs SET status = 'running', worker = ?, device = ?, started_at = ?, "
                "heartbeat = ?, attempts = attempts + 1, error = NULL WHERE id = ("
                "SELECT q.id FROM runs q WHERE q.status = 'queued' AND q.job IS NOT NULL "
                "AND q.wants IN ('auto', ?) AND (? < 0 OR q.footprint IS NULL OR q.footprint <= ?) "
                f"ORDER BY {_ORDER} LIMIT 1 FOR UPDATE SKIP LOCKED) AND status = 'queued' "
                "RETURNING id, job", (worker, device, now, now, device_type, limit, limit))
        return self._claimed(row)

    def _claim_within(self, worker: str, device: str, device_type: str,
                      max_footprint: int | None, budget: int) -> dict[str, Any] | None:
        now = time.time()
        limit = budget if max_footprint is None else min(budget, int(max_footprint))
        host = worker.split(":", 1)[0] + ":"
        with self._db.tx() as tx:
            if getattr(self._db, "kind", "") == "postgresql":
                # Two workers of one GPU must not both see the same free memory: their claims
                # on this device take turns (SQLite's single write lock already does this).
                key = zlib.crc32(f"{host}{device}".encode()) - 2**31
                tx.execute("SELECT pg_advisory_xact_lock(?)", (key,))
            row = tx.one(
                "UPDATE runs SET status = 'running', worker = ?, device = ?, started_at = ?, "
                "heartbeat = ?, attempts = attempts + 1, error = NULL WHERE id = ("
                "SELECT q.id FROM runs q WHERE q.status = 'queued' AND q.job IS NOT NULL "
                "AND q.wants IN ('auto', ?) AND (q.footprint IS NULL OR q.footprint <= ?) "
                f"ORDER BY {_ORDER} LIMIT 1 FOR UPDATE SKIP LOCKED) AND status = 'queued' "
                "AND COALESCE(footprint, 0) + (SELECT COALESCE(SUM(r.footprint), 0) FROM runs r "
                "WHERE r.status = 'running' AND r.device = ? AND substr(r.worker, 1, ?) = ?) <= ? "
                "RETURNING id, job",
                (worker, device, now, now, device_type, limit, device, len(host), host, budget))
        return self._claimed(row)

    def _claimed(self, row: Any) -> dict[str, Any] | None:
        if row is None:
            return None
        run = self.get_run(int(row["id"]))  # type: ignore[attr-defined]
        run["job"] = json.loads(row["job"])
        return run

    def device_load(self, worker: str, device: str) -> tuple[int, int]:
        """(runs, bytes of their footprints) running on ``device`` of ``worker``'s host."""
        host = worker.split(":", 1)[0] + ":"
        with self._db.tx() as tx:
            row = tx.one("SELECT COUNT(*) AS n, COALESCE(SUM(footprint), 0) AS bytes FROM runs "
                         "WHERE status = 'running' AND device = ? AND substr(worker, 1, ?) = ?",
                         (device, len(host), host))
        return int(row["n"]), int(row["bytes"])

    def beat(self, run_id: int, worker: str) -> bool:
        """Record that ``worker`` is alive and training ``run_id``; True when the run must stop
        (a stop was asked for, or the run is no longer this worker's: deleted or reaped)."""
        with self._db.tx() as tx:
            row = tx.one(
                "UPDATE runs SET heartbeat = ? WHERE id = ? AND worker = ? AND status = 'running' "
                "RETURNING stop_requested", (time.time(), run_id, worker))
        return row is None or row["stop_requested"] is not None

    def stop_wanted(self, run_id: int, worker: str) -> bool:
        """True when ``worker``'s run must stop (a cheap read; ``beat`` also writes)."""
        with self._db.tx() as tx:
            row = tx.one("SELECT stop_requested FROM runs WHERE id = ? AND worker = ? "
                         "AND status = 'running'", (run_id, worker))
        return row is None or row["stop_requested"] is not None

    def request_stop(self, run_id: int) -> str:
        """Ask a run to stop: "stopped" (it was queued and is now), "stopping" (a worker ends it
        within a second) or "done" (it had already finished)."""
        now = time.time()
        with self._db.tx() as tx:
            self._require(tx, run_id)  # type: ignore[attr-defined]
            if tx.count("UPDATE runs SET status = 'stopped', stop_requested = ?, finished_at = ? "
                        "WHERE id = ? AND status = 'queued'", (now, now, run_id)):
                return "stopped"
            if tx.count("UPDATE runs SET stop_requested = COALESCE(stop_requested, ?) "
                        "WHERE id = ? AND status = 'running'", (now, run_id)):
                return "stopping"
        return "done"

    def set_total_steps(self, run_id: int, total: int) -> None:
        """The number of optimizer steps the run will take (known once training starts)."""
        with self._db.tx() as tx:
            tx.execute("UPDATE runs SET total_steps = ? WHERE id = ?", (int(total), run_id))

    def finish(self, run_id: int, worker: str, status: str, error: str | None = None) -> bool:
        """Record a final status, only while the run is still ``worker``'s and running."""
        with self._db.tx() as tx:
            return bool(tx.count("UPDATE runs SET status = ?, error = ?, finished_at = ? "
                                 "WHERE id = ? AND worker = ? AND status = 'running'",
                                 (status, error, time.time(), run_id, worker)))

    def settle_worker(self, worker: str, why: str, hint: str = "",
                      requeue: bool = False) -> list[int]:
        """Settle the runs a dead worker left running: failed with a sentence, or (``requeue``,
        for a machine that went away) queued again once. Returns their ids."""
        now = time.time()
        with self._db.tx() as tx:
            rows = tx.all("SELECT id, attempts FROM runs WHERE worker = ? AND status = 'running'",
                          (worker,))
            for row in rows:
                if requeue and row["attempts"] < MAX_ATTEMPTS:
                    tx.execute("DELETE FROM metrics WHERE run_id = ?", (row["id"],))
                    tx.execute("DELETE FROM artifacts WHERE run_id = ?", (row["id"],))
                    tx.execute(
                        "UPDATE runs SET status = 'queued', worker = NULL, device = NULL, "
                        "started_at = NULL, heartbeat = NULL, total_steps = NULL, error = ? "
                        "WHERE id = ? AND status = 'running'",
                        (REQUEUED.format(why=why), row["id"]))
                else:
                    tx.execute(
                        "UPDATE runs SET status = 'failed', error = ?, finished_at = ? "
                        "WHERE id = ? AND status = 'running'",
                        (WORKER_DIED.format(why=why, hint=hint).strip(), now, row["id"]))
        return [int(r["id"]) for r in rows]

    def reap(self, stale_s: float = STALE_S,
             dead: Callable[[str], bool] = local_worker_gone) -> list[int]:
        """Settle running runs whose worker is gone: ``dead(worker)`` says so, or it has not
        beaten for ``stale_s`` seconds (its machine may be gone: queued again once)."""
        cutoff = time.time() - stale_s
        with self._db.tx() as tx:
            rows = tx.all("SELECT DISTINCT worker, heartbeat < ? AS stale FROM runs "
                          "WHERE status = 'running' AND worker IS NOT NULL", (cutoff,))
        settled: list[int] = []
        for row in rows:
            if dead(row["worker"]):
                settled += self.settle_worker(row["worker"], "its process is gone")
            elif row["stale"]:
                settled += self.settle_worker(
                    row["worker"], f"no sign of life for {stale_s:.0f} s", requeue=True)
        return settled

    def queue_position(self, run_id: int) -> int | None:
        """1 for the run workers take next, 2 for the one after...; None unless queued."""
        with self._db.tx() as tx:
            ids = [r["id"] for r in tx.all(
                f"SELECT q.id FROM runs q WHERE q.status = 'queued' ORDER BY {_ORDER}")]
        return ids.index(run_id) + 1 if run_id in ids else None

    def outlook(self, session: str | None) -> tuple[int, int, int]:
        """(runs training, runs queued, the place a run ``session`` queued now would take):
        in the class-fair order it goes after every queued run of a session with as many
        runs training as its own or fewer (see ``_ORDER``)."""
        with self._db.tx() as tx:
            running = tx.all("SELECT session FROM runs WHERE status = 'running'")
            queued = tx.all("SELECT session FROM runs WHERE status = 'queued'")
        training = [r["session"] for r in running]
        mine = training.count(session)
        ahead = sum(training.count(r["session"]) <= mine for r in queued)
        return len(training), len(queued), ahead + 1

    def live_runs(self, session: str | None = None) -> list[dict[str, Any]]:
        """Queued and running runs, oldest first (of one session when ``session`` is given)."""
        sql = "SELECT * FROM runs WHERE status IN ('queued', 'running')"
        args: tuple[Any, ...] = ()
        if session is not None:
            sql, args = sql + " AND session = ?", (session,)
        with self._db.tx() as tx:
            rows = tx.all(sql + " ORDER BY id", args)
        return [self._run_dict(r) for r in rows]  # type: ignore[attr-defined]
