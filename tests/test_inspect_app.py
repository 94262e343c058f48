"""AppTest of the Inspect page: a kept run, the Build page's model, a unit's receptive field."""

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from explorer.data import offline_mnist
from explorer.models import build
from explorer.registry import get_preset
from explorer.runs import RunStore, default_store_path
from explorer.weights import save_weights

APP = str(Path(__file__).resolve().parent.parent / "app.py")


def _decode(value):
    if isinstance(value, dict) and "bdata" in value:
        arr = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        return arr.reshape([int(s) for s in str(shape).split(",")]) if shape else arr
    return np.asarray(value)


def figure(at: AppTest, title: str) -> dict:
    """The figure whose title starts with ``title``, arrays decoded."""
    for chart in at.get("plotly_chart"):
        fig = json.loads(chart.proto.spec)
        if fig["layout"].get("title", {}).get("text", "").startswith(title):
            for trace in fig["data"]:
                for key in ("x", "y", "z"):
                    if key in trace:
                        trace[key] = _decode(trace[key])
            return fig
    raise AssertionError(f"no figure titled {title!r}")


def shape(fig: dict, name: str) -> dict:
    return next(s for s in fig["layout"]["shapes"] if s.get("name") == name)


def inspect_page(spec_json: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    if spec_json:
        at.session_state["current_spec_json"] = spec_json
    at.switch_page("pages/inspect.py").run()
    assert not at.exception, at.exception
    return at


@pytest.fixture(scope="module")
def kept_run():
    """A completed LeNet-5 run whose weights are kept beside the tests' run store."""
    spec = get_preset("course_lenet5").spec
    model = build(spec).eval()
    store = RunStore(default_store_path())
    run_id = store.create_run("inspect me", spec.to_dict(), {"epochs": 1}, status="completed")
    save_weights(model, store, run_id, spec=spec)
    bare = store.create_run("no weights", spec.to_dict(), {"epochs": 1}, status="completed")
    store.close()
    return run_id, bare, model


def _probs(model, pixels):
    data = offline_mnist()
    x = (pixels.float() / 255 - data.mean[0]) / data.std[0]  # the dataset's normalisation
    with torch.no_grad():
        return torch.softmax(model(x[None]), 1)[0].numpy()


def test_a_kept_run_shows_its_own_probabilities_mistakes_and_confusion(kept_run):
    run_id, _, model = kept_run
    at = inspect_page()
    at.selectbox(key="in_run").select(run_id).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    data = offline_mnist()
    bars = figure(at, "Prediction:")["data"][0]["x"]
    assert np.allclose(bars, _probs(model, data.test_images[0]), atol=1e-6)

    at.number_input(key="in_index").set_value(42).run()
    assert np.allclose(figure(at, "Prediction:")["data"][0]["x"],
                       _probs(model, data.test_images[42]), atol=1e-6)

    # The mistakes, most confident first, computed here image by image.
    x = (data.test_images.float() / 255 - data.mean[0]) / data.std[0]
    with torch.no_grad():
        p = torch.softmax(model(x), 1)
    conf, pred = p.max(1)
    wrong = (pred != data.test_labels).nonzero().flatten().tolist()
    wrong.sort(key=lambda i: -float(conf[i]))
    at.radio(key="in_image").set_value("A mistake").run()
    assert list(at.selectbox(key="in_mistake").options) == [str(i) for i in wrong[:64]]
    at.toggle(key="in_confusion").set_value(True).run()
    z = figure(at, "Confusion matrix")["data"][0]["z"]
    want = np.zeros((10, 10), dtype=int)
    for t, q in zip(data.test_labels.tolist(), pred.tolist(), strict=True):
        want[t, q] += 1
    assert np.array_equal(np.asarray(z, dtype=int), want)
    assert not at.exception


def test_a_run_without_weights_says_so(kept_run):
    _, bare, _ = kept_run
    at = inspect_page()
    at.selectbox(key="in_run").select(bare).run()
    assert any("kept no weights" in w.value for w in at.warning)
    assert not at.exception


def test_the_build_pages_model_and_a_units_rectangle():
    at = inspect_page(get_preset("course_lenet5").spec.to_json(None))
    at.radio(key="in_source").set_value("The Build page's model (untrained)").run()
    assert not at.exception and not at.error
    # The unit chooser opens on the third map, features.pool1 (14×14), at its centre (7, 7).
    assert at.selectbox(key="in_unit_layer").value == "features.pool1"
    # By hand: conv1 is 5×5 with padding 2 and pool1 2×2/2, so pool1 unit y sees input rows
    # 2y − 2 … 2y + 3: rows 12 … 17 for y = 7; drawn around pixel edges (±0.5).
    fig = figure(at, "Theoretical field: 6×6 px")
    rf = shape(fig, "rf")
    assert (rf["y0"], rf["y1"], rf["x0"], rf["x1"]) == (11.5, 17.5, 11.5, 17.5)
    assert not [s for s in fig["layout"]["shapes"] if s.get("name") == "padding"]
    at.number_input(key="in_row").set_value(0).run()  # rows −2 … 3: two rows of padding
    fig = figure(at, "Theoretical field: 6×6 px")
    assert (shape(fig, "rf")["y0"], shape(fig, "rf")["y1"]) == (-2.5, 3.5)
    assert (shape(fig, "rf-on-image")["y0"], shape(fig, "rf-on-image")["y1"]) == (-0.5, 3.5)
    assert [s for s in fig["layout"]["shapes"] if s.get("name") == "padding"]
    sentence = [i.value for i in at.info if "theoretical receptive field" in i.value]
    assert sentence and "features.pool1[0, 0, 7] is 6×6 pixels (24 of its pixels on the image " \
                        "and 12 in the padding)" in sentence[0]
    # The last layer: no position, the whole image and more.
    at.selectbox(key="in_unit_layer").select("head.fc").run()
    assert not at.exception
    assert any("head.fc[0]" in i.value for i in at.info)


def test_draw_mode_starts_blank_and_an_upload_is_optional():
    at = inspect_page(get_preset("course_lenet5").spec.to_json(None))
    at.radio(key="in_source").set_value("The Build page's model (untrained)").run()
    at.radio(key="in_image").set_value("Draw").run()
    assert not at.exception
    z = figure(at, "Draw:")["data"][0]["z"]
    assert np.asarray(z).shape == (28, 28) and not np.asarray(z).any()
    at.radio(key="in_image").set_value("Upload").run()
    assert not at.exception and any("Until you upload" in c.value for c in at.caption)


def test_a_run_with_epoch_weights_shows_each_epochs_model():
    spec = get_preset("course_lenet5").spec
    store = RunStore(default_store_path())
    run_id = store.create_run("epochs", spec.to_dict(), {"epochs": 2}, status="completed")
    models = {}
    for epoch in (1, 2, None):  # three different sets of weights
        models[epoch] = build(spec).eval()
        save_weights(models[epoch], store, run_id, epoch=epoch, spec=spec)
    store.close()
    at = inspect_page()
    at.selectbox(key="in_run").select(run_id).run()
    slider = at.select_slider(key="in_epoch")
    assert list(slider.options) == ["1", "2", "final"] and slider.value == "final"
    image = offline_mnist().test_images[0]
    assert np.allclose(figure(at, "Prediction:")["data"][0]["x"], _probs(models[None], image),
                       atol=1e-6)
    at.select_slider(key="in_epoch").set_value("1").run()
    assert not at.exception
    assert np.allclose(figure(at, "Prediction:")["data"][0]["x"], _probs(models[1], image),
                       atol=1e-6)


def test_a_link_from_train_opens_its_run_and_a_bad_one_is_a_sentence():
    from explorer.registry import get_preset
    from explorer.runs import RunStore

    store = RunStore()
    spec = get_preset("course_lenet5").spec.to_dict()
    run = store.create_run("linked", spec, {"epochs": 1}, status="completed")
    at = AppTest.from_file(APP, default_timeout=300)
    at.query_params["run"] = str(run)
    at.switch_page("pages/inspect.py").run()
    assert not at.exception, at.exception
    assert at.radio(key="in_source").value.startswith("A training run")
    assert at.selectbox(key="in_run").value == run
    bad = AppTest.from_file(APP, default_timeout=300)
    bad.query_params["run"] = "²"
    bad.switch_page("pages/inspect.py").run()
    assert not bad.exception and any("run" in w.value for w in bad.warning)


def test_a_link_opens_a_finished_run_older_than_the_newest_two_hundred():
    # A class's own runs, or one visitor's imports, push an older run out of the list of the
    # newest 200; a link to it (the history's "Inspect run #N") still opens it.
    store = RunStore()
    spec = get_preset("course_lenet5").spec.to_dict()
    old = store.create_run("older", spec, {"epochs": 1}, status="completed")
    newer = [store.create_run(f"newer {i}", spec, {"epochs": 1}, status="completed",
                              session="someone else") for i in range(201)]
    try:
        at = AppTest.from_file(APP, default_timeout=300)
        at.query_params["run"] = str(old)
        at.switch_page("pages/inspect.py").run()
        assert not at.exception, at.exception
        assert not any("not a finished run" in i.value for i in at.info), at.info
        assert at.selectbox(key="in_run").value == old
        # A bad link is a sentence that begins like one and closes its quote.
        bad = AppTest.from_file(APP, default_timeout=300)
        bad.query_params["run"] = "-1"
        bad.switch_page("pages/inspect.py").run()
        assert bad.warning[0].value == "The link's run must be a run number such as 12, not '-1'."
    finally:
        for i in [old, *newer]:
            store.delete_run(i)
