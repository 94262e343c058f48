"""Every page on a projector (1024×768 at 150 % zoom) and in dark mode, in Chromium.

A 1024×768 screen at 150 % zoom is a 683×512 CSS-pixel viewport drawn at device scale 1.5.
Each page is loaded there with a dark and with a light system theme; the test asserts that
no headline number (st.metric) is cut, that every table shows all its columns, that no
select box's chosen value and no multiselect chip is cut, that nothing runs off the page
sideways, that no heading wraps mid-word, that no chart legend runs into a title, and saves a
screenshot under test-artifacts/ (look at them). Every page is also measured in presentation
mode (?present=true) at 1280×720, and the views that need runs (Train with runs overlaid, Batch
norm statistics) on both screens, with their curves and points readable in dark mode.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import expect

PROJECTOR = {"viewport": {"width": 683, "height": 512}, "device_scale_factor": 1.5}
# What a teacher's laptop gives a projector in presentation mode: 1280×720, at 100 % zoom.
PRESENTING = {"viewport": {"width": 1280, "height": 720}}
# A student's laptop: the Train page's live charts are a quarter of the width each.
LAPTOP = {"viewport": {"width": 1366, "height": 768}}
# page → (path, what shows that it has drawn, how many metrics, select boxes and multiselect
# chips it shows on a fresh visit: at least these many are measured)
PAGES = {
    "build": ("/", "[data-testid=stMetric]", 6, 5, 0),
    "train": ("/train", "h1", 0, 5, 0),
    "bn_lab": ("/bn_lab", "h1", 0, 3, 0),
    "compare": ("/compare", "[data-testid=stMetric]", 2, 0, 2),
    "conv": ("/conv", ".working-box", 4, 0, 0),
    "gallery": ("/gallery", "[data-testid=stButton]", 0, 0, 0),
    "inspect": ("/inspect", "h1", 0, 0, 0),
    "readme": ("/readme", "h1", 0, 0, 0),
}

# For each metric value: its text and whether it fits its box (the markdown container that
# Streamlit cuts with an ellipsis). For each table (Glide data grid): the columns it has, the
# header cells it draws (only the visible ones), and its scroller's content and box widths.
# For each select box in the page's body that is laid out (one in a closed expander is: the
# expander hides it without changing its width; one in a tab not chosen is not): the text it
# shows (the value of its combobox input, or the placeholder when it has none), the input's
# content and box widths (Chromium's scrollWidth of a text input grows past its clientWidth
# when the text is clipped), and a second measure: that text laid out on a canvas in the
# input's own font, against the room inside the input's padding. For each multiselect chip:
# its label's text, its content and box widths (the label is cut with an ellipsis inside its
# chip), and, unrounded, the width of its text as laid out against the room inside its box
# (scrollWidth and clientWidth are whole pixels: a label 0.4 px too wide is ellipsed yet can
# round to the same number).
MEASURE = r"""async () => {
  await document.fonts.ready;
  const pen = document.createElement('canvas').getContext('2d');
  const selects = [...document.querySelectorAll('[data-testid=stMain] [data-testid=stSelectbox]')]
    .filter(s => s.offsetParent !== null).map(s => {
      const input = s.querySelector('input[role=combobox]');
      const style = getComputedStyle(input);
      const text = input.value || input.placeholder;
      pen.font = style.font;
      return {label: input.getAttribute('aria-label'), text,
              scroll: input.scrollWidth, client: input.clientWidth,
              width: pen.measureText(text).width,
              room: input.clientWidth - parseFloat(style.paddingLeft)
                    - parseFloat(style.paddingRight)};
    });
  const chips = [...document.querySelectorAll(
      '[data-testid=stMain] [data-testid=stMultiSelect] [data-tag] > span')]
    .filter(c => c.offsetParent !== null).map(c => {
      const text = document.createRange(); text.selectNodeContents(c);
      const style = getComputedStyle(c);
      return {label: c.closest('[data-testid=stMultiSelect]').querySelector('label').textContent,
              text: c.textContent, scroll: c.scrollWidth, client: c.clientWidth,
              width: text.getBoundingClientRect().width,
              room: c.getBoundingClientRect().width - parseFloat(style.paddingLeft)
                    - parseFloat(style.paddingRight)};
    });
  const metrics = [...document.querySelectorAll('[data-testid=stMetricValue]')].map(v => {
    const box = v.querySelector('[data-testid=stMarkdownContainer]') || v;
    return {text: box.textContent.trim(), scroll: box.scrollWidth, client: box.clientWidth};
  });
  const tables = [...document.querySelectorAll('[data-testid=stDataFrame]')]
    .filter(t => t.offsetParent !== null).map(t => {
      const grid = t.querySelector('table');
      const scroller = t.querySelector('.dvn-scroller');
      return {columns: grid ? Number(grid.getAttribute('aria-colcount')) : -1,
              headers: grid ? grid.querySelectorAll('thead th').length : 0,
              scroll: scroller ? scroller.scrollWidth : -1,
              client: scroller ? scroller.clientWidth : -1};
    });
  // Headings that wrap mid-word: a line starts after a character that is not a space, a
  // zero-width space, a hyphen, a slash or a dot.
  const midword = [];
  for (const h of document.querySelectorAll('[data-testid=stMain] :is(h1, h2, h3, h4)')) {
    const walker = document.createTreeWalker(h, NodeFilter.SHOW_TEXT);
    let top = null, prev = ' ';
    for (let n = walker.nextNode(); n; n = walker.nextNode()) {
      for (let i = 0; i < n.length; i++) {
        const r = document.createRange(); r.setStart(n, i); r.setEnd(n, i + 1);
        const box = r.getClientRects()[0];
        if (box && box.width > 0) {
          if (top !== null && box.top > top + 2 && !/[\s\u200b\-\/.·]/.test(prev))
            midword.push(h.textContent);
          top = box.top;
        }
        prev = n.data[i];
      }
    }
  }
  // Chart titles: how far each runs past its chart's box, either side (Plotly neither wraps
  // nor cuts a title: it goes on beyond the chart, under the next one or off the page).
  const titles = [...document.querySelectorAll('[data-testid=stMain] .js-plotly-plot')]
    .filter(p => p.offsetParent !== null).flatMap(p => {
      const box = p.getBoundingClientRect();
      return [...p.querySelectorAll('.gtitle')].map(t => {
        const b = t.getBoundingClientRect();
        return {text: t.textContent, over: Math.max(b.right - box.right, box.left - b.left)};
      });
    });
  // Legends over a chart's titles: each legend entry (its text and symbol) against each
  // title's text (the chart's, a subplot's, an axis's) in the same chart. Two lines of text
  // run into each other when their boxes (the font's ascent to descent) overlap by more than
  // a third of the smaller box's height, across by more than 2 px (the boxes hold the space a
  // font leaves above and below its letters: lines 4.5 px into each other at 16 and 19 px
  // still read apart). Plotly places a legend at a fraction of the plot's height, so a title
  // pushed down by bigger type can run into a legend placed under the plot.
  const legends = [...document.querySelectorAll('[data-testid=stMain] .js-plotly-plot')]
    .filter(p => p.offsetParent !== null).flatMap(p => {
      const across = (a, b) => Math.min(a.right, b.right) - Math.max(a.left, b.left);
      const down = (a, b) => Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
      return [...p.querySelectorAll('.legend .traces')].flatMap(l => {
        // The entry's text and its symbol (a line and a marker), which the entry's toggle (its
        // clickable box) spans: either may cross a title.
        const parts = [l.querySelector('.legendtext'), l.querySelector('.legendtoggle')]
          .filter(Boolean).map(e => e.getBoundingClientRect()).filter(r => r.width > 0);
        const box = {left: Math.min(...parts.map(r => r.left)),
                     right: Math.max(...parts.map(r => r.right)),
                     top: Math.min(...parts.map(r => r.top)),
                     bottom: Math.max(...parts.map(r => r.bottom))};
        box.height = box.bottom - box.top;
        return [...p.querySelectorAll('.gtitle, .xtitle, .ytitle, .annotation-text')]
          .map(t => ({legend: l.textContent, title: t.textContent, t: t.getBoundingClientRect()}))
          .filter(o => o.t.width > 0 && across(box, o.t) > 2
                       && down(box, o.t) > Math.min(box.height, o.t.height) / 3)
          .map(o => ({legend: o.legend, title: o.title, across: across(box, o.t),
                      down: down(box, o.t), lh: box.height, th: o.t.height}));
      });
    });
  const main = document.querySelector('[data-testid=stMain]');
  return {metrics, tables, selects, chips, titles, legends, midword,
          mainScroll: main.scrollWidth, mainClient: main.clientWidth};
}"""

# The open list of a select box (the one its input controls): every option's text, read while
# scrolling the list, since a long list draws only the options in view (each then carries its
# place in the list and the list's size; a short list draws them all, without), and each
# text's width in the font of the box's input (where a chosen value is shown) against the room
# inside that input's padding.
OPTIONS = r"""async (input) => {
  const list = document.getElementById(input.getAttribute('aria-controls'));
  const texts = new Map();
  let size = -1;
  for (let top = 0; ; top += list.clientHeight / 2) {
    list.scrollTop = top;
    await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
    [...list.querySelectorAll('[role=option]')].forEach((o, k) => {
      const at = o.getAttribute('aria-posinset');
      if (at !== null) size = Number(o.getAttribute('aria-setsize'));
      texts.set(at === null ? k : Number(at) - 1, o.textContent);
    });
    if (list.scrollTop + list.clientHeight >= list.scrollHeight) break;
  }
  if (size < 0) size = texts.size;
  const style = getComputedStyle(input);
  const pen = document.createElement('canvas').getContext('2d');
  pen.font = style.font;
  return {size, options: [...texts.values()].map(text => ({text,
            width: pen.measureText(text).width})),
          room: input.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight)};
}"""

# Every curve and every set of points in the charts of the main area, as drawn: each scatter
# trace's lines (stroke) and points (fill), their colour with its alpha, the element's own
# opacity and its trace's (and any group's above it up to the chart) multiplied, laid over the
# chart's background (its paper colour, or the app's where that is transparent), and the WCAG
# contrast of that colour against the background: the least for each trace's lines and points.
MARKS = r"""() => {
  const rgba = c => { const v = c.match(/[\d.]+/g).map(Number); return v.length > 3 ? v
                      : [...v, 1]; };
  const lum = ([r, g, b]) => [r, g, b].map(v => { v /= 255;
    return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); })
    .reduce((s, v, i) => s + [0.2126, 0.7152, 0.0722][i] * v, 0);
  const ratio = (a, b) => { const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p);
                            return (x + 0.05) / (y + 0.05); };
  const over = ([r, g, b, a], [R, G, B]) => [r * a + R * (1 - a), g * a + G * (1 - a),
                                             b * a + B * (1 - a)];
  const app = rgba(getComputedStyle(document.querySelector('.stApp')).backgroundColor);
  const out = [];
  for (const p of document.querySelectorAll('[data-testid=stMain] .js-plotly-plot')) {
    if (p.offsetParent === null) continue;
    const paper = p.querySelector('.main-svg > .bg, .bg');
    const ps = paper ? getComputedStyle(paper) : null;
    const bg = ps ? over([...rgba(ps.fill).slice(0, 3), rgba(ps.fill)[3]
                         * parseFloat(ps.fillOpacity)], app) : app;
    const title = ([...p.querySelectorAll('.gtitle, .annotation-text')]
                   .find(t => t.textContent) || {textContent: ''}).textContent;
    for (const t of p.querySelectorAll('.scatterlayer .trace')) {
      const name = t.__data__ && t.__data__[0] && t.__data__[0].trace ?
                   t.__data__[0].trace.name : '';
      for (const [kind, sel, paint, alpha] of [['line', 'path.js-line', 'stroke', 'strokeOpacity'],
                                               ['points', 'path.point', 'fill', 'fillOpacity']]) {
        const least = [...t.querySelectorAll(sel)].map(e => {
          let a = 1;
          for (let n = e; n && n !== p; n = n.parentElement)
            a *= parseFloat(getComputedStyle(n).opacity);
          const st = getComputedStyle(e);
          const c = rgba(st[paint]);
          return ratio(over([c[0], c[1], c[2], c[3] * a * parseFloat(st[alpha])], bg), bg);
        });
        if (least.length) out.push({chart: title, trace: name, kind,
                                    ratio: Math.min(...least), bg});
      }
    }
  }
  return out;
}"""


def _wcag(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """WCAG 2's contrast ratio of two sRGB colours (0-255 channels)."""
    def lum(c):
        v = [x / 255 for x in c[:3]]
        v = [x / 12.92 if x <= 0.03928 else ((x + 0.055) / 1.055) ** 2.4 for x in v]
        return 0.2126 * v[0] + 0.7152 * v[1] + 0.0722 * v[2]
    hi, lo = sorted((lum(a), lum(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def _faint(marks: list[dict]) -> list[dict]:
    """The curves and points of a MARKS under WCAG's 3:1 for the parts of a graphic needed to
    understand it (success criterion 1.4.11, non-text contrast)."""
    return [m for m in marks if m["ratio"] < 3]


# WCAG relative luminance and contrast ratio of two computed CSS colours.
CONTRAST = """([fg, bg]) => {
  const lum = c => {
    const [r, g, b] = c.match(/[\\d.]+/g).slice(0, 3).map(Number).map(v => {
      v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const [a, b] = [lum(fg), lum(bg)].sort((x, y) => y - x);
  return (a + 0.05) / (b + 0.05);
}"""


def _cut_selects(seen: dict) -> list[dict]:
    """The select boxes of a MEASURE whose shown text is clipped, by either measure."""
    return [s for s in seen["selects"] if s["scroll"] > s["client"] or s["width"] > s["room"]]


def _long_titles(seen: dict) -> list[dict]:
    """The chart titles of a MEASURE that run past their chart by more than a pixel."""
    return [t for t in seen["titles"] if t["over"] > 1]


def _cut_chips(seen: dict) -> list[dict]:
    """The multiselect chips of a MEASURE whose label is ellipsed (a layout unit is 1/64 px)."""
    return [c for c in seen["chips"] if c["scroll"] > c["client"] or c["width"] > c["room"] + 0.1]


def _assert_boxes_and_titles(seen: dict, name: str, n_selects: int, n_chips: int) -> None:
    """At least the select boxes and chips counted, none cut, every chart title within its
    chart. Every select box shows its whole value: a preset or a dataset cut to "5,000 MNIST
    digits (of" cannot be read by a class. The canvas measure is the second method: it must
    agree."""
    assert len(seen["selects"]) >= n_selects and len(seen["chips"]) >= n_chips, \
        (name, seen["selects"], seen["chips"])
    clipped, cut_chips = _cut_selects(seen), _cut_chips(seen)
    assert not clipped, f"select boxes whose value is cut on {name}: {clipped}"
    assert not cut_chips, f"multiselect chips cut on {name}: {cut_chips}"
    assert not _long_titles(seen), f"chart titles past their charts on {name}: {seen['titles']}"


def _assert_readable(seen: dict, name: str, n_metrics: int = 0, n_selects: int = 0,
                     n_chips: int = 0) -> None:
    """What a MEASURE must show on a page read from the back of a room: at least the metrics,
    select boxes and chips counted, none of them cut, every table's columns all shown, chart
    titles within their charts and clear of their legends, nothing off the page sideways, no
    heading broken mid-word."""
    assert len(seen["metrics"]) >= n_metrics, (name, seen["metrics"])
    cut = [m for m in seen["metrics"] if m["scroll"] > m["client"] or m["text"].endswith("…")]
    assert not cut, f"metrics cut on {name}: {cut}"
    hidden = [t for t in seen["tables"] if t["headers"] < t["columns"] or t["scroll"] > t["client"]]
    assert not hidden, f"tables with hidden columns on {name}: {hidden}"
    _assert_boxes_and_titles(seen, name, n_selects, n_chips)
    assert not seen["legends"], f"chart legends over their titles on {name}: {seen['legends']}"
    assert seen["mainScroll"] <= seen["mainClient"], f"{name} runs off the page sideways"
    assert not seen["midword"], f"headings broken mid-word on {name}: {seen['midword']}"


@pytest.fixture
def projector(browser, request):
    """A page in a 683×512 viewport at device scale 1.5 with the colour scheme given."""
    context = browser.new_context(**PROJECTOR, color_scheme=getattr(request, "param", "dark"))
    pg = context.new_page()
    yield pg
    context.close()


def _open(pg, url: str, selector: str) -> None:
    pg.goto(url)
    pg.wait_for_selector(selector, timeout=90_000)
    _settle(pg)


def _settle(pg) -> None:
    # The rest of the page: the script run is over when Streamlit's "Running…"/"Stop" status
    # widget goes (a page that polls may keep it, hence the time limit and no failure).
    with contextlib.suppress(PlaywrightTimeout):
        pg.wait_for_selector("[data-testid=stStatusWidget]", state="detached", timeout=30_000)
    pg.wait_for_timeout(1000)


def _drawn(pg, n_selects: int) -> None:
    """Wait until the page's select boxes are drawn and its run is over: on a loaded machine a
    page can still show Streamlit's grey placeholders when _settle's 30 s are up."""
    pg.wait_for_function(SHOWN, arg=n_selects, timeout=90_000)
    pg.wait_for_function(STILL, timeout=90_000)


def _show_tables(pg) -> None:
    # Scroll the tables into view: Glide draws its header cells once a grid is on screen.
    for frame in pg.get_by_test_id("stDataFrame").all():
        if not frame.is_visible():  # in a closed tab or expander
            continue
        frame.scroll_into_view_if_needed()
        pg.wait_for_timeout(300)


def _app_background(pg) -> str:
    return pg.evaluate("getComputedStyle(document.querySelector('.stApp')).backgroundColor")


@pytest.mark.parametrize("projector", ["dark", "light"], indirect=True)
@pytest.mark.parametrize("name", list(PAGES))
def test_page_on_projector(app_url, projector, screenshot, name):
    path, ready, n_metrics, n_selects, n_chips = PAGES[name]
    _open(projector, app_url + path, ready)
    _drawn(projector, n_selects)
    # The system's theme is followed: a dark background (contrast with black under 2) in
    # the dark scheme, a light one in the light scheme.
    dark = projector.evaluate("matchMedia('(prefers-color-scheme: dark)').matches")
    black = projector.evaluate(CONTRAST, ["rgb(0, 0, 0)", _app_background(projector)])
    assert black < 2 if dark else black > 10
    # A fresh load on a 683-pixel screen leaves the sidebar closed: it would cover the page.
    assert projector.get_by_test_id("stSidebar").get_attribute("data-collapsed") == "true"
    _show_tables(projector)
    screenshot(projector, f"projector_{'dark' if dark else 'light'}_{name}")
    _assert_readable(projector.evaluate(MEASURE), name, n_metrics, n_selects, n_chips)


def test_build_tables_show_every_column(app_url, projector, screenshot):
    """The Build page's stage table and layer table: each at full width, none cut."""
    _open(projector, app_url + "/", "[data-testid=stDataFrame]")
    frames = projector.get_by_test_id("stDataFrame").all()
    assert len(frames) >= 2
    frames[-1].scroll_into_view_if_needed()
    projector.wait_for_timeout(500)
    screenshot(projector, "projector_dark_build_layer_table")
    tables = projector.evaluate(MEASURE)["tables"]
    # The layer table: name, type, output shape, params, MACs, MACs lecture, RF, jump at least.
    assert max(t["columns"] for t in tables) >= 8
    assert all(t["headers"] == t["columns"] and t["scroll"] <= t["client"] for t in tables), tables


def test_the_select_check_sees_a_cut_value(app_url, projector, screenshot):
    """The measure behind the select-box and chip assertions is live: the same boxes pass as
    drawn, and fail once a value too long for them is put in (the Build page's Preset, and a
    Compare chip), with the two measures agreeing on the widths."""
    long_name = "course_resnet18_cifar " * 8
    _open(projector, app_url + "/", "[data-testid=stMetric]")
    assert _cut_selects(projector.evaluate(MEASURE)) == []
    projector.get_by_role("combobox", name="Preset").evaluate("(i, v) => { i.value = v; }",
                                                              long_name)
    cut = _cut_selects(projector.evaluate(MEASURE))
    assert [s["label"] for s in cut] == ["Preset"], cut
    # Both measures: the input's content is wider than its box, and the text in its font is
    # wider than the room inside its padding, by about the same amount.
    assert cut[0]["scroll"] > cut[0]["client"] and cut[0]["width"] > cut[0]["room"]
    assert abs((cut[0]["scroll"] - cut[0]["client"]) - (cut[0]["width"] - cut[0]["room"])) < 40
    _open(projector, app_url + "/compare", "[data-testid=stMetric]")
    assert len(projector.evaluate(MEASURE)["chips"]) == 2
    assert _cut_chips(projector.evaluate(MEASURE)) == []
    chip = projector.locator("[data-testid=stMultiSelect] [data-tag] > span").first
    chip.evaluate("(c, v) => { c.textContent = v; }", long_name)
    screenshot(projector, "projector_dark_compare_cut_chip")
    cut = _cut_chips(projector.evaluate(MEASURE))
    assert [c["text"] for c in cut] == [long_name], cut


def _options_cut(pg, screenshot, name: str) -> tuple[int, dict]:
    """Open the list of every select box laid out on the page, one at a time: how many were
    opened, and for each box with options too wide for it, those options and its room."""
    boxes = pg.locator("[data-testid=stMain] [data-testid=stSelectbox]").all()
    opened, too_long = 0, {}
    for box in boxes:
        if not box.evaluate("b => b.offsetParent !== null"):  # in a tab not chosen
            continue
        if not box.is_visible():  # in a closed expander: open it, as a teacher would
            box.locator("xpath=ancestor::details[1]/summary").click()
            box.wait_for(state="visible")
            pg.wait_for_timeout(600)  # the expander's opening animation
        # Mid-screen, so that the list opens without scrolling the page (which closes it).
        box.evaluate("b => b.scrollIntoView({block: 'center'})")
        value = box.locator("input[role=combobox]")
        label, chosen = value.get_attribute("aria-label"), value.input_value()
        box.get_by_role("button", name="Open", exact=True).click()
        pg.wait_for_selector("[role=listbox] [role=option]")
        seen = value.evaluate(OPTIONS)
        assert len(seen["options"]) == seen["size"] > 0, (label, seen)
        if chosen:
            assert chosen in [o["text"] for o in seen["options"]], (label, chosen, seen)
        cut = [o["text"] for o in seen["options"] if o["width"] > seen["room"]]
        if cut:
            screenshot(pg, f"projector_dark_{name}_options_{label}")
            too_long[label] = (cut, seen["room"])
        pg.keyboard.press("Escape")
        pg.wait_for_selector("[role=listbox]", state="detached")
        # Looking changed nothing (a clearable box's input reads "" for a moment).
        expect(value).to_have_value(chosen)
        opened += 1
    return opened, too_long


@pytest.mark.parametrize("name", [n for n in PAGES if PAGES[n][3]])
def test_every_option_fits_its_select_box_on_a_projector(app_url, projector, screenshot, name):
    """Whatever a teacher picks in front of the class reads whole: every option of every select
    box a page shows on a fresh visit fits the box at 683×512 ×1.5 (the chosen value is
    checked in test_page_on_projector; this is every other one, e.g. course_resnet_3x4_28)."""
    path, ready, _, n_selects, _ = PAGES[name]
    _open(projector, app_url + path, ready)
    # Batch norm opens on the latest recorded run in a full run: slower than a fresh server's.
    _drawn(projector, n_selects)
    opened, too_long = _options_cut(projector, screenshot, name)
    assert opened >= n_selects
    assert not too_long, f"options cut in their select box on {name}: {too_long}"


# Views a fresh visit does not show, with select boxes of their own: (path, what shows that it
# has drawn, what to click then and what shows that the click has taken (or None), how many
# select boxes and chips it shows at least).
VIEWS = {
    "build_share": ("/?build_view=Share+%26+export", "text=The link opens on", None, 6, 0),
    "compare_line_up": ("/compare?cmp_models=course_resnet18,resnet18,course_densenet"
                        "&cmp_view=Layer+by+layer", "text=Line up", None, 1, 3),
    "inspect_build_model": ("/inspect", "h1", ("text=The Build page's model (untrained)",
                            "input[aria-label='Channels of layer']"), 3, 0),
    "bn_lab_lenet_bn": ("/bn_lab", "h1", ("[role=tab]:has-text('LeNet ± BN')",
                        "[role=tab][aria-selected=true]:has-text('LeNet ± BN')"), 1, 0),
    "bn_lab_folding": ("/bn_lab", "h1", ("[role=tab]:has-text('Folding')",
                       "input[aria-label='Model']"), 1, 0),
    "bn_lab_other_norms": ("/bn_lab", "h1", ("[role=tab]:has-text('Other norms')",
                           "input[aria-label='Groups G (group norm)']"), 1, 0),
}
SHOWN = """n => [...document.querySelectorAll('[data-testid=stMain] [data-testid=stSelectbox]')]
  .filter(s => s.offsetParent !== null).length >= n"""
STILL = "() => !document.querySelector('[data-stale=true], [data-testid=stStatusWidget]')"


@pytest.mark.parametrize("name", list(VIEWS))
def test_select_boxes_in_other_views_on_a_projector(app_url, projector, screenshot, name):
    """Beyond the fresh visits: Build's share view, Compare's line-up of three models, Inspect
    on the Build page's model, the batch-norm tabs with select boxes. Each chosen value and
    chip, and every option, fits its box at 683×512 ×1.5."""
    path, ready, click, n_selects, n_chips = VIEWS[name]
    _open(projector, app_url + path, ready)
    if click:
        projector.locator(f"[data-testid=stMain] >> {click[0]}").first.click()
        projector.wait_for_selector(f"[data-testid=stMain] >> {click[1]}", timeout=90_000)
        _settle(projector)
    projector.wait_for_function(SHOWN, arg=n_selects, timeout=60_000)
    # The click's rerun is over: Streamlit marks the elements of a run in progress stale (and
    # then drops those the new run did not draw, which would pull boxes from under the test).
    projector.wait_for_function(STILL, timeout=60_000)
    screenshot(projector, f"projector_dark_{name}")
    seen = projector.evaluate(MEASURE)
    _assert_boxes_and_titles(seen, name, n_selects, n_chips)
    opened, too_long = _options_cut(projector, screenshot, name)
    assert opened >= n_selects
    assert not too_long, f"options cut in their select box on {name}: {too_long}"


def test_inspect_run_box_on_a_projector(app_url, projector, screenshot):
    """Inspect once a run has finished: the Run box names it ("#1 course_lenet5 · offline-mnist
    (completed)"), and that name, like every other run's in its list, reads whole at 683×512
    ×1.5. A one-epoch LeNet is trained for it through the Train page."""
    _open(projector, app_url + "/train?tr_epochs=1", "text=Start training")
    projector.get_by_role("button", name="Start training").click()
    run_box = "[data-testid=stMain] [data-testid=stSelectbox] input[aria-label=Run]"
    for _ in range(60):  # a finished run is listed on Inspect (seconds; minutes on a busy CPU)
        _open(projector, app_url + "/inspect", "h1")
        if projector.locator(run_box).count():
            break
        projector.wait_for_timeout(4000)
    projector.wait_for_function(STILL, timeout=60_000)
    screenshot(projector, "projector_dark_inspect_run")
    seen = projector.evaluate(MEASURE)
    runs = [s for s in seen["selects"] if s["label"] == "Run"]
    assert runs and runs[0]["text"].startswith("#"), seen["selects"]
    clipped = _cut_selects(seen)
    assert not clipped, f"select boxes whose value is cut on Inspect: {clipped}"
    # The prediction's title, the feature strip's and the three pictures' of a unit.
    assert len(seen["titles"]) >= 5, seen["titles"]
    assert not _long_titles(seen), f"chart titles past their charts: {seen['titles']}"
    opened, too_long = _options_cut(projector, screenshot, "inspect_run")
    assert opened >= 3  # the run, the data set, the layer
    assert not too_long, f"options cut in their select box on Inspect: {too_long}"


# The views that need runs are measured on the projector and in presentation mode (dark):
# screen → (browser context, what each URL adds).
SCREENS = {"projector": (PROJECTOR, ""), "present": (PRESENTING, "present=true"),
           "laptop": (LAPTOP, "")}


@pytest.fixture
def screen(browser, request):
    """(page, URL parameters, name) of a SCREENS entry, in a dark colour scheme."""
    size, query = SCREENS[request.param]
    context = browser.new_context(**size, color_scheme="dark")
    # Clicks and waits of these tests ride on the server's one CPU worker and a machine that
    # another test session may share: 90 s, not Playwright's 30 s, before a step times out.
    context.set_default_timeout(90_000)
    pg = context.new_page()
    yield pg, query, request.param
    context.close()


def _with(url: str, query: str) -> str:
    """The URL with the screen's parameters added."""
    return url + ("&" if "?" in url else "?") + query if query else url


RUN_IN_URL = re.compile(r"[?&]run=(\d+)")
# The first legend entry of the chart with this title, moved (in its own SVG units, which are
# CSS pixels) so that its text starts where the chart's x-axis title starts.
MOVE_LEGEND = r"""title => {
  const plot = [...document.querySelectorAll('[data-testid=stMain] .js-plotly-plot')]
    .find(p => (p.querySelector('.gtitle') || {}).textContent === title);
  const entry = plot.querySelector('.legend .traces');
  const from = entry.querySelector('.legendtext').getBoundingClientRect();
  const to = plot.querySelector('.xtitle').getBoundingClientRect();
  entry.setAttribute('transform', `${entry.getAttribute('transform') || ''} translate(${
    to.left - from.left}, ${to.top - from.top})`);
}"""


def _train_one_epoch(pg, app_url: str, query: str = "") -> int:
    """Start a one-epoch course LeNet-5 through the Train page and wait until it has finished
    (one CPU worker: seconds, minutes on a busy machine); its run number."""
    _open(pg, _with(app_url + "/train?tr_epochs=1&tr_preset=course_lenet5", query),
          "text=Start training")
    pg.get_by_role("button", name="Start training").click()
    pg.wait_for_url(RUN_IN_URL, timeout=60_000)
    run_id = int(RUN_IN_URL.search(pg.url)[1])
    pg.get_by_text(f"Your run {run_id} completed").wait_for(timeout=300_000)
    return run_id


@pytest.mark.parametrize("screen", list(SCREENS), indirect=True)
def test_train_with_runs_on_a_projector(app_url, screen, screenshot):
    """Train once runs exist, at 683×512 ×1.5 and in presentation mode (1280×720): a finished
    run's metrics and curves, the run history's every column, and the "Overlay runs" chips of
    two runs ("#7 course_lenet5 · offline-mnist (completed)") with their two charts, none
    cut, and every curve at WCAG's 3:1 against its chart in dark mode."""
    pg, query, where = screen
    first = _train_one_epoch(pg, app_url, query)
    second = _train_one_epoch(pg, app_url, query)
    _open(pg, _with(f"{app_url}/train?run={second}", query), f"text=Your run {second} completed")
    overlay = pg.locator("[data-testid=stMain] [data-testid=stMultiSelect]").filter(
        has_text="Overlay runs")
    for run in (first, second):
        overlay.evaluate("b => b.scrollIntoView({block: 'center'})")
        overlay.locator("input").click()
        pg.get_by_role("option", name=re.compile(rf"^#{run} ")).click()
        pg.keyboard.press("Escape")
        pg.wait_for_function(STILL, timeout=60_000)
    chips = overlay.locator("[data-tag]")
    expect(chips).to_have_count(2)
    _settle(pg)
    # Look at the live panel, the history and the overlay (one screen each).
    _show_tables(pg)
    pg.get_by_test_id("stDataFrame").last.evaluate("b => b.scrollIntoView()")
    pg.wait_for_timeout(500)
    screenshot(pg, f"{where}_dark_train_history")
    pg.get_by_test_id("stMetric").first.evaluate("b => b.scrollIntoView()")
    pg.wait_for_timeout(500)
    screenshot(pg, f"{where}_dark_train_run")
    overlay.evaluate("b => b.scrollIntoView({block: 'start'})")
    pg.wait_for_timeout(500)
    screenshot(pg, f"{where}_dark_train_overlay")
    seen = pg.evaluate(MEASURE)
    # The legend measure is live: the live panel's "loss" entry moved onto its chart's "step"
    # title is seen there, and only there.
    pg.evaluate(MOVE_LEGEND, "Training loss")
    moved = pg.evaluate(MEASURE)["legends"]
    assert sorted((o["legend"], o["title"]) for o in moved) == \
        sorted([(o["legend"], o["title"]) for o in seen["legends"]] + [("loss", "step")]), moved
    marks = pg.evaluate(MARKS)
    chosen = [c["text"] for c in seen["chips"] if c["label"] == "Overlay runs"]
    assert [t.split()[0] for t in chosen] == [f"#{first}", f"#{second}"], seen["chips"]
    # The live panel's loss and accuracy, the overlay's loss and test accuracy.
    assert len(seen["titles"]) >= 4, seen["titles"]
    assert seen["tables"], seen  # the run history
    # Loss, train and test accuracy, images/s; preset, data, optimizer, schedule.
    _assert_readable(seen, f"train with two runs overlaid ({where})", 4, 4, 2)
    # In dark mode every curve reads against the chart: the measure agrees with WCAG's formula
    # worked here for the smoothed loss (#1f77b4 at full strength over the chart's background).
    smoothed = next(m for m in marks if m["chart"] == "Training loss"
                    and m["trace"] == "smoothed")
    assert smoothed["ratio"] == pytest.approx(_wcag((31, 119, 180), smoothed["bg"]), abs=0.01)
    assert not _faint(marks), f"curves or points too faint in dark mode ({where}): {_faint(marks)}"


@pytest.mark.parametrize("screen", list(SCREENS), indirect=True)
def test_bn_statistics_of_a_recorded_run_on_a_projector(app_url, app_runs_db, screen,
                                                         screenshot):
    """Batch norm's Statistics tab once a run has recorded its statistics (one epoch of
    BN-LeNet, recorded on this page), at 683×512 ×1.5 and in presentation mode (1280×720):
    its four metrics, the Run box, the BN layer box, the "Channels to follow" chips, the five
    figures' titles and every option, and the curves and dots at WCAG's 3:1 in dark mode."""
    pg, query, where = screen
    _open(pg, _with(app_url + "/bn_lab?bn_view=stats", query), "h1")
    record = pg.get_by_role("button", name="Start recording")
    if not record.is_visible():  # "Record a new run" is closed once a recorded run exists
        pg.get_by_text("Record a new run", exact=True).click()
        record.wait_for()
        pg.wait_for_timeout(600)  # the expander's opening animation
    for label, value in (("Epochs", "1"), ("Batch", "256")):  # 15 steps of the offline digits
        box = pg.get_by_label(label, exact=True)
        box.fill(value)
        box.press("Enter")
        _settle(pg)
    # The new run is the one with a higher id than every run before it: the URL may already
    # name an older recorded run (the Run box opens on the newest), and that URL can change
    # (its BN layer added) before the new run's id replaces it.
    with contextlib.closing(sqlite3.connect(app_runs_db)) as db:
        newest = db.execute("SELECT COALESCE(MAX(id), 0) FROM runs").fetchone()[0]
    record.click()
    pg.wait_for_function(
        "n => { const m = /[?&]bn_run=(\\d+)/.exec(location.href); return m && +m[1] > n; }",
        arg=newest, timeout=60_000)
    run_id = int(re.search(r"[?&]bn_run=(\d+)", pg.url)[1])
    pg.get_by_text(f"Run {run_id} completed.").wait_for(timeout=300_000)
    pg.get_by_test_id("stMetricValue").first.wait_for(timeout=60_000)
    _settle(pg)
    pg.wait_for_function(STILL, timeout=60_000)
    pg.get_by_role("combobox", name="Run").evaluate(
        "b => b.scrollIntoView({block: 'start'})")
    pg.wait_for_timeout(500)
    screenshot(pg, f"{where}_dark_bn_lab_statistics")
    for k, chart in enumerate(pg.locator("[data-testid=stMain] .js-plotly-plot").all()):
        chart.evaluate("b => b.scrollIntoView({block: 'start'})")
        pg.wait_for_timeout(300)
        screenshot(pg, f"{where}_dark_bn_lab_statistics_chart{k}")
    seen = pg.evaluate(MEASURE)
    marks = pg.evaluate(MARKS)
    runs = [s for s in seen["selects"] if s["label"] == "Run"]
    assert runs and runs[0]["text"].startswith(f"#{run_id} "), seen["selects"]
    # The heatmaps' step axis reads recorded steps only (whole numbers), never a
    # step before the first (a numeric axis drew half a cell, "−5", before step 0).
    ticks = pg.evaluate("""() => [
      ...document.querySelectorAll('[data-testid=stMain] .js-plotly-plot')]
      .filter(p => /batch mean per channel/.test((p.querySelector('.gtitle') || {}).textContent))
      .flatMap(p => [...p.querySelectorAll('.xtick text')].map(t => t.textContent))""")
    assert ticks and all(re.fullmatch(r"\d+", t) for t in ticks), ticks
    follow = [c["text"] for c in seen["chips"] if c["label"] == "Channels to follow"]
    assert follow == ["0", "1", "2"], seen["chips"]
    # The batch mean and standard deviation heatmaps, running vs batch, γ and β, histograms.
    assert len(seen["titles"]) >= 5, seen["titles"]
    # BN layers, channels, recorded steps, bytes; Run, BN layer, Histograms taken.
    _assert_readable(seen, f"bn_lab statistics ({where})", 4, 3, 3)
    opened, too_long = _options_cut(pg, screenshot, f"bn_lab_statistics_{where}")
    assert opened >= 3
    assert not too_long, f"options cut in their select box on Statistics: {too_long}"
    # In dark mode the batch values (dots) read as well as the running averages (lines) that
    # the caption compares them with.
    assert {(m["trace"], m["kind"]) for m in marks} >= {("channel 0", "line"),
                                                        ("channel 0", "points")}, marks
    assert not _faint(marks), f"curves or points too faint in dark mode ({where}): {_faint(marks)}"


@pytest.mark.parametrize("projector", ["dark", "light"], indirect=True)
def test_conv_working_box_reads_in_both_themes(app_url, projector, screenshot):
    """The working box's text against its own background: WCAG AA (4.5:1) in either theme."""
    _open(projector, app_url + "/conv", ".working-box")
    box = projector.locator(".working-box").first
    box.scroll_into_view_if_needed()
    # The box's text, and its background as drawn: its (maybe translucent) colour laid over
    # the app's background.
    text, drawn = box.evaluate("""b => {
      const rgba = c => { const v = c.match(/[\\d.]+/g).map(Number); return v.length > 3 ? v
                          : [...v, 1]; };
      const fg = getComputedStyle(b).color;
      const [r, g, bl, a] = rgba(getComputedStyle(b).backgroundColor);
      const [R, G, B] = rgba(getComputedStyle(document.querySelector('.stApp')).backgroundColor);
      const mix = (x, y) => Math.round(a * x + (1 - a) * y);
      return [fg, `rgb(${mix(r, R)}, ${mix(g, G)}, ${mix(bl, B)})`];
    }""")
    scheme = projector.evaluate("matchMedia('(prefers-color-scheme: dark)').matches")
    screenshot(projector, f"projector_{'dark' if scheme else 'light'}_conv_working_box")
    assert projector.evaluate(CONTRAST, [text, drawn]) >= 4.5, (text, drawn)


def test_presentation_mode_link(app_url, browser, screenshot):
    """?present=true: the sidebar starts closed even on a wide screen, and the type is bigger."""
    context = browser.new_context(viewport={"width": 1280, "height": 720})
    pg = context.new_page()
    try:
        _open(pg, app_url + "/", "[data-testid=stMetric]")
        normal = pg.evaluate("parseFloat(getComputedStyle(document.documentElement).fontSize)")
        assert pg.get_by_test_id("stSidebar").get_attribute("data-collapsed") == "false"
        _open(pg, app_url + "/?present=true", "[data-testid=stMetric]")
        screenshot(pg, "presentation_mode_build")
        assert pg.get_by_test_id("stSidebar").get_attribute("data-collapsed") == "true"
        big = pg.evaluate("parseFloat(getComputedStyle(document.documentElement).fontSize)")
        assert big > normal
        # The closed sidebar leaves no empty band: the title starts at the left edge.
        assert pg.locator("h1").first.bounding_box()["x"] < 100
        # The editors and the results stack: the results start below the preset box.
        preset = pg.get_by_text("Preset", exact=True).first.bounding_box()
        tabs = pg.get_by_text("Layers", exact=True).first.bounding_box()
        assert tabs["y"] > preset["y"] + preset["height"]
        # It stays on through the navigation: the next page has it in its URL and its type.
        pg.get_by_test_id("stExpandSidebarButton").click()
        pg.get_by_test_id("stSidebarNav").get_by_text("Conv arithmetic").click()
        pg.wait_for_selector(".working-box", timeout=90_000)
        assert "present=true" in pg.url
        assert pg.evaluate("parseFloat(getComputedStyle(document.documentElement).fontSize)") == big
    finally:
        context.close()


@pytest.mark.parametrize("name", list(PAGES))
def test_page_in_presentation_mode(app_url, browser, screenshot, name):
    """Every page with ?present=true at 1280×720 in dark mode: the 20 px type and the stacked
    editors of assets/present.css, and still nothing cut (the MEASURE of the projector test)."""
    path, ready, n_metrics, n_selects, n_chips = PAGES[name]
    context = browser.new_context(**PRESENTING, color_scheme="dark")
    context.set_default_timeout(90_000)  # as in the screen fixture
    pg = context.new_page()
    try:
        _open(pg, app_url + path + ("&" if "?" in path else "?") + "present=true", ready)
        _drawn(pg, n_selects)
        # The mode is on: present.css's root font (Streamlit's own is 16 px), sidebar closed.
        assert pg.evaluate("parseFloat(getComputedStyle(document.documentElement).fontSize)") \
            == 20
        assert pg.get_by_test_id("stSidebar").get_attribute("data-collapsed") == "true"
        _show_tables(pg)
        screenshot(pg, f"present_dark_{name}")
        _assert_readable(pg.evaluate(MEASURE), f"{name} (presentation mode)", n_metrics,
                         n_selects, n_chips)
    finally:
        context.close()


def _text_contrast(png: bytes) -> float:
    """The contrast between a strip's commonest colour (its background) and the pixel that
    differs from it most (its text): what a reader sees, from the pixels Glide drew."""
    import io
    from collections import Counter

    import numpy as np
    from PIL import Image

    pixels = [tuple(p) for p in np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
              .reshape(-1, 3).tolist()]
    background = Counter(pixels).most_common(1)[0][0]

    def lum(c):
        v = [x / 255 for x in c]
        v = [x / 12.92 if x <= 0.03928 else ((x + 0.055) / 1.055) ** 2.4 for x in v]
        return 0.2126 * v[0] + 0.7152 * v[1] + 0.0722 * v[2]

    def ratio(a, b):
        hi, lo = sorted((lum(a), lum(b)), reverse=True)
        return (hi + 0.05) / (lo + 0.05)

    return max(ratio(p, background) for p in set(pixels))


@pytest.mark.parametrize("projector", ["dark", "light"], indirect=True)
def test_compare_layer_rows_read_on_a_projector_in_both_themes(app_url, projector, screenshot):
    """Compare's layer-by-layer table at 683×512: every column shown, and the text of its
    tinted rows (differs, same layer on another size, and identical) readable in either theme."""
    _open(projector, app_url + "/compare?cmp_models=course_resnet18,resnet18"
          "&cmp_view=Layer+by+layer", "text=Click a row to read its reason in full.")
    frame = projector.get_by_test_id("stDataFrame").last
    frame.scroll_into_view_if_needed()
    projector.wait_for_timeout(800)
    scheme = projector.evaluate("matchMedia('(prefers-color-scheme: dark)').matches")
    screenshot(projector, f"projector_{'dark' if scheme else 'light'}_compare_layers")
    tables = projector.evaluate(MEASURE)["tables"]
    layers = tables[-1]  # name, the two models, why (and Glide's selection column)
    assert layers["columns"] >= 4 and layers["headers"] == layers["columns"], tables
    assert layers["scroll"] <= layers["client"], tables
    # The toggles' labels are whole (they were cut side by side).
    for label in ("Only the rows that differ", "Output shapes and parameters"):
        assert projector.get_by_text(label, exact=True).is_visible()
    # Rows 1-3: stem.conv differs (a bias), stem.bn and stem.pool are the same layer on a map of
    # another size. Each row's name (inside the 160-pixel layer column, clear of the grid's
    # lines) must read at WCAG AA (4.5:1).
    box = frame.bounding_box()
    for row in range(3):
        y = box["y"] + 35 * (row + 1) + 8
        png = projector.screenshot(clip={"x": box["x"] + 48, "y": y, "width": 140, "height": 20})
        assert _text_contrast(png) >= 4.5, (row, scheme)


def test_a_three_column_stage_editor_fits_the_form_at_1366(app_url, browser, screenshot):
    """RegNet's stages (depth, width, group width) beside the sidebar on a 1366×768 laptop: the
    grid's automatic widths cut the last header; the editor's own widths fit all three."""
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    pg = context.new_page()
    try:
        _open(pg, app_url + "/?preset=regnet_x_400mf", "[data-testid=stDataFrame]")
        screenshot(pg, "laptop_build_regnet_stage_editor")
        editor = pg.evaluate(MEASURE)["tables"][0]
        assert editor["columns"] >= 3 and editor["headers"] == editor["columns"], editor
        assert 0 < editor["scroll"] <= editor["client"], editor
    finally:
        context.close()
