"""Benchmark: issue 11's fuzz bound, "0 tracebacks, and no case over 2 s or 1 GB", measured.

Feeds every entry point a visitor reaches with text (a Build link, the Compare page's link box,
the tuple box, a spec upload, ``python -m explorer summary FILE``, a run import of a .json or a
.zip with weights, a run id in a URL) the hostile corpus in tests/fuzz_corpus/, the large inputs
that tests/test_fuzz_inputs.py generates (a million pasted rows, a 30 MB spec, 300,000 metric
rows, ...) and a sample of its hypothesis strategies. The entry points are the test's own, so
the two cannot drift apart. Tests assert no timings; this prints them, as JSON:

- ``cases``, ``tracebacks`` (answers other than a result or one ConfigError sentence, listed);
- ``max_seconds`` per case (wall clock and process CPU), with the slowest cases;
- ``max_rss_growth_mb``: the largest rise of the process's peak resident memory during one case
  (``resource.getrusage``; every allocation, torch's included);
- ``max_python_peak_mb``: the largest peak of Python allocations in one case (``tracemalloc``,
  a second pass, since tracing slows every case down).

Usage: python bench/bench_fuzz.py [--examples 60] [--no-tracemalloc]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import resource
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import test_fuzz_inputs as fz  # noqa: E402  (the test's entry points and strategies)
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from explorer.__main__ import main as cli_main  # noqa: E402
from explorer.bounded import parse_id  # noqa: E402
from explorer.errors import ConfigError  # noqa: E402
from explorer.forms import form_fields  # noqa: E402
from explorer.runs import RunStore  # noqa: E402
from explorer.specs import SPEC_TYPES, coerce_field, spec_from_query  # noqa: E402

GOAL_SECONDS, GOAL_BYTES = 2.0, 1024**3


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


class Runner:
    """Runs each case once, timed; an exception other than ConfigError is a traceback."""

    def __init__(self, trace_memory: bool) -> None:
        self.trace_memory = trace_memory
        self.rows: list[dict[str, Any]] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="bench_fuzz_"))
        self.n_stores = 0

    def store(self) -> RunStore:
        self.n_stores += 1
        return RunStore(self.tmp / f"runs{self.n_stores}.sqlite")

    def case(self, entry: str, name: str, fn: Callable[[], Any]) -> None:
        error = None
        rss0, cpu0, t0 = _peak_rss(), time.process_time(), time.perf_counter()
        if self.trace_memory:
            tracemalloc.start()
        try:
            fn()
        except ConfigError:
            pass  # a sentence is an answer
        except BaseException as exc:  # noqa: BLE001 - what this benchmark counts
            error = f"{type(exc).__name__}: {str(exc)[:200]}"
        finally:
            peak = tracemalloc.get_traced_memory()[1] if self.trace_memory else None
            if self.trace_memory:
                tracemalloc.stop()
        self.rows.append({"entry": entry, "case": name[:80], "error": error,
                          "seconds": time.perf_counter() - t0,
                          "cpu_seconds": time.process_time() - cpu0,
                          "rss_growth": _peak_rss() - rss0, "python_peak": peak})


def cli_summary(path: Path) -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli_main(["summary", str(path), "--format", "json"])
    if code not in (0, 2) or "Traceback" in err.getvalue():
        raise AssertionError(f"exit {code}: {err.getvalue()[-200:]}")


def corpus_cases(r: Runner) -> None:
    for path in sorted(fz.CORPUS.glob("*_*")):
        prefix, name = path.name.split("_", 1)[0], path.name
        if prefix == "link":
            r.case("link", name, lambda p=path: fz.from_link(p.read_text()))
        elif prefix == "paste":
            def paste(p: Path = path) -> None:
                text = p.read_text()
                for cls in SPEC_TYPES.values():
                    for f in form_fields(cls):
                        if f.kind in ("rows", "list", "stages"):
                            fz.pasted(text, cls, f.name)
            r.case("paste", name, paste)
        elif prefix == "spec":
            r.case("spec upload", name, lambda p=path: fz.uploaded_spec(p.read_bytes(), p.name))
            r.case("cli summary", name, lambda p=path: cli_summary(p))
        elif prefix == "runs":
            r.case("run import", name,
                   lambda p=path: fz.imported_runs(p.read_bytes(), p.name, r.store()))
        elif prefix == "id":
            r.case("run id", name, lambda p=path: fz.answers(parse_id, p.read_text(), "run"))


def large_cases(r: Runner) -> None:
    rows = "(" + ", ".join(["(1, 64)"] * 1_000_000) + ")"
    r.case("paste", "10^6 pasted rows", lambda: fz.pasted(rows))
    r.case("paste", "10^6 rows as a list",
           lambda: fz.answers(coerce_field, SPEC_TYPES["vgg"], "arch", [[1, 64]] * 1_000_000))
    r.case("link", "100,000-entry list",
           lambda: fz.from_link("?family=lenet&hidden=[" + ",".join(["1"] * 100_000) + "]"))
    r.case("link", "the issue's alexnet link", lambda: fz.from_link(
        "/?family=alexnet&input_shape=[3,256,256]&convs=[[500,31,1,15,false],"
        "[500,31,1,15,false]]&hidden=[]&avgpool_size=1"))
    metric_rows = [{"kind": "step", "step": i, "epoch": 0, "values": {"loss": 1.0}}
                   for i in range(300_000)]
    big = {
        "300,000 rows": fz.run_export(metrics=metric_rows),
        "30 MB spec": fz.run_export(spec={"family": "lenet", "note": "x" * (30 * 2**20)}),
        "60 runs": {"format": "cnn-explorer/runs", "runs": [fz.run_export()] * 60},
        "6 runs of 19,000 rows": {"format": "cnn-explorer/runs",
                                  "runs": [fz.run_export(metrics=metric_rows[:19_000])] * 6},
    }
    for name, doc in big.items():
        data = json.dumps(doc).encode()
        r.case("run import", name, lambda d=data: fz.imported_runs(d, "big.json", r.store()))


def hypothesis_cases(r: Runner, examples: int) -> None:
    sample = settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))

    @sample
    @given(fz.link_params())
    def links(params: dict[str, str]) -> None:
        def run() -> None:
            spec = fz.answers(spec_from_query, params)
            if not isinstance(spec, ConfigError):
                fz.answers(fz.check_spec, spec)
        r.case("link (hypothesis)", str(params), run)

    fields = [(cls, f.name) for cls in SPEC_TYPES.values() for f in form_fields(cls)
              if f.kind in ("rows", "list", "stages")]

    @sample
    @given(st.sampled_from(fields), st.one_of(fz.json_values.map(repr),
                                              st.sampled_from(fz.SPECIAL_TEXT),
                                              st.text(max_size=60)))
    def pastes(field: tuple[type, str], text: str) -> None:
        r.case("paste (hypothesis)", text, lambda: fz.pasted(text, *field))

    @sample
    @given(st.one_of(fz.json_values.map(lambda v: json.dumps(v, allow_nan=True).encode()),
                     st.binary(max_size=200)))
    def specs(data: bytes) -> None:
        r.case("spec upload (hypothesis)", repr(data), lambda: fz.uploaded_spec(data, "u.json"))

    @sample
    @given(st.text(max_size=30))
    def ids(text: str) -> None:
        r.case("run id (hypothesis)", text, lambda: fz.answers(parse_id, text, "run"))

    @sample
    @given(st.binary(max_size=300).map(lambda b: b"PK\x03\x04" + b))
    def zips(data: bytes) -> None:
        r.case("run import (hypothesis zip)", repr(data),
               lambda: fz.imported_runs(data, "runs.zip", r.store()))

    @sample
    @given(fz.zip_mutations)
    def mutated_zips(mutation: tuple[list[tuple[float, int]], float]) -> None:
        data = fz.mutate(fz.exported_zip(), *mutation)
        r.case("run import (mutated export zip)", repr(mutation),
               lambda: fz.imported_runs(data, "runs.zip", r.store()))

    for fn in (links, pastes, specs, ids, zips, mutated_zips):
        fn()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=60, help="per hypothesis strategy")
    parser.add_argument("--no-tracemalloc", action="store_true")
    args = parser.parse_args()
    for cls in SPEC_TYPES.values():  # warm-up, as the test's fixture: torch's lazy imports
        with contextlib.suppress(ConfigError):
            fz.check_spec(cls())
    passes = [False] + ([] if args.no_tracemalloc else [True])
    results: list[Runner] = []
    for trace in passes:
        r = Runner(trace)
        corpus_cases(r)
        large_cases(r)
        hypothesis_cases(r, args.examples)
        results.append(r)
    timed = results[0].rows
    tracebacks = [f"{row['entry']}: {row['case']}: {row['error']}" for r in results
                  for row in r.rows if row["error"]]
    slowest = sorted(timed, key=lambda row: -row["seconds"])[:5]
    traced = results[-1].rows if len(results) > 1 else []
    max_seconds = max(row["seconds"] for row in timed)
    max_rss = max(row["rss_growth"] for row in timed)
    max_py = max((row["python_peak"] for row in traced), default=None)
    by_entry: dict[str, int] = {}
    for row in timed:
        by_entry[row["entry"]] = by_entry.get(row["entry"], 0) + 1
    print(json.dumps({
        "cases": len(timed), "cases_by_entry_point": by_entry,
        "tracebacks": len(tracebacks), "traceback_cases": tracebacks[:20],
        "max_seconds": round(max_seconds, 3),
        "max_cpu_seconds": round(max(row["cpu_seconds"] for row in timed), 3),
        "slowest": [{"entry": s["entry"], "case": s["case"][:60],
                     "seconds": round(s["seconds"], 3)} for s in slowest],
        "max_rss_growth_mb": round(max_rss / 2**20, 1),
        "max_python_peak_mb": None if max_py is None else round(max_py / 2**20, 1),
        "goal": {"tracebacks": 0, "max_seconds": GOAL_SECONDS, "max_mb": GOAL_BYTES // 2**20},
        "within_goal": not tracebacks and max_seconds <= GOAL_SECONDS
        and max_rss <= GOAL_BYTES and (max_py or 0) <= GOAL_BYTES,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_1min": round(os.getloadavg()[0], 2)},
    }, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
