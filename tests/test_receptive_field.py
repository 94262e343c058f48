"""Receptive fields of explorer.analysis: by hand, and by a second method (input gradients).

The second method: with positive weights, average pooling and positive inputs nothing cancels, so
an output pixel's gradient with respect to the input is nonzero exactly on its receptive field.
"""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from explorer.__main__ import summary_json
from explorer.analysis import analyze, receptive_fields
from explorer.charts import receptive_field_chart, receptive_field_points
from explorer.compare import totals_table
from explorer.models import minimum_input_size
from explorer.receptive import WHOLE_IMAGE, rf_caption, rf_help, rf_text
from explorer.registry import PRESETS, get_preset

# ---------------------------------------------------------------------------------- helpers


def make_positive(model: nn.Module) -> nn.Module:
    """Positive conv/linear weights and zero biases: no gradient can cancel or die."""
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.uniform_(0.5, 1.0)
                if m.bias is not None:
                    m.bias.zero_()
    return model


def gradient_region(model: nn.Module, input_shape: tuple[int, int, int],
                    offset: tuple[int, int] = (0, 0)) -> tuple[int, int, int, int]:
    """(height, width, top, left) of the input pixels that one output pixel depends on."""
    model = model.double().eval()
    x = (torch.rand(1, *input_shape, dtype=torch.float64) + 0.5).requires_grad_()
    y = model(x)
    h, w = y.shape[2] // 2 + offset[0], y.shape[3] // 2 + offset[1]
    y[0, :, h, w].sum().backward()
    nonzero = x.grad[0].abs().sum(0) > 0
    rows = nonzero.any(1).nonzero().flatten()
    cols = nonzero.any(0).nonzero().flatten()
    # The region must not touch the border, or zero padding would have clipped it.
    assert rows.min() > 0 and rows.max() < input_shape[1] - 1, "input too small"
    assert cols.min() > 0 and cols.max() < input_shape[2] - 1, "input too small"
    return (int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1),
            int(rows.min()), int(cols.min()))


def network_rf(model: nn.Module, input_shape: tuple[int, int, int]) -> tuple[int, int, int, int]:
    """(rf_h, rf_w, jump_h, jump_w) at the network's output, from explorer.analysis."""
    row = analyze(model, input_shape).row("")
    return (int(row["receptive_field"]), int(row["receptive_field_w"]), int(row["jump"]),
            int(row["jump_w"]))


def check_against_gradients(model: nn.Module, input_shape: tuple[int, int, int],
                            expected: tuple[int, int, int, int]) -> None:
    """The analysed RF and jump equal the hand values and the gradient measurement."""
    make_positive(model)
    assert network_rf(model, input_shape) == expected
    rf_h, rf_w, jump_h, jump_w = expected
    h, w, top, left = gradient_region(model, input_shape)
    assert (h, w) == (rf_h, rf_w)
    # The jump: moving one output pixel down (right) moves the region by jump input pixels.
    assert gradient_region(model, input_shape, (1, 0))[2] - top == jump_h
    assert gradient_region(model, input_shape, (0, 1))[3] - left == jump_w


class Residual(nn.Module):
    """ReLU(conv3(ReLU(conv3(x))) + shortcut(x)), shortcut a strided 1×1 conv when needed."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.shortcut = (nn.Identity() if stride == 1 and c_in == c_out
                         else nn.Conv2d(c_in, c_out, 1, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(F.relu(self.conv1(x))) + self.shortcut(x))


class Inception(nn.Module):
    """Four branches (1×1; 1×1→3×3; 1×1→5×5; avgpool 3×3 → 1×1) concatenated on channels."""

    def __init__(self, c_in: int, c: int = 2):
        super().__init__()
        self.b1 = nn.Conv2d(c_in, c, 1)
        self.b2 = nn.Sequential(nn.Conv2d(c_in, c, 1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1))
        self.b3 = nn.Sequential(nn.Conv2d(c_in, c, 1), nn.ReLU(), nn.Conv2d(c, c, 5, padding=2))
        self.b4 = nn.Sequential(nn.AvgPool2d(3, 1, 1), nn.Conv2d(c_in, c, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], dim=1)


class Dense(nn.Module):
    """DenseNet-style: x ← cat(x, conv3×3(x)), twice."""

    def __init__(self, c: int, growth: int = 2):
        super().__init__()
        self.c1 = nn.Conv2d(c, growth, 3, padding=1)
        self.c2 = nn.Conv2d(c + growth, growth, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x, self.c1(x)], 1)
        return torch.cat([x, self.c2(x)], 1)


class TwoBranchAdd(nn.Module):
    """conv1×1(x) + conv5×5(x): the wider path is the shortcut, not the main one."""

    def __init__(self) -> None:
        super().__init__()
        self.main = nn.Conv2d(1, 2, 1)
        self.side = nn.Conv2d(1, 2, 5, padding=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + self.side(x)


class WideSide(nn.Module):
    """conv1×1(x) + conv7×7(x) on c channels: the side path is the wider one."""

    def __init__(self, c: int):
        super().__init__()
        self.main = nn.Conv2d(c, c, 1)
        self.side = nn.Conv2d(c, c, 7, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + self.side(x)


class TwoBranchCat(nn.Module):
    """cat(conv3×3(x), conv5×5(x))."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 2, 3, padding=1)
        self.b = nn.Conv2d(1, 2, 5, padding=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x), self.b(x)], 1)


