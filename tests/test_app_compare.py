"""AppTest of the Compare page: side-by-side totals, the URL, spec files and links."""

import json
import re
from pathlib import Path

import pytest
import torch
import torchvision
from streamlit.testing.v1 import AppTest

from explorer.io import specs_to_json
from explorer.registry import get_preset
from explorer.specs import LeNetSpec, VGGSpec

PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "compare.py")

# The classic LeNet on 1×28×28 by hand: 156 + 2,416 + 30,840 + 10,164 + 850.
LENET = 44_426
# The lecture-table LeNet-5: 520 + 25,050 + 1,225,500 + 5,010.
LENET5 = 1_256_080
# LeNet with 32 channels in conv2: 156 + (32·6·25 + 32) + (512·120 + 120) + 10,164 + 850.
LENET_32 = 156 + 4_832 + 61_560 + 10_164 + 850  # 77,562


def rendered(markdown: str) -> str:
    """The text a message shows: the page escapes what a visitor typed (CommonMark 2.4)."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown)


def fresh(query: dict | None = None) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=180)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    return at.run()


def qp(at: AppTest, key: str) -> str:
    value = at.query_params[key]
    return value[-1] if isinstance(value, list) else value


def params_shown(at: AppTest) -> dict[str, int]:
    """Model name → the exact parameter count in its headline metric's help."""
    return {m.label: int(m.help.split(" ")[0].replace(",", "")) for m in at.metric}


def small(extra: dict | None = None) -> dict:
    return {"cmp_models": "course_lenet,course_lenet5",
            "cmp_pair": "course_lenet|course_lenet5"} | (extra or {})


def test_opens_on_course_resnet18_against_torchvision():
    at = fresh()
    assert not at.exception and not at.error
    assert at.multiselect(key="cmp_models").value == ["course_resnet18", "resnet18"]
    reference = torchvision.models.resnet18(weights=None)
    # torchvision's published size of resnet18 (ResNet18_Weights' meta["num_params"])
    assert torchvision.models.ResNet18_Weights.DEFAULT.meta["num_params"] == 11_689_512
    assert params_shown(at)["resnet18"] == 11_689_512
    totals = at.table[0].value
    assert list(totals.columns) == ["course_resnet18", "resnet18"]
    assert totals.loc["Input", "resnet18"] == "3×224×224"
    assert totals.loc["Classes", "resnet18"] == "1,000"
    # The layer-by-layer view opens on the pair: 3 shortcut BNs exist only in torchvision.
    at.segmented_control(key="cmp_view").set_value("Layer by layer").run()
    assert not at.exception
    assert at.selectbox(key="cmp_pair").value == "course_resnet18|resnet18"
    assert "3 only in resnet18" in "\n".join(m.value for m in at.markdown)
    summary = at.table[0].value
    assert summary.loc["BN on the shortcut", "rows"] == 3
    # Every layer of torchvision's resnet18 that the alignment compares has a row.
    kinds = (torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.Linear, torch.nn.MaxPool2d,
             torch.nn.AdaptiveAvgPool2d)
    n_layers = sum(isinstance(m, kinds) for m in reference.modules())
    assert (at.dataframe[0].value["resnet18"] != "—").sum() == n_layers


def test_url_round_trip():
    at = fresh(small({"cmp_log": "true", "cmp_view": "Charts"}))
    assert not at.exception and not at.error
    assert at.multiselect(key="cmp_models").value == ["course_lenet", "course_lenet5"]
    assert params_shown(at) == {"course_lenet": LENET, "course_lenet5": LENET5}
    assert at.toggle(key="cmp_log").value is True
    at.multiselect(key="cmp_models").select("course_bn_lenet").run()
    assert not at.exception
    assert qp(at, "cmp_models") == "course_lenet,course_lenet5,course_bn_lenet"
    at.toggle(key="cmp_log").set_value(False).run()
    assert at.toggle(key="cmp_log").value is False
    # The page writes the models; the view and the toggle are bound widgets, which the
    # browser writes into the address (tests/test_browser_compare.py), here as it would.
    # (Off is the toggle's default, which Streamlit leaves out of the address.)
    again = fresh({k: qp(at, k) for k in at.query_params if k not in ("cmp_log", "cmp_view")}
                  | {"cmp_view": "Charts"})
    assert again.multiselect(key="cmp_models").value == ["course_lenet", "course_lenet5",
                                                          "course_bn_lenet"]
    assert again.toggle(key="cmp_log").value is False
    assert again.segmented_control(key="cmp_view").value == "Charts"
    # BN-LeNet adds γ and β per channel: 2·(6 + 16 + 120 + 84) = 452 to the classic LeNet.
    assert params_shown(again)["course_bn_lenet"] == LENET + 452


