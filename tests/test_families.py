"""The family registry: one record per family, and every consumer derives from it."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from explorer.errors import ConfigError
from explorer.families import Family, families, family_names, get_family, register
from explorer.forms import form_fields
from explorer.models import BUILDERS
from explorer.notes import FAMILY_NOTES
from explorer.registry import COURSE_PAIRS, PRESETS
from explorer.specs import FAMILIES, SPEC_TYPES, LeNetSpec, default_spec, spec_type

ROOT = Path(__file__).resolve().parent.parent


def test_the_nine_families_of_the_lectures_in_order():
    # d2l's "Modern convolutional neural networks": AlexNet, VGG, NiN, GoogLeNet, ResNet and
    # ResNeXt, DenseNet, and the design-space section's RegNet, after LeNet.
    assert family_names() == ("lenet", "alexnet", "vgg", "nin", "googlenet", "resnet",
                              "resnext", "densenet", "regnet")


def test_the_public_names_are_views_of_the_registry():
    assert family_names() == FAMILIES
    assert {f.name: f.spec for f in families()} == SPEC_TYPES
    assert {f.name: f.build for f in families()} == BUILDERS
    assert {f.name: f.notes for f in families()} == FAMILY_NOTES
    assert list(PRESETS) == [p.name for g in ("course", "torchvision") for f in families()
                             for p in f.presets if p.group == g]
    for a, b in COURSE_PAIRS.items():  # a course preset beside torchvision's of its family
        assert (PRESETS[a].group, PRESETS[b].group) == ("course", "torchvision")
        assert PRESETS[a].family == PRESETS[b].family


def test_every_family_is_complete():
    for f in families():
        assert f.spec.family == f.name and spec_type(f.name) is f.spec
        assert f.notes.startswith("**") and f.presets, f.name
        assert any(p.group == "course" for p in f.presets), f.name
        # Every field has a label of its own, not the bare field name.
        for field in form_fields(f.spec):
            assert field.label != field.name, (f.name, field.name)
            if field.row_type is not None:
                assert field.row_type in f.book_order, (f.name, field.name)
        assert default_spec(f.name).num_classes == 10


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ConfigError) as err:
        get_family("alexnett")
    assert all(name in str(err.value) for name in family_names())


def test_register_refuses_a_second_family_of_the_same_name_or_a_mismatched_spec():
    with pytest.raises(ValueError, match="already registered"):
        register(Family("lenet", LeNetSpec, lambda s: None, "**x**"))
    with pytest.raises(ValueError, match="not 'lenet2'"):
        register(Family("lenet2", LeNetSpec, lambda s: None, "**x**"))


# A tenth family, registered in one call before the consumers are imported: a plain stack of
# 3×3 convs. It shows up in the specs, the builders, the presets, the forms, the notes and the
# diagram without a line changed anywhere else. (In a subprocess: the registry is process-wide.)
TENTH = textwrap.dedent('''
    from dataclasses import dataclass
    from typing import ClassVar

    from torch import nn

    from explorer.families import Family, Preset, register
    from explorer.models.common import ShapeTracker, gap_head, seq
    from explorer.specs import CLASSES_HELP, INPUT_HELP, Shape, SpecBase, spec_field


    @dataclass(frozen=True)
    class PlainSpec(SpecBase):
        """A stack of 3×3 convs."""

        family: ClassVar[str] = "plain"
        title: ClassVar[str] = "Plain"
        input_shape: Shape = spec_field((1, 8, 8), INPUT_HELP)
        num_classes: int = spec_field(10, CLASSES_HELP, 1, 100)
        widths: tuple[int, ...] = spec_field((4, 8), "widths", 1, items=(1, 64))


    def build(spec):
        t = ShapeTracker(spec.input_shape)
        convs = [(f"conv{i}", t.conv(f"conv {i}", w, 3, 1, 1))
                 for i, w in enumerate(spec.widths, 1)]
        return seq(("body", seq(*convs)), ("head", gap_head(t, spec.num_classes)))


    register(Family("plain", PlainSpec, build, "**Plain** convs.",
                    (Preset("course_plain", PlainSpec(), "two convs", "course", "a note"),),
                    labels={"widths": "Widths"}, list_labels={"widths": "out channels"}))

    from explorer.charts import spec_diagram
    from explorer.forms import form_fields
    from explorer.models import BUILDERS, build as build_spec
    from explorer.notes import FAMILY_NOTES
    from explorer.registry import PRESETS
    from explorer.specs import FAMILIES, spec_from_dict

    spec = spec_from_dict({"family": "plain", "widths": [4, 8, 16]})
    params = sum(p.numel() for p in build_spec(spec).parameters())
    labels = [f.label for f in form_fields(PlainSpec)]
    boxes = len(spec_diagram(spec).layout.shapes)
    print(FAMILIES[-1], "plain" in BUILDERS, PRESETS["course_plain"].family,
          FAMILY_NOTES["plain"], params, labels[-1], boxes > 0)
''')


def test_a_tenth_family_needs_only_its_registration():
    done = subprocess.run([sys.executable, "-c", TENTH], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    # conv 1→4: 4·9+4 = 40; 4→8: 8·4·9+8 = 296; 8→16: 16·8·9+16 = 1168; linear 16→10: 170.
    assert done.stdout.split() == ["plain", "True", "plain", "**Plain**", "convs.",
                                   str(40 + 296 + 1168 + 170), "Widths", "True"]


def test_the_table_beside_the_form_comes_from_the_family():
    from explorer.families import side_table
    from explorer.registry import get_preset

    # The course ResNeXt: 16 groups; stage 1's bottleneck is round(64 × 1.0) = 64 wide, so 4
    # channels per group, and the book's argument that builds 16 groups is 64 // 16 = 4.
    caption, rows = side_table(get_preset("course_resnext").spec)
    assert "channels per group" in caption
    assert (rows[0]["cardinality g"], rows[0]["width per group b/g"],
            rows[0]["book's groups argument that builds g"]) == (16, 4, 4)
    assert side_table(get_preset("course_resnet18").spec) is None  # basic blocks: no groups
    assert side_table(get_preset("course_lenet").spec) is None
    # regnet_y_400mf: widths 48, 104, 208, 440 in groups of 8 channels.
    _, rows = side_table(get_preset("regnet_y_400mf").spec)
    assert [r["groups b / group width"] for r in rows] == [6, 13, 26, 55]


def test_every_family_has_an_example_spec_file_that_loads_as_that_family():
    """The README promises one example spec per family in assets/specs/."""
    from pathlib import Path

    import torch

    from explorer.models import build
    from explorer.specs import FAMILIES, spec_from_json

    folder = Path(__file__).resolve().parents[1] / "assets" / "specs"
    assert sorted(p.stem for p in folder.glob("*.json")) == sorted(FAMILIES)
    for family in FAMILIES:
        spec = spec_from_json((folder / f"{family}.json").read_text())
        assert spec.family == family
        out = build(spec).eval()(torch.zeros(1, *spec.input_shape))
        assert out.shape == (1, spec.num_classes)
