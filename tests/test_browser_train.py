"""Browser test of the Train page: start a run and watch the live chart update."""

import pytest

pytestmark = pytest.mark.browser


def points(title: str) -> str:
    """JS: the number of points of the first trace of the Plotly chart with this title."""
    return f"""() => {{
  const plots = [...document.querySelectorAll('.js-plotly-plot')];
  const fig = plots.find(p => (p.layout && p.layout.title && p.layout.title.text || '')
                               .includes('{title}'));
  // Plotly decodes the (base64-packed) arrays into _fullData; _length counts the points.
  return fig && fig._fullData && fig._fullData.length ? fig._fullData[0]._length : 0;
}}"""


POINTS = points("Training loss")


def test_start_a_run_and_see_the_loss_curve_grow(app_url, browser, page, screenshot):
    # Two epochs of the course LeNet-5 on the offline digits (31 steps each, metrics every 5).
    page.goto(f"{app_url}/train?tr_epochs=2&tr_preset=course_lenet5")
    page.get_by_role("button", name="Start training").wait_for(timeout=90_000)
    page.get_by_text("Preset", exact=True).first.click()
    page.get_by_role("combobox").first.wait_for()
    page.get_by_role("button", name="Start training").click()
    page.wait_for_function(f"() => ({POINTS})() >= 2", timeout=120_000)
    first = page.evaluate(POINTS)
    # The fragment redraws every second: the same chart gains points without a reload.
    page.wait_for_function(f"() => ({POINTS})() > {first}", timeout=120_000)
    page.get_by_text("completed").first.wait_for(timeout=180_000)
    page.wait_for_function(f"() => ({points('Accuracy per epoch')})() == 2", timeout=60_000)
    assert page.evaluate(POINTS) >= 12  # 62 steps reported every 5 steps
    screenshot(page, "train-live-run")

    # A reload in the same browser still owns the run (the visitor is the browser, not the tab);
    # another browser sees the run as someone else's.
    run_id = page.url.split("run=")[1].split("&")[0]
    page.reload()
    page.get_by_text(f"Your run {run_id} completed").wait_for(timeout=90_000)
    other = browser.new_context(viewport={"width": 1280, "height": 720}).new_page()
    other.goto(f"{app_url}/train?run={run_id}")
    other.get_by_text(f"Run {run_id} completed").wait_for(timeout=90_000)
    assert other.get_by_text(f"Your run {run_id}").count() == 0
    other.context.close()
