"""The BN lab's glue: recorded runs in the store, histograms, the LeNet ± BN experiment."""

import dataclasses
import math

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from explorer import bn, bn_lab
from explorer.bn import BNStatsRecorder
from explorer.data import BatchTransform, load_dataset
from explorer.errors import ConfigError
from explorer.jobs import DataRef, JobManager
from explorer.models import build
from explorer.pool import Slot, WorkerPool
from explorer.registry import PRESETS, get_preset
from explorer.runs import RunStore
from explorer.specs import DenseNetSpec, ResNetSpec, ResNeXtSpec, Stage, VGGBlock, VGGSpec
from explorer.training import TrainConfig, initialize, train

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("offline-mnist")


@pytest.fixture
def store(tmp_path):
    with RunStore(tmp_path / "runs.sqlite") as s:
        yield s


def bn_lenet():
    return get_preset("course_bn_lenet").spec


# ---- which models have BN, and how often to record -----------------------------------------------

def test_bn_channels_match_torchvision_models():
    # Independent source: torchvision's own models, built on the meta device.
    cases = {
        "resnet18": torchvision.models.resnet18,
        "densenet121": torchvision.models.densenet121,
        "vgg11_bn": torchvision.models.vgg11_bn,
        "resnext50_32x4d": torchvision.models.resnext50_32x4d,
        "googlenet": lambda: torchvision.models.googlenet(aux_logits=False, init_weights=False),
    }
    for name, make in cases.items():
        with torch.device("meta"):
            ref = make()
        ref_bn = [m.num_features for m in ref.modules() if isinstance(m, nn.BatchNorm2d)]
        ours = bn_lab.spec_bn_layers(get_preset(name).spec)
        assert sorted(ours.values()) == sorted(ref_bn), name


def test_bn_presets_are_the_families_with_bn_and_lenet_has_bn1d():
    expected = [n for n, p in PRESETS.items()
                if p.family in ("resnet", "resnext", "densenet", "regnet")
                or getattr(p.spec, "batch_norm", False)]
    assert bn_lab.bn_presets() == expected
    layers = bn_lab.spec_bn_layers(bn_lenet())
    # BN-LeNet: conv(6) and conv(16) get BatchNorm2d, the 120- and 84-wide layers BatchNorm1d.
    assert layers == {"features.bn1": 6, "features.bn2": 16, "head.bn1": 120, "head.bn2": 84}
    model = build(bn_lenet())
    kinds = {n: type(m).__name__ for n, m in model.named_modules() if n in layers}
    assert kinds == {"features.bn1": "BatchNorm2d", "features.bn2": "BatchNorm2d",
                     "head.bn1": "BatchNorm1d", "head.bn2": "BatchNorm1d"}
    assert bn_lab.spec_bn_layers(get_preset("course_lenet").spec) == {}


def test_choose_every_by_hand():
    # BN-LeNet, 226 channels: a row is 6·4·226 + 8 = 5,432 bytes; 75 steps fit in 200 rows,
    # so every step unless the 5% cost floor (every 10th) applies.
    assert bn_lab.choose_every(75, 226, min_every=1) == 1
    assert bn_lab.choose_every(75, 226) == 10
    # torchvision's ResNet-18, 4,800 channels (stem 64 + 2·2·64 + 2·2·128+128 + 2·2·256+256 +
    # 2·2·512+512, the shortcuts have BN): a row is 115,208 bytes, so 8 MB allow 69 rows:
    # 2,000 steps need k = ⌈1999/68⌉ = 30.
    assert sum(bn_lab.spec_bn_layers(get_preset("resnet18").spec).values()) == 4800
    assert bn_lab.choose_every(2000, 4800) == 30
    # 20,000 LeNet steps in at most 200 rows: k = ⌈19999/199⌉ = 101.
    assert bn_lab.choose_every(20_000, 226) == 101
    # Second method: the recorder's own size estimate stays within the budget.
    rec = BNStatsRecorder(every=30)
    rec._channels = {"x": 4800}
    assert rec.estimate_nbytes(2000) <= bn_lab.MAX_STATS_BYTES
    with pytest.raises(ConfigError, match="at least one step"):
        bn_lab.choose_every(0, 10)


