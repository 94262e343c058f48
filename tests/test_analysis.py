"""explorer.analysis: the layer table and totals against torchvision, torchinfo and hand sums.

Receptive fields have their own file, tests/test_receptive_field.py.
"""

from __future__ import annotations

import gc
import json
import sys
import threading
import types
import weakref
from dataclasses import dataclass

import pytest
import torch
import torchinfo
import torchvision
from torch import nn

from explorer.analysis import MACS_CONVENTIONS, Analysis, analyze, benchmark_analyze
from explorer.errors import ConfigError


def lenet5() -> nn.Sequential:
    """LeNet-5, table version (LECTURES.md): conv(20,5,p2) pool conv(50,5,p2) pool fc500 fc10."""
    return nn.Sequential(
        nn.Conv2d(1, 20, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, 2),
        nn.Conv2d(20, 50, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, 2),
        nn.Flatten(), nn.Linear(50 * 7 * 7, 500), nn.ReLU(), nn.Linear(500, 10))


@pytest.fixture(scope="module")
def resnet18() -> tuple[nn.Module, Analysis]:
    model = torchvision.models.resnet18(weights=None)
    return model, analyze(model, (3, 64, 64))


def shape_of(a: Analysis, name: str) -> tuple[int, ...]:
    return a.row(name)["output_shape"]


# ---------------------------------------------------------------------------------- parameters

def test_total_params_equal_torchvision_counts(resnet18):
    model, a = resnet18
    n = sum(p.numel() for p in model.parameters())
    assert n == 11_689_512  # torchvision's documented size of resnet18
    assert a.totals["total_params"] == n
    assert a.totals["trainable_params"] == n
    assert a.totals["param_bytes"] == 4 * n  # float32
    assert a.row("")["params"] == n  # the model's own row counts everything below it
    # layer1 is two BasicBlocks, each two bias-free 3×3 convs 64→64 (64·64·9 = 36,864) and two
    # BNs of 64 channels (2·64 = 128): 2·(2·36,864 + 2·128) = 147,968 (hand count)
    assert a.row("layer1")["params"] == 2 * (2 * 36_864 + 2 * 128) == 147_968
    assert a.row("fc")["params"] == 512 * 1000 + 1000


# Expected totals are torchvision's published sizes (the `num_params` in the weights' metadata,
# also in its model table): GoogLeNet without the auxiliary heads 6,624,904; DenseNet-121
# 7,978,856. analyze() sums p.numel() itself, so summing the same model here would restate it.
@pytest.mark.parametrize("name, ctor, shape, published", [
    ("googlenet", lambda: torchvision.models.googlenet(weights=None, aux_logits=False,
                                                       init_weights=False), (3, 64, 64),
     6_624_904),
    ("densenet121", lambda: torchvision.models.densenet121(weights=None), (3, 32, 32),
     7_978_856),
])
def test_branching_torchvision_models_param_totals(name, ctor, shape, published):
    model = ctor()
    a = analyze(model, shape)
    weights = torchvision.models.get_model_weights(name).DEFAULT
    assert weights.meta["num_params"] == published
    assert a.totals["total_params"] == published
    assert a.totals["output_shape"] == (1000,)
    assert a.totals["receptive_field_exact"] is True


def test_frozen_parameters_are_not_trainable():
    model = lenet5()
    for p in model[0].parameters():
        p.requires_grad_(False)
    a = analyze(model, (1, 28, 28))
    # conv1 has 20×1×5×5 weights + 20 biases = 520 parameters (hand count)
    assert a.totals["total_params"] - a.totals["trainable_params"] == 520
    assert a.row("0")["trainable_params"] == 0


