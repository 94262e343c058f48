"""explorer.compare and explorer.io: counts against torchvision and hand computations, the
course-vs-torchvision alignment, the figures' data, and spec import/export."""

import json
from pathlib import Path

import plotly.graph_objects as go
import pytest
import torchinfo
import torchvision
from torch import nn

from explorer import compare as cmp
from explorer.analysis import analyze
from explorer.convmath import stacking_rows
from explorer.errors import ConfigError
from explorer.io import (
    MAX_SPEC_BYTES,
    read_spec,
    read_specs,
    safe_name,
    spec_from_link,
    specs_to_json,
)
from explorer.registry import PRESETS, get_preset
from explorer.specs import LeNetSpec, ResNetSpec, VGGSpec

ROOT = Path(__file__).resolve().parent.parent

# The classic LeNet (conv(6,5) sigmoid pool conv(16,5) sigmoid pool 120 84 10) on 1×28×28, by
# hand: conv1 6·25+6 = 156 on 24×24; conv2 16·6·25+16 = 2,416 on 8×8; fc 256·120+120 = 30,840;
# 120·84+84 = 10,164; 84·10+10 = 850.
LENET_PARAMS = 156 + 2_416 + 30_840 + 10_164 + 850  # 44,426
# Lecture MACs: 6·24·24·25 + 16·8·8·150 + 256·120 + 120·84 + 84·10
LENET_MACS_LECTURE = 86_400 + 153_600 + 30_720 + 10_080 + 840  # 281,640
# torchinfo: conv params × output pixels, linear params once
LENET_MACS = 156 * 576 + 2_416 * 64 + 30_840 + 10_164 + 850  # 286,334


def tv(name: str) -> nn.Module:
    return getattr(torchvision.models, name)(weights=None)


# ---- counting on the meta device -------------------------------------------------------------

def test_meta_pass_matches_the_hand_count_of_lenet():
    mp = cmp.meta_pass(get_preset("course_lenet").spec)
    assert (mp.params, mp.macs_lecture, mp.macs) == (LENET_PARAMS, LENET_MACS_LECTURE, LENET_MACS)
    assert [x.kind for x in mp.layers] == ["conv", "pool", "conv", "pool", "linear", "linear",
                                           "linear"]
    assert mp.layers[0].output_shape == (6, 24, 24)


def test_meta_pass_matches_torchvision_resnet18_and_torchinfo():
    model = tv("resnet18")
    info = torchinfo.summary(model, input_size=(1, 3, 224, 224), verbose=0)
    mp = cmp.meta_pass(get_preset("resnet18").spec)
    # torchvision's published size of resnet18 (ResNet18_Weights.IMAGENET1K_V1.meta["num_params"])
    assert mp.params == 11_689_512
    assert mp.macs == info.total_mult_adds


def test_preset_points_match_torchvision_parameter_counts():
    points = cmp.preset_points(["alexnet", "googlenet", "course_lenet"]).set_index("name")
    # torchvision's published sizes (the weights' meta["num_params"], and its model table):
    # AlexNet 61,100,840; GoogLeNet (without the auxiliary heads) 6,624,904.
    assert torchvision.models.AlexNet_Weights.DEFAULT.meta["num_params"] == 61_100_840
    assert torchvision.models.GoogLeNet_Weights.DEFAULT.meta["num_params"] == 6_624_904
    assert points.loc["alexnet", "params"] == 61_100_840
    assert points.loc["googlenet", "params"] == 6_624_904
    assert points.loc["course_lenet", "macs_lecture"] == LENET_MACS_LECTURE
    assert set(points["group"]) == {"course", "torchvision"}


# ---- the totals table and where the parameters live ------------------------------------------

def test_totals_table_puts_models_side_by_side():
    lenet5 = analyze(get_preset("course_lenet5").spec)
    lenet = analyze(get_preset("course_lenet").spec)
    raw = cmp.totals_table({"course_lenet5": lenet5, "course_lenet": lenet}, formatted=False)
    rows = raw.set_index("quantity")
    assert list(raw.columns) == ["quantity", "course_lenet5", "course_lenet"]
    # LeNet-5 of the lecture's table: 20·25+20 = 520; 50·20·25+50 = 25,050;
    # flatten 50·7·7 = 2,450: 2,450·500+500 = 1,225,500; 500·10+10 = 5,010.
    assert rows.loc["Parameters", "course_lenet5"] == 520 + 25_050 + 1_225_500 + 5_010
    assert rows.loc["Parameters", "course_lenet"] == LENET_PARAMS
    assert rows.loc["Conv layers", "course_lenet"] == 2
    assert rows.loc["Linear layers", "course_lenet5"] == 2
    assert rows.loc["Classes", "course_lenet"] == 10
    assert rows.loc["Parameter memory (float32)", "course_lenet"] == 4 * LENET_PARAMS
    shown = cmp.totals_table({"course_lenet": lenet}).set_index("quantity")
    assert shown.loc["Parameters", "course_lenet"] == "44.43 k  (44,426)"
    assert shown.loc["Input", "course_lenet"] == "1×28×28"


