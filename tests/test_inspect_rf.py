"""The receptive field on the image: rectangles against the analysis, by hand, and the ERF."""

import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from explorer.analysis import analyze
from explorer.errors import ConfigError
from explorer.inspect_rf import (
    Rect,
    compare_sentence,
    effective_rf,
    erf_mass_pixels,
    receptive_rect,
    unit_geometry,
)
from explorer.models import build
from explorer.registry import get_preset
from explorer.specs import DenseNetSpec, GoogLeNetSpec, Inception, LeNetSpec, ResNetSpec, Stage


@pytest.mark.parametrize("preset", ["course_resnet18", "course_densenet", "course_googlenet"])
def test_rectangles_have_the_analysis_size_and_jump_at_every_layer(preset):
    spec = get_preset(preset).spec
    model = build(spec)
    geo = unit_geometry(model, spec.input_shape)
    table = analyze(model, spec.input_shape).table
    checked = 0
    for row in table.itertuples():
        if not row.name or pd.isna(row.receptive_field) or row.output_shape is None:
            continue
        r00 = receptive_rect(geo, row.name, 0, 0)
        assert (r00.height, r00.width) == (row.receptive_field, row.receptive_field_w), row.name
        if len(row.output_shape) == 3 and row.output_shape[1] > 1 and row.output_shape[2] > 1:
            r11 = receptive_rect(geo, row.name, 1, 1)
            assert (r11.height, r11.width) == (r00.height, r00.width), row.name
            assert (r11.top - r00.top, r11.left - r00.left) == (row.jump, row.jump_w), row.name
        checked += 1
    assert checked > 50  # every conv, pool, block and stage, not a handful


def test_lenet_rectangles_by_hand():
    # conv1 5×5 pad 2: unit y sees rows y−2 … y+2. pool1 2×2/2: unit y sees conv1 rows 2y, 2y+1,
    # so rows 2y−2 … 2y+3. conv2 5×5 pad 2 on pool1: pool1 rows y−2 … y+2, so input rows
    # 2(y−2)−2 … 2(y+2)+3 = 2y−6 … 2y+7 (14 rows, jump 2).
    spec = LeNetSpec(input_shape=(1, 28, 28), conv_channels=(6, 16), kernel_size=5, padding=2)
    geo = unit_geometry(build(spec), spec.input_shape)
    assert receptive_rect(geo, "features.conv1", 0, 5) == Rect(-2, 3, 2, 7, 28, 28)
    assert receptive_rect(geo, "features.pool1", 3, 0) == Rect(4, -2, 9, 3, 28, 28)
    r = receptive_rect(geo, "features.conv2", 4, 6)
    assert (r.top, r.bottom, r.left, r.right) == (2, 15, 6, 19)
    # The head sees everything from the first unit's top-left to the last unit's bottom-right.
    last = receptive_rect(geo, "features.pool2", 6, 6)  # pool2 is 7×7
    head = receptive_rect(geo, "head.fc", 0, 0)
    assert (head.top, head.left, head.bottom, head.right) == (-6, -6, last.bottom, last.right)
    assert head.padding_pixels == head.height * head.width - 28 * 28


def test_clipping_and_padding_pixels():
    r = Rect(-2, 3, 2, 7, 28, 28)
    assert r.clipped() == Rect(0, 3, 2, 7, 28, 28)
    assert (r.inside_pixels, r.padding_pixels) == (15, 10)


def test_erf_of_the_first_conv_is_its_kernel():
    # For a conv unit, ∂out[c, y, x]/∂in[i, y+a−p, x+b−p] = weight[c, i, a, b]: the ERF is the
    # kernel's absolute values summed over input channels, placed at the rectangle.
    spec = LeNetSpec(input_shape=(2, 12, 12), conv_channels=(3,), kernel_size=5, padding=2,
                     hidden=())
    model = build(spec)
    x = torch.randn(2, 12, 12)
    erf = effective_rf(model, x, "features.conv1", 1, 6, 4)
    want = torch.zeros(12, 12)
    want[4:9, 2:7] = model.features.conv1.weight[1].detach().abs().sum(0)
    assert torch.allclose(erf, want)
    with pytest.raises(ConfigError, match="outside this layer"):
        effective_rf(model, x, "features.conv1", 3, 0, 0)
    with pytest.raises(ConfigError, match="no layer named"):
        effective_rf(model, x, "features.nope", 0, 0, 0)