def test_lenet5_params_macs_and_counts_by_hand():
    a = analyze(lenet5(), (1, 28, 28))
    # params: conv1 20·25+20 = 520; conv2 50·(20·25)+50 = 25,050; fc1 2450·500+500 = 1,225,500;
    # fc2 500·10+10 = 5,010
    assert a.totals["total_params"] == 520 + 25_050 + 1_225_500 + 5_010
    # lecture MACs: conv1 20·28·28·(1·25) = 392,000; conv2 50·14·14·(20·25) = 4,900,000;
    # fc1 2450·500 = 1,225,000; fc2 500·10 = 5,000
    assert a.totals["total_macs_lecture"] == 392_000 + 4_900_000 + 1_225_000 + 5_000
    # torchinfo adds each bias once per output pixel: 20·28·28 + 50·14·14 + 500 + 10
    assert a.totals["total_macs"] - a.totals["total_macs_lecture"] == 15_680 + 9_800 + 510
    assert (a.totals["n_conv"], a.totals["n_linear"], a.totals["n_bn"]) == (2, 2, 0)
    assert a.totals["depth"] == 4
    assert shape_of(a, "2") == (20, 14, 14)
    assert shape_of(a, "6") == (2450,)


# ---------------------------------------------------------------------------------- shapes

def test_resnet18_output_shapes_by_hand(resnet18):
    _, a = resnet18
    # 64×64 input: conv1 k7 s2 p3 → floor((64 + 6 - 7) / 2) + 1 = 32; maxpool k3 s2 p1 → 16;
    # each later stage halves: 8, 4, 2; global average pool → 1×1; fc → 1000 classes
    assert shape_of(a, "conv1") == (64, 32, 32)
    assert shape_of(a, "maxpool") == (64, 16, 16)
    assert shape_of(a, "layer1") == (64, 16, 16)
    assert shape_of(a, "layer2.0.conv1") == (128, 8, 8)
    assert shape_of(a, "layer2.0.downsample.0") == (128, 8, 8)
    assert shape_of(a, "layer3") == (256, 4, 4)
    assert shape_of(a, "layer4") == (512, 2, 2)
    assert shape_of(a, "avgpool") == (512, 1, 1)
    assert shape_of(a, "fc") == (1000,)
    assert a.totals["output_shape"] == (1000,)
    assert a.row("layer2.0.conv1")["input_shape"] == (64, 16, 16)


def test_alexnet_at_224_shapes_macs_and_receptive_field():
    """The one test at 3×224×224: torchvision's AlexNet."""
    a = analyze(torchvision.models.alexnet(weights=None), (3, 224, 224))
    # conv(64, 11, s4, p2): floor((224 + 4 - 11) / 4) + 1 = 55; maxpool(3, 2): 27;
    # conv(192, 5, p2): 27; maxpool: 13; three 3×3 p1 convs: 13; maxpool: 6
    assert shape_of(a, "features.0") == (64, 55, 55)
    assert shape_of(a, "features.2") == (64, 27, 27)
    assert shape_of(a, "features.3") == (192, 27, 27)
    assert shape_of(a, "features.5") == (192, 13, 13)
    assert shape_of(a, "features.12") == (256, 6, 6)
    assert shape_of(a, "avgpool") == (256, 6, 6)
    assert shape_of(a, "classifier.6") == (1000,)
    assert a.row("features.0")["macs_lecture"] == 64 * 55 * 55 * (3 * 11 * 11)
    assert a.row("classifier.1")["macs_lecture"] == 9216 * 4096
    # RF: conv11 s4 → 11, jump 4; pool3 s2 → 11+2·4 = 19, jump 8; conv5 → 19+4·8 = 51;
    # pool3 s2 → 51+2·8 = 67, jump 16; three conv3 → 67+3·2·16 = 163; pool3 s2 → 163+2·16 = 195
    assert a.totals["receptive_field"] == 195
    assert a.totals["receptive_field_jump"] == 32
    assert a.totals["depth"] == 8  # 5 conv + 3 linear layers


# ---------------------------------------------------------------------------------- MACs