# ---- histograms ----------------------------------------------------------------------------------

def test_histograms_of_one_bn1d_by_hand():
    model = nn.Sequential(nn.BatchNorm1d(3))
    x = torch.tensor([[1.0, 10.0, -2.0], [3.0, 14.0, 0.0]])
    h = bn_lab.layer_histograms(model, x, bins=4)["0"]
    # Each channel has two values a distance 2d apart: x̂ = ±d/√(d² + ε) ≈ ±1 (γ=1, β=0).
    d = np.array([1.0, 2.0, 1.0])
    expected = d / np.sqrt(d**2 + 1e-5)
    assert h["shape"] == (2, 3) and h["n_values"] == 6
    assert h["out_mean"] == pytest.approx(0.0, abs=1e-7)
    assert h["out_std"] == pytest.approx(np.sqrt(np.mean(expected**2)), rel=1e-6)
    assert h["in_mean"] == pytest.approx(26 / 6)
    # Three values near -1 fall in the first of 4 bins, three near +1 in the last.
    assert h["out_counts"].tolist() == [3, 0, 0, 3]
    assert h["in_edges"][0] == -2.0 and h["in_edges"][-1] == 14.0


def test_layer_histograms_equal_activation_histograms_and_leave_no_trace():
    torch.manual_seed(0)
    model = bn_lab.randomise_bn(build(bn_lenet())).eval()
    before = {n: b.clone() for n, b in model.named_buffers()}
    x = torch.randn(16, 1, 28, 28)
    ours = bn_lab.layer_histograms(model, x, bins=20, max_values=10**9)
    assert list(ours) == list(bn_lab.spec_bn_layers(bn_lenet()))
    for name, h in ours.items():
        # Second method: explorer.bn's one-layer function (training-mode BN; LeNet has no
        # dropout, so the whole model in training mode computes the same).
        ref = bn.activation_histograms(model, name, x, training=True, max_values=10**9)
        for key in ("input", "output"):
            values = ref[key]
            counts, edges = np.histogram(values, bins=20, range=(values.min(), values.max()))
            side = "in" if key == "input" else "out"
            assert h[f"{side}_counts"].tolist() == counts.tolist(), (name, key)
            np.testing.assert_allclose(h[f"{side}_edges"], edges, rtol=1e-5, atol=1e-5)
        assert h["out_std"] == pytest.approx(ref["output_std"], rel=1e-5)
    assert not model.training
    for n, b in model.named_buffers():
        assert torch.equal(b, before[n]), n


def test_histogram_snapshots_round_trip():
    torch.manual_seed(1)
    model = build(bn_lenet())
    snaps = bn_lab.HistogramSnapshots(bins=12)
    snaps.add(0, 0, bn_lab.layer_histograms(model, torch.randn(8, 1, 28, 28), bins=12))
    part = bn_lab.layer_histograms(model, torch.randn(8, 1, 28, 28), bins=12)
    part.pop("head.bn2")  # a layer missing from one moment
    snaps.add(15, 1, part)
    back = bn_lab.HistogramSnapshots.from_bytes(snaps.to_bytes())
    assert back.moments() == [(0, 0), (15, 1)] and back.bins == 12
    for i in range(2):
        a, b = snaps.get(i), back.get(i)
        assert list(a) == list(b)
        for name in a:
            assert a[name]["shape"] == b[name]["shape"]
            for k in ("in_edges", "in_counts", "out_edges", "out_counts"):
                np.testing.assert_array_equal(a[name][k], b[name][k])
            assert a[name]["out_std"] == b[name]["out_std"]
    with pytest.raises(ConfigError, match="not activation histograms"):
        bn_lab.HistogramSnapshots.from_bytes(b"garbage")


