"""Browser test of a class on one server: the estimate before Start, the queue, Stop."""

import re

import pytest

pytestmark = pytest.mark.browser

LINK = "/train?tr_source=preset&tr_preset=course_lenet5&tr_epochs={epochs}&tr_seed={seed}"


def per_epoch(text: str) -> float:
    """Seconds per epoch in the page's estimate ("Under 1 s per epoch…" reads as 1)."""
    if re.search(r"Under 1 s per epoch", text):
        return 1.0
    number, unit = re.search(r"About ([\d.,]+) (s|min|h) per epoch", text).groups()
    return float(number.replace(",", "")) * {"s": 1, "min": 60, "h": 3600}[unit]


def start(page, app_url: str, epochs: int, seed: int) -> tuple[str, float, str]:
    """Open the Train page as a new student, read the estimate, press Start; the run's id,
    the estimate's seconds per epoch and its whole sentence."""
    page.goto(app_url + LINK.format(epochs=epochs, seed=seed))
    estimate = page.get_by_text(re.compile(r"(About|Under) .* per epoch on this server"))
    # A fresh server's first estimate waits for the CPU's speed probes (a child process the
    # pool starts: about 3 s idle, 47 s at a load average of 10, more under a full test run).
    estimate.wait_for(timeout=240_000)
    text = estimate.inner_text()
    assert "of memory at batch size 128" in text
    page.get_by_role("button", name="Start training").click()
    page.wait_for_url(re.compile(r"run=\d+"), timeout=60_000)
    return re.search(r"run=(\d+)", page.url).group(1), per_epoch(text), text


def test_two_students_see_the_estimate_the_queue_and_stop(app_url, browser, screenshot):
    first = browser.new_context(viewport={"width": 1366, "height": 768}).new_page()
    second = browser.new_context(viewport={"width": 1366, "height": 768}).new_page()
    try:
        # One worker on this server: the first student's long run holds it.
        a, alone, _ = start(first, app_url, 40, 1)
        first.get_by_text(re.compile(f"Your run {a} is training")).wait_for(timeout=120_000)
        # The server keeps its figure of the machine's load 15 s: the second student's comes
        # after, while the first run trains.
        first.wait_for_timeout(16_000)
        b, queued, before = start(second, app_url, 1, 2)
        # Before Start, the second student read that a run trains and where theirs would wait.
        assert re.search(r"(No run is|\d+ runs? (is|are)) training and \d+ waiting: yours would "
                         r"be", before)
        # The second run waits for the first, then trains alone: its epoch is priced at the
        # machine's load without the first run (which, measured now, read up to 40 times it).
        # The page rounds to whole seconds: one more either way.
        assert queued <= 1.5 * alone + 1 and alone <= 1.5 * queued + 1, (alone, queued)
        second.get_by_text(f"Your run {b} is waiting: position 1 in the queue").wait_for(
            timeout=60_000)
        # Pressing Start again queues no duplicate: the sentence says which run it is.
        second.get_by_role("button", name="Start training").click()
        second.get_by_text(f"already queued as run {b}").wait_for(timeout=30_000)
        screenshot(second, "train-queued-second-student")
        # Its charts wait for a first report and say so, each within its chart at a quarter of
        # the screen, clear of the axis titles.
        second.wait_for_function("""() => [...document.querySelectorAll(
          '[data-testid=stMain] .annotation-text')].filter(
            a => /^No (loss|finished epoch) yet/.test(a.textContent)).length >= 2""",
                                 timeout=60_000)
        notes = second.evaluate("""() => [...document.querySelectorAll(
            '[data-testid=stMain] .js-plotly-plot')]
          .flatMap(p => [...p.querySelectorAll('.annotation-text')].map(a => {
            const t = a.getBoundingClientRect(), c = p.getBoundingClientRect();
            const y = p.querySelector('.ytitle').getBoundingClientRect();
            return {text: a.textContent, inside: t.left >= c.left && t.right <= c.right,
                    clear: t.left >= y.right || t.bottom <= y.top || t.top >= y.bottom};
          }))""")
        shown = [n for n in notes if n["text"].split(":")[0] in ("No loss yet",
                                                                 "No finished epoch yet")]
        assert len(shown) == 2 and all(n["inside"] and n["clear"] for n in shown), notes
        # While the panel redraws every second, Streamlit's own running sign and its Stop (which
        # stops only a redraw) stay hidden beside the run's Stop. The sign shows only while a
        # redraw lasts, so the page's style is read on an element of the same test id.
        hidden = """() => { const w = document.createElement('div');
          w.dataset.testid = 'stStatusWidget'; document.body.append(w);
          const v = getComputedStyle(w).visibility; w.remove(); return v; }"""
        assert first.evaluate(hidden) == "hidden"
        # The first student sees progress with an estimate of the time left.
        first.get_by_text(re.compile(r"step [\d,]+ of [\d,]+, about .* left")).wait_for(
            timeout=120_000)
        # The page's Stop (key stop_ID), not the toolbar's, which stops the script's rerun.
        second.locator(f".st-key-stop_{b} button").click()
        # Taken out of the queue, it says so: no step, no curves.
        second.get_by_text(f"Your run {b} was stopped before it trained a step").wait_for(
            timeout=30_000)
        first.locator(f".st-key-stop_{a} button").click()
        first.get_by_text(re.compile(rf"Your run {a} was stopped at step [\d,]+ of [\d,]+; what "
                                     r"it measured is kept")).wait_for(timeout=30_000)
        screenshot(first, "train-stopped-first-student")
        # The run has ended: the sign is back once the page has redrawn after the panel (the
        # panel shows "stopped" first; a CI run read the page between the two).
        first.wait_for_function(f"() => ({hidden})() === 'visible'", timeout=30_000)
    finally:
        first.context.close()
        second.context.close()


def test_the_teacher_key_is_entered_once_per_browser(browser, tmp_path, screenshot):
    """The key typed once stays through a reload and in a second tab of the same browser (the
    server remembers the browser by its cookie); another browser is a student's; Leave ends it."""
    from app_server import app_server

    env = {"EXPLORER_RUNS_DB": str(tmp_path / "runs.sqlite"), "EXPLORER_TEACHER_KEY": "chalk"}
    with app_server(env, tmp_path / "server.log") as (_, url):
        laptop = browser.new_context(viewport={"width": 1366, "height": 768})
        student = browser.new_context(viewport={"width": 1366, "height": 768})
        try:
            page = laptop.new_page()
            page.goto(url + "/train")
            key = page.get_by_label("Teacher key", exact=True)
            key.wait_for(timeout=120_000)
            key.fill("chalk")
            key.press("Enter")
            teacher = page.get_by_text("Teacher: no run limit")
            teacher.wait_for(timeout=60_000)
            page.reload()
            teacher.wait_for(timeout=120_000)
            screenshot(page, "teacher-after-reload")
            other_tab = laptop.new_page()
            other_tab.goto(url + "/train")
            other_tab.get_by_text("Teacher: no run limit").wait_for(timeout=120_000)
            them = student.new_page()
            them.goto(url + "/train")
            them.get_by_label("Teacher key", exact=True).wait_for(timeout=120_000)
            assert not them.get_by_text("Teacher: no run limit").count()
            page.get_by_role("button", name="Leave teacher mode").click()
            page.get_by_label("Teacher key", exact=True).wait_for(timeout=60_000)
            other_tab.reload()
            other_tab.get_by_label("Teacher key", exact=True).wait_for(timeout=120_000)
        finally:
            laptop.close()
            student.close()