def test_vgg_keeps_most_of_its_weights_in_the_first_fully_connected_layer():
    table = analyze(get_preset("course_vgg11_small").spec).table
    where = cmp.param_location(table)
    # The reduced VGG-11 flattens 128×7×7 = 6,272 features: 6,272·4,096 + 4,096 weights.
    assert where["first fully connected"] == 6_272 * 4_096 + 4_096
    # 4,096·4,096 + 4,096 and 4,096·10 + 10 after it.
    assert where["other fully connected"] == 4_096 * 4_096 + 4_096 + 4_096 * 10 + 10
    # The convs by hand: 1→16, 16→32, 32→64, 64→64, 64→128, then three 128→128 (3×3, bias).
    convs = [(1, 16), (16, 32), (32, 64), (64, 64), (64, 128), (128, 128), (128, 128),
             (128, 128)]
    assert where["conv"] == sum(i * o * 9 + o for i, o in convs)
    assert where["first fully connected"] > 0.5 * sum(where.values())
    fig = cmp.param_location_figure({"small vgg": table})
    first_fc = next(t for t in fig.data if t.name == "first fully connected")
    assert first_fc.x[0] == pytest.approx(100 * 25_694_208 / 43_093_322)


def test_figures_have_one_trace_per_model_and_mark_the_chosen_presets():
    tables = {n: analyze(get_preset(n).spec).table for n in ("course_lenet", "course_lenet5")}
    stages = cmp.params_per_stage_figure(tables, log=True)
    assert [t.name for t in stages.data] == ["course_lenet", "course_lenet5"]
    assert stages.layout.yaxis.type == "log"
    points = cmp.preset_points(["course_lenet", "course_lenet5", "course_nin"])
    scatter = cmp.macs_params_scatter(points, ["course_nin"])
    chosen = next(t for t in scatter.data if t.name == "compared")
    assert list(chosen.text) == ["course_nin"]
    assert isinstance(scatter, go.Figure)


# ---- the course-vs-torchvision alignment -----------------------------------------------------

def _count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.fixture(scope="module")
def resnet_pair():
    return cmp.align(get_preset("course_resnet18").spec, get_preset("resnet18").spec,
                     "course", "torchvision")


def test_resnet18_alignment_finds_the_shortcut_bn_the_biases_and_the_head(resnet_pair):
    f = resnet_pair
    ref = tv("resnet18")
    # Every layer of each model appears once on its side.
    assert (f["right_layer"] != "—").sum() == (_count(ref, nn.Conv2d) + _count(ref, nn.BatchNorm2d)
                                               + _count(ref, nn.Linear) + _count(ref, nn.MaxPool2d)
                                               + _count(ref, nn.AdaptiveAvgPool2d))
    # torchvision has 3 more BN layers: one on each 1×1 projection shortcut (layer2-4).
    only_tv = f[f["status"] == "right"]
    assert len(only_tv) == _count(ref, nn.BatchNorm2d) - 17 == 3
    assert all("shortcut" in n for n in only_tv["right_name"])
    assert only_tv["categories"].eq("shortcut_bn").all()
    # The course's 20 convs have biases, torchvision's none: 20 rows name the bias.
    assert f["categories"].str.contains("bias").sum() == _count(ref, nn.Conv2d) == 20
    first = f.iloc[0]
    assert "input_channels" in first["categories"] and "1 channel" in first["reason"]
    head = f[f["left_name"] == "head.fc"].iloc[0]
    assert head["categories"] == "classes" and "1,000" in head["reason"]
    # The BN layers themselves match; only the map size differs (96 against 224 input).
    bn = f[f["left_name"] == "stage1.block1.bn1"].iloc[0]
    assert bn["status"] == "size" and "1×96×96" in bn["reason"]