def test_a_model_that_is_not_a_preset_lives_in_the_url():
    spec = LeNetSpec(conv_channels=(6, 32))
    at = fresh({"cmp_models": "course_lenet,mine", "cmp_spec_mine": spec.to_json(None)})
    assert not at.exception and not at.error
    assert params_shown(at) == {"course_lenet": LENET, "mine": LENET_32}
    assert json.loads(qp(at, "cmp_spec_mine")) == json.loads(spec.to_json(None))
    # Removing it from the comparison removes its spec from the URL.
    at.multiselect(key="cmp_models").unselect("mine").run()
    assert "cmp_spec_mine" not in at.query_params


def test_a_broken_link_is_a_sentence_and_the_rest_still_shows():
    at = fresh({"cmp_models": "course_lenet,nosuch,bad",
                "cmp_spec_bad": '{"family": "vgg", "arch": [[1, 0]]}'})
    assert not at.exception
    message = " ".join(rendered(e.value) for e in at.error)
    assert "'nosuch' is neither a preset" in message and "bad:" in message
    assert params_shown(at) == {"course_lenet": LENET}


def test_uploading_a_spec_file_adds_a_model():
    at = fresh(small())
    spec = LeNetSpec(conv_channels=(6, 32))
    at.file_uploader[0].upload("wide.json", spec.to_json().encode(), "application/json").run()
    assert not at.exception and not at.error
    assert at.multiselect(key="cmp_models").value == ["course_lenet", "course_lenet5", "wide"]
    assert params_shown(at)["wide"] == LENET_32
    assert json.loads(qp(at, "cmp_spec_wide"))["conv_channels"] == [6, 32]


@pytest.mark.parametrize("content, fragment", [
    (b'{"family": "lenet", "conv_channels": [6, 16', "not valid JSON"),
    (b"{" + b" " * 70_000 + b"}", "at most 64.0 KiB"),
    (b'{"family": "lenet", "kernel_size": 99}', "kernel_size is 99"),
])
def test_a_bad_file_is_a_sentence_and_changes_nothing(content, fragment):
    at = fresh(small())
    at.file_uploader[0].upload("bad.json", content, "application/json").run()
    assert not at.exception
    assert len(at.error) == 1 and fragment in rendered(at.error[0].value)
    assert at.multiselect(key="cmp_models").value == ["course_lenet", "course_lenet5"]
    assert qp(at, "cmp_models") == "course_lenet,course_lenet5"


def test_a_compare_download_uploads_as_several_models():
    data = specs_to_json({"a": get_preset("course_nin").spec,
                          "b": VGGSpec(arch=((1, 8), (1, 16)), input_shape=(1, 32, 32))})
    at = fresh({"cmp_models": "course_lenet", "cmp_pair": "course_lenet|course_lenet"})
    at.file_uploader[0].upload("compared-specs.json", data.encode(), "application/json").run()
    assert not at.exception and not at.error
    # The NiN spec is the preset itself, so it comes back under the preset's name.
    assert at.multiselect(key="cmp_models").value == ["course_lenet", "course_nin", "b"]
    # The tiny VGG by hand: conv 1→8 (80), conv 8→16 (1,168); flatten 16·8·8 = 1,024:
    # 1,024·4,096 + 4,096 = 4,198,400; 4,096·4,096 + 4,096 = 16,781,312; 4,096·10 + 10 = 40,970.
    assert params_shown(at)["b"] == 80 + 1_168 + 4_198_400 + 16_781_312 + 40_970


def test_a_link_from_the_build_page_and_the_build_pages_model():
    at = fresh(small())
    spec = LeNetSpec(conv_channels=(6, 32))
    query = "&".join(f"{k}={v}" for k, v in spec.to_query().items())
    at.text_input(key="cmp_link").input(f"http://localhost:8501/build?{query}").run()
    assert not at.exception and not at.error
    assert params_shown(at)["linked_lenet"] == LENET_32
    # The Build page's spec (here: the default, course_resnet18) joins as the preset it is.
    next(b for b in at.button if "Build page" in b.label).click().run()
    assert at.multiselect(key="cmp_models").value[-1] == "course_resnet18"
    # A fifth model is refused with a sentence.
    at.multiselect(key="cmp_models").set_value(
        ["course_lenet", "course_lenet5", "linked_lenet", "course_nin"]).run()
    next(b for b in at.button if "Build page" in b.label).click().run()
    assert any("Four models are the most" in e.value for e in at.error)
    at.text_input(key="cmp_link").input("https://example.org/?q=1").run()
    assert any("holds no model" in e.value for e in at.error)
    assert not at.exception


