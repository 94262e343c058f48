"""AppTest of the Conv arithmetic page: hand-computed numbers, impossible settings, the URL."""

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "conv.py")


def fresh(query: dict | None = None) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=120)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    return at.run()


def metric(at: AppTest, label: str):
    return next(m for m in at.metric if m.label == label)


def text(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown)


def figures(at: AppTest) -> list[dict]:
    return [json.loads(e.proto.spec) for e in at.get("plotly_chart")]


def qp(at: AppTest, key: str) -> str:
    value = at.query_params[key]
    return value[-1] if isinstance(value, list) else value


@pytest.fixture(scope="module")
def at() -> AppTest:
    return fresh()


def test_opens_on_lenets_first_conv(at):
    assert not at.exception and not at.error
    # 1×28×28, 6 filters 5×5, padding 2: H' = (28 + 4 - 5) + 1 = 28; params 6·25 + 6 = 156;
    # lecture MACs 6·28·28·25 = 117,600; torchinfo 156·784 = 122,304.
    assert metric(at, "Output shape").value == "6×28×28"
    assert metric(at, "Parameters").help == "156"
    assert metric(at, "Multiply-adds (lecture)").help.startswith("117,600")
    assert metric(at, "Multiply-adds (torchinfo)").help.startswith("122,304")
    body = text(at)
    assert "6·(1·5·5) + 6 (bias) = 156" in body  # the formula with the numbers filled in
    # Lazy tabs: only the open one (the sliding window) ran.
    assert "pixels" not in body and len(at.get("plotly_chart")) == 1
    # A link can open another tab: two stacked 5×5 convs see 1 + 2·(5−1) = 9 pixels.
    stacked = fresh({"conv_tab": "Stacking layers"})
    assert "= **9×9** pixels" in text(stacked)
    assert not stacked.get("plotly_chart")  # the sliding window's figure is not drawn


def test_url_round_trip():
    # 3×32×32, 16 filters 3×3, stride 2, padding 1, no bias: floor((32 + 2 - 3) / 2) + 1 = 16;
    # params 16·3·9 = 432; lecture MACs 16·16·16·27 = 110,592.
    query = {"conv_c": "3", "conv_h": "32", "conv_w": "32", "conv_out": "16", "conv_kh": "3",
             "conv_kw": "3", "conv_s": "2", "conv_p": "1", "conv_bias": "false"}
    at = fresh(query)
    assert not at.exception
    assert at.number_input(key="conv_s").value == 2
    assert at.toggle(key="conv_bias").value is False
    assert metric(at, "Output shape").value == "16×16×16"
    assert metric(at, "Parameters").help == "432"
    assert metric(at, "Multiply-adds (lecture)").help.startswith("110,592")
    # The widgets are bound to these parameters: the browser writes an edit into the address
    # (tests/test_browser_hardening.py watches it), and that address reopens the same layer:
    # 8·3·9 = 216 parameters.
    again = fresh(query | {"conv_out": "8"})
    assert metric(again, "Parameters").help == "216"
    assert metric(again, "Output shape").value == "8×16×16"


def test_pooling_mode_and_its_url():
    at = fresh({"conv_mode": "Pooling", "conv_pool": "avg", "conv_pk": "3", "conv_ps": "2",
                "conv_pp": "1", "conv_c": "64", "conv_h": "56", "conv_w": "56"})
    assert not at.exception and not at.error
    # floor((56 + 2 - 3) / 2) + 1 = 28; pooling has no weights.
    assert metric(at, "Output shape").value == "64×28×28"
    assert metric(at, "Parameters").value == "0"
    assert at.radio(key="conv_pool").value == "avg"
    at.segmented_control(key="conv_mode").set_value("Convolution").run()
    # LeNet's first conv (the defaults) on the 64×56×56 input: 6·(64·25) + 6 = 9,606.
    assert not at.exception and metric(at, "Parameters").help == "9,606"


@pytest.mark.parametrize("key, value, fragment", [
    ("conv_kh", 40, "larger than the padded input"),  # 40 > 28 + 2·2
    ("conv_g", 4, "divisible by groups = 4"),  # 1 channel, 6 filters
])
def test_impossible_settings_answer_with_a_sentence(key, value, fragment):
    at = fresh()
    at.number_input(key=key).set_value(value).run()
    assert not at.exception
    assert len(at.error) == 1 and fragment in at.error[0].value
    assert metric(at, "Output shape").value == "—"
    at.number_input(key=key).set_value(3 if key == "conv_kh" else 1).run()
    assert not at.error and not at.exception


def test_a_broken_link_falls_back_to_the_defaults():
    at = fresh({"conv_kh": "abc", "conv_mode": "sideways", "conv_c": "0"})
    assert not at.exception
    assert len(at.warning) == 1 and "conv_kh='abc'" in at.warning[0].value
    assert "conv_mode='sideways' (one of Convolution, Pooling)" in at.warning[0].value
    assert "conv_c='0' (a whole number from 1 to 4096)" in at.warning[0].value
    assert metric(at, "Output shape").value == "6×28×28"
    # The refused values left the address; the next run binds the widgets again, once.
    assert not any(k in at.query_params for k in ("conv_kh", "conv_mode", "conv_c"))
    at.number_input(key="conv_out").set_value(8).run()
    assert not at.exception and not at.warning
    # 8 filters 5×5 on the default 1×28×28: 8·25 + 8 = 208 parameters.
    assert metric(at, "Parameters").help == "208"


