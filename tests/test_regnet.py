"""AnyNet / RegNet, the ninth family: against torchvision's regnet_* and hand counts.

Everything the other families get from the generic tests (round trips, every preset builds, the
Build page renders every family, the gallery shows every course preset) covers RegNet too; here
are the numbers only RegNet has.
"""

import json
import math
import subprocess
import sys

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.regnet import BlockParams

from explorer.analysis import analyze
from explorer.bn_lab import fold_check, spec_bn_layers
from explorer.charts import diagram_nodes, shape_flow_points
from explorer.compare import align
from explorer.errors import ConfigError
from explorer.export import to_pytorch_source
from explorer.families import get_family
from explorer.families.regnet import RegNetSpec, XStage, regnet_stages
from explorer.forms import form_fields, frame_to_rows, rows_to_frame
from explorer.models import build
from explorer.registry import COURSE_PAIRS, get_preset, preset_names
from explorer.specs import spec_from_dict

REFERENCES = ["regnet_x_400mf", "regnet_x_800mf", "regnet_y_400mf"]
WEIGHTS = {"regnet_x_400mf": torchvision.models.RegNet_X_400MF_Weights,
           "regnet_x_800mf": torchvision.models.RegNet_X_800MF_Weights,
           "regnet_y_400mf": torchvision.models.RegNet_Y_400MF_Weights}
LAYERS = (nn.Conv2d, nn.BatchNorm2d, nn.Linear)


def calls(model: nn.Module, shape=(3, 224, 224)):
    """(type, weight shape, output shape) of every conv/BN/linear call, in forward order."""
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(
        (type(m).__name__, tuple(m.weight.shape), tuple(o.shape))))
        for m in model.modules() if isinstance(m, LAYERS)]
    with torch.no_grad():
        model.eval()(torch.empty(1, *shape, device="meta"))
    for h in hooks:
        h.remove()
    return seen


@pytest.fixture(scope="module", params=REFERENCES)
def pair(request):
    name = request.param
    # torchvision computes the widths with tensors, so its model is built on the CPU.
    ref = getattr(torchvision.models, name)(weights=None).to("meta")
    return name, build(get_preset(name).spec, device="meta"), ref


def test_presets_equal_torchvision_layer_by_layer(pair):
    name, ours, ref = pair
    assert get_preset(name).reference == name
    # Every parameter in registration order (names differ: stage1.block1.conv1 ↔
    # trunk_output.block1.block1-0.f.a.0), then every layer call with its output shape.
    assert [tuple(p.shape) for p in ours.parameters()] == [tuple(p.shape)
                                                            for p in ref.parameters()]
    assert calls(ours) == calls(ref)


def test_parameter_counts_are_torchvisions_published_ones(pair):
    name, ours, _ = pair
    # The number torchvision publishes with the ImageNet weights (regnet_y_400mf: 4,344,144),
    # counted here by analysis on the spec.
    published = WEIGHTS[name].IMAGENET1K_V1.meta["num_params"]
    assert analyze(get_preset(name).spec).totals["total_params"] == published
    assert sum(p.numel() for p in ours.parameters()) == published


@pytest.mark.parametrize("depth, w_0, w_a, w_m, group_width", [
    (22, 24, 24.48, 2.54, 16),  # regnet_x_400mf
    (16, 56, 35.73, 2.28, 16),  # regnet_x_800mf
    (16, 48, 27.89, 2.09, 8),  # regnet_y_400mf
    (14, 56, 38.84, 2.4, 16),  # regnet_y_800mf
    (18, 80, 34.01, 2.25, 24),  # regnet_x_1_6gf
    (23, 80, 49.56, 2.88, 120),  # regnet_x_8gf: a group width wider than the first stage
    (4, 8, 0.0, 2.0, 64),  # w_a = 0: one stage
])
def test_quantised_linear_widths_equal_torchvisions_block_params(depth, w_0, w_a, w_m,
                                                                 group_width):
    ref = BlockParams.from_init_params(depth=depth, w_0=w_0, w_a=w_a, w_m=w_m,
                                       group_width=group_width)
    ours = regnet_stages(depth, w_0, w_a, w_m, group_width)
    assert [s.width for s in ours] == ref.widths
    assert [s.depth for s in ours] == ref.depths
    assert [s.group_width for s in ours] == ref.group_widths
    assert sum(s.depth for s in ours) == depth


