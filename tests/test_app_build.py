"""AppTest of the Build page: every family renders, presets fill widgets, edits change numbers."""

import re
from pathlib import Path

import pytest
import torchvision
from streamlit.testing.v1 import AppTest

from explorer.registry import DEFAULT_PRESET, get_preset
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


def test_a_receptive_field_larger_than_the_image_is_explained_beside_the_metric(at):
    # 435 px on a 96×96 image: the page says what that means (explorer.receptive.WHOLE_IMAGE)
    from explorer.receptive import WHOLE_IMAGE

    assert WHOLE_IMAGE in metric(at, "Receptive field").help
    assert any("435 px on a 96×96 image" in c.value and WHOLE_IMAGE in c.value
               for c in at.caption)


def test_a_torchvision_preset_fills_the_widgets_and_matches_torchvision():
    at = fresh()
    by_key(at.selectbox, "build_preset").select("resnet18").run()
    assert not at.exception
    assert by_key(at.selectbox, "build_family").value == "resnet"
    assert [by_key(at.number_input, k).value for k in ("f_in_c", "f_in_h", "f_in_w")] == [
        3, 224, 224]
    assert by_key(at.toggle, "f_shortcut_bn").value is True
    # torchvision's published size of resnet18 (its weights' meta["num_params"], 11,689,512)
    expected = torchvision.models.ResNet18_Weights.DEFAULT.meta["num_params"]
    assert metric(at, "Parameters").help == f"{expected:,}" == "11,689,512"


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


# ---- links and pastes that used to break the page (review findings 4, 5, 13, 14) ----------------

