"""AppTest of the Batch norm page: a finished run's statistics, the experiment, the demos."""

import base64
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from explorer import bn_lab
from explorer.data import OFFLINE, load_dataset
from explorer.models import build
from explorer.registry import get_preset
from explorer.runs import RunStore
from explorer.training import TrainConfig, train
from pages.bn_views.shared import VIEWS

PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "bn_lab.py")


def bn_page(query: dict | None = None) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=120)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, at.exception
    return at


def decode(value):
    """Plotly's JSON writes numpy arrays as {dtype, bdata (base64), shape}; lists stay lists."""
    if isinstance(value, dict) and "bdata" in value:
        arr = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        return arr.reshape([int(s) for s in str(shape).split(",")]) if shape else arr
    return np.asarray(value)


def figure(at: AppTest, i: int) -> dict:
    """The i-th Plotly figure's JSON, with its arrays decoded."""
    fig = json.loads(at.get("plotly_chart")[i].proto.spec)
    for trace in fig["data"]:
        for key in ("x", "y", "z"):
            if key in trace:
                trace[key] = decode(trace[key])
    return fig


def open_tab(at: AppTest, view: str) -> AppTest:
    """Open a tab as a click does: the browser sends the tab's label and writes it into the
    URL (the page's tabs are Streamlit's, keyed and bound to the URL as bn_view)."""
    at.session_state["bn_view"] = at.query_params["bn_view"] = VIEWS[view]
    return at.run()


def shown_tab(at: AppTest) -> str:
    """The view whose tab is open: its name, from the tabs' label."""
    label = at.session_state["bn_view"]
    return next(k for k, v in VIEWS.items() if v == label)


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


@pytest.fixture(scope="module")
def tiny_run():
    """A finished BN-LeNet run whose statistics lie in the page's store (tests/conftest.py's
    EXPLORER_RUNS_DB), recorded without the page, so the page must read them from the store."""
    torch.set_num_threads(1)
    spec = get_preset("course_bn_lenet").spec
    data = load_dataset(OFFLINE).subset(512, 64)
    config = TrainConfig(batch_size=128, epochs=1, precision="fp32", metrics_every=2)
    with RunStore() as store:
        run = store.create_run(f"{bn_lab.RECORDED_PREFIX}tiny · {OFFLINE}", spec.to_dict(),
                               config, status="running")
        rec = bn_lab.StoredBNRecorder(store, run, every=1)
        train(build(spec), spec.input_shape, 10, data, config, callbacks=[rec], device="cpu")
        store.set_status(run, "completed")
    return run, rec


def test_a_finished_tiny_run_reopens_from_the_store(tiny_run):
    run, rec = tiny_run
    at = bn_page({"bn_view": "stats", "bn_run": str(run)})
    assert any(f"Run {run} completed" in x.value for x in at.info)
    m = metrics(at)
    # BN-LeNet: 6 + 16 + 120 + 84 = 226 channels in 4 BN layers; 512 images / 128 = 4 steps.
    assert (m["BN layers"], m["Channels"], m["Recorded steps"]) == ("4", "226", "4")
    heat = figure(at, 0)["data"][0]
    assert heat["type"] == "heatmap" and heat["x"].tolist() == [1, 2, 3, 4]
    z = np.array(heat["z"], dtype=float)
    assert z.shape == (6, 4)  # features.bn1: 6 channels × 4 steps
    np.testing.assert_allclose(z, rec.series("features.bn1", "batch_mean").T, rtol=1e-6)
    std = np.array(figure(at, 1)["data"][0]["z"], dtype=float)
    np.testing.assert_allclose(std ** 2, rec.series("features.bn1", "batch_var").T, rtol=1e-5)
    assert len(at.get("plotly_chart")) == 5  # mean, std, running vs batch, γ/β, histograms

    # A BatchNorm1d layer: 120 rows, labelled N×D, and the URL remembers it.
    at.selectbox(key="bn_layer").select("head.bn1").run()
    assert not at.exception
    assert "N×D" in at.selectbox(key="bn_layer").format_func("head.bn1")
    assert figure(at, 0)["data"][0]["z"].shape == (120, 4)
    assert at.query_params["bn_layer"] == ["head.bn1"] or at.query_params["bn_layer"] == \
        "head.bn1"
    # γ and β at the last step: 120 bars each.
    gb = figure(at, 3)["data"]
    np.testing.assert_allclose(gb[0]["y"], rec.series("head.bn1", "gamma")[-1], rtol=1e-6)