# ---------------------------------------------------------------------------------- by hand

def test_two_3x3_convs_see_5x5():
    # Lecture: L stacked K×K stride-1 convs see 1 + L(K - 1) = 1 + 2·2 = 5
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 3, padding=1))
    rfs = receptive_fields(model, (1, 16, 16))
    assert rfs["0"] == (3, 1)
    assert rfs["2"] == (5, 1)
    assert rfs[""] == (5, 1)


def test_lenet_like_stack():
    model = nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.Sigmoid(), nn.AvgPool2d(2, 2), nn.Conv2d(6, 16, 5), nn.Sigmoid(),
        nn.AvgPool2d(2, 2), nn.Flatten(), nn.Linear(16 * 4 * 4, 10))
    rfs = receptive_fields(model, (1, 28, 28))
    # conv5: 5, jump 1; pool2: 5 + 1 = 6, jump 2; conv5: 6 + 4·2 = 14; pool2: 14 + 2 = 16, jump 4
    assert [rfs[k] for k in ("0", "2", "3", "5")] == [(5, 1), (6, 2), (14, 2), (16, 4)]
    a = analyze(model, (1, 28, 28))
    assert a.totals["receptive_field"] == 16  # the last spatial map: the second pool's output
    assert a.totals["receptive_field_jump"] == 4
    assert a.totals["receptive_field_at"] == "output of 5"
    # past the last map (flatten, linear) there is no map and so no receptive field
    assert "6" not in rfs and "7" not in rfs and rfs[""] == (16, 4)


def test_vgg11_features_known_value():
    model = torchvision.models.vgg11(weights=None).features
    a = analyze(model, (3, 32, 32))
    # conv 3; pool 4 (j2); conv 8; pool 10 (j4); conv conv 18, 26; pool 30 (j8);
    # conv conv 46, 62; pool 70 (j16); conv conv 102, 134; pool 150 (j32)
    assert a.totals["receptive_field"] == 150
    assert a.totals["receptive_field_jump"] == 32
    assert a.totals["receptive_field_exact"] is True


def test_torchvision_resnet18_conv_body_is_435():
    model = torchvision.models.resnet18(weights=None)
    rfs = receptive_fields(model, (3, 64, 64))
    # conv1 7×7 s2: 7, j2; maxpool 3×3 s2: 7 + 2·2 = 11, j4;
    # layer1, four 3×3 convs at j4: 11 + 4·2·4 = 43;
    # layer2: 3×3 s2 at j4: 51, j8; three more 3×3 at j8: 51 + 3·16 = 99;
    # layer3: s2 at j8: 115, j16; three at j16: 115 + 3·32 = 211;
    # layer4: s2 at j16: 243, j32; three at j32: 243 + 3·64 = 435 (the shortcuts' 1×1 convs
    # are narrower, so the max over the two paths is the main one)
    assert rfs["conv1"] == (7, 2)
    assert rfs["maxpool"] == (11, 4)
    assert rfs["layer1"] == (43, 4)
    assert rfs["layer2"] == (99, 8)
    assert rfs["layer3"] == (211, 16)
    assert rfs["layer4"] == (435, 32)
    assert rfs["layer4.0.downsample"] == (211 + 0, 32)  # a 1×1 conv adds nothing
    a = analyze(model, (3, 64, 64))
    assert a.totals["receptive_field"] == 435
    assert a.totals["receptive_field_at"] == "output of layer4.1.relu"
    # the network's receptive field is layer4's; the global pool and the classifier have none
    assert rfs[""] == (435, 32) and "avgpool" not in rfs and "fc" not in rfs


