"""Benchmark: the Streamlit server's CPU for serving its own JavaScript, CSS and fonts (issue 11).

A first render from an empty browser cache costs the server about 0.2 CPU-s, nearly all of it
sending Streamlit's static files (some 85 files, 4.6 MB, for the Build page). Streamlit 1.67
serves them with Starlette's ``StaticFiles`` under uvicorn, uncompressed (it bypasses gzip for
them on purpose), so what remains is uvicorn's HTTP handling and the file streaming. uvicorn
picks its event loop and HTTP parser itself (``loop="auto"``, ``http="auto"``): uvloop and
httptools when they are installed (``uvicorn[standard]``), else asyncio and the pure-Python h11.

This fetches every file under Streamlit's ``static/`` folder (``--rounds`` times, over one
keep-alive connection, as a browser does) from one server per variant started side by side, the
rounds alternating, and reads each server's CPU seconds from ``/proc``; a variant is a
``PYTHONPATH`` to add (``--extra NAME=PATH``, e.g. a folder where uvloop and httptools were
installed with ``pip install --target``). Prints JSON: per variant the server's CPU-s per
request and per MB, and what that implies for a first render's 85 files and 4.6 MB.

Usage: python bench/bench_static_serving.py [--rounds 5] [--extra standard=/tmp/uvicorn-standard]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

import streamlit  # noqa: E402
from bench_class_load import cpu_seconds, start_server  # noqa: E402

STATIC = Path(streamlit.__file__).parent / "static"
FIRST_RENDER_FILES, FIRST_RENDER_MB = 85, 4.6  # measured by bench_class_load's browser


def fetch_all(url: str, paths: list[str]) -> int:
    """GET every path over one keep-alive connection; returns the bytes received."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    total = 0
    for p in paths:
        conn.request("GET", p, headers={"Accept-Encoding": "gzip, br"})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{p}: HTTP {resp.status}")
        total += len(body)
    conn.close()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--extra", action="append", default=[],
                        help="NAME=PATH: a variant whose server has PATH on its PYTHONPATH")
    args = parser.parse_args()
    paths = sorted("/" + p.relative_to(STATIC).as_posix() for p in STATIC.rglob("*")
                   if p.is_file() and p.name != "index.html")
    variants = {"plain": None} | dict(v.split("=", 1) for v in args.extra)
    servers = {}
    base_env = os.environ.get("PYTHONPATH", "")
    try:
        for name, extra in variants.items():
            if extra:
                os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (extra, base_env) if p)
            servers[name] = start_server(Path(tempfile.mkdtemp(prefix=f"static_{name}_")))
            os.environ["PYTHONPATH"] = base_env
        cpu: dict[str, list[float]] = {n: [] for n in variants}
        sizes: dict[str, int] = {}
        for name, (_proc, url) in servers.items():  # warm-up: first reads of each file
            sizes[name] = fetch_all(url, paths)
        for _ in range(args.rounds):
            for name, (proc, url) in servers.items():
                c0 = cpu_seconds(proc.pid)
                fetch_all(url, paths)
                cpu[name].append(cpu_seconds(proc.pid) - c0)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(30)
    out = {"files": len(paths), "mb": round(sizes["plain"] / 1e6, 2), "rounds": args.rounds,
           "variants": {}}
    for name in variants:
        med = statistics.median(cpu[name])
        per_req, per_mb = med / len(paths), med / (sizes[name] / 1e6)
        out["variants"][name] = {
            "cpu_s_all_files": round(med, 3), "all_rounds": [round(c, 3) for c in cpu[name]],
            "cpu_ms_per_request": round(1000 * per_req, 3),
            "cpu_ms_per_mb": round(1000 * per_mb, 2),
            # the first render's share, scaled by its files and by its bytes
            "first_render_by_files_cpu_s": round(FIRST_RENDER_FILES * per_req, 3),
            "first_render_by_mb_cpu_s": round(FIRST_RENDER_MB * per_mb, 3),
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
