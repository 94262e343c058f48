"""Browser test of a class on one server: the estimate before Start, the queue, Stop."""

import re

import pytest

pytestmark = pytest.mark.browser

LINK = "/train?tr_source=preset&tr_preset=course_lenet5&tr_epochs={epochs}&tr_seed={seed}"


def start(page, app_url: str, epochs: int, seed: int) -> str:
    """Open the Train page as a new student, read the estimate, press Start; the run's id."""
    page.goto(app_url + LINK.format(epochs=epochs, seed=seed))
    estimate = page.get_by_text(re.compile(r"(About|Under) .* per epoch on this server"))
    # A fresh server's first estimate waits for the CPU's speed probes (a child process the
    # pool starts: about 3 s idle, 47 s at a load average of 10, more under a full test run).
    estimate.wait_for(timeout=240_000)
    assert "of memory at batch size 128" in estimate.inner_text()
    page.get_by_role("button", name="Start training").click()
    page.wait_for_url(re.compile(r"run=\d+"), timeout=60_000)
    return re.search(r"run=(\d+)", page.url).group(1)


def test_two_students_see_the_estimate_the_queue_and_stop(app_url, browser, screenshot):
    first = browser.new_context(viewport={"width": 1366, "height": 768}).new_page()
    second = browser.new_context(viewport={"width": 1366, "height": 768}).new_page()
    try:
        # One worker on this server: the first student's long run holds it.
        a = start(first, app_url, 20, 1)
        first.get_by_text(re.compile(f"Your run {a} is training")).wait_for(timeout=120_000)
        b = start(second, app_url, 1, 2)
        second.get_by_text(f"Your run {b} is waiting: position 1 in the queue").wait_for(
            timeout=60_000)
        # Pressing Start again queues no duplicate: the sentence says which run it is.
        second.get_by_role("button", name="Start training").click()
        second.get_by_text(f"already queued as run {b}").wait_for(timeout=30_000)
        screenshot(second, "train-queued-second-student")
        # The first student sees progress with an estimate of the time left.
        first.get_by_text(re.compile(r"step [\d,]+ of [\d,]+, about .* left")).wait_for(
            timeout=120_000)
        # The page's Stop (key stop_ID), not the toolbar's, which stops the script's rerun.
        second.locator(f".st-key-stop_{b} button").click()
        second.get_by_text(f"Your run {b} stopped").wait_for(timeout=30_000)
        first.locator(f".st-key-stop_{a} button").click()
        first.get_by_text(f"Your run {a} stopped").wait_for(timeout=30_000)
        screenshot(first, "train-stopped-first-student")
    finally:
        first.context.close()
        second.context.close()