def test_macs_of_one_conv_lecture_against_torchinfo():
    # The course AlexNet's first layer, conv(96, 11, s4, p1) on 1×224×224:
    # H' = floor((224 + 2 - 11) / 4) + 1 = 54
    a = analyze(nn.Sequential(nn.Conv2d(1, 96, 11, stride=4, padding=1)), (1, 224, 224))
    conv = a.row("0")
    assert conv["output_shape"] == (96, 54, 54)
    assert conv["macs_lecture"] == 96 * 54 * 54 * (1 * 11 * 11)
    assert conv["macs"] - conv["macs_lecture"] == 96 * 54 * 54  # torchinfo adds the bias
    assert a.totals["total_macs_lecture"] == 96 * 54 * 54 * 121


def test_macs_of_one_linear_layer():
    # The reduced VGG-11's first fully connected layer: flatten 128×7×7 = 6272 → 4096
    a = analyze(nn.Sequential(nn.Flatten(), nn.Linear(6272, 4096)), (128, 7, 7))
    assert a.row("1")["macs_lecture"] == 6272 * 4096
    assert a.row("1")["macs"] == 6272 * 4096 + 4096
    assert a.row("0")["macs_lecture"] == 0


def test_grouped_conv_bn_pool_and_container_sums():
    model = nn.Sequential()
    model.add_module("block", nn.Sequential(
        nn.Conv2d(8, 16, 3, padding=1, groups=4), nn.BatchNorm2d(16), nn.ReLU()))
    model.add_module("pool", nn.MaxPool2d(2))
    a = analyze(model, (8, 10, 10))
    # grouped: C_out·H'·W'·(C_in/groups·3·3) = 16·10·10·(2·9)
    assert a.row("block.0")["macs_lecture"] == 16 * 10 * 10 * 18
    assert a.row("block.1")["macs_lecture"] == 0  # batch norm: 0 in the lectures' convention
    assert a.row("block.1")["macs"] > 0  # ... but torchinfo counts its parameters
    assert a.row("pool")["macs_lecture"] == 0
    assert a.row("block")["macs_lecture"] == 16 * 10 * 10 * 18  # a container sums its leaves
    # torchinfo's count by hand: the conv 28,800 + its bias once per output pixel 16·10·10 =
    # 1,600; the BN its 2·16 = 32 parameters once per image; the container sums them.
    assert a.row("block.0")["macs"] == 16 * 10 * 10 * 18 + 16 * 10 * 10 == 30_400
    assert a.row("block.1")["macs"] == 2 * 16
    assert a.row("block")["macs"] == 30_400 + 32
    assert a.totals["n_bn"] == 1


def test_totals_agree_with_torchinfo(resnet18):
    model, a = resnet18
    stats = torchinfo.summary(model, input_size=(1, 3, 64, 64), verbose=0,
                              device=torch.device("cpu"))
    assert a.totals["total_macs"] == stats.total_mult_adds
    assert len(a.table) == len(stats.summary_list)  # one row per torchinfo row
    assert list(a.table["depth"]) == [info.depth for info in stats.summary_list]
    # The lecture count differs by the conv biases (none in resnet18: only the fc has one)
    # and the batch norms (2 parameters per channel once per image).
    # BN channels in resnet18 (hand count): bn1 64; layer1 4·64 = 256; layer2 4·128 + 128 on
    # the shortcut = 640; layer3 5·256 = 1,280; layer4 5·512 = 2,560; 4,800 channels in all,
    # each with a weight and a bias: 9,600; the fc bias adds 1,000.
    bn_params = 2 * (64 + 256 + 640 + 1_280 + 2_560)
    assert bn_params == 9_600
    assert a.totals["total_macs"] - a.totals["total_macs_lecture"] == bn_params + 1000


def test_macs_conventions_text():
    a = analyze(lenet5(), (1, 28, 28))
    assert "torchinfo" in a.totals["macs_note"] and "lecture" in a.totals["macs_note"]
    assert "bias" in MACS_CONVENTIONS and "C_out × H' × W'" in MACS_CONVENTIONS


# ---------------------------------------------------------------------------------- table

