"""Property: any spec either builds a model whose forward pass runs on its input shape, or raises
ConfigError. Never another exception."""

import os

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from explorer.analysis import analyze
from explorer.errors import ConfigError
from explorer.forms import form_fields
from explorer.models import build, estimate
from explorer.specs import FAMILIES, spec_from_dict, spec_type

# 500 examples in CI (the floor); fewer locally keeps the edit-test loop quick.
EXAMPLES = 500 if os.environ.get("CI") == "true" else 150

small = st.integers(-1, 12)
chan = st.integers(0, 24)
kern = st.integers(0, 8)
shape = st.tuples(st.integers(0, 4), st.integers(0, 48), st.integers(0, 48))
common = {"input_shape": shape, "num_classes": st.integers(-1, 12)}


def rows(*parts, max_size=5):
    return st.lists(st.tuples(*parts), min_size=0, max_size=max_size)


FAMILY_FIELDS = {
    "lenet": {"conv_channels": st.lists(chan, max_size=4), "kernel_size": kern,
              "padding": st.one_of(st.integers(-1, 4), st.lists(st.integers(-1, 4), max_size=4)),
              "pool": st.sampled_from(["max", "avg", "min"]),
              "activation": st.sampled_from(["relu", "sigmoid", "tanh"]),
              "hidden": st.lists(chan, max_size=3), "batch_norm": st.booleans(),
              "bias": st.booleans()},
    "alexnet": {"convs": rows(chan, kern, st.integers(0, 4), st.integers(-1, 3), st.booleans()),
                "avgpool_size": st.integers(-1, 4), "hidden": st.lists(chan, max_size=3),
                "dropout": st.floats(-0.5, 1.5), "dropout_first": st.booleans()},
    "vgg": {"arch": rows(small, chan), "batch_norm": st.booleans(),
            "avgpool_size": st.integers(-1, 4), "hidden": st.lists(chan, max_size=2)},
    "nin": {"blocks": rows(chan, kern, st.integers(0, 4), st.integers(-1, 3)),
            "head_kernel": kern, "batch_norm": st.booleans()},
    "googlenet": {"stem_channels": st.tuples(chan, chan, chan),
                  "stages": st.lists(rows(chan, chan, chan, chan, chan, chan, max_size=2),
                                     max_size=3),
                  "branch3_kernel": kern, "batch_norm": st.booleans(),
                  "pool_style": st.sampled_from(["course", "torchvision"])},
    "resnet": {"block": st.sampled_from(["basic", "bottleneck"]), "stages": rows(small, chan),
               "stem": st.sampled_from(["imagenet", "small"]), "stem_channels": chan,
               "expansion": st.integers(0, 4), "cardinality": st.integers(0, 8),
               "bot_mul": st.floats(0, 2), "stride_on": st.sampled_from(["3x3", "1x1"]),
               "shortcut_bn": st.booleans(), "conv_bias": st.booleans()},
    "resnext": {"stages": rows(small, chan), "cardinality": st.integers(0, 8),
                "bot_mul": st.floats(0, 2), "base_width": st.integers(0, 64),
                "stem": st.sampled_from(["imagenet", "small"]), "stem_channels": chan},
    "densenet": {"block_config": st.lists(small, max_size=4), "growth_rate": chan,
                 "num_init_features": chan, "bn_size": st.integers(-1, 4),
                 "compression": st.floats(0, 1.2), "conv_bias": st.booleans()},
}


def _number(f, low: float, high: float, floats: bool = False):
    """Values around a field's range (one step outside on each side), kept small."""
    lo = low if f.lo is None else max(f.lo, low)
    hi = high if f.hi is None else min(f.hi, high)
    if floats:
        return st.floats(lo - 0.5, hi + 0.5)
    return st.integers(int(lo) - 1, int(hi) + 1)


def generic_fields(family: str) -> dict:
    """Strategies for a family without hand-written ones, read off its form's fields."""
    out = {}
    for f in form_fields(spec_type(family)):
        if f.kind == "int":
            out[f.name] = _number(f, 0, 24)
        elif f.kind == "float":
            out[f.name] = _number(f, 0, 2, floats=True)
        elif f.kind == "bool":
            out[f.name] = st.booleans()
        elif f.kind == "choice":
            out[f.name] = st.sampled_from([*f.choices, "nonsense"])
        elif f.kind == "list":
            out[f.name] = st.lists(chan, max_size=4)
        elif f.kind == "rows":
            out[f.name] = rows(*[chan] * len(f.row_type._fields), max_size=4)
        elif f.kind == "stages":
            out[f.name] = st.lists(rows(*[chan] * len(f.row_type._fields), max_size=2),
                                   max_size=3)
        elif f.kind == "triple":
            out[f.name] = st.tuples(chan, chan, chan)
    return out


def family_fields(family: str) -> dict:
    return FAMILY_FIELDS.get(family) or generic_fields(family)


def test_every_registered_family_is_drawn():
    # Families added to the registry (RegNet) get strategies read off their form.
    assert all(family_fields(f) for f in FAMILIES)
    assert set(generic_fields("regnet")) >= {"stem_channels", "stages", "bot_mul", "se_ratio"}


@st.composite
def spec_dicts(draw):
    family = draw(st.sampled_from(FAMILIES))
    strategies = family_fields(family) | common
    chosen = draw(st.sets(st.sampled_from(sorted(strategies))))
    return {"family": family, **{k: draw(strategies[k]) for k in chosen}}


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(spec_dicts())
def test_any_spec_builds_and_runs_or_raises_config_error(data):
    try:
        spec = spec_from_dict(data)
        model = build(spec)
    except ConfigError as exc:
        assert str(exc) and "Traceback" not in str(exc)
        return
    with torch.no_grad():
        out = model.eval()(torch.randn(1, *spec.input_shape))
    assert out.shape == (1, spec.num_classes)
    assert estimate(spec).output_shape == (spec.num_classes,)


@settings(max_examples=EXAMPLES // 5, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(spec_dicts())
def test_any_spec_that_builds_is_analysed(data):
    """Analysis never crashes on a network it can build, and its receptive field is the same
    in the totals and the table's whole-network row."""
    try:
        spec = spec_from_dict(data)
        build(spec, device="meta")
    except ConfigError:
        return
    a = analyze(spec)
    t = a.totals
    assert t["output_shape"] == (spec.num_classes,)
    row = a.row("")
    assert (row["receptive_field"], row["receptive_field_w"]) == (t["receptive_field"],
                                                                 t["receptive_field_w"])
    assert a.table["receptive_field"].max() == t["receptive_field"]