def test_erf_mass_and_the_sentence():
    erf = torch.zeros(10, 10)
    erf[2, 2], erf[3, 3], erf[4, 4] = 6.0, 3.0, 1.0  # 6 of 10 is over half: one pixel
    assert erf_mass_pixels(erf) == 1
    assert erf_mass_pixels(erf, 0.7) == 2
    rect = Rect(-1, -1, 8, 8, 10, 10)  # 10×10, 81 on the image, 19 in the padding
    text = compare_sentence(rect, erf, "conv[0, 3, 3]")
    assert "10×10 pixels (81 of its pixels on the image and 19 in the padding)" in text
    assert "half of |∂unit/∂input| lies on 1 pixels, 2% of" in text and "far smaller" in text
    assert "empty" in compare_sentence(rect, torch.zeros(10, 10), "conv[0, 3, 3]")


def _lenet(draw):
    k = draw(st.sampled_from([1, 3, 5]))
    return LeNetSpec(input_shape=(1, draw(st.integers(16, 28)), draw(st.integers(16, 28))),
                     conv_channels=(3, 4), kernel_size=k, padding=draw(st.integers(0, k // 2)),
                     pool=draw(st.sampled_from(["max", "avg"])), hidden=(8,))


def _resnet(draw):
    return ResNetSpec(input_shape=(1, draw(st.integers(20, 40)), draw(st.integers(20, 40))),
                      block=draw(st.sampled_from(["basic", "bottleneck"])),
                      stages=(Stage(1, 4), Stage(draw(st.integers(1, 2)), 8)),
                      stem=draw(st.sampled_from(["imagenet", "small"])), stem_channels=4,
                      expansion=2, stride_on=draw(st.sampled_from(["3x3", "1x1"])))


def _densenet(draw):
    return DenseNetSpec(input_shape=(1, draw(st.integers(24, 40)), draw(st.integers(24, 40))),
                        block_config=(draw(st.integers(1, 2)), 1), growth_rate=3,
                        num_init_features=4, bn_size=draw(st.sampled_from([0, 2])))


def _googlenet(draw):
    return GoogLeNetSpec(input_shape=(1, draw(st.integers(40, 64)), draw(st.integers(40, 64))),
                         stem_channels=(4, 4, 8),
                         stages=((Inception(2, 2, 4, 2, 2, 2),), (Inception(4, 2, 4, 2, 2, 2),)),
                         branch3_kernel=draw(st.sampled_from([3, 5])),
                         pool_style=draw(st.sampled_from(["course", "torchvision"])))


@st.composite
def specs(draw):
    return draw(st.sampled_from([_lenet, _resnet, _densenet, _googlenet]))(draw)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs(), data=st.data())
def test_the_effective_field_lies_inside_the_theoretical_one(spec, data):
    torch.manual_seed(data.draw(st.integers(0, 1000), label="seed"))  # weights drawn per example
    model = build(spec)
    geo = unit_geometry(model, spec.input_shape)
    layer = data.draw(st.sampled_from(sorted(geo.layers)), label="layer")
    x = torch.randn(*spec.input_shape)
    from explorer.inspect import run_image

    out = run_image(model, x, layers=[layer]).maps[layer]
    channel = data.draw(st.integers(0, out.shape[0] - 1), label="channel")
    y = data.draw(st.integers(0, out.shape[1] - 1), label="y") if out.dim() == 3 else 0
    col = data.draw(st.integers(0, out.shape[2] - 1), label="x") if out.dim() == 3 else 0
    rect = receptive_rect(geo, layer, y, col)
    erf = effective_rf(model, x, layer, channel, y, col)
    inside = torch.zeros_like(erf, dtype=torch.bool)
    c = rect.clipped()
    inside[c.top:c.bottom + 1, c.left:c.right + 1] = True
    assert not erf[~inside].any(), (layer, channel, y, col, rect)
    assert geo.exact


def test_geometry_leaves_the_model_as_it_was():
    spec = get_preset("course_resnet_3x4_28").spec
    model = build(spec).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    unit_geometry(model, spec.input_shape)
    assert model.training
    for k, v in model.state_dict().items():
        assert v.device.type == "cpu" and torch.equal(v, before[k]), k