# ---- the recorder in a real run, saved into the store --------------------------------------------

def first_batches(data, config, epoch_index: int, spec):
    """The engine's batch order (explorer.training._Run._loop), rebuilt here for a hand check."""
    gen = torch.Generator().manual_seed(config.seed)
    for _ in range(epoch_index + 1):
        perm = torch.randperm(len(data.train_labels), generator=gen)
    transform = BatchTransform(data.image_shape, spec.input_shape, data.mean, data.std)
    return transform(data.train_images[perm[:config.batch_size]])


class Probe:
    """Reads the store at every epoch end (as a restarted server would) and keeps the weights."""

    def __init__(self, store, run_id):
        self.store, self.run_id, self.seen, self.weights = store, run_id, [], []

    def on_epoch_end(self, ctx, metrics):
        stats = bn_lab.load_stats(self.store, self.run_id)
        self.seen.append(None if stats is None else len(stats.steps))
        self.weights.append({k: v.detach().clone() for k, v in ctx.model.state_dict().items()})


def test_recorded_run_saves_at_each_epoch_and_reopens_with_hand_checked_values(store, digits):
    spec = bn_lenet()
    data = digits.subset(256, 64)
    config = TrainConfig(lr=0.1, momentum=0.0, batch_size=32, epochs=2, seed=3,
                         precision="fp32", metrics_every=4)
    run = store.create_run("BN stats · tiny", spec.to_dict(), config)
    rec = bn_lab.StoredBNRecorder(store, run, every=1)
    probe = Probe(store, run)
    train(build(spec), spec.input_shape, 10, data, config, callbacks=[rec, probe], device="cpu")
    assert rec.errors == []
    # 256 images in batches of 32: 8 steps per epoch; after epoch 1 the store held 8 rows.
    assert probe.seen == [8, 16]

    with RunStore(store.path) as fresh:  # a new process reading the file
        back = bn_lab.load_stats(fresh, run)
        hists = bn_lab.load_histograms(fresh, run)
    assert back.layers == rec.layers and back.steps.tolist() == list(range(1, 17))
    for name in rec.layers:
        for q in bn.QUANTITIES:
            np.testing.assert_array_equal(back.series(name, q), rec.series(name, q))

    # Hand check of step 1: the engine seeds, reinitialises and draws its first batch.
    model = build(spec)
    torch.manual_seed(config.seed)
    initialize(model, config.init)
    x = first_batches(data, config, 0, spec)
    with torch.no_grad():
        a = model.features.conv1(x)
    var, mean = torch.var_mean(a, dim=(0, 2, 3), correction=0)
    np.testing.assert_allclose(back.series("features.bn1", "batch_mean")[0], mean, atol=1e-5)
    np.testing.assert_allclose(back.series("features.bn1", "batch_var")[0], var, rtol=1e-4)
    # PyTorch's update from (0, 1) with momentum 0.1; running_var takes var·n/(n-1).
    n = 32 * 24 * 24
    np.testing.assert_allclose(back.series("features.bn1", "running_mean")[0], 0.1 * mean,
                               atol=1e-5)
    np.testing.assert_allclose(back.series("features.bn1", "running_var")[0],
                               0.9 + 0.1 * var * n / (n - 1), rtol=1e-4)

    # Histograms: before training and after each epoch, of 64 test images.
    assert hists.moments() == [(0, 0), (8, 1), (16, 2)]
    last = hists.get(-1)
    assert last["features.bn1"]["shape"] == (64, 6, 24, 24)
    assert last["head.bn1"]["shape"] == (64, 120)  # BatchNorm1d: N×D
    assert sum(last["head.bn1"]["in_counts"]) == 64 * 120