def test_regnet_x_400mf_stages_by_hand():
    # Block widths u_j = 24 + 24.48·j, j = 0..21, are quantised to w = 24·2.54^s: s = 0..3 gives
    # 24, 60.96, 154.84, 393.29, rounded to multiples of 8: 24, 64, 152, 392. Each stage's
    # width is then made a multiple of the group width 16 (the nearest, rounding half up):
    # 24 → 32, 152 → 160, 392 → 400. How many j fall on each s gives the depths: s = 0 for
    # j = 0 only; s = 1 while log(u_j/24)/log 2.54 < 1.5, i.e. u_j < 24·2.54^1.5 = 97.2: j = 1,
    # 2; s = 2 while u_j < 24·2.54^2.5 = 246.9: j = 3..9; s = 3 for j = 10..21.
    stages = regnet_stages(22, 24, 24.48, 2.54, 16)
    assert [tuple(s) for s in stages] == [(1, 32, 16), (2, 64, 16), (7, 160, 16), (12, 400, 16)]
    assert [round(24 * 2.54**s / 8) * 8 for s in range(4)] == [24, 64, 152, 392]
    assert [sum(1 for j in range(22) if lo <= 24 + 24.48 * j < hi) for lo, hi in
            ((0, 24 * 2.54**0.5), (24 * 2.54**0.5, 24 * 2.54**1.5),
             (24 * 2.54**1.5, 24 * 2.54**2.5), (24 * 2.54**2.5, 1e9))] == [1, 2, 7, 12]


def test_a_tiny_regnet_by_hand():
    # 1×8×8, stem 8: conv 3×3/2 1→8 (no bias) 72 + BN 16 → 8×4×4.
    # One stage (depth 1, width 16, group width 8): b = 16, 2 groups.
    #   shortcut conv 1×1/2 8→16: 128 + BN 32; conv1 1×1 8→16: 128 + BN 32;
    #   conv2 3×3/2 16→16 in 2 groups: 16·8·9 = 1152 + BN 32; conv3 1×1 16→16: 256 + BN 32.
    # Head: linear 16→10: 170. Total 2050.
    spec = RegNetSpec(input_shape=(1, 8, 8), stem_channels=8, stages=(XStage(1, 16, 8),))
    assert sum(p.numel() for p in build(spec).parameters()) == 2050
    # RegNetY's squeeze-excitation squeezes round(0.25 · 8) = 2 channels (the block's input
    # width): fc1 16→2 with bias 34, fc2 2→16 with bias 48.
    se = RegNetSpec(input_shape=(1, 8, 8), stem_channels=8, stages=(XStage(1, 16, 8),),
                    se_ratio=0.25)
    assert sum(p.numel() for p in build(se).parameters()) == 2050 + 34 + 48
    # Lecture MACs: stem 8·4·4·9 = 1152; at 2×2: shortcut 16·4·8 = 512, conv1 at 4×4 16·16·8
    # = 2048, conv2 16·4·(8·9) = 4608, conv3 16·4·16 = 1024; linear 160. Total 9504.
    assert analyze(spec).totals["total_macs_lecture"] == 9504


def test_receptive_field_of_the_course_preset_by_hand():
    # Stem 3×3/2: 3, jump 2. Stage 1: block 1's 3×3/2 adds 2·2 → 7, jump 4; blocks 2-4 add
    # 2·4 each → 31. Stage 2: block 1's 3×3/2 adds 2·4 → 39, jump 8; blocks 2-6 add 2·8 each
    # → 119. (The 1×1 convs and the shortcuts add nothing wider.)
    t = analyze(get_preset("course_regnetx32").spec).totals
    assert (t["receptive_field"], t["receptive_field_jump"]) == (119, 8)


def test_regnety_receptive_field_is_computed():
    t = analyze(get_preset("regnet_y_400mf").spec).totals
    assert t["receptive_field"] is not None and not math.isnan(t["receptive_field"])
    assert t["receptive_field"] >= 224 / 2  # at least the stride-32 map's neighbourhood


@pytest.mark.parametrize("changes, fragment", [
    ({"stages": [[2, 48, 32]]}, "bottleneck width 48 is not divisible by group width 32"),
    ({"stages": [[2, 16, 32]]}, "group width 32 is more than the 16-channel bottleneck"),
    ({"stages": [[1, 8, 1]], "bot_mul": 0.05}, "bottleneck width round(8 × 0.05) is 0"),
    ({"stages": [[1, 16, 8]], "stem_channels": 1, "se_ratio": 0.25},
     "squeeze-excitation would squeeze 1 channels"),
    ({"stages": [[2, 32]]}, "needs 3 numbers (depth, width, group_width)"),
    ({"stages": [[0, 32, 16]]}, "depth is 0; it must be between 1 and 64"),
    ({"se_ratio": 2}, "se_ratio is 2.0; it must be at most 1.0"),
])
def test_mistakes_are_sentences(changes, fragment):
    with pytest.raises(ConfigError) as err:
        spec_from_dict({"family": "regnet", **changes})
    assert fragment in str(err.value)


def test_regnet_stages_refuses_what_torchvision_refuses():
    with pytest.raises(ConfigError, match="multiple of 8"):
        regnet_stages(10, 20, 10.0, 2.0, 8)
    with pytest.raises(ValueError):
        BlockParams.from_init_params(depth=10, w_0=20, w_a=10.0, w_m=2.0, group_width=8)


