"""AnyNet and RegNet (Radosavovic et al. 2020; d2l 8.8 "Designing convolution network
architectures"): the whole family in one module: spec, blocks, builder, labels, notes, presets
and diagram.

AnyNet is a design space: a stem (conv 3×3/2, BN, ReLU), stages of X-blocks and a head (global
average pool, linear). An X-block is a ResNeXt bottleneck: 1×1 conv to the bottleneck width
b = round(width × bottleneck ratio), a 3×3 conv with b / group_width groups (stride 2 in the first
block of every stage), a 1×1 conv back to the stage's width, each with BN, ReLU after the first
two and after the sum with the shortcut (a 1×1 conv + BN when the stride or the width changes).
RegNetY adds squeeze-excitation after the grouped conv. RegNetX picks the stages from four
numbers: block widths on a line w_0 + w_a·j, quantised to powers of w_m and multiples of 8
(``regnet_stages``, torchvision's ``BlockParams.from_init_params``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from explorer.errors import ConfigError
from explorer.families.base import DiagramNode, Family, Preset, register
from explorer.models.common import ShapeTracker, gap_head, seq
from explorer.specs import CLASSES_HELP, INPUT_HELP, Shape, SpecBase
from explorer.specs import spec_field as _f


class XStage(NamedTuple):
    """One AnyNet stage: ``depth`` X-blocks of ``width`` channels, ``group_width`` per group."""

    depth: int
    width: int
    group_width: int


XStage.LIMITS = {"depth": (1, 64), "width": (1, 8192), "group_width": (1, 1024)}  # type: ignore


def _make_divisible(v: float, divisor: int) -> int:
    """The multiple of ``divisor`` nearest to ``v``, never below 90% of it (torchvision's)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def regnet_stages(depth: int, w_0: int, w_a: float, w_m: float, group_width: int,
                  bot_mul: float = 1.0) -> tuple[XStage, ...]:
    """RegNetX's stages from its four numbers (Radosavovic et al. 2020, eq. 2-4).

    Block j's width is first on the line u_j = w_0 + w_a·j, then quantised: s_j =
    round(log(u_j / w_0) / log(w_m)) and w_j = 8·round(w_0·w_m^s_j / 8); consecutive blocks of
    equal width form a stage. Last, as torchvision does, each stage's bottleneck width is made
    a multiple of its group width (which is capped at the bottleneck width).
    """
    if w_a < 0 or w_0 <= 0 or w_m <= 1 or w_0 % 8:
        raise ConfigError(f"RegNet needs w_a ≥ 0, w_m > 1 and w_0 a positive multiple of 8, "
                          f"not w_0={w_0}, w_a={w_a}, w_m={w_m}.")
    widths = []
    for j in range(depth):
        s = round(math.log((w_0 + w_a * j) / w_0) / math.log(w_m))
        widths.append(int(round(w_0 * w_m**s / 8) * 8))
    stages: list[list[int]] = []  # [depth, width]
    for w in widths:
        if stages and stages[-1][1] == w:
            stages[-1][0] += 1
        else:
            stages.append([1, w])
    out = []
    for d, w in stages:
        w_bot = int(w * bot_mul)
        g = min(group_width, w_bot)
        out.append(XStage(d, int(_make_divisible(w_bot, g) / bot_mul), g))
    return tuple(out)


