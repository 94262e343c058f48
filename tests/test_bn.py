"""Tests for explorer.bn: numbers from torch's own modules, torchvision and hand computation."""

import copy
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision
from background import training_beside
from torch import nn

from explorer.bn import (
    CONVENTIONS,
    DEFAULT_EVERY,
    QUANTITIES,
    BNStatsRecorder,
    ScratchBatchNorm,
    activation_histograms,
    batch_norm,
    batch_size_one,
    batch_stat_noise,
    compare_with_torch,
    find_foldable,
    fold_bn,
    norm_axes,
    normalize_all,
    train_vs_eval,
)
from explorer.bn.rng import local_rng
from explorer.errors import ConfigError

torch.set_num_threads(1)


def _randomise_bn(model: nn.Module, seed: int = 0) -> None:
    """Give every BN non-trivial running statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.2 * torch.randn(c, generator=g))


# ------------------------------------------------------------------ scratch BN vs nn.BatchNorm


@pytest.mark.parametrize("shape", [(8, 5), (4, 3, 5, 5)])
def test_scratch_pytorch_convention_equals_torch_in_train_and_eval(shape):
    torch.manual_seed(0)
    c = shape[1]
    ref = (nn.BatchNorm1d if len(shape) == 2 else nn.BatchNorm2d)(c)
    ours = ScratchBatchNorm(c, num_dims=len(shape), convention="pytorch")
    with torch.no_grad():
        gamma, beta = torch.rand(c) + 0.5, torch.randn(c)
        ref.weight.copy_(gamma), ref.bias.copy_(beta)
        ours.gamma.copy_(gamma), ours.beta.copy_(beta)
    for step in range(3):
        x = torch.randn(shape) * (1 + step) + step
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=0)
    # Both normalise with the biased variance and update running_var with the unbiased one.
    torch.testing.assert_close(ours.moving_mean, ref.running_mean, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.moving_var, ref.running_var, atol=1e-5, rtol=0)
    ours.eval(), ref.eval()
    x = torch.randn(shape)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=0)


def test_book_convention_uses_biased_variance_for_the_running_average():
    # Hand computation: x = 1, 2, 3, 6 → mean 3, biased var (4+1+0+9)/4 = 3.5,
    # unbiased var 14/3. From running (0, 1) with momentum 0.1:
    #   PyTorch: running_var = 0.9·1 + 0.1·14/3 = 1.3666…; the book: 0.9 + 0.1·3.5 = 1.25.
    x = torch.tensor([[1.0], [2.0], [3.0], [6.0]])
    ref = nn.BatchNorm1d(1)
    book = ScratchBatchNorm(1, num_dims=2, convention="d2l")
    y_ref, y_book = ref(x), book(x)
    torch.testing.assert_close(y_book, y_ref, atol=1e-5, rtol=0)  # both normalise with 3.5
    assert ref.running_mean.item() == pytest.approx(0.3)
    assert book.moving_mean.item() == pytest.approx(0.3)
    assert ref.running_var.item() == pytest.approx(0.9 + 0.1 * 14 / 3)
    assert book.moving_var.item() == pytest.approx(1.25)
    # The whole difference is Bessel's factor n/(n-1) = 4/3 on the batch term.
    ratio = (ref.running_var.item() - 0.9) / (book.moving_var.item() - 0.9)
    assert ratio == pytest.approx(4 / 3)


def test_mxnet_momentum_09_is_pytorch_momentum_01():
    torch.manual_seed(1)
    ref = nn.BatchNorm2d(3, momentum=0.1)
    mx = ScratchBatchNorm(3, num_dims=4, momentum=0.9, convention="mxnet")
    book = ScratchBatchNorm(3, num_dims=4, momentum=0.1, convention="d2l")
    assert CONVENTIONS["mxnet"].momentum == 0.9
    for step in range(4):
        x = torch.randn(2, 3, 4, 4) + step
        ref(x), mx(x), book(x)
    # Same update new = 0.9·old + 0.1·batch: the means agree with PyTorch's ...
    torch.testing.assert_close(mx.moving_mean, ref.running_mean, atol=1e-6, rtol=0)
    # ... and the variances with the book's (both biased).
    torch.testing.assert_close(mx.moving_var, book.moving_var, atol=1e-6, rtol=0)
    # Hand: the 4-value example above, one step, gives 0.9·1 + 0.1·3.5 = 1.25.
    one = ScratchBatchNorm(1, num_dims=2, convention="mxnet")
    one(torch.tensor([[1.0], [2.0], [3.0], [6.0]]))
    assert one.moving_var.item() == pytest.approx(1.25)
    assert one.moving_mean.item() == pytest.approx(0.3)


def test_sigma_plus_eps_differs_by_a_hand_computed_amount():
    # x = 0, 2: mean 1, biased var 1, σ = 1. With ε = 0.1:
    #   √(σ²+ε): x̂ = ±1/√1.1 = ±0.9534626;  (σ+ε): x̂ = ±1/1.1 = ±0.9090909.
    x = torch.tensor([[0.0], [2.0]])
    args = (torch.ones(1), torch.zeros(1), torch.zeros(1), torch.ones(1), 0.1, 0.1, True)
    y_std, _, _ = batch_norm(x, *args, convention="d2l")
    y_sig, _, _ = batch_norm(x, *args, convention="sigma_eps")
    assert y_std[1, 0].item() == pytest.approx(1 / math.sqrt(1.1), abs=1e-6)
    assert y_sig[1, 0].item() == pytest.approx(1 / 1.1, abs=1e-6)
    assert (y_std - y_sig).abs().max().item() == pytest.approx(0.0443717, abs=1e-6)


def test_batch_norm_accepts_book_shaped_statistics_and_eval_uses_them():
    x = torch.arange(24.0).reshape(2, 3, 2, 2)
    mm, mv = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)
    y, m2, v2 = batch_norm(x, torch.ones(3), torch.zeros(3), mm, mv, 1e-5, 0.1, True,
                           convention="d2l")
    assert m2.shape == (1, 3, 1, 1) and v2.shape == (1, 3, 1, 1)
    # Channel 0 holds 0,1,2,3,12,13,14,15: mean 7.5.
    assert m2[0, 0, 0, 0].item() == pytest.approx(0.75)
    # Eval: (x - moving_mean)/√(moving_var + ε), here x/√(1+1e-5).
    ye, _, _ = batch_norm(x, torch.ones(3), torch.zeros(3), mm, mv, 1e-5, 0.1, False)
    torch.testing.assert_close(ye, x / math.sqrt(1 + 1e-5))


def test_batch_of_one_vector_pytorch_refuses_book_gives_beta():
    x = torch.tensor([[3.0, -1.0]])
    with pytest.raises(ConfigError):
        ScratchBatchNorm(2, num_dims=2, convention="pytorch")(x)
    with pytest.raises(ValueError):  # torch agrees: one value per channel
        nn.BatchNorm1d(2)(x)
    bn = ScratchBatchNorm(2, num_dims=2, convention="d2l")
    with torch.no_grad():
        bn.beta.copy_(torch.tensor([0.5, -2.0]))
    assert bn(x).tolist() == [[0.5, -2.0]]


def test_scratch_bn_errors_are_config_errors():
    with pytest.raises(ConfigError):
        ScratchBatchNorm(3, convention="keras")
    with pytest.raises(ConfigError):
        ScratchBatchNorm(3, num_dims=3)
    with pytest.raises(ConfigError):
        ScratchBatchNorm(3, num_dims=4)(torch.randn(2, 3))
    with pytest.raises(ConfigError):
        ScratchBatchNorm(3, momentum=1.5)


def test_compare_with_torch_table():
    torch.manual_seed(0)
    for x in (torch.randn(16, 4), torch.randn(4, 3, 3, 3)):
        table = compare_with_torch(x, n_steps=4)
        assert set(table) == set(CONVENTIONS)
        row = table["pytorch"]
        for key in ("train_output", "eval_output", "running_mean", "running_var"):
            assert row[key] < 1e-5
        # The book's biased running_var: same means, different variances and eval outputs.
        assert table["d2l"]["running_mean"] < 1e-6
        assert table["d2l"]["running_var"] > 1e-3
        assert table["d2l"]["eval_output"] > 1e-3
        assert table["d2l"]["train_output"] < 1e-5
        assert table["mxnet"]["momentum"] == 0.9
        assert table["mxnet"]["running_var"] == pytest.approx(table["d2l"]["running_var"])


# ------------------------------------------------------------------ folding


def test_fold_resnet18_keeps_eval_outputs():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    _randomise_bn(model)
    model.eval()
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert n_bn == 20
    plan = find_foldable(model)
    assert plan.method == "meta-device forward pass"  # the data flow, not the fallback scan
    assert len(plan.pairs) == 20 and plan.kept == ()
    assert ("conv1", "bn1") in plan.pairs
    assert ("layer2.0.downsample.0", "layer2.0.downsample.1") in plan.pairs
    folded = fold_bn(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert folded.conv1.bias is not None and model.conv1.bias is None  # original untouched
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref, out = model(x), folded(x)
    assert (ref - out).abs().max().item() <= 1e-4


class _Mixed(nn.Module):
    """A BN before a conv, a conv whose output is also added back, and a Linear+BN1d head."""

    def __init__(self) -> None:
        super().__init__()
        self.pre = nn.BatchNorm2d(3)  # BN before the conv (DenseNet style): stays
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)  # folds
        self.conv2 = nn.Conv2d(4, 4, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)  # conv2's output has two users: stays
        self.fc = nn.Linear(4 * 4 * 4, 6)
        self.bn3 = nn.BatchNorm1d(6)  # folds

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(self.pre(x))))
        y = self.conv2(x)
        x = self.bn2(y) + y
        return self.bn3(self.fc(x.flatten(1)))


def test_fold_pairs_on_the_graph_and_unfoldable_bns_stay():
    torch.manual_seed(0)
    model = _Mixed()
    _randomise_bn(model, seed=3)
    model.eval()
    plan = find_foldable(model)
    assert set(plan.pairs) == {("conv", "bn"), ("fc", "bn3")}
    assert {name for name, _ in plan.kept} == {"pre", "bn2"}
    folded = fold_bn(model)
    assert isinstance(folded.bn, nn.Identity) and isinstance(folded.bn3, nn.Identity)
    assert isinstance(folded.pre, nn.BatchNorm2d) and isinstance(folded.bn2, nn.BatchNorm2d)
    x = torch.randn(3, 3, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=0)


def test_fold_linear_bn1d_sequential_and_scratch_bn():
    torch.manual_seed(0)
    scratch = ScratchBatchNorm(8, num_dims=2, convention="d2l")
    with torch.no_grad():
        scratch.moving_mean.copy_(torch.randn(8))
        scratch.moving_var.copy_(torch.rand(8) + 0.5)
        scratch.gamma.copy_(torch.rand(8) + 0.5)
    model = nn.Sequential(nn.Linear(5, 16), nn.BatchNorm1d(16), nn.Sigmoid(),
                          nn.Linear(16, 8), scratch, nn.Sigmoid(), nn.Linear(8, 3))
    _randomise_bn(model, seed=1)
    model.eval()
    folded = fold_bn(model)
    assert find_foldable(model).pairs == (("0", "1"), ("3", "4"))
    x = torch.randn(7, 5)
    with torch.no_grad():
        # Second method: the eval-mode BN by hand, (x-μ)/√(σ²+ε)·γ + β after the first Linear.
        h = model[0](x)
        bn = model[1]
        hand = (h - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
        torch.testing.assert_close(folded[0](x), hand, atol=1e-5, rtol=0)
        torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=0)


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU())

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace this
            x = -x
        return self.body(x)


def test_fold_falls_back_to_sequential_scan_when_fx_fails():
    model = _Untraceable()
    _randomise_bn(model, seed=2)
    model.eval()
    plan = find_foldable(model)
    assert plan.method.startswith("nn.Sequential")
    assert plan.pairs == (("body.0", "body.1"),)
    x = torch.randn(2, 2, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(fold_bn(model)(x), model(x), atol=1e-5, rtol=0)


def test_find_foldable_beside_a_training_thread():
    """Issue 10's reproduction: torch.fx's tracer patched nn.Module.__call__ for the whole
    process, and a run training meanwhile failed with "... is not installed as a submodule"
    (checked with the fx version: the thread below died at its first step)."""
    torch.manual_seed(0)
    resnet50 = torchvision.models.resnet50(weights=None)
    with training_beside() as run:
        before = len(run.seen)
        plans = [find_foldable(resnet50) for _ in range(15)]
        during = len(run.seen) - before
    assert run.error is None, run.error
    assert run.result.status == "stopped"
    assert during > 0  # the run really trained while the 15 passes ran
    # torchvision's resnet50: 53 BNs (stem, 3 per bottleneck × 16, 4 downsample), all after a conv.
    assert all(len(p.pairs) == 53 and p.kept == () for p in plans)


def test_find_foldable_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model = _Mixed().train()
    state = copy.deepcopy(model.state_dict())
    plan = find_foldable(model)
    assert plan.method == "meta-device forward pass"
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():  # num_batches_tracked and running stats unchanged
        assert torch.equal(v, state[k]), k
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_local_rng_draws_like_a_seeded_global_generator_and_leaves_it_alone():
    torch.manual_seed(7)  # the second method: torch's own global seeding
    ref = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(5, 2))
    ref_draw = torch.rand(3)
    torch.manual_seed(123)
    expected_after = torch.rand(4)
    torch.manual_seed(123)
    with local_rng(7):
        mine = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(5, 2))
        draw = torch.rand(3)
        dropped = nn.Dropout(0.25).train()(torch.ones(20_000))
        channels = nn.Dropout2d(0.5).train()(torch.ones(4, 16, 3, 3))
    assert torch.equal(torch.rand(4), expected_after)  # the global sequence did not move
    for a, b in zip(ref.parameters(), mine.parameters(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(draw, ref_draw)
    # Dropout keeps 1-p of the values, scaled by 1/(1-p); Dropout2d zeroes whole channels.
    kept = dropped[dropped != 0]
    assert torch.allclose(kept, torch.full_like(kept, 1 / 0.75))
    assert abs(len(kept) / 20_000 - 0.75) < 0.02  # binomial sd 0.003
    assert torch.equal(channels, channels[:, :, :1, :1].expand_as(channels))
    assert set(channels.unique().tolist()) == {0.0, 2.0}


def test_demos_with_dropout_leave_the_global_generator_alone():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 3))
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    first = train_vs_eval(model, x)
    activation_histograms(model, "1", x, training=True)
    assert torch.equal(torch.rand(3), expected)
    # Same seed, same dropout masks: the demo repeats itself.
    np.testing.assert_array_equal(train_vs_eval(model, x)["train_output"], first["train_output"])


# ------------------------------------------------------------------ statistics recorder


def _small_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
        nn.Flatten(), nn.Linear(3 * 4 * 4, 5), nn.BatchNorm1d(5),
    )


def test_recorder_values_equal_hand_computation():
    model = _small_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = BNStatsRecorder(model, every=1)
    assert rec.layers == {"1": 3, "5": 5}
    x = torch.randn(6, 2, 4, 4)
    with torch.no_grad():  # hand: inputs of both BNs, before the step changes the weights
        c = model[0](x)
        mu_c = c.mean(dim=(0, 2, 3))
        var_c = ((c - mu_c[None, :, None, None]) ** 2).mean(dim=(0, 2, 3))  # biased
        bn = model[1]
        y = (c - mu_c[None, :, None, None]) / torch.sqrt(var_c[None, :, None, None] + bn.eps)
        y = y * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]
        f = model[4](torch.relu(y).flatten(1))
        mu_f, var_f = f.mean(dim=0), f.var(dim=0, unbiased=False)
    with rec.recording(step=7):
        model.train()
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert rec.steps.tolist() == [7]
    for name, mu, var in (("1", mu_c, var_c), ("5", mu_f, var_f)):
        c_ = rec.layers[name]
        for q in QUANTITIES:
            assert rec.series(name, q).shape == (1, c_)
            assert rec.series(name, q).dtype == np.float32
        np.testing.assert_allclose(rec.series(name, "batch_mean")[0], mu.numpy(), atol=1e-5)
        np.testing.assert_allclose(rec.series(name, "batch_var")[0], var.numpy(), atol=1e-5)
        m = model[int(name)]  # after the step: running stats and γ, β as the module holds them
        np.testing.assert_allclose(rec.series(name, "running_mean")[0], m.running_mean, atol=1e-6)
        np.testing.assert_allclose(rec.series(name, "running_var")[0], m.running_var, atol=1e-6)
        np.testing.assert_allclose(rec.series(name, "gamma")[0], m.weight.detach(), atol=1e-6)
        np.testing.assert_allclose(rec.series(name, "beta")[0], m.bias.detach(), atol=1e-6)
    # Running mean after one step from 0 with momentum 0.1 is 0.1 × the batch mean.
    np.testing.assert_allclose(rec.series("1", "running_mean")[0], 0.1 * mu_c.numpy(), atol=1e-6)


def test_recorder_as_engine_callback_records_every_kth_step_only_in_training():
    model = _small_net()
    rec = BNStatsRecorder(every=3)
    ctx = SimpleNamespace(model=model, step=0)
    rec.on_run_start(ctx)
    batches = [torch.randn(4, 2, 4, 4) + s for s in range(7)]
    for s, xb in enumerate(batches):
        model.eval()
        model(torch.randn(4, 2, 4, 4) * 100)  # an evaluation pass must not be recorded
        model.train()
        model(xb)
        ctx.step = s
        rec.on_step_end(ctx, {"loss": 0.0})
    rec.on_run_end(ctx)
    assert rec.steps.tolist() == [0, 3, 6]
    with torch.no_grad():
        c = model[0](batches[3])  # no optimiser here, so the weights never changed
    np.testing.assert_allclose(rec.series("1", "batch_mean")[1], c.mean(dim=(0, 2, 3)), atol=1e-5)
    # Detached: further forwards record nothing.
    rec.arm()
    model(batches[0])
    assert rec.commit(99) is False


def test_recorder_serialises_and_reopens():
    model = _small_net()
    rec = BNStatsRecorder(model, every=2)
    for s in range(3):
        with rec.recording(s * 2):
            model(torch.randn(4, 2, 4, 4))
    blob = rec.to_bytes()
    assert isinstance(blob, bytes)
    for back in (BNStatsRecorder.from_bytes(blob), BNStatsRecorder.from_bytes(rec.to_bytes(True)),
                 BNStatsRecorder.from_records(rec.to_records(), every=2)):
        assert back.layers == rec.layers and back.steps.tolist() == [0, 2, 4]
        for name in rec.layers:
            for q in QUANTITIES:
                np.testing.assert_array_equal(back.series(name, q), rec.series(name, q))
    assert len(rec.to_records("5")) == 3 * 5
    with pytest.raises(ConfigError):
        BNStatsRecorder.from_bytes(b"not an npz")
    with pytest.raises(ConfigError):
        rec.series("nope", "gamma")
    with pytest.raises(ConfigError):
        BNStatsRecorder(every=0)


def test_recorder_size_on_resnet18():
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    rec = BNStatsRecorder(model)
    # torchvision resnet18: stem 64 + layer1 4×64 + layer2 4×128+128 + layer3 5×256
    # + layer4 5×512 = 4800 channels in 20 BN layers.
    assert len(rec.layers) == 20 and sum(rec.layers.values()) == 4800
    assert rec.every == DEFAULT_EVERY == 50  # every 50th step, as the 40 rows below assume
    model.train()
    for s in range(2):
        with rec.recording(s):
            model(torch.randn(2, 3, 32, 32))
    per_step = 4800 * 6 * 4 + 8  # six float32 per channel + an int64 step number
    assert rec.nbytes == 2 * per_step
    assert abs(len(rec.to_bytes()) - rec.nbytes) < 5_000  # npz headers only
    # A 2,000-step run at the default every: step 0 and every 50th → 40 rows, under 5 MB.
    assert rec.estimate_nbytes(2000) == 40 * per_step
    assert rec.estimate_nbytes(2000) < 5_000_000


def test_activation_histograms_match_hand_and_leave_no_trace():
    model = _small_net()
    before = model[1].running_mean.clone()
    x = torch.randn(5, 2, 4, 4)
    h = activation_histograms(model, "1", x, training=True, max_values=10_000)
    with torch.no_grad():
        c = model[0](x)
    np.testing.assert_allclose(h["input"], c.flatten().numpy(), atol=1e-6)
    # Train mode with γ=1, β=0: each channel of the output has mean 0 and variance ~1.
    out = h["output"].reshape(c.shape)
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(out.var(axis=(0, 2, 3)), 1, atol=1e-3)
    assert torch.equal(model[1].running_mean, before) and model.training
    small = activation_histograms(model, "1", x, max_values=50)
    assert small["input"].shape == (50,) and small["n_values"] == c.numel()
    with pytest.raises(ConfigError):
        activation_histograms(model, "0", x)


# ------------------------------------------------------------------ train vs eval, batch noise


def test_train_vs_eval_and_single_example():
    model = _small_net()
    _randomise_bn(model, seed=5)
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(6, 2, 4, 4)
    r = train_vs_eval(model, x, example=2)
    reference = copy.deepcopy(model)
    with torch.no_grad():
        ref_eval = reference.eval()(x)
        ref_train = reference.train()(x)
    np.testing.assert_allclose(r["eval_output"], ref_eval.numpy(), atol=1e-6)
    np.testing.assert_allclose(r["train_output"], ref_train.numpy(), atol=1e-6)
    assert r["max_abs_diff"] == pytest.approx((ref_train - ref_eval).abs().max().item(), abs=1e-6)
    assert r["train_pred"].tolist() == ref_train.argmax(1).tolist()
    assert r["single"]["eval_alone_vs_in_batch"] < 1e-6
    # BatchNorm1d sees one value per feature for a single example.
    assert "more than 1 value per channel" in r["single"]["error"]
    for k, v in model.state_dict().items():  # running statistics untouched
        assert torch.equal(v, before[k])
    conv_only = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3))
    r2 = train_vs_eval(conv_only, x)
    assert r2["single"]["error"] is None  # 4×4 values per channel: well defined
    assert r2["pred_disagreement"] is None


def test_batch_stat_noise_and_batch_of_one():
    g = torch.Generator().manual_seed(0)
    vec = torch.randn(2048, 6, generator=g)
    res = batch_stat_noise(vec, batch_sizes=(1, 4, 16), trials=400)
    rows = {r["batch_size"]: r for r in res["rows"]}
    assert rows[1]["zero_var_fraction"] == 1.0  # one value per feature: variance exactly 0
    assert rows[4]["zero_var_fraction"] == 0.0
    # Standard normal data: the batch mean's std is about 1/√b; E[biased var] = (b-1)/b.
    assert rows[16]["mean_std"] == pytest.approx(0.25, rel=0.15)
    assert rows[4]["mean_std"] == pytest.approx(0.5, rel=0.15)
    assert rows[4]["var_ratio"] == pytest.approx(0.75, abs=0.08)
    img = torch.randn(64, 3, 4, 4, generator=g)
    rows_img = batch_stat_noise(img, batch_sizes=(1, 2), trials=50)["rows"]
    assert rows_img[0]["values_per_channel"] == 16 and rows_img[0]["zero_var_fraction"] == 0.0
    with pytest.raises(ConfigError):
        batch_stat_noise(vec[:10], batch_sizes=(1, 16))

    one = batch_size_one(vec)
    assert one["values_per_channel"] == 1 and one["output_equals_beta"]
    assert np.all(one["batch_var"] == 0) and np.all(one["x_hat"] == 0)
    assert "more than 1 value per channel" in one["torch_error"]
    one_img = batch_size_one(img)
    assert one_img["values_per_channel"] == 16 and not one_img["output_equals_beta"]
    np.testing.assert_allclose(one_img["batch_var"], img[0].var(dim=(1, 2), unbiased=False),
                               atol=1e-6)
    assert one_img["torch_error"] is None


# ------------------------------------------------------------------ other normalisations


def test_normalize_all_equals_torch_modules():
    torch.manual_seed(0)
    x = torch.randn(3, 6, 4, 5) * 2 + 1
    res = normalize_all(x, groups=3)
    bn = nn.BatchNorm2d(6, affine=False).train()
    ln = nn.LayerNorm([6, 4, 5], elementwise_affine=False)
    inorm = nn.InstanceNorm2d(6)
    gn = nn.GroupNorm(3, 6, affine=False)
    with torch.no_grad():
        for kind, mod in (("batch", bn), ("layer", ln), ("instance", inorm), ("group", gn)):
            torch.testing.assert_close(res[kind]["output"], mod(x), atol=1e-5, rtol=0)
    torch.testing.assert_close(res["batch"]["mean"], x.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(res["instance"]["var"], x.var(dim=(2, 3), unbiased=False))
    assert res["group"]["mean"].shape == (3, 3) and res["layer"]["mean"].shape == (3,)
    with pytest.raises(ConfigError):
        normalize_all(x, groups=4)


def test_norm_axes_sets():
    axes = norm_axes((4, 6, 2, 2), groups=3)
    # Hand: batch 6 sets of 4·2·2 = 16; layer 4 sets of 6·2·2 = 24; instance 4·6 = 24 sets of 4;
    # group 4·3 = 12 sets of 2·2·2 = 8.
    expect = {"batch": (6, 16), "layer": (4, 24), "instance": (24, 4), "group": (12, 8)}
    for kind, (n_sets, size) in expect.items():
        a = axes[kind]
        assert (a["n_sets"], a["values_per_set"]) == (n_sets, size)
        assert a["set_id"].shape == (4, 6, 2, 2)
        assert np.bincount(a["set_id"].ravel()).tolist() == [size] * n_sets
    assert axes["batch"]["train_eval_differ"] and not axes["group"]["train_eval_differ"]
    # Second method: elements with the same set id share normalize_all's mean.
    x = torch.randn(4, 6, 2, 2)
    res = normalize_all(x, groups=3)
    for kind in expect:
        ids = torch.from_numpy(axes[kind]["set_id"].copy())
        for i in range(axes[kind]["n_sets"]):
            vals = x[ids == i]
            mean_of_set = vals.mean()
            y = res[kind]["output"][ids == i]
            torch.testing.assert_close(y.mean(), torch.tensor(0.0), atol=1e-5, rtol=0)
            torch.testing.assert_close(
                y, (vals - mean_of_set) / torch.sqrt(vals.var(unbiased=False) + 1e-5),
                atol=1e-5, rtol=0,
            )
