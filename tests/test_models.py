"""Builders against independent numbers: torchvision's own models and the lectures' hand counts."""

import pytest
import torch
import torchvision
from torch import nn

from explorer.errors import ConfigError
from explorer.models import SizeLimits, build, estimate, validate
from explorer.models.common import ShapeTracker
from explorer.models.densenet import DenseBlock
from explorer.registry import PRESETS, get_preset, preset_names
from explorer.specs import DenseNetSpec, ResNeXtSpec, Stage, VGGBlock, VGGSpec

PARAM_LAYERS = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)


def layer_shapes(model: nn.Module, input_shape, device="meta"):
    """(type, output shape) of every conv/linear/BN call, in the order the forward pass runs."""
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append((type(m).__name__,
                                                                  tuple(o.shape))))
             for m in model.modules() if isinstance(m, PARAM_LAYERS)]
    with torch.no_grad():
        model.eval()(torch.empty(1, *input_shape, device=device))
    for h in hooks:
        h.remove()
    return seen


def param_shapes(model: nn.Module):
    return sorted(tuple(p.shape) for p in model.parameters())


@pytest.mark.parametrize("name", preset_names("torchvision"))
def test_torchvision_presets_equal_torchvision(name):
    """Same parameter tensors and the same output shape at every conv/linear/BN layer."""
    preset = get_preset(name)
    assert preset.reference == name
    kw = {"aux_logits": False, "init_weights": False} if name == "googlenet" else {}
    ours = build(preset.spec, device="meta")
    try:
        with torch.device("meta"):
            ref = getattr(torchvision.models, name)(weights=None, **kw)
    except NotImplementedError:  # regnet_* compute their widths with tensors, unreadable on meta
        ref = getattr(torchvision.models, name)(weights=None, **kw).to("meta")
    # A third, published number: the size in torchvision's weights metadata (its model table).
    # GoogLeNet's is without the auxiliary heads, as the reference above is built.
    published = torchvision.models.get_model_weights(name).DEFAULT.meta["num_params"]
    assert sum(p.numel() for p in ours.parameters()) == sum(
        p.numel() for p in ref.parameters()) == published
    assert param_shapes(ours) == param_shapes(ref)
    assert layer_shapes(ours, (3, 224, 224)) == layer_shapes(ref, (3, 224, 224))


def test_real_forward_matches_torchvision_resnet18():
    """One real (not meta) forward pass: the same logits shape and the same conv shapes."""
    ours = build(get_preset("resnet18").spec)
    ref = torchvision.models.resnet18(weights=None)
    assert layer_shapes(ours, (3, 64, 64), "cpu") == layer_shapes(ref, (3, 64, 64), "cpu")


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_course_lenet_hand_count():
    # conv(6,5): 6·1·25+6 = 156; conv(16,5): 16·6·25+16 = 2416; 28→24→12→8→4, so the
    # flatten has 16·4·4 = 256: linear 256·120+120 = 30840, 120·84+84 = 10164, 84·10+10 = 850.
    assert n_params(build(get_preset("course_lenet").spec)) == 156 + 2416 + 30840 + 10164 + 850


def test_course_lenet5_hand_count():
    # conv(20,5,p2): 20·25+20 = 520; conv(50,5,p2): 50·20·25+50 = 25050; 28→28→14→14→7, so
    # the flatten has 50·7·7 = 2450: 2450·500+500 = 1225500; 500·10+10 = 5010.
    assert n_params(build(get_preset("course_lenet5").spec)) == 520 + 25050 + 1225500 + 5010


def test_bn_lenet_adds_two_params_per_channel():
    # BN after conv(6), conv(16), linear(120), linear(84): 2·(6+16+120+84) = 452 extra.
    plain = n_params(build(get_preset("course_lenet").spec))
    assert n_params(build(get_preset("course_bn_lenet").spec)) == plain + 452


