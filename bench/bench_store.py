"""Benchmark: the run store's claim and report throughput, SQLite against PostgreSQL.

Prints one JSON object per back end and number of processes. A *claim* is what a worker does to
take a queued run (``RunStore.claim``: one guarded UPDATE); a *report* is what a training run
does at every reported step (``RunStore.add_metrics`` with one row, one committed transaction).
Claims: ``--claims`` queued runs are taken by 1 or 4 processes at once until none is left; each
process finishes the run it took before it claims the next (as a worker does, so that only as
many runs are running as there are processes: the claim's fair order counts running runs).
``claims_per_s`` counts claim + finish cycles; ``claim_ms_*`` time the claim alone.
Reports: each of 1 or 4 processes writes ``--rows`` metric rows to its own run. Every process
opens its own store and waits at a barrier, so imports are not timed; the rate is the work
divided by the time from the first start to the last finish.

SQLite is a file in a temporary directory (WAL, synchronous=NORMAL: the store's settings).
PostgreSQL is a server that this script starts from Debian's package (as ``make test`` does,
see tests/pg_fixture.py) with its default, durable settings (each commit waits for its WAL to
reach the disk), or the one at ``--postgres URL``. ``postgresql-async`` is the same server with
``synchronous_commit=off`` set in the URL (``options=-csynchronous_commit%3Doff``): a commit no
longer waits for the disk, and a crash of the server or machine may lose the last fraction of a
second of reports, as a power cut may with SQLite's synchronous=NORMAL.
Timings are figures, never pass/fail.

Usage: python bench/bench_store.py [--claims 400] [--rows 300] [--postgres URL]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from explorer.runs import RunStore  # noqa: E402

JOB = {"dataset": "offline-mnist"}
ROW = {"loss": 0.6931, "train_acc": 0.5, "lr": 0.01, "images_per_s": 1234.5}


def _work(location: str, kind: str, k: int, rows: int, run_id: int | None,
          barrier: mp.synchronize.Barrier, out: mp.queues.Queue) -> None:
    """One process: claim until the queue is empty, or write ``rows`` metric rows."""
    store = RunStore(location)
    latencies: list[float] = []
    done = 0
    barrier.wait()
    start = time.time()
    if kind == "claim":
        while True:
            t = time.perf_counter()
            run = store.claim(f"bench-{k}", "cpu", "cpu")
            latencies.append(time.perf_counter() - t)
            if run is None:
                break
            store.finish(run["id"], f"bench-{k}", "completed")
            done += 1
    else:
        for step in range(1, rows + 1):
            t = time.perf_counter()
            store.add_metrics(run_id, "step", [{"step": step, "epoch": 1, **ROW}])
            latencies.append(time.perf_counter() - t)
            done += 1
    out.put((start, time.time(), done, latencies))
    store.close()


def _measure(location: str, kind: str, procs: int, claims: int, rows: int) -> dict:
    with RunStore(location) as store:
        if kind == "claim":
            for i in range(claims):
                store.create_run(f"queued {i}", {"family": "lenet"}, {}, job=JOB)
            run_ids: list[int | None] = [None] * procs
        else:
            run_ids = [store.create_run(f"reporting {k}", {"family": "lenet"}, {},
                                        status="running") for k in range(procs)]
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(procs), ctx.Queue()
    workers = [ctx.Process(target=_work, args=(location, kind, k, rows, run_ids[k], barrier,
                                               out)) for k in range(procs)]
    for w in workers:
        w.start()
    results = [out.get(timeout=600) for _ in workers]
    for w in workers:
        w.join()
    elapsed = max(r[1] for r in results) - min(r[0] for r in results)
    total = sum(r[2] for r in results)
    latencies = [x for r in results for x in r[3]]
    if kind == "claim":
        assert total == claims, f"{total} of {claims} runs claimed"  # every run exactly once
    what, one = ("claims", "claim") if kind == "claim" else ("metric_rows", "report")
    return {what: total, f"{what}_per_s": round(total / elapsed, 1),
            f"{one}_ms_median": round(1000 * statistics.median(latencies), 3),
            f"{one}_ms_p95": round(1000 * statistics.quantiles(latencies, n=20)[-1], 3)}


def _asynchronous(url: str) -> str:
    """``url`` with synchronous_commit=off for its connections (the server is unchanged)."""
    return url + ("&" if "?" in url else "?") + "options=-csynchronous_commit%3Doff"


@contextlib.contextmanager
def _locations(postgres: str | None) -> Iterator[dict]:
    """Factories of fresh stores: SQLite files, PostgreSQL databases."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-store-"))
    names = iter(range(1, 1000))
    sqlite = lambda: str(tmp / f"runs{next(names)}.sqlite")  # noqa: E731
    if postgres:
        yield {"sqlite": sqlite, "postgresql": lambda: postgres,
               "postgresql-async": lambda: _asynchronous(postgres)}
        return
    from pg_fixture import start_postgres

    with start_postgres(durable=True) as server:
        def fresh() -> str:
            name = f"bench{next(names)}"
            server.admin(f"CREATE DATABASE {name}")
            return server.url(name)
        yield {"sqlite": sqlite, "postgresql": fresh,
               "postgresql-async": lambda: _asynchronous(fresh())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--claims", type=int, default=400, help="queued runs to claim")
    p.add_argument("--rows", type=int, default=300, help="metric rows per reporting process")
    p.add_argument("--postgres", help="an existing, empty PostgreSQL database to use instead")
    a = p.parse_args()
    print(json.dumps({"machine": platform.machine(), "cpus": os.cpu_count(),
                      "python": platform.python_version(), "claims": a.claims,
                      "rows_per_process": a.rows}))
    with _locations(a.postgres) as fresh:
        for backend, new in fresh.items():
            for procs in (1, 4):
                figures = {"backend": backend, "processes": procs}
                figures |= _measure(new(), "claim", procs, a.claims, a.rows)
                figures |= _measure(new(), "metric", procs, a.claims, a.rows)
                print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
