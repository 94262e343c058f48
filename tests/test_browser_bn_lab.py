"""Browser test of the Batch norm page: record a tiny run and look at its heatmap at 1280×720."""

import pytest

pytestmark = pytest.mark.browser


def metric_value(page, label: str) -> str:
    box = page.locator('[data-testid="stMetric"]', has_text=label)
    return box.locator('[data-testid="stMetricValue"]').inner_text()


def test_record_a_tiny_run_and_see_its_heatmap(app_url, page, screenshot):
    page.goto(app_url)  # a first visit opens the app at "/", as a student would
    page.wait_for_selector('[data-testid="stMetricValue"]', timeout=90_000)
    page.goto(f"{app_url}/bn_lab?bn_view=stats")
    page.get_by_role("button", name="Start recording").wait_for(timeout=90_000)

    # One epoch of BN-LeNet on the offline digits in batches of 256: 15 steps.
    for label, value in (("Epochs", "1"), ("Batch", "256")):
        box = page.get_by_label(label, exact=True)
        box.fill(value)
        box.press("Enter")
    page.get_by_role("combobox", name="Record every … steps").click()
    page.get_by_role("option", name="1", exact=True).click()
    page.wait_for_timeout(500)
    page.get_by_role("button", name="Start recording").click()
    page.get_by_text("completed.", exact=False).first.wait_for(timeout=120_000)
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=stMetricValue]')]"
        ".some(e => e.innerText === '226')", timeout=60_000)
    # BN-LeNet's BN layers have 6 + 16 + 120 + 84 = 226 channels; 15 steps, each recorded.
    assert metric_value(page, "Channels") == "226"
    assert metric_value(page, "Recorded steps") == "15"

    heatmap = page.locator('[data-testid="stPlotlyChart"]').first
    heatmap.locator(".hm, .heatmaplayer, image").first.wait_for(state="attached",
                                                                 timeout=30_000)
    heatmap.scroll_into_view_if_needed()
    assert "features.bn1: batch mean per channel" in heatmap.inner_text()
    screenshot(page, "bn-lab-heatmap")


def settle(page, timeout: int = 120_000) -> None:
    """Wait until the script run is over (Streamlit's status widget goes)."""
    page.wait_for_timeout(400)
    page.wait_for_selector("[data-testid=stStatusWidget]", state="detached", timeout=timeout)
    page.wait_for_timeout(600)


def open_tab(page) -> str:
    return page.get_by_role("tab", selected=True).inner_text()


def test_the_tab_and_its_settings_are_in_the_url_and_survive_another_page(app_url, page):
    page.goto(f"{app_url}/bn_lab?bn_view=Other+norms")
    c = page.get_by_label("C (channels)", exact=True)
    c.wait_for(timeout=90_000)
    settle(page)
    c.fill("4")
    c.press("Enter")
    settle(page)
    # Streamlit writes the bound tab and setting into the URL (a link reproduces them).
    assert "bn_view=Other+norms" in page.url and "bn_nm_c=4" in page.url
    page.get_by_role("tab", name="From scratch").click()
    settle(page)
    assert "bn_view=From+scratch" in page.url and "bn_nm_c" not in page.url
    # Another page and back through the sidebar, whose links carry no parameters.
    page.get_by_test_id("stSidebarNavLink").filter(has_text="Conv arithmetic").click()
    page.get_by_role("heading", name="Conv arithmetic").wait_for(timeout=60_000)
    page.get_by_test_id("stSidebarNavLink").filter(has_text="Batch norm").click()
    page.get_by_role("heading", name="Batch norm").wait_for(timeout=60_000)
    settle(page)
    assert open_tab(page) == "From scratch" and "bn_view=From+scratch" in page.url
    page.get_by_role("tab", name="Other norms").click()
    settle(page)
    assert page.get_by_label("C (channels)", exact=True).input_value() == "4"
    # A link written before the tabs (bn_view=fold) opens its tab.
    page.goto(f"{app_url}/bn_lab?bn_view=fold")
    page.get_by_role("tab", name="Folding", selected=True).wait_for(timeout=90_000)


PROJECTOR = {"viewport": {"width": 683, "height": 512}, "device_scale_factor": 1.5}
TABS = ["Statistics", "LeNet ± BN", "From scratch", "Train vs eval", "Batch size", "Folding",
        "Other norms"]


def test_every_tab_fits_a_projector_in_dark_mode(app_url, browser, screenshot):
    """1024×768 at 150 % zoom (683×512 CSS pixels at scale 1.5), dark system theme: no
    headline number cut, every table column shown, nothing off the page sideways."""
    from urllib.parse import quote_plus

    from test_browser_projector import MEASURE

    context = browser.new_context(**PROJECTOR, color_scheme="dark")
    page = context.new_page()
    try:
        for label in TABS:
            page.goto(f"{app_url}/bn_lab?bn_view={quote_plus(label)}")
            page.get_by_role("tab", name=label, selected=True).wait_for(timeout=90_000)
            settle(page)
            for frame in page.get_by_test_id("stDataFrame").all():
                frame.scroll_into_view_if_needed()  # Glide draws its headers once on screen
                page.wait_for_timeout(300)
            screenshot(page, f"bn-lab-projector-dark-{label.lower().replace(' ', '-')}")
            seen = page.evaluate(MEASURE)
            cut = [m for m in seen["metrics"] if m["scroll"] > m["client"]
                   or m["text"].endswith("…")]
            assert not cut, f"metrics cut on {label}: {cut}"
            hidden = [t for t in seen["tables"]
                      if t["headers"] < t["columns"] or t["scroll"] > t["client"]]
            assert not hidden, f"tables with hidden columns on {label}: {hidden}"
            assert seen["mainScroll"] <= seen["mainClient"], f"{label} runs off sideways"
    finally:
        context.close()