def test_one_click_experiment_starts_two_runs_and_says_what_happened():
    at = bn_page({"bn_view": "experiment"})
    at.number_input(key="bn_exp_epochs").set_value(1).run()
    next(b for b in at.button if b.label == "Train both").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    exp = at.session_state["bn_exp"]
    with RunStore() as store:
        names = [store.get_run(i)["name"] for i in (exp.bn_run, exp.plain_run)]
    assert names[0].startswith(f"{bn_lab.RECORDED_PREFIX}LeNet with BN")
    assert names[1].startswith("LeNet without BN")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        at.run()
        if at.success or at.warning:
            break
        time.sleep(0.5)
    verdicts = [x.value for x in [*at.success, *at.warning]]
    assert verdicts and verdicts[0].startswith(("It happened", "It did not happen",
                                                 "No clear difference"))
    assert "after 1 epoch" in verdicts[0]
    curves = figure(at, 0)["data"]
    assert {t["name"] for t in curves} == {"with BN", "without BN"}
    # The link to the BN run's statistics switches section.
    next(b for b in at.button if b.label.startswith("Open the statistics")).click().run()
    assert shown_tab(at) == "stats" and at.session_state["bn_run"] == exp.bn_run


def test_the_understanding_sections_show_their_numbers():
    at = bn_page({"bn_view": "scratch"})
    m = metrics(at)
    assert float(m["Train output, max |Δ|"]) < 1e-5 and float(m["Eval output, max |Δ|"]) < 1e-5
    assert "0.9 + 0.1 ×" in " ".join(x.value for x in at.markdown)

    open_tab(at, "modes")
    assert not at.exception
    assert metrics(at)["Disagreement"].endswith("%")
    assert any("Expected more than 1 value per channel" in w.value for w in at.warning)

    open_tab(at, "batch")
    assert not at.exception
    table = at.dataframe[0].value
    assert table["channels with variance 0"].tolist() == ["100%", "0%"]
    assert table["values per channel"].tolist() == [1, 64]  # 1 per example; 8×8 positions

    open_tab(at, "fold")
    assert not at.exception
    m = metrics(at)
    assert m["BN layers folded"] == "17" and float(m["Max |Δ output|"]) <= 1e-4

    open_tab(at, "norms")
    assert not at.exception
    check = at.dataframe[0].value
    assert (check["max |hand − torch|"] < 1e-5).all()
    assert check["sets"].tolist() == [6, 3, 18, 9]  # N=3, C=6, G=3: C, N, N·C, N·G


def test_user_mistakes_are_sentences(tmp_path):
    at = bn_page({"bn_view": "stats", "bn_run": "99999"})
    assert any("Run 99999 has no recorded BN statistics" in e.value for e in at.error)

    at.session_state["current_spec_json"] = get_preset("course_lenet").spec.to_json()
    at.selectbox(key="bn_model").select("Build page").run()
    next(b for b in at.button if b.label == "Start recording").click().run()
    assert not at.exception
    assert any("has no batch-norm layer" in e.value for e in at.error)

    at.selectbox(key="bn_model").select("course_bn_lenet").run()
    at.selectbox(key="bn_data").select("fashion-mnist").run()
    at.text_input(key="bn_dir").set_value("course").run()  # a folder in EXPLORER_DATA_DIR
    next(b for b in at.button if b.label == "Start recording").click().run()
    assert not at.exception
    assert any("EXPLORER_DATA_DIR/course" in e.value for e in at.error)

    open_tab(at, "modes")
    at.select_slider(key="bn_md_batch").set_value(8).run()
    at.number_input(key="bn_md_example").set_value(20).run()
    assert not at.exception
    assert any("Example 20 is not in a batch of 8" in e.value for e in at.error)


CONV = str(Path(PAGE).parent / "conv.py")
# A navigation like app.py's with this page and another one (absolute paths).
NAV = f"""
import streamlit as st
pages = [st.Page({PAGE!r}, title="Batch norm", default=True, url_path="bn_lab"),
         st.Page({CONV!r}, title="Conv arithmetic", url_path="conv")]
st.navigation(pages).run()
"""