@dataclass(frozen=True)
class RegNetSpec(SpecBase):
    """AnyNet / RegNet (d2l 8.8): a stem, stages of X-blocks (grouped bottlenecks), a GAP head."""

    family: ClassVar[str] = "regnet"
    title: ClassVar[str] = "RegNet (AnyNet)"
    input_shape: Shape = _f((1, 28, 28), INPUT_HELP)
    num_classes: int = _f(10, CLASSES_HELP, 1, 100_000)
    stem_channels: int = _f(32, "channels of the stem conv (3×3, stride 2)", 1, 4096)
    stages: tuple[XStage, ...] = _f(
        (XStage(4, 32, 16), XStage(6, 80, 16)),
        "stages as (depth, width, group width); the first block of every stage halves the "
        "size", 1)
    bot_mul: float = _f(1.0, "bottleneck ratio: the grouped 3×3 conv has round(width × ratio) "
                             "channels", 0.05, 4.0)
    se_ratio: float = _f(0.0, "squeeze-excitation after the grouped conv, squeezing to "
                              "round(ratio × block input width) channels (RegNetY: 0.25; "
                              "0 = none, RegNetX)", 0.0, 1.0)

    def _check(self) -> None:
        c_in = self.stem_channels
        for i, st in enumerate(self.stages, 1):
            b = self.bottleneck_width(st.width)
            if b < 1:
                raise ConfigError(f"stage {i}: the bottleneck width round({st.width} × "
                                  f"{self.bot_mul:g}) is 0 channels; raise the width or the "
                                  f"bottleneck ratio.")
            if st.group_width > b:
                raise ConfigError(f"stage {i}: group width {st.group_width} is more than the "
                                  f"{b}-channel bottleneck; use a group width of at most {b}.")
            if b % st.group_width:
                raise ConfigError(f"stage {i}: bottleneck width {b} is not divisible by group "
                                  f"width {st.group_width}; choose a group width that divides "
                                  f"{b}.")
            for w in {c_in, st.width}:
                if self.se_ratio and round(self.se_ratio * w) < 1:
                    raise ConfigError(f"stage {i}: squeeze-excitation would squeeze {w} "
                                      f"channels to round({self.se_ratio:g} × {w}) = 0; raise "
                                      f"se_ratio or set it to 0.")
            c_in = st.width

    def bottleneck_width(self, width: int) -> int:
        """Channels of the grouped 3×3 conv in a stage of ``width`` (torchvision's w_b)."""
        return int(round(width * self.bot_mul))

    def stage_table(self) -> list[dict[str, Any]]:
        """Per stage: blocks, width, bottleneck width, group width and the groups it makes."""
        rows = []
        for i, st in enumerate(self.stages, 1):
            b = self.bottleneck_width(st.width)
            rows.append({"stage": i, "blocks": st.depth, "width": st.width,
                         "bottleneck width b": b, "group width": st.group_width,
                         "groups b / group width": b // st.group_width})
        return rows


class SqueezeExcitation(nn.Module):
    """Squeeze-excitation (Hu et al. 2018): channels scaled by a gate from their global means."""

    def __init__(self, t: ShapeTracker, label: str, squeeze: int):
        super().__init__()
        s = t.copy()  # the gate runs on the pooled 1×1 map; the block's map keeps its shape
        channels = s.c
        self.pool = s.adaptive_avg(1)
        self.fc1 = s.conv(f"{label}, squeeze-excitation fc1", squeeze, 1)
        self.relu = nn.ReLU()
        self.fc2 = s.conv(f"{label}, squeeze-excitation fc2", channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))


class XBlock(nn.Module):
    """An X-block: 1×1, grouped 3×3 (stride), [squeeze-excitation], 1×1, plus the shortcut.

    The shortcut is the identity, or a 1×1 conv + BN when the stride or the width changes; it
    runs first, as in torchvision. Output: ReLU(shortcut(x) + main(x)).
    """

    def __init__(self, t: ShapeTracker, label: str, width: int, stride: int, group_width: int,
                 spec: RegNetSpec):
        super().__init__()
        t_in = t.copy()
        b = spec.bottleneck_width(width)
        self.shortcut: nn.Module | None = None
        if stride != 1 or t_in.c != width:
            self.shortcut = seq(
                ("conv", t_in.conv(f"{label}, shortcut", width, 1, stride, 0, bias=False)),
                ("bn", t_in.bn2d()))
        squeeze = round(spec.se_ratio * t.c)
        self.conv1 = t.conv(f"{label}, conv1", b, 1, 1, 0, bias=False)
        self.bn1 = t.bn2d()
        self.relu1 = nn.ReLU()
        self.conv2 = t.conv(f"{label}, conv2", b, 3, stride, 1, groups=b // group_width,
                            bias=False)
        self.bn2 = t.bn2d()
        self.relu2 = nn.ReLU()
        self.se = SqueezeExcitation(t, label, squeeze) if spec.se_ratio else None
        self.conv3 = t.conv(f"{label}, conv3", width, 1, 1, 0, bias=False)
        self.bn3 = t.bn2d()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x if self.shortcut is None else self.shortcut(x)
        y = self.relu2(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))))
        if self.se is not None:
            y = self.se(y)
        return self.relu(s + self.bn3(self.conv3(y)))


