"""AppTest of the Build page: every family renders, presets fill widgets, edits change numbers."""

from pathlib import Path

import pytest
import torchvision
from streamlit.testing.v1 import AppTest

from explorer.registry import get_preset
from explorer.specs import FAMILIES, SPEC_TYPES

APP = str(Path(__file__).resolve().parent.parent / "app.py")


def fresh(query: dict | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    return at.run()


def metric(at: AppTest, label: str):
    return next(m for m in at.metric if m.label == label)


def by_key(widgets, key):
    return next(w for w in widgets if w.key == key)


@pytest.fixture(scope="module")
def at() -> AppTest:
    return fresh()


def test_opens_on_the_course_resnet18(at):
    assert not at.exception
    assert by_key(at.selectbox, "build_preset").value == "course_resnet18"
    # Course ResNet-18 at 1×96×96 by hand: the stem conv 64·49+64 = 3200 and BN 128 …; here we
    # check the total against the layer sum the table shows and the receptive field (435 px:
    # 7×7/2 stem, 3×3/2 pool, then 16 3×3 convs at jumps 4, 8, 16, 32 → 11 + 4·2·2·(4+8+16+32)
    # … = 435, the known value for ResNet-18's conv body).
    assert metric(at, "Receptive field").value == "435 px"
    assert metric(at, "Depth").value == "18"


def test_a_torchvision_preset_fills_the_widgets_and_matches_torchvision():
    at = fresh()
    by_key(at.selectbox, "build_preset").select("resnet18").run()
    assert not at.exception
    assert by_key(at.selectbox, "build_family").value == "resnet"
    assert [by_key(at.number_input, k).value for k in ("f_in_c", "f_in_h", "f_in_w")] == [
        3, 224, 224]
    assert by_key(at.toggle, "f_shortcut_bn").value is True
    expected = sum(p.numel() for p in torchvision.models.resnet18(weights=None).parameters())
    assert metric(at, "Parameters").help == f"{expected:,}"


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_renders(family):
    at = fresh()
    by_key(at.selectbox, "build_family").select(family).run()
    assert not at.exception, at.exception
    assert not at.error
    assert at.markdown and any(SPEC_TYPES[family].title in m.value for m in at.markdown)
    assert len(at.metric) == 6


def test_editing_the_tuple_changes_the_parameter_count():
    at = fresh({"preset": "course_lenet"})
    txt = by_key(at.text_input, "txt_conv_channels")
    assert txt.value == "(6, 16)"
    txt.set_value("(6, 32)").run()
    assert not at.exception
    # By hand: conv(6,5) 156; conv(32,5) 32·6·25+32 = 4832; flatten 32·4·4 = 512:
    # 512·120+120 = 61560; 120·84+84 = 10164; 84·10+10 = 850.
    assert metric(at, "Parameters").help == f"{156 + 4832 + 61560 + 10164 + 850:,}"
    assert by_key(at.text_input, "txt_conv_channels").value == "(6, 32)"
    assert at.query_params["conv_channels"] in ("[6,32]", ["[6,32]"])


def test_vgg_arch_tuple_edit_by_hand():
    at = fresh({"preset": "course_vgg11_small"})
    by_key(at.text_input, "txt_arch").set_value("((1, 16), (1, 32), (2, 64), (2, 128))").run()
    # Four blocks: 224 → 14, so the flatten has 128·14·14 = 25088 features.
    # convs: 16·9+16 = 160; 32·16·9+32 = 4640; 64·32·9+64 = 18496, 64·64·9+64 = 36928;
    # 128·64·9+128 = 73856, 128·128·9+128 = 147584; FC 25088·4096+4096, 4096·4096+4096,
    # 4096·10+10.
    convs = 160 + 4640 + 18496 + 36928 + 73856 + 147584
    fcs = 25088 * 4096 + 4096 + 4096 * 4096 + 4096 + 40970
    assert metric(at, "Parameters").help == f"{convs + fcs:,}"


def test_a_bad_tuple_shows_the_error_and_keeps_the_last_model():
    at = fresh({"preset": "course_vgg11"})
    before = metric(at, "Parameters").value
    by_key(at.number_input, "f_in_h").set_value(28).run()
    by_key(at.number_input, "f_in_w").set_value(28).run()
    assert not at.exception
    assert at.error and "0×0" in at.error[0].value and "at least a 1×32×32" in at.error[0].value
    assert metric(at, "Parameters").value == before
    by_key(at.text_input, "txt_arch").set_value("((1, 64), (2,))").run()
    assert not at.exception and at.error


def test_unreadable_paste_is_a_sentence():
    at = fresh({"preset": "course_vgg11"})
    by_key(at.text_input, "txt_arch").set_value("import os").run()
    assert not at.exception
    assert "Could not read" in at.error[0].value


def test_query_parameter_round_trip():
    at = fresh({"preset": "course_densenet"})
    by_key(at.number_input, "f_growth_rate").set_value(12).run()
    query = {k: v[0] if isinstance(v, list) else v for k, v in at.query_params.items()}
    assert query["growth_rate"] == "12" and "preset" not in query
    again = fresh(query)
    assert not at.exception and not again.exception
    assert by_key(again.number_input, "f_growth_rate").value == 12
    assert metric(again, "Parameters").help == metric(at, "Parameters").help
    spec = get_preset("course_densenet").spec
    assert metric(again, "Parameters").help != f"{spec.growth_rate}"


def test_bad_link_is_a_warning_not_a_traceback():
    at = fresh({"family": "vgg", "arch": "[[1,0]]"})
    assert not at.exception
    assert at.warning and "could not be read" in at.warning[0].value


@pytest.mark.parametrize("preset", ["course_googlenet", "course_densenet", "course_lenet5"])
def test_every_view_renders(preset):
    at = fresh({"preset": preset})
    for view in ("Charts", "Diagram", "Share & export", "About", "Layers"):
        by_key(at.radio, "build_view").set_value(view).run()
        assert not at.exception, (view, at.exception)
    by_key(at.radio, "build_view").set_value("Charts").run()
    by_key(at.radio, "build_group").set_value("block").run()
    assert not at.exception


def test_the_model_survives_a_visit_to_another_page():
    at = fresh({"preset": "course_densenet"})
    by_key(at.number_input, "f_growth_rate").set_value(12).run()
    params = metric(at, "Parameters").help
    at.switch_page("pages/train.py").run()
    at.switch_page("pages/build.py").run()
    assert not at.exception and not at.error
    assert by_key(at.number_input, "f_growth_rate").value == 12
    assert metric(at, "Parameters").help == params