def test_histogram_forward_does_not_leak_into_an_armed_step(store, digits):
    # every=9 with 8 steps per epoch: the recorder is armed for step 9 while the epoch-end
    # histogram forward runs; step 9 must record epoch 2's first batch, not the probe batch.
    spec = bn_lenet()
    data = digits.subset(256, 64)
    config = TrainConfig(lr=0.1, momentum=0.0, batch_size=32, epochs=2, seed=5,
                         precision="fp32", metrics_every=8)
    run = store.create_run("BN stats · armed", spec.to_dict(), config)
    rec = bn_lab.StoredBNRecorder(store, run, every=9)
    probe = Probe(store, run)
    train(build(spec), spec.input_shape, 10, data, config, callbacks=[rec, probe], device="cpu")
    assert rec.steps.tolist() == [1, 9]
    model = build(spec)
    model.load_state_dict(probe.weights[0])  # the weights step 9 started from
    x = first_batches(data, config, 1, spec)
    with torch.no_grad():
        mean = model.features.conv1(x).mean(dim=(0, 2, 3))
    np.testing.assert_allclose(rec.series("features.bn1", "batch_mean")[1], mean, atol=1e-5)


def test_worker_runs_record_and_the_experiment(store, digits):
    """Recorded runs and the experiment go through the worker processes; their recorders
    live in the worker and save into the store, where the page reads them."""
    manager = JobManager(store, ["cpu"])
    ref = DataRef("offline-mnist")
    with pytest.raises(ConfigError, match="no batch-norm layer"):
        bn_lab.start_recorded_run(manager, "course_lenet", get_preset("course_lenet").spec,
                                  TrainConfig(epochs=1), ref, digits, session="a")
    with pytest.raises(ConfigError, match="record less often"):
        # Every step of 100 epochs of ResNet-18 (3,904 channels) on 4,000 digits: 3,100 rows.
        bn_lab.start_recorded_run(manager, "course_resnet18", get_preset("course_resnet18").spec,
                                  TrainConfig(batch_size=128, epochs=100), ref, digits, every=1,
                                  session="a")
    four = TrainConfig(batch_size=128, epochs=1, max_steps=4)
    job = bn_lab.start_recorded_run(manager, "course_bn_lenet", bn_lenet(), four, ref, digits,
                                    every=1, session="a")
    auto_job = bn_lab.start_recorded_run(manager, "course_bn_lenet", bn_lenet(),
                                         dataclasses.replace(four, seed=1), ref, digits,
                                         session="b")
    exp = bn_lab.start_experiment(manager, ref, digits, epochs=1, seed=7, session="c")
    with pytest.raises(ConfigError, match="at a time"):  # the pair counts as one visitor's
        bn_lab.start_experiment(manager, ref, digits, epochs=1, seed=8, session="c")
    pool = WorkerPool(store.path, [Slot("cpu", 1)])
    try:
        for run in (job, auto_job, exp.bn_run, exp.plain_run):
            snap = manager.wait(run, timeout=300)
            assert snap.status == "completed", snap.error
    finally:
        pool.close()
    assert bn_lab.load_stats(store, job).steps.tolist() == [1, 2, 3, 4]
    auto = bn_lab.load_stats(store, auto_job)
    assert auto.every == bn_lab.MIN_EVERY and auto.steps.tolist() == [1]  # 4 steps: the floor
    assert [r["id"] for r in bn_lab.recorded_runs(store)] == [exp.bn_run, auto_job, job]
    with_bn, without = store.get_run(exp.bn_run), store.get_run(exp.plain_run)
    # d2l §8.5: plain SGD at lr 1.0, batch 256, Xavier init, same seed for both.
    for r in (with_bn, without):
        c = r["config"]
        assert (c["optimizer"], c["lr"], c["momentum"], c["batch_size"], c["init"], c["seed"],
                c["epochs"]) == ("sgd", 1.0, 0.0, 256, "xavier", 7, 1)
    assert with_bn["spec"]["batch_norm"] is True and without["spec"]["batch_norm"] is False
    assert {k: v for k, v in with_bn["spec"].items() if k != "batch_norm"} == \
        {k: v for k, v in without["spec"].items() if k != "batch_norm"}
    assert with_bn["spec"]["activation"] == "sigmoid" and with_bn["spec"]["pool"] == "max"
    assert bn_lab.load_stats(store, exp.bn_run) is not None
    assert bn_lab.load_stats(store, exp.plain_run) is None  # no BN, no recorder