def test_torchvision_googlenet_and_densenet121():
    g = analyze(torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False),
                (3, 64, 64))
    # conv1 7 s2: 7, j2; maxpool 3 s2: 11, j4; conv2 1×1: 11; conv3 3×3: 19; maxpool: 27, j8;
    # 3a, 3b: +2·8 each (3×3 branches, 3×3 pool branch): 59; maxpool 3 s2: 75, j16;
    # 4a-4e: +5·32 = 235; maxpool 2 s2: 251, j32; 5a, 5b: +2·64 = 379
    assert g.totals["receptive_field"] == 379
    d = analyze(torchvision.models.densenet121(weights=None), (3, 32, 32))
    # conv0 7 s2: 7, j2; pool0 3 s2: 11, j4; block1: 6 × 3×3 at j4: 59; transition1 (1×1, avg 2):
    # 63, j8; block2: 12 × 16 = 255; transition2: 263, j16; block3: 24 × 32 = 1031;
    # transition3: 1047, j32; block4: 16 × 64 = 2071
    assert d.totals["receptive_field"] == 2071
    assert d.row("features.transition1")["receptive_field"] == 63
    assert g.totals["receptive_field_exact"] and d.totals["receptive_field_exact"]


def test_concatenation_takes_the_largest_branch():
    assert receptive_fields(TwoBranchCat(), (1, 16, 16))[""] == (5, 1)  # max(3, 5)


def test_addition_takes_the_largest_path_even_on_the_shortcut():
    assert receptive_fields(TwoBranchAdd(), (1, 16, 16))[""] == (5, 1)  # max(1, 5)


def test_residual_block():
    rfs = receptive_fields(Residual(2, 2), (2, 16, 16))
    assert rfs["conv2"] == (5, 1)
    assert rfs["shortcut"] == (1, 1)
    assert rfs[""] == (5, 1)  # max(3 + 2, 1)


def test_height_and_width_are_tracked_separately():
    model = nn.Sequential(nn.Conv2d(1, 2, (3, 7), stride=(1, 2)), nn.Conv2d(2, 2, 3))
    row = analyze(model, (1, 32, 32)).row("1")
    # H: 3, then + 2·1 = 5; W: 7, jump 2, then + 2·2 = 11
    assert (row["receptive_field"], row["receptive_field_w"]) == (5, 11)
    assert (row["jump"], row["jump_w"]) == (1, 2)


def test_the_network_rf_is_read_before_the_global_pool():
    model = nn.Sequential()
    model.add_module("stem", nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
                                           nn.Conv2d(4, 4, 3, padding=1)))
    model.add_module("head", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                           nn.Linear(4, 10)))
    a = analyze(model, (1, 16, 16))
    assert a.totals["receptive_field"] == 5  # two 3×3 convs, the last spatial map
    assert a.totals["receptive_field_at"] == "output of stem.2"
    assert a.row("")["receptive_field"] == 5
    # the head starts with a global pool: no map left, so no receptive field
    assert pd.isna(a.row("head")["receptive_field"])
    assert pd.isna(a.row("head.0")["receptive_field"])