def test_table_columns_names_and_leaves(resnet18):
    model, a = resnet18
    needed = {"name", "type", "depth", "is_leaf", "output_shape", "params", "trainable_params",
              "macs", "macs_lecture", "receptive_field", "receptive_field_w", "jump",
              "activation_bytes"}
    assert needed <= set(a.table.columns)
    assert set(a.table["name"]) <= {n for n, _ in model.named_modules()}
    assert a.row("layer2.0")["type"] == "BasicBlock"
    assert not a.row("layer2")["is_leaf"] and a.row("layer2.0.conv1")["is_leaf"]
    assert a.row("layer2.0.conv1")["depth"] == 3
    # BasicBlock calls its ReLU twice: two rows, the parameters listed once
    assert (a.table["name"] == "layer1.0.relu").sum() == 2


def test_activation_bytes_at_batch_size():
    a = analyze(lenet5(), (1, 28, 28), batch_size=4)
    # conv1's output: 20×28×28 float32 values per image, 4 images
    assert a.row("0")["activation_bytes"] == 20 * 28 * 28 * 4 * 4
    # every leaf's output per image: conv 15680, relu 15680, pool 3920, conv 9800, relu 9800,
    # pool 2450, flatten 2450, fc 500, relu 500, fc 10
    per_image = 15680 * 2 + 3920 + 9800 * 2 + 2450 * 2 + 500 * 2 + 10
    assert a.totals["activation_bytes"] == per_image * 4 * 4
    assert a.totals["batch_size"] == 4
    # MACs stay per image
    assert a.totals["total_macs_lecture"] == analyze(lenet5(), (1, 28, 28)).totals[
        "total_macs_lecture"]


def test_depth_and_layer_counts_of_torchvision_nets(resnet18):
    model, a = resnet18
    # "18" counts the convs and the fc on the longest path; the three 1×1 shortcut convs are
    # beside it, so the net has 17 + 3 = 20 convs in all
    assert a.totals["depth"] == 18
    assert a.totals["n_conv"] == sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 20
    assert a.totals["n_linear"] == 1
    assert a.totals["n_bn"] == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert a.totals["n_weight_layers"] == 21


@pytest.mark.parametrize("ctor, shape, depth", [
    (lambda: torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False),
     (3, 64, 64), 22),
    (lambda: torchvision.models.densenet121(weights=None), (3, 32, 32), 121),
    (lambda: torchvision.models.resnet50(weights=None), (3, 32, 32), 50),
])
def test_depth_matches_the_name_of_branching_networks(ctor, shape, depth):
    assert analyze(ctor(), shape).totals["depth"] == depth


# ---------------------------------------------------------------------------------- untouched