def test_experiment_verdict_sentences():
    def ep(loss, acc):
        return {"train_loss": loss, "test_acc": acc}

    Outcome = bn_lab.Outcome
    happened = bn_lab.experiment_verdict([ep(1.3, 0.35), ep(0.18, 0.94)],
                                         [ep(2.46, 0.1), ep(2.31, 0.1)])
    # 0.18 < 0.7 · 2.31: a clear win for BN, judged after epoch 2.
    assert happened.outcome is Outcome.HAPPENED and happened.happened and happened.epoch == 2
    assert happened.text.startswith("It happened: after 2 epochs")
    assert "0.18 against 2.31" in happened.text and "94% against 10%" in happened.text
    assert f"{math.log(10):.2f}" in happened.text  # 2.31 is within 10% of ln 10: "not started"
    reverse = bn_lab.experiment_verdict([ep(2.0, 0.2)], [ep(0.5, 0.8)])
    assert reverse.outcome is Outcome.REVERSED and not reverse.happened
    assert reverse.text.startswith("It did not happen this time")
    close = bn_lab.experiment_verdict([ep(0.50, 0.8)], [ep(0.55, 0.8)])  # 0.50 > 0.7 · 0.55
    assert close.outcome is Outcome.UNCLEAR and not close.happened
    assert close.text.startswith("No clear difference yet") and "ln 10" not in close.text
    # Compared at the same epoch: the BN run is two epochs ahead of the other one.
    ahead = bn_lab.experiment_verdict([ep(1.3, 0.3), ep(0.5, 0.6), ep(0.3, 0.9)],
                                      [ep(2.4, 0.1)])
    assert ahead.epoch == 1
    assert "after 1 epoch the training loss with BN is 1.30 against 2.40" in ahead.text
    pending = bn_lab.experiment_verdict([], [ep(2.3, 0.1)])
    assert pending.outcome is Outcome.PENDING and pending.text.startswith("The verdict comes")
    no_test = bn_lab.experiment_verdict([ep(0.2, None)], [ep(2.3, None)])
    assert no_test.happened and "test accuracy" not in no_test.text
    missing = bn_lab.experiment_verdict([ep(None, 0.5)], [ep(2.3, 0.1)])
    assert missing.outcome is Outcome.NO_LOSS and not missing.happened
    with pytest.raises(dataclasses.FrozenInstanceError):
        happened.outcome = Outcome.UNCLEAR


# ---- demonstrations ------------------------------------------------------------------------------

def test_fold_check_on_the_course_resnet18():
    spec = get_preset("course_resnet18").spec
    torch.manual_seed(3)
    expected = torch.rand(5)
    torch.manual_seed(3)
    result = bn_lab.fold_check(spec)
    assert torch.equal(torch.rand(5), expected)  # the process-wide generator was not touched
    torch.manual_seed(0)  # second method: what fold_check did before, seeding globally
    reference = build(spec)
    for name, p in reference.named_parameters():
        if "bn" not in name:  # fold_check then randomises the BN layers
            assert torch.equal(p, result["model"].get_parameter(name)), name
    # Every one of the 17 BNs (stem + 2 per basic block; the 1×1 shortcuts have none) follows a
    # conv, so all fold, and the folded copy has no BN left.
    assert len(result["pairs"]) == 17 and result["kept"] == []
    assert bn_lab.bn_layers(result["folded"]) == {}
    assert result["max_abs_output"] > 0.1  # a non-trivial output...
    assert result["max_abs_diff"] <= 1e-4  # ...equal in float32 after folding