def test_densenet_alignment_pairs_the_3x3_convs_and_names_the_bottlenecks():
    f = cmp.align(get_preset("course_densenet").spec, get_preset("densenet121").spec,
                  "course", "torchvision")
    dense = f[f["stage"].str.startswith("denseblock")]
    paired_convs = dense[(dense["status"] != "right") & dense["left_layer"].str.startswith("conv")]
    # Course dense layers (4 per block, 4 blocks) each pair with torchvision's 3×3 conv2.
    assert len(paired_convs) == 16
    assert paired_convs["right_layer"].str.startswith("conv 3×3").all()
    assert paired_convs["right_name"].str.endswith("conv2").all()
    # torchvision's 1×1 bottleneck convs of the 16 paired layers are named as bottlenecks.
    bottleneck = f[f["categories"] == "bottleneck"]
    assert (bottleneck["right_layer"].str.startswith("conv 1×1")).sum() == 16
    # Blocks (6, 12, 24, 16) against (4, 4, 4, 4): 42 more dense layers of 4 layers each.
    assert (f["categories"] == "depth").sum() == (6 + 12 + 24 + 16 - 16) * 4


def test_alexnet_alignment_explains_the_classifier_input():
    f = cmp.align(get_preset("course_alexnet").spec, get_preset("alexnet").spec, "course",
                  "torchvision")
    fc1 = f[f["left_name"] == "head.fc1"].iloc[0]
    # 256·5·5 = 6,400 features in the course, 256·6·6 = 9,216 in torchvision.
    assert "classifier_input" in fc1["categories"]
    assert "6,400" in fc1["reason"] and "9,216" in fc1["reason"]
    pool = f[f["right_name"] == "avgpool"].iloc[0]
    assert pool["status"] == "right" and "6×6" in pool["reason"]
    # torchvision's AlexNet is the one-GPU variant: 64 filters where the paper has 96.
    conv1 = f[f["left_name"] == "features.conv1"].iloc[0]
    assert "96 filters" in conv1["reason"] and "64" in conv1["reason"]


def test_googlenet_alignment_finds_the_3x3_in_branch_3():
    f = cmp.align(get_preset("course_googlenet").spec, get_preset("googlenet").spec, "course",
                  "torchvision")
    kernel = f[f["categories"].str.contains("kernel")]
    # One 5×5 against 3×3 per Inception block: 2 + 5 + 2 = 9 blocks.
    assert len(kernel) == 9
    assert kernel["left_name"].str.endswith("branch3.conv2").all()
    summary = cmp.differences_summary(f).set_index("difference")
    assert summary.loc["Kernel size", "rows"] == 9
    assert "5×5" in summary.loc["Kernel size", "example"]


def test_identical_models_align_row_for_row():
    spec = get_preset("course_lenet").spec
    f = cmp.align(spec, spec)
    assert f["status"].eq("same").all() and len(f) == 7
    assert cmp.differences_summary(f).empty


# ---- conv arithmetic figures -----------------------------------------------------------------

def test_window_cells_by_hand():
    # Output (1, 2) of a 3×3 stride-2 conv reads padded rows 2..4 and columns 4..6.
    cells = cmp.window_cells(1, 2, (3, 3), (2, 2))
    assert cells[0] == (2, 4) and cells[-1] == (4, 6) and len(cells) == 9
    # Dilation 2 spreads the taps: rows 0, 2, 4.
    assert {r for r, _ in cmp.window_cells(0, 0, (3, 3), (1, 1), (2, 2))} == {0, 2, 4}


def test_sliding_window_figure_draws_the_padded_input():
    fig = cmp.sliding_window_figure(5, 5, (3, 3), (2, 2), (1, 1), position=4)
    grid = fig.data[0].z
    assert len(grid) == 7 and len(grid[0]) == 7  # 5 + 2·1
    assert sum(v == 3 for row in grid for v in row) == 9  # the nine taps
    assert sum(v == 0 for row in grid for v in row) == 7 * 7 - 5 * 5  # padding untouched
    out = fig.data[1].z  # floor((5 + 2 - 3) / 2) + 1 = 3 → 3×3, pixel 4 is (1, 1)
    assert len(out) == 3 and out[1][1] == 1
    with pytest.raises(ConfigError, match="does not fit"):
        cmp.sliding_window_figure(2, 2, (5, 5), (1, 1), (0, 0))


def test_stacking_rows_and_groups_figure_by_hand():
    t = stacking_rows(3, 2, channels=64)
    # Two 3×3 convs: 2·9·64² = 73,728 weights and a 5×5 view; one 5×5: 25·64² = 102,400.
    assert t[1]["receptive field"] == "5×5"
    assert t[1]["weights of the stack"] == 73_728
    assert t[1]["stack / single"] == "72%"
    fig = cmp.groups_figure(64, 64, (3, 3), 4)
    bars = dict(zip(fig.data[0].x, fig.data[0].y, strict=True))
    assert bars["1"] == 64 * 64 * 9 and bars["4"] == 64 * 64 * 9 // 4


# ---- spec files and links --------------------------------------------------------------------