def build_regnet(spec: RegNetSpec) -> nn.Module:
    """stem, stage1..stageN of X-blocks (the first of each has stride 2), head (GAP, linear)."""
    t = ShapeTracker(spec.input_shape)
    stem = seq(("conv", t.conv("the stem conv", spec.stem_channels, 3, 2, 1, bias=False)),
               ("bn", t.bn2d()), ("relu", nn.ReLU()))
    items: list[tuple[str, nn.Module | None]] = [("stem", stem)]
    for i, st in enumerate(spec.stages, 1):
        blocks = [(f"block{j}", XBlock(t, f"stage {i}, block {j}", st.width,
                                       2 if j == 1 else 1, st.group_width, spec))
                  for j in range(1, st.depth + 1)]
        items.append((f"stage{i}", seq(*blocks)))
    items.append(("head", gap_head(t, spec.num_classes)))
    return seq(*items)


def diagram(name: str, m: nn.Module) -> DiagramNode | None:
    """An X-block: its stride, width and groups, SE when it has it; an arc for the shortcut."""
    if not isinstance(m, XBlock):
        return None
    stride = m.conv2.stride[0]
    se = " SE" if m.se is not None else ""
    return DiagramNode(name, "residual", f"X{'/' + str(stride) if stride > 1 else ''}{se}<br>"
                                         f"{m.conv3.out_channels}, g{m.conv2.groups}",
                       skip="identity" if m.shortcut is None else "1×1 conv")


NOTES = (
    "**AnyNet** is a design space rather than one network: a stem, then stages of X-blocks "
    "(ResNeXt bottlenecks: 1×1 conv, 3×3 conv in groups of *group width* channels, 1×1 conv, "
    "plus a skip connection), then global average pooling and one linear layer. Each stage "
    "has a depth, a width, a group width and a bottleneck ratio. **RegNet** is the region of "
    "that space where good networks cluster: widths that grow linearly with depth "
    "(w_0 + w_a·j), quantised to a few stages (powers of w_m, multiples of 8), with the "
    "bottleneck ratio 1. RegNetY adds squeeze-excitation, which rescales every channel by a "
    "gate computed from the channel means: since the means cover the whole map, every unit "
    "depends on the whole image from the first block on, and the receptive field column "
    "passes the image size at once.")

IMAGENET = {"input_shape": (3, 224, 224), "num_classes": 1000}

PRESETS = (
    Preset("course_regnetx32", RegNetSpec(),
           "d2l's RegNetX32 on 1×28×28: stem 32, stages (4, 32) and (6, 80), group width 16",
           "course",
           "The chapter's small RegNetX: two stages of X-blocks, each starting with a stride-2 "
           "block, so 28 → 14 (stem) → 7 → 4. The 3×3 convs run in groups of 16 channels: 2 "
           "groups in stage 1, 5 in stage 2. The two widths 32 → 80 grow as the design rules "
           "ask: wider in later stages."),
    Preset("regnet_x_400mf", RegNetSpec(stages=regnet_stages(22, 24, 24.48, 2.54, 16),
                                        **IMAGENET),
           "torchvision regnet_x_400mf: depth 22, w_0 24, w_a 24.48, w_m 2.54, group width 16",
           "torchvision", reference="regnet_x_400mf"),
    Preset("regnet_x_800mf", RegNetSpec(stages=regnet_stages(16, 56, 35.73, 2.28, 16),
                                        **IMAGENET),
           "torchvision regnet_x_800mf: depth 16, w_0 56, w_a 35.73, w_m 2.28, group width 16",
           "torchvision", reference="regnet_x_800mf"),
    Preset("regnet_y_400mf", RegNetSpec(stages=regnet_stages(16, 48, 27.89, 2.09, 8),
                                        se_ratio=0.25, **IMAGENET),
           "torchvision regnet_y_400mf: depth 16, w_0 48, w_a 27.89, w_m 2.09, group width 8, "
           "squeeze-excitation 0.25", "torchvision", reference="regnet_y_400mf"),
)

FAMILY = register(Family(
    "regnet", RegNetSpec, build_regnet, NOTES, PRESETS,
    labels={"stem_channels": "Stem channels", "stages": "Stages",
            "bot_mul": "Bottleneck ratio", "se_ratio": "Squeeze-excitation ratio"},
    columns={"depth": "depth", "width": "width", "group_width": "group width"},
    book_order={XStage: "(depth, width, group width); d2l's AnyNet rows also carry the "
                        "bottleneck ratio, one field here"},
    diagram=diagram, blocks=(XBlock, SqueezeExcitation),
    course_pairs={"course_regnetx32": "regnet_x_400mf"},
    extra_table=RegNetSpec.stage_table,
    extra_caption="**Groups per stage.** The grouped 3×3 conv has b / group width groups; "
                  "d2l's `groups` argument is the group width.",
))