def test_demo_model_leaves_the_global_generator_alone(digits):
    torch.manual_seed(4)
    expected = torch.rand(5)
    torch.manual_seed(4)
    model = bn_lab.demo_model(digits, steps=2)
    assert torch.equal(torch.rand(5), expected)
    # The engine's own seeding decides the weights: the same demo twice gives the same model.
    again = bn_lab.demo_model(digits, steps=2)
    for a, b in zip(model.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)


def test_one_step_running_var_by_hand():
    x = torch.tensor([[1.0], [2.0], [3.0], [6.0]])
    r = bn_lab.one_step_running_var(x)
    # Mean 3, squared deviations 4+1+0+9 = 14: biased 14/4 = 3.5, unbiased 14/3.
    assert r["n"] == 4
    assert r["biased_var"] == pytest.approx(3.5) and r["unbiased_var"] == pytest.approx(14 / 3)
    assert r["torch_running_var"] == pytest.approx(0.9 + 0.1 * 14 / 3, rel=1e-6)
    assert r["book_running_var"] == pytest.approx(0.9 + 0.1 * 3.5, rel=1e-6)


def test_norms_standardising_and_bn_inputs():
    x = torch.randn(3, 6, 2, 2, generator=torch.Generator().manual_seed(0)) * 3 + 1
    assert max(bn_lab.norms_vs_torch(x, 3).values()) < 1e-5
    z = bn_lab.standardise_channels(x).numpy()
    np.testing.assert_allclose(z.mean(axis=(0, 2, 3)), 0, atol=1e-6)
    np.testing.assert_allclose(z.std(axis=(0, 2, 3)), 1, rtol=1e-5)
    model = build(bn_lenet())
    got = bn_lab.bn_inputs(model, torch.randn(5, 1, 28, 28))
    # 28 → conv5 24 → pool 12 → conv5 8: features.bn2 sees 16×8×8; head.bn1 the 120 features.
    assert got["features.bn2"].shape == (5, 16, 8, 8) and got["head.bn1"].shape == (5, 120)


def test_experiment_specs_and_config_follow_the_lecture():
    with_bn, without = bn_lab.experiment_specs()
    assert with_bn == get_preset("course_bn_lenet").spec
    assert without == dataclasses.replace(with_bn, batch_norm=False)
    assert bn_lab.experiment_config(3, 1) == TrainConfig(
        optimizer="sgd", lr=1.0, momentum=0.0, batch_size=256, epochs=3, init="xavier", seed=1,
        metrics_every=1)


def small_specs():
    """One small model per family with BN (BatchNorm2d everywhere, BatchNorm1d in LeNet)."""

    tiny = {"input_shape": (1, 32, 32)}
    return {
        "lenet": get_preset("course_bn_lenet").spec,
        "resnet": ResNetSpec(stages=(Stage(1, 8), Stage(1, 16)), stem_channels=8, **tiny),
        "resnext": ResNeXtSpec(stages=(Stage(1, 16),), stem_channels=8, **tiny),
        "densenet": DenseNetSpec(block_config=(2, 2), growth_rate=4, num_init_features=8,
                                 **tiny),
        "vgg": VGGSpec(arch=(VGGBlock(1, 8), VGGBlock(1, 16)), batch_norm=True, hidden=(32,),
                       **tiny),
        "googlenet": dataclasses.replace(get_preset("googlenet").spec, num_classes=10,
                                         input_shape=(1, 64, 64)),
    }