def qp(at: AppTest, key: str) -> str:
    value = at.query_params[key]
    return value[-1] if isinstance(value, list) else value


def test_the_section_and_settings_survive_another_page():
    at = AppTest.from_string(NAV, default_timeout=120)
    at.query_params["bn_view"] = "Folding"  # the tab's label: Streamlit binds it to the URL
    at.run()
    assert not at.exception and shown_tab(at) == "fold"
    at.selectbox(key="bn_fold_model").select("course_bn_lenet").run()
    assert not at.exception
    at.switch_page(CONV).run()
    assert not at.exception and at.title[0].value == "Conv arithmetic"
    for key in list(at.query_params):  # the sidebar's navigation clears the URL
        del at.query_params[key]
    at.switch_page(PAGE).run()
    assert not at.exception
    assert at.title[0].value == "Batch norm"
    # Streamlit puts the bound tab back into the cleared URL.
    assert shown_tab(at) == "fold" and qp(at, "bn_view") == "Folding"
    assert at.selectbox(key="bn_fold_model").value == "course_bn_lenet"
    # BN-LeNet has 4 BN layers (2 after convs, 2 after linear layers), each after the layer
    # it folds into.
    assert metrics(at)["BN layers folded"] == "4"


def test_settings_survive_switching_sections():
    at = bn_page({"bn_view": "experiment"})
    at.number_input(key="bn_exp_epochs").set_value(1).run()
    at.number_input(key="bn_exp_seed").set_value(7).run()
    open_tab(at, "norms")
    at.number_input(key="bn_nm_c").set_value(4).run()
    open_tab(at, "stats")
    at.selectbox(key="bn_model").select("Build page").run()
    at.number_input(key="bn_epochs").set_value(7).run()
    open_tab(at, "experiment")
    assert not at.exception
    assert at.number_input(key="bn_exp_epochs").value == 1
    assert at.number_input(key="bn_exp_seed").value == 7
    open_tab(at, "stats")
    assert at.selectbox(key="bn_model").value == "Build page"
    assert at.number_input(key="bn_epochs").value == 7
    open_tab(at, "norms")
    assert not at.exception and at.number_input(key="bn_nm_c").value == 4
    # Back in the URL with its tab (Streamlit writes a bound value that is not the default).
    assert qp(at, "bn_nm_c") == "4"
    # Every other setting survived the other tabs without being in the URL.
    assert "bn_exp_epochs" not in at.query_params and "bn_epochs" not in at.query_params


def test_the_run_and_layer_survive_switching_sections(tiny_run):
    run, _ = tiny_run
    at = bn_page({"bn_view": "stats", "bn_run": str(run)})
    at.selectbox(key="bn_layer").select("head.bn1").run()
    open_tab(at, "norms")
    assert not at.exception and qp(at, "bn_layer") == "head.bn1"
    open_tab(at, "stats")
    assert not at.exception
    assert at.selectbox(key="bn_run").value == run
    assert at.selectbox(key="bn_layer").value == "head.bn1"
    # head.bn1 normalises the 120 outputs of the first linear layer: 120 channels × 4 steps.
    assert figure(at, 0)["data"][0]["z"].shape == (120, 4)


def test_labels_fit_and_the_detail_is_in_the_help():
    at = bn_page({"bn_view": "Train vs eval"})
    # Four metrics share the right column: about 165 px each at 1280×800, help icon included
    # ("Predictions that change" and "Accuracy, training mode" were cut off).
    labels = [m.label for m in at.metric]
    assert labels == ["Max |Δ output|", "Disagreement", "Accuracy, eval", "Accuracy, train"]
    helps = {m.label: m.help for m in at.metric}
    assert helps["Disagreement"] == ("share of the batch whose predicted class differs between "
                                     "the two modes")
    assert helps["Accuracy, train"] == ("training mode: every BN layer uses this batch's mean "
                                        "and variance")
    open_tab(at, "fold")
    at.selectbox(key="bn_fold_model").select("course_bn_lenet").run()
    button = next(b for b in at.button if b.label.startswith("Time it"))
    assert button.label == "Time it on this CPU"
    assert button.help == ("A batch of 8 images through the original and the folded model, "
                           "5 times each, alternately: a few seconds")
    button.click().run()
    assert not at.exception
    # BN-LeNet's input is 1×28×28.
    assert any(x.value.startswith("Measured now, batch of 8 at 1×28×28: ") for x in at.info)