def stage_shapes(model, input_shape, names):
    out = {}
    hooks = [dict(model.named_modules())[n].register_forward_hook(
        lambda m, i, o, n=n: out.__setitem__(n, tuple(o.shape[1:]))) for n in names]
    with torch.no_grad():
        model.eval()(torch.empty(1, *input_shape, device="meta"))
    for h in hooks:
        h.remove()
    return out


def test_course_resnet18_shapes_as_in_the_book():
    # d2l 8.6 prints: b1 64×24×24, b2 64×24×24, b3 128×12×12, b4 256×6×6, b5 512×3×3, then 10.
    spec = get_preset("course_resnet18").spec
    model = build(spec, device="meta")
    got = stage_shapes(model, spec.input_shape, ["stem", "stage1", "stage2", "stage3", "stage4",
                                                 "head"])
    assert got == {"stem": (64, 24, 24), "stage1": (64, 24, 24), "stage2": (128, 12, 12),
                   "stage3": (256, 6, 6), "stage4": (512, 3, 3), "head": (10,)}
    # The course's residual convs carry a bias and its 1×1 shortcut has no BN.
    assert model.stage2.block1.conv1.bias is not None
    assert not hasattr(model.stage2.block1.shortcut, "bn")
    assert model.stage1.block1.shortcut is None


def test_course_googlenet_shapes_as_in_the_book():
    # d2l 8.4 prints: b1 64×24×24, b2 192×12×12, b3 480×6×6, b4 832×3×3, b5 1024 (after GAP).
    spec = get_preset("course_googlenet").spec
    model = build(spec, device="meta")
    got = stage_shapes(model, spec.input_shape, ["stem", "pool3", "pool4", "stage5"])
    assert got == {"stem": (192, 12, 12), "pool3": (480, 6, 6), "pool4": (832, 3, 3),
                   "stage5": (1024, 3, 3)}


def test_course_alexnet_and_nin_shapes():
    # d2l 8.1: conv1 96×54×54, pool 26, conv2 256×26×26, pool 12, convs 12×12, pool 256×5×5,
    # flatten 6400 → 4096.
    spec = get_preset("course_alexnet").spec
    model = build(spec, device="meta")
    got = stage_shapes(model, spec.input_shape, ["features.conv1", "features.pool1",
                                                 "features.pool2", "features.pool5"])
    assert got == {"features.conv1": (96, 54, 54), "features.pool1": (96, 26, 26),
                   "features.pool2": (256, 12, 12), "features.pool5": (256, 5, 5)}
    assert model.head.fc1.in_features == 6400
    # d2l 8.3: 96×54×54, 26, 256×26×26, 12, 384×12×12, 5, then 10×5×5 and 10.
    spec = get_preset("course_nin").spec
    got = stage_shapes(build(spec, device="meta"), spec.input_shape,
                       ["block1", "pool3", "head.block", "head"])
    assert got == {"block1": (96, 54, 54), "pool3": (384, 5, 5), "head.block": (10, 5, 5),
                   "head": (10,)}


def test_reduced_vgg11_flatten_size():
    # The notebook: 128 channels × 7 × 7 = 6272 features into the first linear layer.
    model = build(get_preset("course_vgg11_small").spec, device="meta")
    assert model.head.fc1.in_features == 128 * 7 * 7


def test_dense_block_channels_as_in_the_book():
    # d2l 8.7: DenseBlock(2, 10) on 3 channels gives 3 + 2·10 = 23 channels.
    block = DenseBlock(ShapeTracker((3, 8, 8)), "test", 2, DenseNetSpec(growth_rate=10))
    assert block(torch.zeros(4, 3, 8, 8)).shape == (4, 23, 8, 8)


def test_course_densenet_channels():
    # 64 + 4·32 = 192, halved to 96; 96+128 = 224 → 112; 112+128 = 240 → 120; 120+128 = 248.
    spec = get_preset("course_densenet").spec
    got = stage_shapes(build(spec, device="meta"), spec.input_shape,
                       ["denseblock1", "transition1", "transition3", "denseblock4"])
    assert got == {"denseblock1": (192, 24, 24), "transition1": (96, 12, 12),
                   "transition3": (120, 3, 3), "denseblock4": (248, 3, 3)}