def test_module_list_rows_get_the_rf_of_their_last_layer():
    class WithList(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList(nn.Conv2d(1, 1, 3, padding=1) for _ in range(3))
            self.out = nn.Conv2d(1, 1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for block in self.blocks:
                x = block(x)
            return self.out(x)

    rfs = receptive_fields(WithList(), (1, 16, 16))
    # three 3×3 convs: 3, 5, 7; the ModuleList is never called itself, so its row takes the
    # RF of the last layer inside it
    assert (rfs["blocks.0"], rfs["blocks.2"], rfs["blocks"], rfs["out"]) == (
        (3, 1), (7, 1), (7, 1), (7, 1))


def test_functional_layers_are_followed():
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(2, 1, 3, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.conv2d(x, self.weight, padding=1)
            x = F.max_pool2d(x, 3, 2)
            x = F.avg_pool2d(x, kernel_size=2)
            return x.view(x.size(0), -1)

    a = analyze(Functional(), (1, 33, 33))
    # conv3: 3; maxpool 3 s2: 3 + 2 = 5, j2; avgpool 2: 5 + 2 = 7, j4 on a 16→8 map ...
    assert a.totals["receptive_field"] == 7
    assert a.totals["receptive_field_jump"] == 4
    assert a.totals["receptive_field_at"] == "output of avg_pool2d"


def test_untraceable_model_falls_back_to_a_chain():
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(1, 2, 3)
            self.b = nn.Conv2d(2, 2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.a(x)
            if x.sum() > -1e9:  # reads a value: the meta-device capture cannot follow it
                x = self.b(x)
            return x

    a = analyze(DataDependent(), (1, 12, 12))
    assert a.totals["receptive_field_exact"] is False
    assert "approximate" in a.totals["receptive_field_note"]
    assert a.totals["receptive_field"] == 5  # the chain is the true graph here
    assert a.row("b")["receptive_field"] == 5


def test_upsampling_is_flagged_as_not_exact():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Upsample(scale_factor=2), nn.Conv2d(2, 2, 3))
    a = analyze(model, (1, 12, 12))
    assert a.totals["receptive_field_exact"] is False
    assert "1" in a.totals["receptive_field_note"]  # names the op


# ---------------------------------------------------------------------------------- 2nd method

def test_gradient_method_sequential_with_strides_dilation_and_adaptive_pool():
    model = nn.Sequential(
        nn.Conv2d(1, 3, (3, 5), stride=(1, 2), padding=(1, 2)), nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(3, 3, 3, dilation=2, padding=2), nn.BatchNorm2d(3),
        nn.AvgPool2d(3, stride=2, padding=1),
        nn.Conv2d(3, 3, (5, 3), stride=(2, 1), padding=(2, 1)),
        nn.AdaptiveAvgPool2d(8))
    # 1×192×384: conv → 192×192, pool → 96×96, dilated conv → 96×96, pool → 48×48,
    # conv → 24×48, adaptive → 8×8 (kernel = stride = 3 along H, 6 along W).
    # H: 3 (j1); 4 (j2); 4 + 2·2·2 = 12; 12 + 2·2 = 16 (j4); 16 + 4·4 = 32 (j8);
    #    32 + 2·8 = 48 (j24)
    # W: 5 (j2); 5 + 2 = 7 (j4); 7 + 2·2·4 = 23; 23 + 2·4 = 31 (j8); 31 + 2·8 = 47;
    #    47 + 5·8 = 87 (j48)
    check_against_gradients(model, (1, 192, 384), (48, 87, 24, 48))


def test_gradient_method_adaptive_pool_that_does_not_divide():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(3))
    make_positive(model)
    # 12×12 → conv → 10×10 → 3 windows of [0,4), [3,7), [6,10): 4 wide, so 3 + 3·1 = 6
    assert network_rf(model, (1, 12, 12))[:2] == (6, 6)
    assert gradient_region(model, (1, 12, 12))[:2] == (6, 6)


def test_gradient_method_residual_network():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), Residual(4, 4), Residual(4, 8, 2),
                          Residual(8, 8), WideSide(8))
    # stem 3; block 1: 3 + 2 + 2 = 7; block 2: s2 conv 7 + 2 = 9 (j2), conv 9 + 4 = 13;
    # shortcut 1×1 s2: 7 → max 13; block 3: 13 + 4 + 4 = 21; side 7×7 path: 21 + 6·2 = 33
    check_against_gradients(model, (1, 64, 64), (33, 33, 2, 2))


def test_gradient_method_inception_and_dense_concatenations():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), Inception(4), nn.AvgPool2d(2),
                          Inception(8), Dense(8))
    # stem 3; inception: max(3, 3 + 2, 3 + 4, 3 + 2) = 7; pool 2: 8 (j2);
    # inception: 8 + 4·2 = 16; dense: 16 + 2·2 = 20, then 20 + 2·2 = 24
    check_against_gradients(model, (1, 64, 64), (24, 24, 2, 2))


# ---------------------------------------------------------------------------------- one meaning

def by_formula(layers: list[tuple[int, int]]) -> tuple[int, int]:
    """The lecture's rule: each (kernel, stride) adds (k - 1)·jump, then jump ×= stride."""
    rf, jump = 1, 1
    for k, s in layers:
        rf += (k - 1) * jump
        jump *= s
    return rf, jump