def unescape(markdown: str) -> str:
    """What a CommonMark renderer shows for backslash escapes: the ASCII punctuation alone."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown)


def heading(at: AppTest) -> str:
    return next(m.value for m in at.markdown if m.value.startswith("#### "))


def test_an_oversized_link_is_a_warning_and_the_default_preset_is_shown():
    # 2 stages of 64 basic blocks at 8192 channels: each block holds two 3×3 convs of
    # 9·8192² ≈ 604 M weights, so 128 blocks hold ≈ 128·2·9·8192² = 154,619 M parameters (the
    # first block of stage 1 starts from 64 channels, a 0.4 % change), far above the 250 M
    # that SizeLimits admits.
    at = fresh({"family": "resnet", "stages": "[[64,8192],[64,8192]]"})
    assert not at.exception, at.exception
    assert not at.error
    warning = unescape(at.warning[0].value)
    prefix = "The link's model could not be read: this model has "
    suffix = " M parameters, above the limit of 250 M; use fewer or narrower layers."
    assert warning.startswith(prefix) and warning.endswith(suffix), warning
    millions = float(warning[len(prefix):-len(suffix)].replace(",", ""))
    assert millions == pytest.approx(128 * 2 * 9 * 8192**2 / 1e6, rel=0.01)
    assert by_key(at.selectbox, "build_preset").value == DEFAULT_PRESET
    assert heading(at) == f"#### {DEFAULT_PRESET} · ResNet on 1×96×96"
    assert metric(at, "Receptive field").value == "435 px"  # the course ResNet-18 (see above)
    assert at.query_params["stages"] != "[[64,8192],[64,8192]]"


def test_a_link_over_the_activation_limit_is_a_warning():
    # One NiN block of 256 channels (3×3, padding 1) on 1×1024×1024: its three convs and three
    # ReLUs each output 256·1024² float32 numbers, 1 GiB apiece; then maxpool(3, 2) and dropout,
    # 256·511²·4 B = 0.249 GiB each, and the head block's six outputs of 10·511²·4 B, 0.058 GiB:
    # 6 + 2·0.249 + 0.058 = 6.56 GiB, above the 1 GiB that SizeLimits admits.
    at = fresh({"family": "nin", "blocks": "[[256,3,1,1,0]]", "input_shape": "[1,1024,1024]"})
    assert not at.exception, at.exception
    assert not at.error
    assert unescape(at.warning[0].value) == (
        "The link's model could not be read: one image through this model needs 6.56 GiB of "
        "activations, above the limit of 1.00 GiB; use a smaller input or fewer channels.")
    assert by_key(at.selectbox, "build_preset").value == DEFAULT_PRESET
    assert heading(at) == f"#### {DEFAULT_PRESET} · ResNet on 1×96×96"


@pytest.mark.parametrize(("text", "sentence"), [
    ("((-1,64),(2,128))", "stages[1] num_blocks is -1; it must be between 1 and 64."),
    ("((1,0),(2,128))", "stages[1] channels is 0; it must be between 1 and 8192."),
    ("()", "stages needs at least 1 entry; add a row."),
    ("((1,64.5),)", "stages[1] channels must be a whole number, not 64.5."),
])
def test_a_well_formed_paste_with_a_bad_value_says_what_is_wrong(text, sentence):
    at = fresh()
    params = metric(at, "Parameters").help
    by_key(at.text_input, "txt_stages").set_value(text).run()
    assert not at.exception, at.exception
    assert unescape(at.error[0].value) == (f"The pasted tuple does not fit: {sentence} The last "
                                           f"model that worked is shown below.")
    # The pasted text stays in the box to be fixed in place; the model and its name stay too.
    assert by_key(at.text_input, "txt_stages").value == text
    assert metric(at, "Parameters").help == params
    assert heading(at) == "#### course_resnet18 · ResNet on 1×96×96"
    by_key(at.text_input, "txt_stages").set_value("((1, 64), (1, 128))").run()
    assert not at.exception and not at.error
    assert by_key(at.text_input, "txt_stages").value == "((1, 64), (1, 128))"
    assert heading(at) == "#### course_resnet18_edited · ResNet on 1×96×96"


def test_the_pasted_text_is_shown_as_code_not_markdown():
    at = fresh()
    by_key(at.text_input, "txt_stages").set_value("__import__('os')").run()
    assert not at.exception
    # Inside a code span Markdown shows the text as typed: no bold "import".
    assert at.error[0].value == ("Could not read `__import__('os')` as a tuple; write it like "
                                 "`((1, 64), (2, 128))`. The last model that worked is shown "
                                 "below.")
    assert by_key(at.text_input, "txt_stages").value == "__import__('os')"
    assert heading(at) == "#### course_resnet18 · ResNet on 1×96×96"


def test_a_value_echoed_from_a_paste_is_escaped():
    at = fresh()
    by_key(at.text_input, "txt_stages").set_value("(('__x__', 64),)").run()
    assert not at.exception
    assert "\\_\\_x\\_\\_" in at.error[0].value
    assert unescape(at.error[0].value).startswith(
        "The pasted tuple does not fit: stages[1] num_blocks must be a whole number, not "
        "'__x__'.")


@pytest.mark.parametrize("preset", ["course_resnet18", "no_such_preset"])
def test_a_link_whose_preset_is_another_family_drops_the_preset(preset):
    at = fresh({"family": "vgg", "preset": preset})
    assert not at.exception, at.exception
    assert by_key(at.selectbox, "build_preset").value is None
    assert by_key(at.selectbox, "build_family").value == "vgg"
    assert heading(at).startswith("#### my_vgg · VGG on ")
    assert not any("ResNet" in c.value for c in at.caption)
    assert not any(b.label.startswith("Reset to") for b in at.button)
    assert "preset" not in at.query_params


def test_a_link_with_its_own_preset_keeps_it():
    spec = get_preset("course_densenet").spec
    at = fresh({**spec.to_query(), "preset": "course_densenet"})
    assert not at.exception
    assert by_key(at.selectbox, "build_preset").value == "course_densenet"
    assert heading(at).startswith("#### course_densenet · DenseNet on ")


def test_the_view_and_its_level_survive_another_page():
    at = fresh()
    at.select_slider(key="build_levels").set_value(3).run()
    at.switch_page("pages/train.py").run()
    at.switch_page("pages/build.py").run()
    assert not at.exception
    assert at.select_slider(key="build_levels").value == 3
    by_key(at.radio, "build_view").set_value("Charts").run()
    by_key(at.radio, "build_group").set_value("block").run()
    at.switch_page("pages/compare.py").run()
    at.switch_page("pages/build.py").run()
    assert not at.exception
    assert by_key(at.radio, "build_view").value == "Charts"
    assert by_key(at.radio, "build_group").value == "block"
    by_key(at.radio, "build_view").set_value("Layers").run()
    assert at.select_slider(key="build_levels").value == 3
    # LeNet has two levels (its two stages, then their layers): 3 comes down to 2.
    by_key(at.selectbox, "build_preset").set_value("course_lenet").run()
    assert not at.exception
    assert at.select_slider(key="build_levels").options == ["1", "2"]
    assert at.select_slider(key="build_levels").value == 2


def layer_names(at: AppTest) -> list[str]:
    table = next(d.value for d in at.dataframe if "layer" in d.value.columns)
    return [n.strip() for n in table["layer"]]


def test_a_link_opens_the_view_and_level_it_names():
    # A teacher's link to the block-level charts of the course DenseNet (issue 12): the view and
    # its settings are URL parameters of their own, beside the model's.
    at = fresh({"preset": "course_densenet", "build_view": "Charts", "build_group": "block"})
    assert not at.exception
    assert by_key(at.radio, "build_view").value == "Charts"
    assert by_key(at.radio, "build_group").value == "block"
    # Grouped by block: the first chart has a bar per dense block and transition, more than
    # the 4 stages, so it cannot be the stage grouping.
    assert len(at.get("plotly_chart")) == 3
    deep = fresh({"preset": "course_resnet18", "build_levels": "3"})
    assert not deep.exception
    assert deep.select_slider(key="build_levels").value == 3
    # Level 3 of ResNet-18 lists the layers inside each basic block: stage1.block1.conv1 is at
    # depth 3 (stage, block, layer), so its row is shown, which level 2 hides.
    assert "stage1.block1.conv1" in layer_names(deep)
    assert "stage1.block1.conv1" not in layer_names(fresh({"preset": "course_resnet18"}))


@pytest.mark.parametrize("query", [
    {"build_view": "Sideways"}, {"build_levels": "9" * 5000}, {"build_levels": "0"},
    {"build_group": "[x](http://evil.example/)"}])
def test_a_link_with_an_unknown_view_opens_the_default_one(query):
    at = fresh({"preset": "course_lenet", **query})
    assert not at.exception, at.exception
    assert by_key(at.radio, "build_view").value == "Layers"
    assert at.select_slider(key="build_levels").value == 2


def test_the_preset_box_and_the_title_agree_after_an_edit():
    at = fresh({"preset": "course_densenet"})
    description = get_preset("course_densenet").description
    assert any(c.value == description for c in at.caption)
    by_key(at.number_input, "f_growth_rate").set_value(12).run()
    assert not at.exception
    # The title says the model is an edited copy; the box no longer names the preset and its
    # description (which would caption a model that is not shown) gives way to a sentence.
    assert heading(at).startswith("#### course_densenet_edited · DenseNet on ")
    assert by_key(at.selectbox, "build_preset").value is None
    assert not any(c.value == description for c in at.caption)
    assert any("Your variant of course_densenet" in c.value for c in at.caption)
    # Reset (an on_click callback) brings back the preset, its name in the box and the title.
    next(b for b in at.button if b.label == "Reset to course_densenet").click().run()
    assert not at.exception
    assert by_key(at.selectbox, "build_preset").value == "course_densenet"
    assert by_key(at.number_input, "f_growth_rate").value == get_preset(
        "course_densenet").spec.growth_rate
    assert heading(at).startswith("#### course_densenet · DenseNet on ")
    # Choosing the same preset again in the box after an edit undoes the edit too.
    by_key(at.number_input, "f_growth_rate").set_value(12).run()
    by_key(at.selectbox, "build_preset").select("course_densenet").run()
    assert heading(at).startswith("#### course_densenet · DenseNet on ")
    assert by_key(at.number_input, "f_growth_rate").value != 12


def test_the_share_link_is_url_encoded_and_reopens_the_model_and_its_view():
    from urllib.parse import parse_qsl, urlsplit

    at = fresh({"preset": "course_googlenet"})
    at.select_slider(key="build_levels").set_value(3).run()
    by_key(at.radio, "build_view").set_value("Charts").run()
    by_key(at.radio, "build_group").set_value("block").run()
    by_key(at.number_input, "f_in_h").set_value(64).run()  # an edited model: no preset name
    by_key(at.radio, "build_view").set_value("Share & export").run()
    by_key(at.selectbox, "build_share_view").select("Charts").run()
    assert not at.exception
    link = at.code[0].value
    # GoogLeNet's stages hold brackets, commas and quotes: encoded, never joined raw with "&".
    assert "[" not in link and " " not in link and '"' not in link
    query = dict(parse_qsl(urlsplit(link).query))
    assert query["build_view"] == "Charts" and query["build_levels"] == "3"
    assert query["build_group"] == "block" and "preset" not in query
    again = fresh(query)
    assert not again.exception
    assert by_key(again.radio, "build_view").value == "Charts"
    assert by_key(again.radio, "build_group").value == "block"
    assert by_key(again.number_input, "f_in_h").value == 64
    assert metric(again, "Parameters").help == metric(at, "Parameters").help
    by_key(again.radio, "build_view").set_value("Layers").run()
    assert again.select_slider(key="build_levels").value == 3


def test_the_layer_table_shows_receptive_fields_by_hand_and_a_dash_where_no_map_is_left():
    """course_lenet (LeNet-5 with average pools, 1×28×28): RF and jump worked by hand, layer by
    layer (RF += (k - 1) × jump, jump ×= stride); after the flatten no map is left: a dash."""
    at = fresh({"preset": "course_lenet"})
    assert not at.exception
    table = next(d.value for d in at.dataframe if "layer" in d.value.columns)
    rows = {name.strip(): (rf, jump) for name, rf, jump
            in zip(table["layer"], table["RF"], table["jump"], strict=True)}
    assert rows["features.conv1"] == ("5", "1")   # 1 + (5 - 1) × 1
    assert rows["features.pool1"] == ("6", "2")   # 5 + (2 - 1) × 1, jump 1 × 2
    assert rows["features.conv2"] == ("14", "2")  # 6 + (5 - 1) × 2
    assert rows["features.pool2"] == ("16", "4")  # 14 + (2 - 1) × 2, jump 2 × 2
    assert {rows[n] for n in rows if n.startswith("head")} == {("—", "—")}
