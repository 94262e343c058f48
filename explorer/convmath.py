"""One conv or pool layer at a time, with the lecture's formulas written out (LECTURES.md).

Pure arithmetic, no tensors: the Conv arithmetic page and ``python -m explorer conv`` use it, and
the tests check it against ``nn.Conv2d`` and torchinfo.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from explorer.errors import ConfigError
from explorer.models.common import out_size


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) for v in pair):
        raise ConfigError(f"{name} must be one whole number or two (height, width).")
    return pair  # type: ignore[return-value]


@dataclass(frozen=True)
class LayerResult:
    """Output shape, parameters and multiply-adds of one layer, with the working shown."""

    kind: str  # "conv", "max pool" or "avg pool"
    input_shape: tuple[int, int, int]
    output_shape: tuple[int, int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    bias: bool
    params: int
    macs: int  # the lecture's convention: the bias is not a multiply-add
    macs_torchinfo: int  # torchinfo's: every parameter, bias included, times H'×W'

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def explain(self) -> list[str]:
        """The formulas with the numbers substituted, one line each."""
        (c, h, w), (co, ho, wo) = self.input_shape, self.output_shape
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (self.kernel, self.stride, self.padding,
                                                  self.dilation)
        span_h = f"({dh}·({kh}-1)+1)" if dh > 1 else f"{kh}"
        span_w = f"({dw}·({kw}-1)+1)" if dw > 1 else f"{kw}"
        lines = [
            f"output height H' = floor((H + 2P - K) / S) + 1 = floor(({h} + 2·{ph} - {span_h}) "
            f"/ {sh}) + 1 = {ho}",
            f"output width  W' = floor((W + 2P - K) / S) + 1 = floor(({w} + 2·{pw} - {span_w}) "
            f"/ {sw}) + 1 = {wo}",
            f"output shape {co}×{ho}×{wo}",
        ]
        if self.kind != "conv":
            lines.append("parameters 0 (pooling has no weights); multiply-adds 0")
            return lines
        g = self.groups
        cin = f"{c}/{g}" if g > 1 else f"{c}"
        bias_txt = f" + {co} (bias)" if self.bias else ""
        lines += [
            f"parameters = C_out·(C_in/g·K_h·K_w){' + C_out' if self.bias else ''} = "
            f"{co}·({cin}·{kh}·{kw}){bias_txt} = {self.params:,}",
            f"multiply-adds (lecture) = C_out·H'·W'·(C_in/g·K_h·K_w) = {co}·{ho}·{wo}·({cin}·{kh}"
            f"·{kw}) = {self.macs:,}",
            f"multiply-adds (torchinfo, counts the bias) = parameters·H'·W' = {self.params:,}·"
            f"{ho}·{wo} = {self.macs_torchinfo:,}",
        ]
        return lines


def conv_layer(input_shape: tuple[int, int, int], out_channels: int,
               kernel: int | tuple[int, int], stride: int | tuple[int, int] = 1,
               padding: int | tuple[int, int] = 0, dilation: int | tuple[int, int] = 1,
               groups: int = 1, bias: bool = True) -> LayerResult:
    """A 2-D convolution: H' = floor((H + 2P - d(K-1) - 1) / S) + 1, params, multiply-adds."""
    c, h, w = input_shape
    k, s, p, d = (_pair(kernel, "kernel"), _pair(stride, "stride"), _pair(padding, "padding"),
                  _pair(dilation, "dilation"))
    _check_common(input_shape, k, s, p, d)
    if out_channels < 1:
        raise ConfigError(f"the number of filters is {out_channels}; use at least 1.")
    if groups < 1:
        raise ConfigError(f"groups is {groups}; use at least 1.")
    if c % groups or out_channels % groups:
        raise ConfigError(f"{c} input channels and {out_channels} filters must both be divisible "
                          f"by groups = {groups}; choose groups that divides both.")
    ho, wo = _output_hw(h, w, k, s, p, d)
    weights = out_channels * (c // groups) * k[0] * k[1]
    params = weights + (out_channels if bias else 0)
    return LayerResult("conv", (c, h, w), (out_channels, ho, wo), k, s, p, d, groups, bias,
                       params, out_channels * ho * wo * (c // groups) * k[0] * k[1],
                       params * ho * wo)


def pool_layer(input_shape: tuple[int, int, int], kind: str, kernel: int | tuple[int, int],
               stride: int | tuple[int, int] | None = None,
               padding: int | tuple[int, int] = 0) -> LayerResult:
    """Max or average pooling: the same output-size formula, no parameters."""
    if kind not in ("max", "avg"):
        raise ConfigError(f"pooling is 'max' or 'avg', not {kind!r}.")
    k = _pair(kernel, "kernel")
    s = _pair(stride if stride is not None else kernel, "stride")
    p = _pair(padding, "padding")
    _check_common(input_shape, k, s, p, (1, 1))
    if p[0] * 2 > k[0] or p[1] * 2 > k[1]:
        raise ConfigError(f"padding {p} is more than half the {k[0]}×{k[1]} window; PyTorch "
                          f"refuses it for pooling. Use padding ≤ {k[0] // 2}.")
    c, h, w = input_shape
    ho, wo = _output_hw(h, w, k, s, p, (1, 1))
    return LayerResult(f"{kind} pool", (c, h, w), (c, ho, wo), k, s, p, (1, 1), 1, False, 0, 0,
                       0)


def _check_common(shape: tuple[int, int, int], k: tuple[int, int], s: tuple[int, int],
                  p: tuple[int, int], d: tuple[int, int]) -> None:
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"the input must be C×H×W with positive sizes, not {shape}.")
    for name, pair, low in (("kernel", k, 1), ("stride", s, 1), ("padding", p, 0),
                            ("dilation", d, 1)):
        if min(pair) < low:
            raise ConfigError(f"{name} is {pair}; it must be at least {low}.")


def _output_hw(h: int, w: int, k: tuple[int, int], s: tuple[int, int], p: tuple[int, int],
               d: tuple[int, int]) -> tuple[int, int]:
    for axis, size, kk, pp, dd in (("height", h, k[0], p[0], d[0]), ("width", w, k[1], p[1],
                                                                        d[1])):
        span = dd * (kk - 1) + 1
        if span > size + 2 * pp:
            raise ConfigError(
                f"the {span}-pixel kernel is larger than the padded input {axis} "
                f"{size} + 2·{pp} = {size + 2 * pp}; use a smaller kernel or more padding.")
    return (out_size(h, k[0], s[0], p[0], d[0]), out_size(w, k[1], s[1], p[1], d[1]))


def stacked_receptive_field(kernel: int, layers: int, stride: int = 1, dilation: int = 1) -> int:
    """Receptive field of ``layers`` identical convs: each adds (K-1)·jump, jump ×= stride."""
    rf, jump = 1, 1
    for _ in range(layers):
        rf += dilation * (kernel - 1) * jump
        jump *= stride
    return rf


def stacked_receptive_field_hw(kernel: int | tuple[int, int], layers: int, stride: int = 1,
                               dilation: int = 1) -> tuple[int, int]:
    """Receptive field (height, width) of ``layers`` identical K_h×K_w convs, side by side.

    Each side grows on its own: 1 + L(K-1) per side at stride 1, so two 3×7 convs see 5×13.
    """
    kh, kw = _pair(kernel, "kernel")
    return (stacked_receptive_field(kh, layers, stride, dilation),
            stacked_receptive_field(kw, layers, stride, dilation))


def stacking_rows(kernel: int | tuple[int, int], layers: int, stride: int = 1,
                  dilation: int = 1, channels: int = 64) -> list[dict]:
    """Receptive field of 1..L stacked K_h×K_w convs, and their weights against one conv that
    sees as much (c input and c output channels, biases left out; LECTURES.md)."""
    kh, kw = _pair(kernel, "kernel")
    rows = []
    for n in range(1, layers + 1):
        rh, rw = stacked_receptive_field_hw((kh, kw), n, stride, dilation)
        stacked = n * kh * kw * channels * channels
        single = rh * rw * channels * channels
        rows.append({"layers": n, "receptive field": f"{rh}×{rw}",
                     "weights of the stack": stacked,
                     "one conv that sees as much": f"{rh}×{rw}: {single:,}",
                     "stack / single": f"{100 * stacked / single:.0f}%"})
    return rows


def stacked_vs_single(kernel: int = 3, layers: int = 2, channels: int = 64) -> dict[str, float]:
    """L stacked K×K convs against the single conv with the same receptive field (weights only).

    Two 3×3 convs see 5×5 with 18c² weights, against 25c² for one 5×5 conv (72%).
    """
    rf = stacked_receptive_field(kernel, layers)
    stacked = layers * kernel * kernel * channels * channels
    single = rf * rf * channels * channels
    return {"receptive_field": rf, "stacked_weights": stacked, "single_weights": single,
            "ratio": stacked / single}
