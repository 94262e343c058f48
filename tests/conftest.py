"""Shared test set-up: in CI (CI=true) a skipped test is a failure."""

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from app_server import CHROMIUM, CHROMIUM_ARGS, ROOT, app_server
from pg_fixture import postgres_server, postgres_url, store_url  # noqa: F401 (fixtures)

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

# Tests never write runs.sqlite or read ./data in the checkout.
_TMP = tempfile.mkdtemp(prefix="explorer-tests-")
os.environ.setdefault("EXPLORER_RUNS_DB", os.path.join(_TMP, "runs.sqlite"))
os.environ.setdefault("EXPLORER_DATA_DIR", os.path.join(_TMP, "data"))
# Runs on a PostgreSQL store keep their weights here, and the machine's speed calibration.
os.environ.setdefault("EXPLORER_WEIGHTS_DIR", os.path.join(_TMP, "weights"))
os.environ.setdefault("XDG_CACHE_HOME", os.path.join(_TMP, "cache"))


@pytest.fixture
def one_thread():
    """One torch thread: training tests are faster and steadier on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if os.environ.get("CI") == "true" and skipped:
        reporter.write_line(f"CI=true: {skipped} skipped test(s) count as failures", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# ---- Browser tests: one Streamlit server per session, Debian's Chromium through Playwright ----

ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="session")
def app_runs_db(tmp_path_factory) -> Path:
    """The SQLite file of the browser tests' server (app_url): a test reads which runs exist."""
    return tmp_path_factory.mktemp("runs") / "runs.sqlite"


@pytest.fixture(scope="session")
def app_url(tmp_path_factory, app_runs_db) -> Iterator[str]:
    """`streamlit run app.py` on a free port, healthy (tests/app_server.py)."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    with app_server({"EXPLORER_RUNS_DB": str(app_runs_db)}, log) as (_, url):
        yield url


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    """A fresh 1280×720 page (a projector's resolution)."""
    context = browser.new_context(viewport={"width": 1280, "height": 720})
    pg = context.new_page()
    yield pg
    context.close()


@pytest.fixture
def screenshot():
    """save(page, name): a PNG under test-artifacts/ (look at it: a page not seen is not done)."""
    def save(pg, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        pg.screenshot(path=str(path))
        return path
    return save
