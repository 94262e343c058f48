"""`python -m explorer conv` from the command line, against hand computations and nn.Conv2d."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from explorer.__main__ import main

ROOT = Path(__file__).resolve().parent.parent


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run the CLI in this process (the same code path as `python -m explorer`)."""
    code = main(["conv", *args])
    out, err = capsys.readouterr()
    return code, out, err


# (arguments, output shape, params, lecture MACs, torchinfo MACs), each worked out by hand:
HAND = [
    # LeNet-5's first conv: H' = (28 + 2·2 - 5)/1 + 1 = 28; params 6·1·5·5 + 6 = 156;
    # lecture 6·28·28·25 = 117,600; torchinfo 156·28·28 = 122,304.
    (["--input", "1,28,28", "--out", "6", "--kernel", "5", "--padding", "2"],
     [6, 28, 28], 156, 117_600, 122_304),
    # The course AlexNet's first conv: floor((224 + 2·1 - 11)/4) + 1 = floor(215/4) + 1 = 54;
    # params 96·1·11·11 + 96 = 11,712; lecture 96·54·54·121 = 33,872,256;
    # torchinfo 11,712·54·54 = 34,152,192.
    (["--input", "1,224,224", "--out", "96", "--kernel", "11", "--stride", "4", "--padding",
      "1"], [96, 54, 54], 11_712, 33_872_256, 34_152_192),
    # ResNeXt-style grouped 3×3, 32 groups, no bias: H' = 56; params 128·(64/32)·9 = 2,304;
    # lecture 128·56·56·2·9 = 7,225,344 = torchinfo (no bias to count).
    (["--input", "64,56,56", "--out", "128", "--kernel", "3", "--padding", "1", "--groups",
      "32", "--no-bias"], [128, 56, 56], 2_304, 7_225_344, 7_225_344),
    # Dilation 2 makes a 3×3 kernel span 5: floor((32 - 5)/2) + 1 = 14; params 8·3·9 + 8 = 224;
    # lecture 8·14·14·27 = 42,336; torchinfo 224·14·14 = 43,904.
    (["--input", "3,32,32", "--out", "8", "--kernel", "3", "--dilation", "2", "--stride", "2"],
     [8, 14, 14], 224, 42_336, 43_904),
]


@pytest.mark.parametrize("args, shape, params, macs, macs_torchinfo", HAND)
def test_json_matches_hand_computation(capsys, args, shape, params, macs, macs_torchinfo):
    code, out, err = cli(capsys, *args, "--format", "json")
    assert code == 0 and err == ""
    data = json.loads(out)
    assert data["output_shape"] == shape
    assert (data["params"], data["macs"], data["macs_torchinfo"]) == (params, macs,
                                                                      macs_torchinfo)


@pytest.mark.parametrize("args, shape, params, macs, macs_torchinfo", HAND)
def test_json_matches_pytorch(capsys, args, shape, params, macs, macs_torchinfo):
    """A second, independent source: nn.Conv2d's own output shape and parameter count."""
    opts = dict(zip(args[::2], args[1::2], strict=False))
    c, h, w = (int(v) for v in opts["--input"].split(","))
    layer = nn.Conv2d(c, int(opts["--out"]), int(opts["--kernel"]),
                      int(opts.get("--stride", 1)), int(opts.get("--padding", 0)),
                      int(opts.get("--dilation", 1)), int(opts.get("--groups", 1)),
                      bias="--no-bias" not in args)
    with torch.no_grad():
        y = layer(torch.zeros(1, c, h, w))
    data = json.loads(cli(capsys, *args, "--format", "json")[1])
    assert data["output_shape"] == list(y.shape[1:])
    assert data["params"] == sum(p.numel() for p in layer.parameters())
    # The lecture counts one multiply-add per weight per output pixel.
    assert data["macs"] == layer.weight.numel() * y.shape[2] * y.shape[3]


def test_table_format_writes_the_formulas_out(capsys):
    code, out, _ = cli(capsys, "--input", "1,28,28", "--out", "6", "--kernel", "5",
                       "--padding", "2")
    assert code == 0
    # H' = floor((28 + 2·2 - 5) / 1) + 1 = 28, and 6·(1·5·5) + 6 (bias) = 156.
    assert "floor((28 + 2·2 - 5) / 1) + 1 = 28" in out
    assert "6·(1·5·5) + 6 (bias) = 156" in out
    assert "117,600" in out and "122,304" in out


@pytest.mark.parametrize("args, fragment", [
    # A 7-pixel kernel on a 4-pixel input without padding: 7 > 4 + 2·0.
    (["--input", "1,4,4", "--out", "1", "--kernel", "7"], "larger than the padded input"),
    # 3 channels cannot be split into 2 groups.
    (["--input", "3,8,8", "--out", "4", "--kernel", "3", "--groups", "2"], "divisible"),
    (["--input", "1,28", "--out", "4", "--kernel", "3"], "C,H,W"),
    (["--input", "1,28,28", "--out", "0", "--kernel", "3"], "at least 1"),
    (["--input", "1,28,28", "--out", "4", "--kernel", "3", "--stride", "0"], "stride"),
])
def test_bad_input_is_one_sentence_and_exit_2(capsys, args, fragment):
    code, out, err = cli(capsys, *args)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0]
    assert "Traceback" not in err


def test_python_dash_m_entry_point():
    """The real command: JSON on stdout with exit 0; a bad layer is one line on stderr, exit 2."""
    ok = subprocess.run([sys.executable, "-m", "explorer", "conv", "--input", "1,28,28",
                         "--out", "6", "--kernel", "5", "--format", "json"], cwd=ROOT,
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    # H' = 28 - 5 + 1 = 24; params 6·25 + 6 = 156; lecture 6·24·24·25 = 86,400.
    data = json.loads(ok.stdout)
    assert (data["output_shape"], data["params"], data["macs"]) == ([6, 24, 24], 156, 86_400)
    assert data["macs_torchinfo"] == 156 * 24 * 24
    bad = subprocess.run([sys.executable, "-m", "explorer", "conv", "--input", "1,4,4", "--out",
                          "1", "--kernel", "7"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and bad.stdout == ""
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