def test_the_layer_view_and_its_toggles_round_trip():
    at = fresh(small({"cmp_view": "Layer by layer", "cmp_diff": "true",
                      "cmp_details": "true"}))
    assert not at.exception and not at.error
    assert at.selectbox(key="cmp_pair").value == "course_lenet|course_lenet5"
    table = at.dataframe[0].value
    # The first convs by hand: LeNet conv(6,5) on 1×28×28 → 6×24×24 with 6·25+6 = 156
    # parameters; LeNet-5 conv(20,5,p2) → 20×28×28 with 20·25+20 = 520.
    assert "course_lenet output" in table.columns and "course_lenet5 params" in table.columns
    first = table.iloc[0]
    assert first["course_lenet params"] == 156 and first["course_lenet5 params"] == 520
    assert first["course_lenet output"] == "6×24×24" and first["course_lenet5 output"] == "20×28×28"
    at.toggle(key="cmp_details").set_value(False).run()
    assert at.toggle(key="cmp_diff").value is True
    assert "course_lenet output" not in at.dataframe[0].value.columns


@pytest.mark.parametrize("spec, ending", [
    ('{"family":"resnet","stages":[[64,8192],[64,8192]]}', "use fewer or narrower layers; "),
    ('{bad', "download it again or fix that line; "),
])
def test_link_warnings_end_with_one_full_stop(spec, ending):
    at = fresh({"cmp_models": "mine,nosuch,course_lenet", "cmp_spec_mine": spec})
    assert not at.exception
    assert len(at.error) == 1
    message = rendered(at.error[0].value)
    assert message.startswith("The link could not be used entirely: mine: mine.json")
    # Each reason's own full stop gives way to the "; " that joins them, and one ends it.
    assert ending + "'nosuch' is neither a preset nor a model stored in the link." in message
    assert message.endswith("link.") and ".." not in message and ".;" not in message
    assert params_shown(at) == {"course_lenet": LENET}
    assert at.info[0].value == ("Pick at least two models to compare (at most four): presets in "
                                "the Models box above; the model from the Build page, a link or "
                                "a spec file on the left.")
    # The reviewer's link, one reason alone: it keeps exactly one full stop.
    at = fresh({"cmp_models": "mine,course_lenet", "cmp_spec_mine": spec})
    assert not at.exception and len(at.error) == 1
    assert rendered(at.error[0].value).endswith(ending.removesuffix("; ") + ".")
    assert ".." not in rendered(at.error[0].value)


def test_four_models_get_the_whole_width():
    at = fresh({"cmp_models": "course_lenet,course_lenet5,course_bn_lenet,course_nin"})
    assert not at.exception and not at.error
    # The box is a child of the page itself, above the two columns (in the left column, about
    # 280 px wide at 1280×800, the fourth name was cut off).
    top_level = [getattr(node, "key", None) for node in at.main.children.values()]
    assert "cmp_models" in top_level
    assert at.multiselect(key="cmp_models").value == ["course_lenet", "course_lenet5",
                                                      "course_bn_lenet", "course_nin"]


def test_a_toggle_survives_going_to_another_view_and_back_twice():
    at = fresh(small({}))
    at.segmented_control(key="cmp_view").set_value("Charts").run()
    at.toggle(key="cmp_log").set_value(True).run()
    for _ in range(2):
        at.segmented_control(key="cmp_view").set_value("Totals").run()
        at.segmented_control(key="cmp_view").set_value("Charts").run()
        assert not at.exception
        assert at.toggle(key="cmp_log").value is True


def test_a_link_with_an_unknown_view_or_toggle_is_one_sentence():
    at = fresh(small({"cmp_view": "layers", "cmp_log": "1"}))
    assert not at.exception
    assert len(at.error) == 1
    assert rendered(at.error[0].value) == (
        "The link could not be used entirely: cmp_view='layers' is not one of Totals, Charts, "
        "Layer by layer, Training runs; cmp_log='1' is not one of true, false.")
    assert at.segmented_control(key="cmp_view").value == "Totals"
    assert params_shown(at) == {"course_lenet": LENET, "course_lenet5": LENET5}
    assert "cmp_view" not in at.query_params and "cmp_log" not in at.query_params