def test_a_link_to_two_ordinary_runs_is_not_shown_as_the_experiment():
    with RunStore() as store:
        lenet5 = get_preset("course_lenet5").spec.to_dict()
        a = store.create_run("a plain run", lenet5, {"epochs": 1}, status="completed")
        b = store.create_run("another", lenet5, {"epochs": 1}, status="stopped")
    at = bn_page({"bn_view": "experiment", "bn_exp": f"{a},{b}"})
    assert not at.exception
    assert [e.value for e in at.error] == [
        f"Run {a} of the link is not the experiment's BN-LeNet; start the experiment with Train "
        f"both."]
    assert "bn_exp" not in at.session_state and "bn_exp" not in at.query_params
    assert not any(m.label.startswith("Loss with BN") for m in at.metric)


def experiment_pair(store: RunStore, bn_loss: float, plain_loss: float, config=None):
    """The lecture's two runs as the page would have queued them, finished, with one epoch's
    metrics written by hand; returns their ids."""
    bn_spec, plain_spec = bn_lab.experiment_specs()
    config = config or bn_lab.experiment_config(epochs=1)
    bn = store.create_run(f"{bn_lab.RECORDED_PREFIX}{bn_lab.BN_NAME} · {OFFLINE}",
                          bn_spec.to_dict(), config, status="completed")
    plain = store.create_run(f"{bn_lab.PLAIN_NAME} · {OFFLINE}", plain_spec.to_dict(), config,
                             status="completed")
    for run, loss, acc in ((bn, bn_loss, 0.9), (plain, plain_loss, 0.1)):
        store.add_metrics(run, "step", [{"step": 1, "epoch": 1, "loss": loss}])
        store.add_metrics(run, "epoch", [{"step": 1, "epoch": 1, "train_loss": loss,
                                          "test_acc": acc}])
    return bn, plain


def test_a_fresh_visit_shows_the_newest_experiment_without_pressing_anything():
    with RunStore() as store:
        experiment_pair(store, 0.5, 0.6)  # an older experiment: not the one shown
        bn, plain = experiment_pair(store, 0.25, 2.30)
        # Runs started since with other settings or another network are not the experiment's.
        lenet5 = get_preset("course_lenet5").spec.to_dict()
        store.create_run("a plain run", lenet5, {"epochs": 1}, status="completed")
    at = bn_page({"bn_view": "LeNet ± BN"})  # a new session: nothing pressed
    assert not at.exception
    m = metrics(at)
    # The numbers written above (loss 0.25 against 2.30; 90% against 10%).
    assert (m["Loss with BN"], m["Loss without BN"]) == ("0.25", "2.30")
    assert (m["Test acc with BN"], m["Test acc without BN"]) == ("90%", "10%")
    assert at.session_state["bn_exp"] == bn_lab.Experiment(bn, plain)
    assert qp(at, "bn_exp") == f"{bn},{plain}"  # and the link reproduces it
    # 0.25 < 0.7 × 2.30: BN clearly won, shown as a success (the verdict's outcome, not text).
    assert len(at.success) == 1 and not at.warning
    assert "2.30" in at.success[0].value


def test_every_outcome_of_the_experiment_has_its_alert_and_no_page_reads_the_wording():
    from explorer.bn.experiment import Outcome
    from pages.bn_views.experiment import ALERT

    assert set(ALERT) == set(Outcome)
    # The verdict's sentence is shown, never parsed: no page compares its text.
    pages = Path(PAGE).parent
    for source in [*pages.glob("*.py"), *pages.glob("bn_views/*.py")]:
        text = source.read_text(encoding="utf-8")
        assert "text.startswith" not in text and "It happened" not in text, source


def test_a_link_whose_run_is_not_a_number_is_a_sentence_above_the_run_picker():
    at = bn_page({"bn_view": VIEWS["stats"], "bn_run": "abc"})
    assert not at.exception, at.exception
    assert "The link's bn_run must be a run number such as 12, not 'abc'." in \
        [w.value.replace("\\_", "_") for w in at.warning]  # Markdown-escaped on the page
    at.run()  # said once: the next rerun no longer repeats it
    assert not any("bn_run must be" in w.value for w in at.warning)