def test_resnext_book_reading():
    # d2l's ResNeXtBlock(32, 16, 1): b = 32 and nn.Conv2d(..., groups=b // 16) builds 2 groups
    # of 16 channels, so the book's "groups=16" is channels per group.
    spec = ResNeXtSpec(input_shape=(32, 96, 96), stages=(Stage(1, 32),), stem="small",
                       stem_channels=32, cardinality=2, bot_mul=1.0)
    model = build(spec)
    assert model.stage1.block1.conv2.groups == 2
    row = spec.group_table()[0]
    assert row["bottleneck_width"] == 32 and row["width_per_group"] == 16
    assert row["book_groups_argument"] == 16
    # A student who reads the book's argument as the number of groups and passes 16 gets
    # 32 // 16 = 2 groups, not 16.
    assert ResNeXtSpec(stages=(Stage(1, 32),), cardinality=16).group_table()[0][
        "book_groups_as_cardinality_builds"] == 2
    with torch.no_grad():
        assert model.stage1(torch.zeros(4, 32, 96, 96)).shape == (4, 32, 96, 96)


def test_grouped_conv_costs_one_over_g():
    # A 3×3 conv with g groups has C_in·C_out·9/g weights.
    full = build(ResNeXtSpec(cardinality=1), device="meta").stage1.block1.conv2.weight.numel()
    g16 = build(ResNeXtSpec(cardinality=16), device="meta").stage1.block1.conv2.weight.numel()
    assert full == 64 * 64 * 9 and g16 == 64 * 64 * 9 // 16


def test_stable_module_names():
    names = dict(build(get_preset("course_resnet18").spec, device="meta").named_modules())
    assert {"stem", "stage2.block1.conv1", "stage2.block1.shortcut.conv", "head.fc"} <= set(names)
    names = dict(build(get_preset("course_densenet").spec, device="meta").named_modules())
    assert {"denseblock3", "transition2", "head"} <= set(names)


def test_a_block_that_shrinks_the_map_to_zero_names_it():
    # VGG-11 on 1×28×28: 28 → 14 → 7 → 3 → 1, and block 5's pool would give 0×0.
    spec = VGGSpec(input_shape=(1, 28, 28))
    with pytest.raises(ConfigError, match=r"block 5.*0×0.*at least a 1×32×32 input"):
        validate(spec)


def test_bad_values_are_config_errors():
    with pytest.raises(ConfigError, match="out_channels"):
        VGGSpec(arch=(VGGBlock(1, 0),))
    with pytest.raises(ConfigError, match="divisible by cardinality"):
        ResNeXtSpec(cardinality=3)
    with pytest.raises(ConfigError, match="num_classes"):
        VGGSpec(num_classes=-1)
    with pytest.raises(ConfigError, match="at least 1"):
        VGGSpec(arch=())


def test_size_limits_are_configurable_and_estimated_without_weights():
    spec = get_preset("vgg19").spec
    est = estimate(spec)
    assert est.params == 143_667_240  # torchvision's vgg19
    validate(spec)  # the defaults admit vgg19 at 3×224×224
    with pytest.raises(ConfigError, match="parameters"):
        validate(get_preset("course_lenet").spec, SizeLimits(max_params=1000))
    huge = VGGSpec(input_shape=(3, 2048, 2048), arch=(VGGBlock(4, 1024),) * 5)
    with pytest.raises(ConfigError, match="GiB of activations|parameters"):
        validate(huge)


def test_every_preset_builds_and_runs_at_its_input_shape():
    for name, preset in PRESETS.items():
        model = build(preset.spec, device="meta")
        out = model.eval()(torch.empty(2, *preset.spec.input_shape, device="meta"))
        assert out.shape == (2, preset.spec.num_classes), name
