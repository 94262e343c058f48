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
