"""Numbers checked against independent sources: torchvision's googlenet at every small size
(ceil-mode pools), exact decimal arithmetic (DenseNet compression), and d2l's LeNet written out
by hand in PyTorch."""

from __future__ import annotations

import dataclasses
import json
from decimal import ROUND_FLOOR, Decimal

import pytest
import torch
import torchvision
from torch import nn

from explorer.__main__ import main
from explorer.analysis import analyze
from explorer.errors import ConfigError
from explorer.models import build, minimum_input_size
from explorer.models.common import out_size
from explorer.registry import get_preset
from explorer.specs import DenseNetSpec, LeNetSpec, NiNSpec, spec_from_dict, spec_from_query

SHAPED = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)


def shapes(model: nn.Module, input_shape: tuple[int, int, int]) -> list[tuple[str, tuple]]:
    """(type, output shape) of every conv/linear/BN/pool call, in forward order (meta device)."""
    seen: list[tuple[str, tuple]] = []
    hooks = [m.register_forward_hook(
        lambda m, i, o: seen.append((type(m).__name__, tuple(o.shape))))
        for m in model.modules() if isinstance(m, SHAPED)]
    try:
        with torch.no_grad():
            model.eval()(torch.empty(1, *input_shape, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    return seen


# ---------------------------------------------------------------- ceil-mode pools (googlenet)

@pytest.fixture(scope="module")
def torchvision_googlenet() -> nn.Module:
    with torch.device("meta"):
        return torchvision.models.googlenet(weights=None, aux_logits=False,
                                            init_weights=False).eval()


def test_googlenet_matches_torchvision_at_every_size_from_15_to_31(torchvision_googlenet):
    preset = get_preset("googlenet").spec
    for size in range(15, 32):
        spec = dataclasses.replace(preset, input_shape=(3, size, size))
        ours = build(spec, device="meta")
        assert shapes(ours, spec.input_shape) == shapes(torchvision_googlenet, (3, size, size)), \
            size


def test_googlenet_minimum_input_is_where_torchvision_starts_to_run(torchvision_googlenet):
    runs = []
    for size in range(1, 32):
        try:
            with torch.no_grad():
                torchvision_googlenet(torch.empty(1, 3, size, size, device="meta"))
            runs.append(size)
        except RuntimeError:
            pass
    assert runs == list(range(runs[0], 32))  # a size that runs is never followed by one that not
    assert minimum_input_size(get_preset("googlenet").spec) == runs[0]
    with pytest.raises(ConfigError, match=f"at least a 3×{runs[0]}×{runs[0]} input"):
        build(dataclasses.replace(get_preset("googlenet").spec,
                                  input_shape=(3, runs[0] - 1, runs[0] - 1)), device="meta")


def test_summary_of_googlenet_at_16_px(capsys):
    assert main(["summary", "googlenet", "--input", "3,16,16", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    rows = {r["name"]: r for r in data["layers"]}
    # 16 → conv 7/2 p3: 8 → pool 3/2 ceil: ceil(5/2) + 1 = 4 → pool: ceil(1/2) + 1 = 2 →
    # pool 3/2 ceil on 2: the window starting at 0 hangs over the edge, 1×1 (as torchvision).
    assert rows["pool3"]["output_shape"] == [480, 1, 1]
    assert rows["head.fc"]["output_shape"] == [1000]


def test_ceil_mode_output_sizes_equal_pytorch():
    for n in range(1, 13):
        for k, s, p in ((2, 2, 0), (3, 2, 0), (3, 2, 1), (3, 1, 1), (3, 3, 1), (5, 2, 2)):
            for ceil in (False, True):
                try:
                    got = nn.MaxPool2d(k, s, p, ceil_mode=ceil)(torch.zeros(1, 1, n, n)).shape[-1]
                except RuntimeError:
                    got = 0  # PyTorch refuses an output of size 0
                assert out_size(n, k, s, p, 1, ceil) == got, (n, k, s, p, ceil)


# ---------------------------------------------------------------- DenseNet compression

@pytest.mark.parametrize("compression", ["0.58", "0.57", "0.29", "0.5", "0.1", "0.35"])
def test_densenet_compression_is_exact_decimal_arithmetic(compression):
    spec = DenseNetSpec(input_shape=(1, 32, 32), num_init_features=99, growth_rate=1,
                        block_config=(1, 1), compression=float(compression))
    # 99 stem channels + 1 from the dense layer = 100 into transition 1; keep floor(100 × c),
    # computed on the decimal as written.
    expected = int((Decimal(100) * Decimal(compression)).to_integral_value(ROUND_FLOOR))
    model = build(spec, device="meta")
    assert model.transition1.conv.out_channels == expected
    assert model.denseblock2.layer1.norm1.num_features == expected
    assert model.head.fc.in_features == expected + 1


def test_issue_cases_keep_58_57_and_29_channels():
    got = [build(DenseNetSpec(input_shape=(1, 32, 32), num_init_features=99, growth_rate=1,
                              block_config=(1, 1), compression=c),
                 device="meta").transition1.conv.out_channels for c in (0.58, 0.57, 0.29)]
    assert got == [58, 57, 29]


def test_dense_block_rows_have_output_shapes():
    a = analyze(get_preset("course_densenet").spec)
    dense_rows = a.table[a.table["name"].str.startswith("denseblock")]
    assert dense_rows["output_shape"].map(lambda s: s is not None).all()
    # d2l 8.7: each dense layer adds growth = 32 channels on the 24×24 map; the block
    # concatenates them onto its 64 input channels: 64 + 4·32.
    assert a.row("denseblock1.layer1")["output_shape"] == (32, 24, 24)
    assert a.row("denseblock1.layer4.conv1")["output_shape"] == (32, 24, 24)
    assert a.row("denseblock1")["output_shape"] == (64 + 4 * 32, 24, 24)


# ---------------------------------------------------------------- d2l's LeNet

def d2l_lenet() -> nn.Sequential:
    """d2l.ai 7.6, written out: only the first conv is padded."""
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5, padding=2), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.Sigmoid(),
        nn.Linear(120, 84), nn.Sigmoid(),
        nn.Linear(84, 10))


def test_d2l_lenet_preset_equals_the_book():
    ref = d2l_lenet()
    ours = build(get_preset("course_lenet_d2l").spec)
    n = sum(p.numel() for p in ours.parameters())
    assert n == sum(p.numel() for p in ref.parameters()) == 61_706
    assert sorted(p.shape for p in ours.parameters()) == sorted(p.shape for p in ref.parameters())
    assert shapes(ours.to("meta"), (1, 28, 28)) == shapes(ref.to("meta"), (1, 28, 28))
    assert ours.features.conv1.padding == (2, 2) and ours.features.conv2.padding == (0, 0)
    a = analyze(get_preset("course_lenet_d2l").spec)
    assert a.row("features.conv1")["output_shape"] == (6, 28, 28)
    assert a.row("head.flatten")["output_shape"] == (400,)


def test_one_padding_value_still_pads_every_conv():
    for value in (2, [2], "2"):
        spec = (spec_from_query({"family": "lenet", "padding": value}) if value == "2"
                else spec_from_dict({"family": "lenet", "padding": value}))
        assert spec.padding == (2,)
        model = build(spec, device="meta")
        assert model.features.conv1.padding == model.features.conv2.padding == (2, 2)
    assert LeNetSpec(padding=1).padding == (1,)
    assert spec_from_dict(LeNetSpec(padding=(2, 0)).to_dict()).padding == (2, 0)
    with pytest.raises(ConfigError, match="padding has 3 values for 2 conv layers"):
        LeNetSpec(padding=(1, 2, 3))


# ---------------------------------------------------------------- NiN's head kernel

def test_nin_head_kernel_help_says_an_even_kernel_grows_the_map():
    # 1×259×259: conv 11/4 → 63, pool → 31, conv 5 p2 → 31, pool → 15, conv 3 p1 → 15,
    # pool → 7; the head pads by k // 2 = 2, so a 4×4 kernel gives 7 + 2·2 - 4 + 1 = 8.
    spec = dataclasses.replace(get_preset("course_nin").spec, input_shape=(1, 259, 259),
                               head_kernel=4)
    a = analyze(spec)
    assert a.row("pool3")["output_shape"] == (384, 7, 7)
    assert a.row("head.block.conv1")["output_shape"] == (10, 8, 8)
    help_text = NiNSpec.field_help()["head_kernel"]
    assert "grows it by 1" in help_text and "4 turns 7×7 into 8×8" in help_text