def test_export_and_import_round_trip():
    specs = {"a": get_preset("course_lenet").spec, "b": LeNetSpec(conv_channels=(6, 32))}
    text = specs_to_json(specs)
    assert json.loads(text)["format"] == "cnn-explorer/specs"
    assert read_specs(text, "compared.json") == specs


def test_a_single_spec_file_is_named_after_the_file():
    data = (ROOT / "assets" / "specs" / "resnet.json").read_bytes()
    specs = read_specs(data, "my resnet.json")
    assert list(specs) == ["my_resnet"]
    assert isinstance(specs["my_resnet"], ResNetSpec)
    assert read_spec(get_preset("course_nin").spec.to_json(None), "x") == get_preset(
        "course_nin").spec


@pytest.mark.parametrize("data, fragment", [
    (b"x" * (MAX_SPEC_BYTES + 1), "at most 64.0 KiB"),
    (b"", "empty"),
    (b"\xff\xfe\x00garbage", "not a text file"),
    (b'{"family": "vgg", "arch": [[1, 64]', "not valid JSON"),
    (b"[1, 2, 3]", "neither a spec"),
    (b'{"family": "vgg", "depth": 3}', "unknown field(s) depth"),
    (b'{"family": "nosuch"}', "unknown family"),
    # A VGG of five pooling blocks cannot shrink a 4×4 input five times.
    (b'{"family": "vgg", "input_shape": [1, 4, 4]}', "would shrink"),
    (json.dumps({"models": [{"name": str(i), "spec": {"family": "lenet"}}
                            for i in range(9)]}).encode(), "at most 8"),
    (b"[" * 10_000 + b"]" * 10_000, "nested too deeply"),
])
def test_bad_files_get_one_sentence(data, fragment):
    with pytest.raises(ConfigError) as info:
        read_specs(data, "upload.json")
    message = str(info.value)
    assert fragment in message and "\n" not in message
    assert message.startswith("upload.json")


def test_links_from_the_build_page():
    spec = VGGSpec(arch=((1, 16), (1, 32)), input_shape=(1, 32, 32))
    query = "&".join(f"{k}={v}" for k, v in spec.to_query().items())
    name, read = spec_from_link(f"http://localhost:8501/build?{query}")
    assert read == spec and name == "linked_vgg"
    assert spec_from_link("https://x.org/build?preset=course_nin") == (
        "course_nin", PRESETS["course_nin"].spec)
    with pytest.raises(ConfigError, match="holds no model"):
        spec_from_link("https://example.org/?q=1")
    with pytest.raises(ConfigError, match="could not be read"):
        spec_from_link("?family=vgg&arch=[[1,0]]")
    assert safe_name("../etc/passwd") == "etc_passwd" and safe_name("") == "model"


def test_one_formatting_module_serves_compare_and_the_pages():
    # The totals table and the pages format through explorer.formatting (issue 13): the same
    # function objects, so a count cannot read "11.69 M" on Build and "11.7 M" on Compare.
    from explorer import formatting
    from pages import common

    assert cmp.fmt_count is formatting.fmt_count is common.fmt_count
    assert cmp.fmt_bytes is formatting.fmt_bytes is common.fmt_bytes
    assert cmp.shape_text is formatting.shape_text is common.shape_text
    # Hand-worked values: 11,689,512 / 10^6 = 11.689512 → "11.69 M"; 61,706 / 10^3 → "61.71 k";
    # 3 MB = 3,000,000 / 2^20 = 2.861 MiB → "2.9 MiB"; 1023 B stays in bytes; 2^30 is 1.0 GiB.
    assert formatting.fmt_count(11_689_512) == "11.69 M"
    assert formatting.fmt_count(61_706) == "61.71 k"
    assert formatting.fmt_count(1.5e9) == "1.50 G"
    assert formatting.fmt_count(999) == "999"
    assert formatting.fmt_count(None) == formatting.fmt_count(float("nan")) == "—"
    assert formatting.fmt_bytes(3_000_000) == "2.9 MiB"
    assert formatting.fmt_bytes(1023) == "1,023 B"
    assert formatting.fmt_bytes(2**30) == "1.0 GiB"
    assert formatting.shape_text((64, 24, 24)) == "64×24×24"
    assert formatting.shape_text(None) == formatting.shape_text(()) == "—"
    # Counted nouns and lists of runs as a sentence reads them.
    assert [formatting.plural(n, "run") for n in (0, 1, 2, 1200)] == \
        ["0 runs", "1 run", "2 runs", "1,200 runs"]
    assert formatting.plural(3, "class", "classes") == "3 classes"
    assert [formatting.run_list(ids) for ids in ([5], [5, 6], [5, 6, 7])] == \
        ["#5", "#5 and #6", "#5, #6 and #7"]