def test_course_resnet18_by_the_formula():
    # stem conv 7/2, max pool 3/2; stage 1: four 3×3; stages 2-4: a 3×3/2 then three 3×3 (the
    # 1×1 shortcuts see less, so the main path is the widest)
    layers = [(7, 2), (3, 2), *[(3, 1)] * 4]
    for _ in range(3):
        layers += [(3, 2), *[(3, 1)] * 3]
    expected = by_formula(layers)
    assert expected == (435, 32)
    a = analyze(get_preset("course_resnet18").spec)
    assert (a.totals["receptive_field"], a.totals["receptive_field_jump"]) == expected
    assert a.totals["receptive_field_at"] == "output of stage4.block2.relu"


def test_course_nin_by_the_formula_includes_its_last_nin_block():
    # blocks 11/4, 5/1, 3/1 each with 1×1 convs, each followed by a 3/2 max pool; then the last
    # NiN block (3×3, one channel per class): still a map, so it counts; the global pool does not
    expected = by_formula([(11, 4), (3, 2), (5, 1), (3, 2), (3, 1), (3, 2), (3, 1)])
    assert expected == (195, 32)
    a = analyze(get_preset("course_nin").spec)
    assert (a.totals["receptive_field"], a.totals["receptive_field_jump"]) == expected
    assert a.totals["receptive_field_at"] == "output of head.block.relu3"


def _analysed_preset(name: str):
    """Course presets at their lecture shape; torchvision's at 3×32×32 (the same graph, so the
    same path through the code, without 224×224 forward passes of 150-layer networks)."""
    spec = get_preset(name).spec
    if get_preset(name).group == "torchvision":
        size = max(32, minimum_input_size(spec) or 32)
        spec = dataclasses.replace(spec, input_shape=(3, size, size))
    return spec, analyze(spec)


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_has_one_receptive_field(name):
    spec, a = _analysed_preset(name)
    t = a.totals
    network = [t["receptive_field"], t["receptive_field_w"]]
    assert None not in network
    # the CLI JSON (both directions), the table's whole-network row, the chart's last point and
    # Compare's totals table all give the same number
    cli = summary_json(name, a)
    assert cli["receptive_field"] == network
    assert cli["jump"] == [t["receptive_field_jump"], t["receptive_field_jump_w"]]
    whole = a.row("")
    assert [whole["receptive_field"], whole["receptive_field_w"]] == network
    points = receptive_field_points(a.table)
    assert [points["receptive_field"].iloc[-1], points["receptive_field_w"].iloc[-1]] == network
    chart = receptive_field_chart(a.table, spec.input_shape[1])
    assert chart.data[0].y[-1] == network[0] and max(chart.data[0].y) == network[0]
    raw = totals_table({name: a}, formatted=False).set_index("quantity")[name]
    assert raw.filter(like="Receptive field").iloc[0] == network[0]
    assert totals_table({name: a}).set_index("quantity")[name].filter(
        like="Receptive field").iloc[0] == rf_text(t).removesuffix(" px")
    # no layer of the table sees more than the network: rows past the last map have none
    assert a.table["receptive_field"].max() == network[0]
    assert t["receptive_field_exact"], t["receptive_field_note"]


def test_a_receptive_field_larger_than_the_image_is_explained():
    a = analyze(get_preset("course_resnet18").spec)  # 435 px on a 96×96 image
    caption = rf_caption(a.totals)
    assert caption is not None and "435 px" in caption and "96×96" in caption
    assert WHOLE_IMAGE in caption and WHOLE_IMAGE in rf_help(a.totals)
    assert "zero padding" in WHOLE_IMAGE and "whole image" in WHOLE_IMAGE
    assert rf_caption(analyze(get_preset("course_lenet").spec).totals) is None  # 16 px < 28


# ---------------------------------------------------------------------------------- new layouts