def test_callers_model_is_untouched():
    model = torchvision.models.resnet18(weights=None)
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32))  # non-trivial running statistics
    model.layer2.eval()  # mixed train/eval flags must survive too
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: m.training for n, m in model.named_modules()}
    analyze(model, (3, 32, 32))
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)
    assert {n: m.training for n, m in model.named_modules()} == flags
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_buffers_written_in_eval_mode_are_restored():
    class Counter(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("calls", torch.zeros(()))
            self.conv = nn.Conv2d(1, 1, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1  # a forward that writes a buffer even in eval mode
            return self.conv(x)

    model = Counter()
    analyze(model, (1, 8, 8))
    assert model.calls.item() == 0


def test_a_module_called_twice_gets_one_row_per_call():
    conv = nn.Conv2d(2, 2, 3, padding=1)
    model = nn.Sequential(conv, nn.ReLU(), conv)  # the same conv object twice
    a = analyze(model, (2, 8, 8))
    rows = a.table[a.table["name"] == "0"]
    assert list(rows["is_repeat"]) == [False, True]
    assert list(rows["params"]) == [2 * 2 * 9 + 2, 0]  # its parameters are listed once
    assert list(rows["receptive_field"]) == [3, 5]  # each call has its own receptive field
    assert a.totals["total_params"] == 2 * 2 * 9 + 2
    # ... but both calls cost: 2 × (2·8·8·(2·9)) in the lectures' convention
    assert a.totals["total_macs_lecture"] == 2 * 2 * 8 * 8 * 18


def test_a_model_running_in_another_thread_is_not_disturbed_by_tracing():
    # The graph capture must leave a training step in another thread alone (torch.fx, used
    # before, patched nn.Module.__call__ for the whole process while it traced).
    started, done = threading.Event(), threading.Event()
    errors: list[str] = []

    class Pause(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not started.is_set():  # only during tracing, the first time through
                started.set()
                done.wait(10)
            return x

    other = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())

    def worker() -> None:
        started.wait(10)
        try:
            other(torch.randn(1, 1, 8, 8)).sum().backward()
        except Exception as exc:  # reported below
            errors.append(repr(exc))
        finally:
            done.set()

    thread = threading.Thread(target=worker)
    thread.start()
    a = analyze(nn.Sequential(nn.Conv2d(1, 2, 3), Pause(), nn.Conv2d(2, 2, 3)), (1, 12, 12))
    thread.join(10)
    assert started.is_set() and errors == []
    assert a.totals["receptive_field"] == 5 and a.totals["receptive_field_exact"]
    assert other[0].weight.grad is not None


def test_analysis_does_not_keep_the_model_alive():
    model = lenet5()
    ref = weakref.ref(model)
    a = analyze(model, (1, 28, 28))
    del model
    gc.collect()
    assert ref() is None  # neither the Analysis nor torchinfo's module-level cache holds it
    assert a.totals["total_params"] > 0


# ---------------------------------------------------------------------------------- specs, errors

@dataclass(frozen=True)
class FakeSpec:
    family: str = "lenet"
    input_shape: tuple[int, int, int] = (1, 28, 28)


def test_spec_is_built_with_explorer_models_build(monkeypatch):
    built = []

    def build(spec):
        built.append(spec)
        return nn.Sequential(nn.Conv2d(spec.input_shape[0], 4, 3), nn.ReLU())

    monkeypatch.setitem(sys.modules, "explorer.models", types.SimpleNamespace(build=build))
    a = analyze(FakeSpec())
    assert built == [FakeSpec()]
    assert a.input_shape == (1, 28, 28)
    assert shape_of(a, "0") == (4, 26, 26)  # 28 - 3 + 1
    b = analyze(FakeSpec(), input_shape=(1, 32, 32))  # input_shape overrides the spec's
    assert shape_of(b, "0") == (4, 30, 30)


@pytest.mark.parametrize("call, field", [
    (lambda: analyze(lenet5()), "input_shape"),
    (lambda: analyze(lenet5(), (28, 28)), "input_shape"),
    (lambda: analyze(lenet5(), (1, 0, 28)), "input_shape"),
    (lambda: analyze(lenet5(), (1, 28, 28), batch_size=0), "batch_size"),
    (lambda: analyze("resnet18", (3, 32, 32)), "spec"),
    (lambda: analyze(lenet5(), (3, 28, 28)), "input_shape"),  # wrong number of channels
    (lambda: analyze(lenet5(), (1, 20, 20)), "input_shape"),  # fc1 expects a 28×28 input
    (lambda: analyze(lenet5(), (1, 28, 28)).row("conv9"), "name"),
])
def test_user_errors_are_config_errors(call, field):
    with pytest.raises(ConfigError, match=field):
        call()


def test_too_small_input_names_the_size():
    with pytest.raises(ConfigError, match="1×2×2"):
        analyze(nn.Sequential(nn.Conv2d(1, 2, 5)), (1, 2, 2))


def test_benchmark_returns_json_ready_figures():
    model = lenet5()
    out = benchmark_analyze(model, (1, 28, 28), repeats=1)
    assert set(out) == {"analyze_median_s", "torchinfo_median_s", "ratio"}
    assert json.loads(json.dumps(out)) == out
    assert all(v > 0 for v in out.values())
    assert model.training  # torchinfo's own call must not leave it in eval mode