@pytest.mark.parametrize("family", list(small_specs()))
def test_every_family_with_bn_records_and_histograms(family, store, digits):
    spec = small_specs()[family]
    data = digits.subset(8, 8)
    config = TrainConfig(lr=0.01, batch_size=4, epochs=1, precision="fp32", metrics_every=1)
    run = store.create_run(f"BN stats · {family}", spec.to_dict(), config)
    rec = bn_lab.StoredBNRecorder(store, run, every=1, hist_batch=4)
    train(build(spec), spec.input_shape, 10, data, config, callbacks=[rec], device="cpu")
    assert rec.errors == []
    back = bn_lab.load_stats(store, run)
    assert back.layers == bn_lab.spec_bn_layers(spec) and back.steps.tolist() == [1, 2]
    for name, c in back.layers.items():
        assert back.series(name, "batch_mean").shape == (2, c)
        assert np.isfinite(back.series(name, "batch_var")).all(), name
    hist = bn_lab.load_histograms(store, run)
    assert hist.moments() == [(0, 0), (2, 1)]
    assert set(hist.get(-1)) == set(back.layers)


def test_a_linked_experiment_must_name_the_experiments_two_runs(tmp_path):
    with RunStore(tmp_path / "runs.sqlite") as store:
        bn = get_preset("course_bn_lenet").spec.to_dict()
        plain = {**bn, "batch_norm": False}  # d2l §8.5's LeNet without its BN layers
        other = get_preset("course_lenet5").spec.to_dict()
        ids = {name: store.create_run(name, spec, {"epochs": 1}, status="completed")
               for name, spec in (("bn", bn), ("plain", plain), ("other", other))}
        assert bn_lab.linked_experiment(store, ids["bn"], ids["plain"]) == \
            bn_lab.Experiment(ids["bn"], ids["plain"])
        with pytest.raises(ConfigError, match=f"run {ids['other']} of the link is not the "
                                              f"experiment's BN-LeNet"):
            bn_lab.linked_experiment(store, ids["other"], ids["plain"])
        with pytest.raises(ConfigError, match="not the experiment's LeNet without BN"):
            bn_lab.linked_experiment(store, ids["bn"], ids["bn"])
        with pytest.raises(ConfigError, match="names run 999, which is not on this server"):
            bn_lab.linked_experiment(store, ids["bn"], 999)


def test_the_newest_experiment_in_the_store_is_found_by_its_two_runs(tmp_path):
    bn = get_preset("course_bn_lenet").spec.to_dict()
    plain = {**bn, "batch_norm": False}  # d2l §8.5's LeNet without its BN layers
    five, seven = {"epochs": 5, "seed": 0}, {"epochs": 7, "seed": 0}
    bn_name = f"{bn_lab.RECORDED_PREFIX}LeNet with BN, lr 1.0 · offline-mnist"
    plain_name = "LeNet without BN, lr 1.0 · offline-mnist"
    with RunStore(tmp_path / "runs.sqlite") as store:
        assert bn_lab.latest_experiment(store) is None  # an empty store
        first = [store.create_run(bn_name, bn, five), store.create_run(plain_name, plain, five)]
        # Queued since: a BN run of another length, then a plain run of 5 epochs: the pair is
        # the plain run and the newest BN run with the same setting before it, the first one.
        store.create_run(bn_name, bn, seven)
        later_plain = store.create_run(plain_name, plain, five)
        assert bn_lab.latest_experiment(store) == bn_lab.Experiment(first[0], later_plain)
        # A run of the right network under another name (the Train page's) is not the pair's.
        store.create_run("my lenet", plain, seven)
        assert bn_lab.latest_experiment(store) == bn_lab.Experiment(first[0], later_plain)
        # A plain run with no BN run before it that matches leaves the older pair standing.
        store.create_run(plain_name, plain, {"epochs": 9, "seed": 0})
        assert bn_lab.latest_experiment(store) == bn_lab.Experiment(first[0], later_plain)
        # A whole new pair of 7 epochs wins.
        pair = [store.create_run(bn_name, bn, seven), store.create_run(plain_name, plain, seven)]
        assert bn_lab.latest_experiment(store) == bn_lab.Experiment(*pair)