def test_exported_source_loads_the_state_dict_and_computes_the_same(tmp_path):
    spec = RegNetSpec(input_shape=(3, 32, 32), stem_channels=16,
                      stages=(XStage(1, 24, 8), XStage(2, 48, 8)), se_ratio=0.25)
    torch.manual_seed(0)
    model = build(spec).eval()
    source = to_pytorch_source(model, spec.input_shape, "tiny RegNetY", spec.to_json(None))
    assert "class XBlock" in source and "class SqueezeExcitation" in source
    namespace: dict = {}
    exec(compile(source, "exported", "exec"), namespace)
    twin = namespace["build_model"]().eval()
    twin.load_state_dict(model.state_dict())  # strict: the same names and shapes
    x = torch.randn(2, *spec.input_shape)
    with torch.no_grad():
        assert torch.equal(model(x), twin(x))
    path = tmp_path / "regnet.py"
    path.write_text(source)
    out = subprocess.run([sys.executable, str(path)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300, check=True).stdout
    assert f"output (1, 10), {sum(p.numel() for p in model.parameters()):,} parameters" in out


def test_stable_layer_names():
    names = dict(build(get_preset("regnet_y_400mf").spec, device="meta").named_modules())
    for name in ("stem.conv", "stem.bn", "stage1.block1.shortcut.conv", "stage1.block1.conv2",
                 "stage1.block1.se.fc1", "stage1.block1.se.fc2", "stage4.block6.conv3",
                 "head.fc"):
        assert name in names
    assert "stage1.block2" not in names  # stage 1 has one block
    assert names["stage2.block1.conv2"].groups == 104 // 8


def test_diagram_has_one_box_per_x_block_with_the_shortcuts():
    nodes = diagram_nodes(build(get_preset("course_regnetx32").spec, device="meta"))
    assert [n.kind for n in nodes] == ["stem"] + ["residual"] * 10 + ["head"]
    # The first block of each stage halves the map and widens it: a 1×1 conv shortcut.
    assert [n.skip for n in nodes[1:11]] == ["1×1 conv"] + ["identity"] * 3 + [
        "1×1 conv"] + ["identity"] * 5
    assert "g2" in nodes[1].label and "g5" in nodes[5].label  # 32 / 16 and 80 / 16 groups


def test_shape_flow_follows_the_stages():
    table = analyze(get_preset("course_regnetx32").spec).table
    points = shape_flow_points(table)
    last = points[points["name"] == "stage2.block6.conv3"].iloc[0]
    assert (last["channels"], last["height"]) == (80, 4)  # 28 → 14 → 7 → 4


def test_the_form_edits_the_stage_table():
    fields = {f.name: f for f in form_fields(RegNetSpec)}
    stages = fields["stages"]
    assert stages.kind == "rows" and stages.columns == ["depth", "width", "group width"]
    frame = rows_to_frame(stages, RegNetSpec().stages)
    assert frame_to_rows(stages, frame) == [[4, 32, 16], [6, 80, 16]]
    assert fields["bot_mul"].kind == "float" and fields["se_ratio"].label == (
        "Squeeze-excitation ratio")
    table = get_family("regnet").extra_table(RegNetSpec())
    assert [r["groups b / group width"] for r in table] == [2, 5]


def test_batch_norm_folds_into_every_conv():
    # Every conv is followed by its BN: the stem, 3 per X-block (10 blocks), 2 shortcuts.
    spec = get_preset("course_regnetx32").spec
    assert len(spec_bn_layers(spec)) == 1 + 3 * 10 + 2
    result = fold_check(spec)
    assert len(result["pairs"]) == 33 and not result["kept"]
    assert result["max_abs_diff"] <= 1e-4 * max(1.0, result["max_abs_output"])


def test_compare_lines_the_course_preset_up_with_torchvision():
    assert COURSE_PAIRS["course_regnetx32"] == "regnet_x_400mf"
    aligned = align(get_preset("course_regnetx32").spec, get_preset("regnet_x_400mf").spec,
                    "course", "torchvision")
    assert len(aligned) and set(aligned["status"]) <= {"same", "size", "differs", "left",
                                                       "right"}
    assert (aligned["status"] == "right").any()  # torchvision's is deeper


def test_a_short_training_run_on_the_offline_digits():
    from explorer.data import load_dataset
    from explorer.training import TrainConfig, train

    spec = get_preset("course_regnetx32").spec
    cfg = TrainConfig(lr=0.05, momentum=0.9, batch_size=64, epochs=1, max_steps=20, seed=0,
                      device="cpu")
    result = train(build(spec), spec.input_shape, spec.num_classes, load_dataset(), cfg)
    assert result.status == "completed" and result.steps == 20
    losses = result.losses
    # Chance on 10 classes is ln 10 = 2.30; 20 SGD steps bring the loss below it.
    assert losses[-1] < math.log(10)


def test_cli_summary_of_regnet_x_400mf():
    done = subprocess.run([sys.executable, "-m", "explorer", "summary", "regnet_x_400mf",
                           "--format", "json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["total_params"] == WEIGHTS["regnet_x_400mf"].IMAGENET1K_V1.meta["num_params"]
    assert data["input"] == [3, 224, 224] and data["receptive_field"] is not None


def test_the_registry_lists_the_presets():
    assert set(preset_names(family="regnet")) == {"course_regnetx32", *REFERENCES}
    assert set(REFERENCES) <= set(preset_names("torchvision"))
