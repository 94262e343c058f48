"""Issue 11's building blocks: bounded text, cost limits, the data folder, safe Markdown, the
last guard of a page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from explorer.bounded import MAX_DIGITS, check_text, literal, loads, shown
from explorer.cost import MAX_LAYERS, check_spec, estimate_cost
from explorer.data import ANY_PATH_ENV, confined_data_dir, load_dataset_for_visitor
from explorer.errors import ConfigError
from explorer.forms import WORD_JOINER, md_escape
from explorer.registry import PRESETS
from explorer.specs import AlexNetSpec, DenseNetSpec, LeNetSpec, spec_from_json


# ---- bounded text ------------------------------------------------------------------------------
def test_depth_digits_and_size_are_refused_before_parsing():
    with pytest.raises(ConfigError, match="nested too deeply: its brackets go 20,000 levels"):
        loads("[" * 20_000 + "]" * 20_000, "the file", 10**6)
    with pytest.raises(ConfigError, match=f"more than {MAX_DIGITS} digits"):
        loads("1" + "0" * 400, "the file", 10**6)
    with pytest.raises(ConfigError, match="at most"):
        loads("[1]" * 100, "the file", 200)
    # Brackets and digits inside strings are text, not structure.
    assert loads('{"name": "' + "[" * 50 + "9" * 80 + '"}', "f", 1000)["name"].startswith("[[")
    check_text("(" * 16 + ")" * 16, "t", 100)  # 16 levels is the limit, allowed


def test_python_literals_are_bounded_too():
    with pytest.raises(ConfigError, match="nested too deeply"):
        literal("(" * 200 + ")" * 200, "the tuple", 10_000)
    with pytest.raises(ConfigError, match="not a tuple"):
        literal("9**9**9", "the tuple", 100)  # literal_eval refuses operators: no huge power
    assert literal("((1, 64), (2, 128))", "t", 100) == ((1, 64), (2, 128))


def test_a_number_too_long_to_print_is_still_described():
    assert shown(10**5000) == "a number too long to show"  # repr raises ValueError past 4,300
    assert len(shown("x" * 1000)) == 60


def test_huge_numbers_in_a_spec_are_a_sentence():
    with pytest.raises(ConfigError, match="below 1e308"):
        AlexNetSpec(dropout=10**400)  # float(10**400) raises OverflowError
    with pytest.raises(ConfigError, match="must be at most 100000"):
        LeNetSpec(num_classes=10**4000)
    with pytest.raises(ConfigError, match="1,000,000 entries; at most 8"):
        LeNetSpec(hidden=[1] * 1_000_000)
    with pytest.raises(ConfigError, match="nested too deeply"):
        spec_from_json('{"family": "vgg", "arch": ' + "[" * 5000 + "]" * 5000 + "}")


# ---- cost --------------------------------------------------------------------------------------
def test_multiply_adds_match_a_hand_count_for_lenet():
    # LeNet-5 of the course on 1×28×28: conv1 6×24×24 outputs × 1·5·5 = 86,400; conv2 16×8×8 ×
    # 6·5·5 = 153,600; linear 256·120 + 120·84 + 84·10 = 41,640; total 281,640 (no bias).
    cost = estimate_cost(LeNetSpec())
    assert cost.macs == 86_400 + 153_600 + 41_640
    assert cost.largest_macs == 153_600


def test_the_largest_and_the_deepest_presets_pass_and_a_monster_is_refused_quickly():
    assert check_spec(PRESETS["vgg19"].spec).macs == pytest.approx(19.6e9, rel=0.01)
    assert check_spec(PRESETS["densenet201"].spec).layers <= MAX_LAYERS
    monster = AlexNetSpec(input_shape=(3, 256, 256), convs=[[500, 31, 1, 15, False]] * 2,
                          hidden=[], avgpool_size=1)
    with pytest.raises(ConfigError, match="features.conv2 alone takes 15.7 T"):
        check_spec(monster)


def test_too_many_layers_stops_the_build_part_way():
    deep = DenseNetSpec(block_config=[128] * 16, growth_rate=1, input_shape=(1, 512, 512))
    with pytest.raises(ConfigError, match=f"more than {MAX_LAYERS:,} layers"):
        check_spec(deep)


def test_a_shrinking_model_still_gets_the_smallest_input_that_works():
    with pytest.raises(ConfigError, match=r"needs at least a 1×16×16 input"):
        check_spec(LeNetSpec(input_shape=(1, 8, 8)))


# ---- the data folder ---------------------------------------------------------------------------
@pytest.mark.parametrize("typed", ["/etc", "/root", "../../..", "/proc/self/cwd", "a/../../b",
                                   "sub/dir", "..", "~"])
def test_a_visitor_names_only_folders_inside_the_data_directory(typed, tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLORER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv(ANY_PATH_ENV, raising=False)
    with pytest.raises(ConfigError) as info:
        load_dataset_for_visitor("fashion-mnist", typed, download=True)
    assert "/" not in str(info.value).replace("EXPLORER_DATA_DIR/", "")
    assert not (tmp_path / "data").exists()  # nothing was created


def test_blank_the_default_and_a_name_are_inside(tmp_path, monkeypatch):
    base = tmp_path / "data"
    monkeypatch.setenv("EXPLORER_DATA_DIR", str(base))
    monkeypatch.delenv(ANY_PATH_ENV, raising=False)
    assert confined_data_dir("") == base and confined_data_dir(str(base)) == base
    assert confined_data_dir("cifar") == base / "cifar"
    with pytest.raises(ConfigError) as info:
        load_dataset_for_visitor("mnist", "cifar", download=False)
    message = str(info.value)
    assert str(tmp_path) not in message and "EXPLORER_DATA_DIR/cifar" in message
    monkeypatch.setenv(ANY_PATH_ENV, "1")  # the server's owner allows any path
    assert confined_data_dir("/srv/x") == Path("/srv/x")


# ---- Markdown ----------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["![t](http://evil.example/x.png)", "[a](http://evil.example)",
                                  "see http://evil.example/x", "www.evil.example", "a@evil.example",
                                  ":red[alarm]", "<img src=x>"])
def test_escaped_text_has_no_image_link_or_autolink_left(text):
    escaped = md_escape(text)
    bare = re.sub(r"\\.", "", escaped)  # what a renderer reads as markup: unescaped characters
    assert not set(bare) & set("![]<>:@")
    # GitHub's autolinks are matched on the text after escapes are read: none may be left there.
    shown = re.sub(r"\\(.)", r"\1", escaped)
    assert not re.search(r"(?i)https?://|www\.|@\w", shown)
    assert shown.replace(WORD_JOINER, "") == text  # and it reads back as typed


# ---- the last guard ----------------------------------------------------------------------------
def _guarded_script():
    from pages.common import run_page

    class Page:
        url_path = "boom"

        def run(self):
            raise RuntimeError("failed at /srv/secret/explorer/pages/x.py line 3")

    run_page(Page())


def test_an_unexpected_exception_is_a_sentence_without_a_path(caplog):
    at = AppTest.from_function(_guarded_script).run(timeout=60)
    assert not at.exception
    assert len(at.error) == 1
    assert "/srv" not in at.error[0].value and "went wrong" in at.error[0].value
    assert "RuntimeError" in caplog.text  # the traceback is in the server's log
