"""Conv arithmetic against nn.Conv2d / nn.MaxPool2d, torchinfo and the lecture's hand counts."""

import pytest
import torch
import torchinfo
from torch import nn

from explorer.convmath import conv_layer, pool_layer, stacked_receptive_field, stacked_vs_single
from explorer.errors import ConfigError


@pytest.mark.parametrize("shape, out, k, s, p, d, g, bias", [
    ((1, 224, 224), 96, 11, 4, 1, 1, 1, True),
    ((3, 32, 32), 16, 3, 1, 1, 1, 1, False),
    ((64, 56, 56), 128, 3, 2, 1, 1, 32, False),
    ((8, 15, 17), 4, (3, 5), (2, 1), (0, 2), (2, 1), 4, True),
])
def test_conv_matches_pytorch_and_torchinfo(shape, out, k, s, p, d, g, bias):
    layer = nn.Conv2d(shape[0], out, k, s, p, d, groups=g, bias=bias)
    y = layer(torch.zeros(1, *shape))
    r = conv_layer(shape, out, k, s, p, d, g, bias)
    assert r.output_shape == tuple(y.shape[1:])
    assert r.params == sum(q.numel() for q in layer.parameters())
    info = torchinfo.summary(layer, input_size=(1, *shape), verbose=0)
    assert r.macs_torchinfo == info.total_mult_adds
    # torchinfo counts the bias once per output pixel; the lecture does not.
    assert r.macs_torchinfo - r.macs == (out * y.shape[2] * y.shape[3] if bias else 0)


def test_lecture_alexnet_first_conv_by_hand():
    # floor((224 + 2 - 11) / 4) + 1 = 54; params 96·121 + 96 = 11712;
    # MACs 96·54·54·121 = 33,872,256.
    r = conv_layer((1, 224, 224), 96, 11, 4, 1)
    assert r.output_shape == (96, 54, 54)
    assert (r.params, r.macs) == (11712, 33_872_256)
    assert any("= 54" in line for line in r.explain())


def test_pool_matches_pytorch():
    for kind, mod in (("max", nn.MaxPool2d(3, 2, 1)), ("avg", nn.AvgPool2d(3, 2, 1))):
        r = pool_layer((5, 13, 13), kind, 3, 2, 1)
        assert r.output_shape == tuple(mod(torch.zeros(1, 5, 13, 13)).shape[1:])
        assert r.params == 0 and r.macs == 0


def test_receptive_field_of_stacks():
    # L stacked K×K stride-1 convs see 1 + L(K-1): two 3×3 see 5, three see 7.
    assert stacked_receptive_field(3, 2) == 5 and stacked_receptive_field(3, 3) == 7
    # Stride 2 then: 1 + 2·1 + 2·2 = 7 for two 3×3 stride-2 convs.
    assert stacked_receptive_field(3, 2, stride=2) == 7
    cmp = stacked_vs_single(3, 2, 64)
    assert cmp["receptive_field"] == 5
    assert cmp["stacked_weights"] == 18 * 64 * 64 and cmp["single_weights"] == 25 * 64 * 64
    assert cmp["ratio"] == pytest.approx(0.72)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"input_shape": (3, 4, 4), "out_channels": 8, "kernel": 7}, "larger than the padded"),
    ({"input_shape": (6, 8, 8), "out_channels": 8, "kernel": 3, "groups": 4}, "divisible"),
    ({"input_shape": (3, 8, 8), "out_channels": 0, "kernel": 3}, "at least 1"),
    ({"input_shape": (3, 8, 8), "out_channels": 4, "kernel": 3, "stride": 0}, "stride"),
])
def test_impossible_settings_are_sentences(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        conv_layer(**kwargs)


def test_stacked_rectangular_kernels_grow_each_side_on_its_own():
    from explorer.convmath import stacked_receptive_field_hw, stacking_rows

    # 1 + L(K-1) per side: two 3×7 convs see (1 + 2·2)×(1 + 2·6) = 5×13.
    assert stacked_receptive_field_hw((3, 7), 2) == (5, 13)
    # Stride 2: the second layer's taps are 2 input pixels apart, 1 + (K-1) + 2(K-1) = 1 + 3(K-1):
    # 3 → 7 rows, 7 → 19 columns.
    assert stacked_receptive_field_hw((3, 7), 2, stride=2) == (7, 19)
    # Dilation 2, stride 1, three layers: 1 + 3·2·(K-1): 3 → 13, 5 → 25.
    assert stacked_receptive_field_hw((3, 5), 3, dilation=2) == (13, 25)
    assert stacked_receptive_field_hw(3, 2) == (5, 5)
    rows = stacking_rows((3, 7), 2, channels=6)
    # One 3×7 conv with 6 channels in and out: 21·36 = 756 weights; two: 1,512, against one
    # 5×13 conv that sees as much: 65·36 = 2,340, i.e. 1,512 / 2,340 = 64.6%.
    assert rows[0] == {"layers": 1, "receptive field": "3×7", "weights of the stack": 756,
                       "one conv that sees as much": "3×7: 756", "stack / single": "100%"}
    assert rows[1] == {"layers": 2, "receptive field": "5×13", "weights of the stack": 1_512,
                       "one conv that sees as much": "5×13: 2,340", "stack / single": "65%"}
