"""Browser test of the Compare page: Debian's Chromium, driven by Playwright, at 1280×720."""

import re

import pytest

pytestmark = pytest.mark.browser


def metric_value(page, label: str) -> str:
    box = page.locator('[data-testid="stMetric"]').filter(
        has=page.get_by_text(label, exact=True))
    return box.locator('[data-testid="stMetricValue"]').inner_text()


def test_compare_two_lenets_then_line_up_vgg11(app_url, page, screenshot):
    page.goto(f"{app_url}/compare?cmp_models=course_lenet,course_lenet5")
    page.wait_for_selector('[data-testid="stMetricValue"]', timeout=90_000)
    # The classic LeNet by hand: 156 + 2,416 + 30,840 + 10,164 + 850 = 44,426 → "44.43 k";
    # LeNet-5: 520 + 25,050 + 1,225,500 + 5,010 = 1,256,080 → "1.26 M".
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=stMetricValue]')]"
        ".map(e => e.innerText).join('|') === '44.43 k|1.26 M'", timeout=60_000)
    assert metric_value(page, "course_lenet5") == "1.26 M"
    totals = page.locator('[data-testid="stTable"]').first
    assert "1,256,080" in totals.inner_text()

    # The layer-by-layer view, then the course VGG-11 against torchvision's.
    page.get_by_role("radio", name="Layer by layer").click()
    page.wait_for_selector("text=why they differ", timeout=60_000)
    page.wait_for_url(re.compile(r"cmp_view=Layer(\+|%20)by(\+|%20)layer"), timeout=30_000)
    page.get_by_role("combobox", name="Line up").click()
    page.get_by_role("option", name="course_vgg11 ↔ vgg11", exact=True).click()
    page.wait_for_selector("text=adds an adaptive pool to 7×7", timeout=60_000)
    page.wait_for_url(re.compile(r"cmp_pair=course_vgg11(%7C|\|)vgg11"), timeout=30_000)
    summary = page.locator('[data-testid="stTable"]').first.inner_text()
    assert "Number of classes" in summary and "Input channels" in summary
    page.evaluate("window.scrollTo(0, 0)")
    screenshot(page, "compare-vgg11-layers")

    # The URL is the state: a fresh page on it shows the same pair.
    page.goto(page.url)
    page.wait_for_selector("text=adds an adaptive pool to 7×7", timeout=90_000)
    assert page.get_by_role("combobox", name="Line up").input_value() == "course_vgg11 ↔ vgg11"
    assert metric_value(page, "course_lenet") == "44.43 k"