def test_a_number_of_thousands_of_digits_is_a_sentence():
    # Streamlit's binding turns such a number into infinity and fails; the page refuses it first.
    at = fresh({"conv_c": "9" * 5000, "conv_out": "8"})
    assert not at.exception
    assert len(at.warning) == 1 and "conv_c=" in at.warning[0].value
    assert len(at.warning[0].value) < 400
    assert metric(at, "Parameters").help == "208"  # the readable conv_out=8 still applies


def test_the_settings_survive_a_visit_to_another_page():
    app = AppTest.from_file(str(Path(PAGE).parent.parent / "app.py"), default_timeout=120)
    app.switch_page("pages/conv.py").run()
    app.number_input(key="conv_out").set_value(12).run()
    app.segmented_control(key="conv_mode").set_value("Pooling").run()
    app.number_input(key="conv_pk").set_value(3).run()
    app.switch_page("pages/gallery.py").run()
    app.switch_page("pages/conv.py").run()
    assert not app.exception
    assert app.segmented_control(key="conv_mode").value == "Pooling"
    assert app.number_input(key="conv_pk").value == 3
    app.segmented_control(key="conv_mode").set_value("Convolution").run()
    assert metric(app, "Parameters").help == "312"  # 12·25 + 12


def test_sliding_window_and_groups():
    query = {"conv_c": "4", "conv_h": "5", "conv_w": "5", "conv_out": "8", "conv_kh": "3",
             "conv_kw": "3", "conv_s": "2", "conv_p": "1", "conv_g": "4"}
    at = fresh(query)
    assert not at.exception and not at.error
    # floor((5 + 2 - 3) / 2) + 1 = 3 → 3×3 outputs; position 4 is output (1, 1).
    slider = at.select_slider(key="conv_pos")
    slider.set_value(4).run()
    window = figures(at)[0]
    assert "output pixel (1, 1) reads rows 2–4, columns 2–4" in window["layout"]["title"]["text"]
    # The slider writes its label into the URL; such a link opens on the same window.
    linked = fresh(query | {"conv_pos": "(1, 1)"})
    assert "reads rows 2–4, columns 2–4" in figures(linked)[0]["layout"]["title"]["text"]
    # Grouped conv: C_in·C_out/g = 4·8/4 = 8 weights per kernel position.
    groups = fresh(query | {"conv_tab": "Groups"})
    assert not groups.exception
    assert "4·8/4 = **8** weights per kernel position" in text(groups)


def test_pooling_and_back_keeps_the_conv_settings():
    at = fresh()
    at.number_input(key="conv_out").set_value(12).run()
    at.segmented_control(key="conv_mode").set_value("Pooling").run()
    at.radio(key="conv_pool").set_value("avg").run()  # a run that does not draw the conv inputs
    assert not at.exception
    at.segmented_control(key="conv_mode").set_value("Convolution").run()
    assert not at.exception
    # 12 filters 5×5 on 1×28×28, padding 2: 12·25 + 12 = 312 parameters.
    assert metric(at, "Parameters").help == "312"
    at.segmented_control(key="conv_mode").set_value("Pooling").run()
    assert at.radio(key="conv_pool").value == "avg"


def test_stacking_uses_both_kernel_sides():
    at = fresh({"conv_kh": "3", "conv_kw": "7", "conv_h": "10", "conv_w": "30",
                "conv_tab": "Stacking layers"})
    assert not at.exception and not at.error
    body = text(at)
    # 1 + L(K−1) per side with L = 2: height 1 + 2·(3−1) = 5, width 1 + 2·(7−1) = 13.
    assert "### 2 stacked 3×7 convs see **5×13** pixels" in body
    assert "height 1 + 2·(3−1) = 5, width 1 + 2·(7−1) = 13." in body
    assert "5×5" not in body.replace("one 5×5", "").replace("same 5×5", "")
    table = at.dataframe[0].value
    assert table["receptive field"].tolist() == ["3×7", "5×13"]
    # 6 filters in and out: one 3×7 conv has 21·36 = 756 weights, two 1,512; one 5×13 conv
    # that sees as much has 65·36 = 2,340.
    assert table["weights of the stack"].tolist() == [756, 1_512]
    assert table["one conv that sees as much"].tolist() == ["3×7: 756", "5×13: 2,340"]
    # Stride 2, three layers: per side 1 + (K−1)(1 + 2 + 4) = 1 + 7(K−1): 15 rows, 43 columns.
    at.number_input(key="conv_s").set_value(2).run()
    at.slider(key="conv_layers").set_value(3).run()
    assert not at.exception and not at.error
    assert "### 3 stacked 3×7 convs see **15×43** pixels" in text(at)
    assert at.dataframe[0].value["receptive field"].tolist() == ["3×7", "7×19", "15×43"]


def test_a_setting_changed_after_a_mode_switch_survives_the_next_switch():
    # The window size is set in pooling mode, then the conv mode is edited: going back to
    # pooling must show the window the student chose, not the page's first value (2).
    at = fresh()
    at.segmented_control(key="conv_mode").set_value("Pooling").run()
    at.number_input(key="conv_pk").set_value(3).run()
    at.segmented_control(key="conv_mode").set_value("Convolution").run()
    at.number_input(key="conv_out").set_value(8).run()
    at.segmented_control(key="conv_mode").set_value("Pooling").run()
    assert not at.exception
    assert at.number_input(key="conv_pk").value == 3
    at.segmented_control(key="conv_mode").set_value("Convolution").run()
    assert at.number_input(key="conv_out").value == 8
