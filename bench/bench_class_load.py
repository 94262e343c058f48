"""A class opens the app: the Streamlit server's own CPU seconds per first render and per rerun.

One Streamlit server (``EXPLORER_LOCAL_WORKERS=0``: no worker processes, so the server's CPU is
the page scripts' and Streamlit's alone) and one Chromium browser through Playwright. The server's
CPU time is utime + stime of its process from ``/proc/<pid>/stat`` (the kernel sums every thread
of the process there, live and ended; children are not in it), read before an action and again
once the page has settled: the status widget is gone and the server's CPU has stopped rising.
The server's idle CPU rate (its file watcher, heartbeats) is measured alone and subtracted.

- first render: a new browser context (a new session, as a student opening the teacher's link)
  opens the page; the server is warm (one earlier visit to each page: imports, caches), so the
  Build page's default model is cached;
- first render with cached assets: the same in a new tab of a browser that already holds
  Streamlit's static files (what the page and the session cost without the file server);
- rerun: one widget changed on the open page. Build: the number of classes, between two values
  both already analysed (a cached model); the other pages: Streamlit's rerun key ``r`` (the page
  script runs again with the same widgets, which is what any widget change costs at least).

Prints JSON: per page the median CPU-s of ``--repeats`` first renders and reruns, the cold first
visit, and the implied wall time for 30 students at once on 2 cores (30 × CPU-s / 2).
Goals (issue 11): Build first render ≤ 0.2 CPU-s, rerun ≤ 0.1 CPU-s (30 students in < 5 s).

Usage: python bench/bench_class_load.py [--repeats 5] [--pages build,conv] [--profile FILE]
(--profile: py-spy, from requirements-dev.txt, samples the server's threads while the pages are
measured and writes their collapsed stacks to FILE, for flame graphs or grep.)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from app_server import CHROMIUM, CHROMIUM_ARGS, start_app  # noqa: E402 (tests/app_server.py)

TICK = os.sysconf("SC_CLK_TCK")
STUDENTS, CORES = 30, 2
# name → URL path (as app.py's st.navigation serves them)
PAGES = {"build": "", "train": "train", "bn_lab": "bn_lab", "compare": "compare",
         "conv": "conv", "gallery": "gallery", "inspect": "inspect", "readme": "readme"}
NOT_RUNNING = "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # fields 14 and 15 of proc(5)


def start_server(tmp: Path) -> tuple[subprocess.Popen, str]:
    """The app with no worker processes, its store and data in ``tmp``; (process, URL)."""
    return start_app({"EXPLORER_LOCAL_WORKERS": "0", "EXPLORER_RUNS_DB": str(tmp / "runs.sqlite"),
                      "EXPLORER_DATA_DIR": str(tmp / "data")}, tmp / "server.log", timeout=120)


def idle_rate(pid: int, seconds: float = 6.0) -> float:
    """The server's CPU-s per second with no visitor acting."""
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - c0) / (time.monotonic() - t0)


def settle(page, pid: int, rate: float, quiet: float = 1.0, timeout: float = 180.0) -> float:
    """Wait until the page is drawn and the server's CPU has been still for ``quiet`` seconds;
    return the time at which it last rose (so the idle correction covers only the work)."""
    page.wait_for_selector('[data-testid="stApp"]', timeout=timeout * 1000)
    page.wait_for_timeout(300)  # the rerun message reaches the server, the status widget shows
    page.wait_for_function(NOT_RUNNING, timeout=timeout * 1000)
    last, last_rise = cpu_seconds(pid), time.monotonic()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = cpu_seconds(pid)
        # A rise above the idle rate (plus one clock tick) means the server is still at work.
        if now - last > rate * 0.1 + 1.0 / TICK:
            last_rise = time.monotonic()
        last = now
        if time.monotonic() - last_rise >= quiet:
            return last_rise
    raise RuntimeError("the server's CPU did not settle")


def measure(pid: int, rate: float, page, action) -> float:
    """Server CPU-s of ``action`` (idle CPU over the same span subtracted)."""
    c0, t0 = cpu_seconds(pid), time.monotonic()
    action()
    end = settle(page, pid, rate)
    return max(0.0, cpu_seconds(pid) - c0 - rate * (end - t0))


def build_classes(page, value: int):
    """An action: type ``value`` into the Build page's number of classes (in More settings)."""
    def act() -> None:
        box = page.get_by_label("Classes", exact=True)
        if not box.is_visible():
            page.get_by_text("More settings").click()
            box.wait_for(timeout=30_000)
        box.fill(str(value))
        box.press("Enter")
    return act