class ChannelsLast(nn.Module):
    """conv 3×3, then ConvNeXt's per-pixel MLP on a channels-last map, then conv 3×3."""

    def __init__(self, c: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(1, c, 3, padding=1)
        self.norm = nn.LayerNorm(c)
        self.fc = nn.Linear(c, c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x).permute(0, 2, 3, 1)
        x = self.fc(self.norm(x)).permute(0, 3, 1, 2)
        return self.conv2(x)


class SqueezeExcite(nn.Module):
    """conv 3×3, squeeze-excitation (global pool, 1×1 convs, sigmoid, multiply), conv 3×3."""

    def __init__(self, c: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(1, c, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.fc2 = nn.Conv2d(c, 2, 1), nn.Conv2d(2, c, 1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        scale = torch.sigmoid(self.fc2(F.relu(self.fc1(self.pool(x)))))
        return self.conv2(x * scale)


def test_a_linear_layer_on_a_channels_last_map_is_per_pixel():
    # two 3×3 convs: 5×5; the linear layer and the layer norm between them act per pixel
    check_against_gradients(ChannelsLast(), (1, 16, 16), (5, 5, 1, 1))
    a = analyze(ChannelsLast(), (1, 16, 16))
    assert a.row("fc")["receptive_field"] == 3 and a.totals["receptive_field_exact"]


def test_squeeze_excitation_lets_every_unit_see_the_whole_map():
    model = make_positive(SqueezeExcite())
    a = analyze(model, (1, 12, 12))
    # conv 3: 3; the SE pool reads all 12×12 positions: 3 + 11·1 = 14; conv 3: 16 (not 5)
    assert (a.totals["receptive_field"], a.totals["receptive_field_jump"]) == (16, 1)
    assert a.totals["receptive_field_at"] == "output of conv2"
    assert pd.isna(a.row("pool")["receptive_field"])  # the pooled vector is no map
    assert "squeeze-excitation" in a.totals["receptive_field_note"]
    # second method: one output unit's gradient reaches every input pixel
    x = (torch.rand(1, 1, 12, 12, dtype=torch.float64) + 0.5).requires_grad_()
    model.double().eval()(x)[0, :, 6, 6].sum().backward()
    assert bool((x.grad[0, 0] != 0).all())


def efficientnet_b0_by_hand(size: int) -> tuple[int, int]:
    """torchvision's efficientnet_b0 table: stem 3×3/2, then MBConv stages (kernel, stride,
    layers); each depthwise conv adds (k - 1)·jump and its SE pool the whole map (H - 1)·jump."""
    rf, jump, h = 3, 2, (size - 1) // 2 + 1
    for k, s, n in ((3, 1, 1), (3, 2, 2), (5, 2, 2), (3, 2, 3), (5, 1, 3), (5, 2, 4), (3, 1, 1)):
        for i in range(n):
            stride = s if i == 0 else 1
            rf += (k - 1) * jump
            h = (h + 2 * (k // 2) - k) // stride + 1
            jump *= stride
            rf += (h - 1) * jump
    return rf, jump


def test_torchvision_efficientnet_b0_is_analysed_through_its_se_blocks():
    model = torchvision.models.efficientnet_b0(weights=None)
    a = analyze(model, (3, 64, 64))
    expected = efficientnet_b0_by_hand(64)
    assert (a.totals["receptive_field"], a.totals["receptive_field_jump"]) == expected
    assert expected[0] != 7 and expected[0] > 64
    assert a.totals["receptive_field_at"] == "output of features.8.2"
    assert a.totals["receptive_field_exact"]
    # second method: a unit of the last spatial map depends on every input pixel
    x = torch.rand(1, 3, 64, 64, requires_grad=True)
    model.eval().features(x)[0, :, 1, 1].sum().backward()
    assert bool((x.grad[0].abs().sum(0) != 0).all())


def test_torchvision_convnext_tiny_channels_last_blocks():
    model = torchvision.models.convnext_tiny(weights=None)
    a = analyze(model, (3, 32, 32))
    # stem 4×4/4; stages of 3, 3, 9, 3 blocks with a 7×7 depthwise conv each, 2×2/2 convs
    # between stages; the linear layers and layer norms act per pixel (channels last)
    layers = [(4, 4), *[(7, 1)] * 3, (2, 2), *[(7, 1)] * 3, (2, 2), *[(7, 1)] * 9, (2, 2),
              *[(7, 1)] * 3]
    assert by_formula(layers) == (1688, 32)
    assert (a.totals["receptive_field"], a.totals["receptive_field_jump"]) == (1688, 32)
    assert a.totals["receptive_field_exact"]
    # inside the first block: the depthwise 7×7 on the stem's map, then the per-pixel MLP
    assert a.row("features.1.0.block.3")["receptive_field"] == 4 + 6 * 4
