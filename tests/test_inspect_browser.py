"""Browser test of the Inspect page: draw a digit, click a unit, find its receptive field."""

import re
import urllib.parse

from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import expect

from explorer.registry import get_preset

RF_STROKE = "rgb(214, 39, 40)"  # inspect_charts.RF_COLOR, as the browser writes it


def _plot(page, title: str):
    plot = page.locator(".js-plotly-plot", has_text=title)
    plot.wait_for(timeout=90_000)
    plot.scroll_into_view_if_needed()
    return plot


def _idle(page) -> None:
    """Wait until the script has finished its rerun (Streamlit's running indicator is gone)."""
    page.wait_for_timeout(500)
    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')",
                           timeout=90_000)
    page.wait_for_timeout(500)


def _picture(plot) -> str:
    """The heatmap's bitmap (Plotly draws a heatmap as one data-URL image)."""
    return plot.locator("image").first.get_attribute("href") or ""


def test_draw_a_digit_click_a_unit_and_find_its_rectangle(app_url, page, screenshot):
    query = urllib.parse.urlencode(get_preset("course_lenet5").spec.to_query())
    page.goto(f"{app_url}/inspect?{query}")
    page.get_by_text("The Build page's model (untrained)").click()
    page.get_by_text("Where does a unit look?").wait_for(timeout=90_000)
    _idle(page)

    # Draw a "1": a lasso round a tall, narrow stroke in the middle of the 28×28 grid.
    page.get_by_text("Draw", exact=True).click()
    canvas = _plot(page, "Draw: drag a lasso")
    page.wait_for_timeout(1000)
    blank = _picture(canvas)
    box = canvas.locator(".nsewdrag").first.bounding_box()
    x0, x1 = box["x"] + box["width"] * 0.45, box["x"] + box["width"] * 0.58
    y0, y1 = box["y"] + box["height"] * 0.15, box["y"] + box["height"] * 0.85
    page.mouse.move(x0, y0)
    page.mouse.down()
    for x, y in ((x0, y1), (x1, y1), (x1, y0), (x0 + 1, y0)):
        page.mouse.move(x, y, steps=8)
    page.mouse.up()
    expect(canvas.locator("image").first).not_to_have_attribute("href", blank, timeout=60_000)
    _idle(page)

    # Click the unit at row 3, column 10 of features.pool1 (14×14), the layer shown first.
    sentence = page.get_by_text("features.pool1[0, 3, 10] is 6×6 pixels")
    for _ in range(3):  # a click that lands while the page redraws is lost: click again
        units = _plot(page, "features.pool1, channel 0: click a unit")
        grid = units.locator("image").first.bounding_box()  # the heatmap: exactly 14×14 cells
        page.mouse.click(grid["x"] + (10 + 0.5) / 14 * grid["width"],
                         grid["y"] + (3 + 0.5) / 14 * grid["height"], delay=100)
        try:
            sentence.wait_for(timeout=30_000)
            break
        except PlaywrightTimeout:
            _idle(page)
    expect(sentence).to_be_visible()
    _idle(page)

    # By hand: pool1 unit (y, x) sees input rows 2y−2 … 2y+3 and columns 2x−2 … 2x+3, so rows
    # 4 … 9 and columns 18 … 23: 6×6 pixels, starting 4 and 18 pixels into the 28×28 image.
    rf = _plot(page, "Theoretical field: 6×6 px")
    area = rf.locator("image").first.bounding_box()
    sx, sy = area["width"] / 28, area["height"] / 28
    found = []  # (centre x, centre y, width, height) of each red rectangle, in screen pixels
    for path in rf.locator(".shapelayer path").all():
        if RF_STROKE not in (path.get_attribute("style") or ""):
            continue
        # The box of a stroked path includes its miter joins, so take the size from the path
        # itself ("M x0,y0H x1V y1H x0Z", in screen pixels) and the centre from the box.
        x0, y0, x1, y1 = (float(v) for v in re.findall(r"-?[\d.]+", path.get_attribute("d"))[:4])
        b = path.bounding_box()
        found.append((b["x"] + b["width"] / 2, b["y"] + b["height"] / 2, abs(x1 - x0),
                      abs(y1 - y0)))
    assert found, "no receptive-field rectangle drawn"
    want = (area["x"] + 21 * sx, area["y"] + 7 * sy, 6 * sx, 6 * sy)  # centre 18 + 3, 4 + 3
    assert any(all(abs(g - w) < 2 for g, w in zip(f, want, strict=True)) for f in found), \
        (found, want)
    page.get_by_text("Where does a unit look?").scroll_into_view_if_needed()
    page.mouse.wheel(0, 200)
    page.wait_for_timeout(500)
    screenshot(page, "inspect_unit_rf")