def rerun_key(page):
    """An action: Streamlit's rerun shortcut (``r`` with the focus outside any input)."""
    def act() -> None:
        page.evaluate("() => document.activeElement && document.activeElement.blur()")
        page.keyboard.press("r")
    return act


def run_page_bench(browser, url: str, pid: int, rate: float, name: str, repeats: int) -> dict:
    """Cold first visit, then ``repeats`` first renders (new contexts) and reruns."""
    target = f"{url}/{PAGES[name]}"

    def new_page():
        ctx = browser.new_context(viewport={"width": 1280, "height": 720})
        return ctx, ctx.new_page()

    ctx, page = new_page()
    cold = measure(pid, rate, page, lambda: page.goto(target))
    if name == "build":  # analyse both class counts once, so reruns hit the cache
        for v in (11, 10):
            build_classes(page, v)()
            settle(page, pid, rate)
    ctx.close()
    firsts, reruns = [], []
    for _ in range(repeats):
        ctx, page = new_page()
        firsts.append(measure(pid, rate, page, lambda p=page: p.goto(target)))
        if name == "build":
            page.get_by_text("More settings").click()  # drawn in the browser, no rerun
            page.get_by_label("Classes", exact=True).wait_for(timeout=30_000)
            act = build_classes(page, 11)  # from the preset's 10: analysed in the warm-up
        else:
            act = rerun_key(page)
        reruns.append(measure(pid, rate, page, act))
        ctx.close()
    # The same first render from a browser that already holds Streamlit's static files (a
    # student's second visit, a new tab): the page's own cost without the ~4.6 MB of scripts
    # and fonts that Streamlit's static file server sends to a new browser.
    ctx = browser.new_context(viewport={"width": 1280, "height": 720})
    page = ctx.new_page()
    page.goto(target)
    settle(page, pid, rate)
    cached = []
    for _ in range(repeats):
        tab = ctx.new_page()
        cached.append(measure(pid, rate, tab, lambda t=tab: t.goto(target)))
        tab.close()
    ctx.close()
    first, rerun = statistics.median(firsts), statistics.median(reruns)
    return {"cold_first_visit_cpu_s": round(cold, 3),
            "first_render_cpu_s": round(first, 3), "rerun_cpu_s": round(rerun, 3),
            "first_render_cached_assets_cpu_s": round(statistics.median(cached), 3),
            "first_render_all": [round(x, 3) for x in firsts],
            "rerun_all": [round(x, 3) for x in reruns],
            "rerun_action": "classes 10→11 (cached)" if name == "build" else "rerun key r",
            "class_of_30_first_render_s": round(STUDENTS * first / CORES, 2),
            "class_of_30_first_render_cached_assets_s":
                round(STUDENTS * statistics.median(cached) / CORES, 2),
            "class_of_30_rerun_s": round(STUDENTS * rerun / CORES, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile", help="write the server's collapsed stacks (py-spy) here")
    parser.add_argument("--pages", default=",".join(PAGES),
                        help="comma-separated, of: " + ", ".join(PAGES))
    args = parser.parse_args()
    names = [n.strip() for n in args.pages.split(",") if n.strip()]
    unknown = [n for n in names if n not in PAGES]
    if unknown:
        parser.error(f"unknown page(s) {unknown}; known: {', '.join(PAGES)}")
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(Path(tmp))
        try:
            time.sleep(2)
            rate = idle_rate(proc.pid)
            startup = cpu_seconds(proc.pid)
            spy = None
            if args.profile:  # sampling costs the server nothing: py-spy reads its memory
                spy = subprocess.Popen(
                    [str(Path(sys.executable).parent / "py-spy"), "record", "--pid",
                     str(proc.pid), "--format", "raw", "--threads", "--rate", "200",
                     "--output", args.profile], stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL)
                time.sleep(1)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                results = {n: run_page_bench(browser, url, proc.pid, rate, n, args.repeats)
                           for n in names}
                browser.close()
            if spy is not None:
                spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
                spy.wait(timeout=60)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
    b = results.get("build", {})
    print(json.dumps({
        "bench": "class_load", "repeats": args.repeats, "cores": CORES, "students": STUDENTS,
        "server_startup_cpu_s": round(startup, 2), "server_idle_cpu_s_per_s": round(rate, 4),
        "pages": results,
        "goal_build_first_render_cpu_s": 0.2, "goal_build_rerun_cpu_s": 0.1,
        "build_meets_goal": bool(b) and b["first_render_cpu_s"] <= 0.2
        and b["rerun_cpu_s"] <= 0.1,
        "build_meets_goal_cached_assets": bool(b) and b["first_render_cached_assets_cpu_s"] <= 0.2
        and b["rerun_cpu_s"] <= 0.1,
    }, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
