"""`streamlit run app.py` on a free port, healthy before it is used, and Debian's Chromium:
for the browser tests (conftest, test_browser_hardening) and the class benchmarks (bench/)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"  # Debian's: `playwright install` cannot download one here
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(env: Mapping[str, str], log_path: Path,
              timeout: float = 90) -> tuple[subprocess.Popen, str]:
    """Start the app with ``env`` over this process's environment and wait for its
    /_stcore/health; (the server process, its URL). The server's output goes to ``log_path``: a
    pipe nobody reads fills up (64 KiB) and then blocks whichever server thread writes next, a
    page run among them. Not healthy within ``timeout`` s: the server is killed and the error
    carries the log's end."""
    port = free_port()
    with open(log_path, "wb") as log:  # the server writes to its own copy of the descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless",
             "true", "--server.port", str(port), "--server.address", "127.0.0.1",
             "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env=os.environ | dict(env), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
    stop_app(proc)
    raise RuntimeError(f"the Streamlit server did not become healthy within {timeout:g} s: "
                       + log_path.read_bytes().decode(errors="replace")[-2000:])


def stop_app(proc: subprocess.Popen, grace: float = 10) -> None:
    """SIGTERM, and SIGKILL after ``grace`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def app_server(env: Mapping[str, str], log_path: Path,
               timeout: float = 90) -> Iterator[tuple[subprocess.Popen, str]]:
    """``start_app`` for the length of a with block."""
    proc, url = start_app(env, log_path, timeout)
    try:
        yield proc, url
    finally:
        stop_app(proc)
