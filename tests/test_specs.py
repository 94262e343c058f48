"""Specs: coercion, validation sentences and the dict / JSON / URL round trips."""

import json

import pytest

from explorer.errors import ConfigError
from explorer.registry import PRESETS, get_preset, preset_names
from explorer.specs import (
    FAMILIES,
    ResNetSpec,
    Stage,
    VGGBlock,
    VGGSpec,
    default_spec,
    spec_from_dict,
    spec_from_json,
    spec_from_query,
)


@pytest.mark.parametrize("name", list(PRESETS))
def test_round_trips(name):
    spec = get_preset(name).spec
    assert spec_from_dict(spec.to_dict()) == spec
    assert spec_from_json(spec.to_json()) == spec
    query = spec.to_query()
    assert all(isinstance(v, str) for v in query.values())
    assert spec_from_query(query) == spec


def test_lists_become_named_rows():
    spec = spec_from_dict({"family": "vgg", "arch": [[1, 64], [2, 128]]})
    assert spec.arch == (VGGBlock(num_convs=1, out_channels=64), VGGBlock(2, 128))
    named = spec_from_dict({"family": "vgg", "arch": [{"num_convs": 1, "out_channels": 64}]})
    assert named.arch[0].out_channels == 64
    assert json.loads(spec.to_json())["arch"] == [[1, 64], [2, 128]]


def test_defaults_are_the_course_versions():
    for family in FAMILIES:
        assert default_spec(family).num_classes == 10
    assert ResNetSpec().stages == tuple(Stage(2, c) for c in (64, 128, 256, 512))


@pytest.mark.parametrize("data, fragment", [
    ({"family": "vgg", "arch": [[1, 64, 3]]}, "needs 2 numbers"),
    ({"family": "vgg", "arch": [[1.5, 64]]}, "whole number"),
    ({"family": "vgg", "batch_norm": "maybe"}, "true or false"),
    ({"family": "vgg", "input_shape": [1, 0, 28]}, "height"),
    ({"family": "vgg", "input_shape": [1, 28]}, "3 numbers"),
    ({"family": "vgg", "colour": 3}, "unknown field"),
    ({"family": "lenet", "activation": "gelu"}, "one of"),
    ({"family": "transformer"}, "unknown family 'transformer'; choose one of lenet"),
    ({"arch": []}, "no 'family'"),
    ({"family": "resnet", "block": "basic", "cardinality": 4}, "bottleneck"),
    ({"family": "densenet", "compression": 0}, "at least 0.05"),
    ({"family": "resnet", "stages": [[1, 64]] * 17}, "at most 16"),
])
def test_bad_dicts_give_sentences(data, fragment):
    with pytest.raises(ConfigError, match=fragment):
        spec_from_dict(data)


def test_bad_json_text():
    with pytest.raises(ConfigError, match="not valid JSON"):
        spec_from_json("{family: vgg")


def test_query_ignores_other_pages_parameters():
    query = VGGSpec().to_query() | {"page": "build", "run": "12"}
    assert spec_from_query(query) == VGGSpec()


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ConfigError, match="Did you mean resnet18") as err:
        get_preset("resnet-18")
    for name in preset_names():
        assert name in str(err.value)


def test_registry_holds_every_lecture_network_and_torchvision_name():
    course = set(preset_names("course"))
    assert {"course_lenet5", "course_lenet", "course_bn_lenet", "course_alexnet",
            "course_vgg11", "course_vgg11_small", "course_nin", "course_googlenet",
            "course_resnet18", "course_resnet_3x4_28", "course_resnext",
            "course_densenet"} <= course
    # At least these; a family added to the registry brings its own (test_models compares every
    # torchvision preset with torchvision's builder of the same name).
    assert set(preset_names("torchvision")) >= {
        "alexnet", "vgg11", "vgg11_bn", "vgg13", "vgg16", "vgg19", "resnet18", "resnet34",
        "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d",
        "densenet121", "densenet161", "densenet169", "densenet201", "googlenet"}
    for name in preset_names("torchvision"):
        spec = get_preset(name).spec
        assert get_preset(name).reference == name
        assert spec.input_shape == (3, 224, 224) and spec.num_classes == 1000
    for p in PRESETS.values():
        assert p.description and (p.group == "torchvision" or p.note)
