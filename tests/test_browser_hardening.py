"""A fresh server's first visitors arrive together; text from links is never Markdown (issue 11).

Each test starts its own server: the import race needs one that has served nobody yet.
"""

from __future__ import annotations

import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from app_server import app_server
from playwright.sync_api import TimeoutError as PlaywrightTimeout

pytestmark = pytest.mark.browser


@contextmanager
def fresh_server(tmp: Path) -> Iterator[str]:
    """`streamlit run app.py` on a free port, healthy, that no browser has opened yet."""
    with app_server({"EXPLORER_RUNS_DB": str(tmp / "runs.sqlite")}, tmp / "server.log") as (_, url):
        yield url


@pytest.fixture
def chromium(browser):
    """The session's Chromium (conftest): Playwright's sync API allows one instance at a time."""
    return browser


def _settled(page, title: str) -> str:
    """Wait until the page shows its title and has stopped running; return its text."""
    page.get_by_role("heading", name=title).first.wait_for(timeout=120_000)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=120_000)
    return page.inner_text("body")


def test_three_pages_of_a_fresh_server_opened_at_once_all_render(chromium, tmp_path):
    # Three students open the teacher's links in the same second.
    pages = {"conv": "Conv arithmetic", "train": "Train", "compare": "Compare networks"}
    with fresh_server(tmp_path) as url:
        tabs = {}
        for path in pages:
            tab = chromium.new_context(viewport={"width": 1280, "height": 720}).new_page()
            tabs[path] = tab
        # goto waits for the load event only: the three script runs start together.
        for path, tab in tabs.items():
            tab.goto(f"{url}/{path}", wait_until="commit")
        for path, tab in tabs.items():
            title = pages[path]
            try:
                text = _settled(tab, title)
            except Exception:  # noqa: BLE001 - report what the page shows instead
                text = tab.inner_text("body")
            assert tab.locator("[data-testid='stException']").count() == 0, (path, text[:800])
            for word in ("ImportError", "Traceback", "cannot import name", "went wrong"):
                assert word not in text, (path, word, text[:800])
            assert title in text, (path, text[:800])
            # Run through app.py (its sidebar), not as a lone script of Streamlit's pages/
            # folder mode, which a fresh server uses until app.py first calls st.navigation.
            assert "Trains on:" in text, (path, text[:800])


EVIL_IMAGE = "![t](http://evil.example/x.png)"
EVIL_LINK = "[click here](http://evil.example/)"


def test_text_from_links_is_shown_as_text_never_as_an_image_or_a_link(chromium, tmp_path,
                                                                      screenshot):
    requests_out: list[str] = []
    with fresh_server(tmp_path) as url:
        context = chromium.new_context(viewport={"width": 1280, "height": 720})
        # Nothing may reach the outside host; the browser asks for it only if it drew an <img>.
        context.route("http://evil.example/**", lambda route: (requests_out.append(
            route.request.url), route.abort()))
        tab = context.new_page()
        cases = {
            "conv": ("Conv arithmetic", {"conv_c": EVIL_IMAGE, "conv_k": EVIL_LINK}),
            "compare": ("Compare networks", {"cmp_models": f"lenet,{EVIL_IMAGE},{EVIL_LINK}",
                                             "cmp_view": EVIL_LINK}),
            "train": ("Train", {"tr_lr": EVIL_IMAGE, "tr_optimizer": EVIL_LINK,
                                "run": EVIL_LINK}),
        }
        for path, (title, params) in cases.items():
            tab.goto(f"{url}/{path}?{urllib.parse.urlencode(params)}")
            _settled(tab, title)
            # The warning may come a rerun after the title on a busy machine.
            tab.wait_for_function("() => document.body.innerText.includes('evil.example')",
                                  timeout=60_000)
            text = tab.inner_text("body")
            screenshot(tab, f"markdown-from-links-{path}")
            # The warning names the values as typed.
            assert "evil.example" in text, (path, text[:1500])
            # No image or link to the outside host (the page's own links may carry the URL's
            # parameters, percent-encoded, to other pages of the app).
            for selector in ("img[src*='//evil.example']", "a[href^='http://evil.example']",
                             "a[href^='//evil.example']"):
                found = tab.locator(selector)
                assert found.count() == 0, (path, [found.nth(i).evaluate("e => e.outerHTML")
                                                   for i in range(found.count())])
            assert tab.locator("[data-testid='stException']").count() == 0, path
    assert requests_out == []


def test_the_onnx_file_is_exported_when_clicked_not_kept_in_the_session(chromium, tmp_path):
    import onnx

    with fresh_server(tmp_path) as url:
        tab = chromium.new_context(viewport={"width": 1280, "height": 720},
                                   accept_downloads=True).new_page()
        tab.goto(f"{url}/?preset=course_lenet")
        _settled(tab, "Build a network")
        tab.get_by_text("Share & export", exact=True).click()
        button = tab.get_by_role("button", name="ONNX (for Netron)")
        button.wait_for(timeout=60_000)
        with tab.expect_download(timeout=120_000) as info:
            button.click()
        path = tmp_path / "model.onnx"
        info.value.save_as(path)
    model = onnx.load(str(path))
    # The course LeNet: two convs and three linear layers (LECTURES.md), so five weight tensors.
    weights = [t for t in model.graph.initializer if len(t.dims) > 1]
    assert len(weights) == 5
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim][1:] == [1, 28, 28]


def test_the_conv_page_address_follows_its_widgets_and_reopens_them(browser, app_url):
    """Conv arithmetic's widgets are bound to the URL by Streamlit: the browser writes an edit
    into the address (defaults are left out), and that address reopens the same layer."""
    import re

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    try:
        tab.goto(f"{app_url}/conv")
        tab.wait_for_selector(".working-box", timeout=90_000)
        filters = tab.get_by_label("Filters (output channels)")
        filters.fill("8")
        filters.press("Enter")
        tab.wait_for_url(re.compile(r"conv_out=8"), timeout=30_000)
        tab.get_by_text("Pooling", exact=True).click()
        tab.wait_for_url(re.compile(r"conv_mode=Pooling"), timeout=30_000)
        tab.wait_for_selector("text=Window", timeout=30_000)
        # The hidden widgets leave the address when the run that no longer draws them ends,
        # after the mode is written: wait for that run, not a fixed time.
        with suppress(PlaywrightTimeout):
            tab.wait_for_url(lambda u: "conv_out=" not in u, timeout=30_000)
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(tab.url).query))
        # Hidden in pooling mode, the filters leave the address; Streamlit keeps their value.
        assert "conv_out" not in query and "conv_h" not in query, tab.url
        tab.get_by_text("Convolution", exact=True).click()
        tab.wait_for_url(re.compile(r"conv_out=8"), timeout=30_000)
        again = context.new_page()
        again.goto(tab.url)
        again.wait_for_selector(".working-box", timeout=90_000)
        # 8 filters 5×5 on 1×28×28 with bias: 8·25 + 8 = 208 parameters.
        again.wait_for_function(
            "() => document.body.innerText.includes('8·(1·5·5) + 8 (bias) = 208')",
            timeout=60_000)
    finally:
        context.close()
