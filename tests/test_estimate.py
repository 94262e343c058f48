"""Cost and memory estimates before Start: work, the time model's fit, budget, memory, classes."""

import json
import math
import random
import time
import types

import pytest
import torch
import torchvision
from torch import nn
from torch.profiler import ProfilerActivity, profile

from explorer import calibration
from explorer import estimate as estimate_module
from explorer.data import ImageDataset
from explorer.errors import ConfigError
from explorer.estimate import (
    Record,
    Throughput,
    budget_seconds,
    check_budget,
    check_classes,
    cpu_share,
    duration_text,
    epoch_sentence,
    estimate_run,
    fit,
    run_work,
    with_classes,
)
from explorer.footprint import (
    CUDA_CONTEXT_BYTES,
    DataSizes,
    Footprint,
    activation_profile,
    available_memory,
    check_memory,
    estimate_footprint,
    gpu_slots,
    largest_batch,
    memory_sentence,
)
from explorer.models import build
from explorer.registry import get_preset
from explorer.specs import LeNetSpec, VGGBlock, VGGSpec
from explorer.training import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")

DIGITS = DataSizes(4000, 1000, (1, 28, 28), 10)  # the offline set: 4,000 train, 1,000 test


def macs_only(macs_per_s: float) -> Throughput:
    """A device on which only multiply-adds cost time, fitted from exact synthetic records."""
    rows = [(1.0, 3.0, 1e6, 1e4), (1.0, 20.0, 5e8, 2e6), (1.0, 8.0, 3e9, 1e5),
            (0.5, 4.0, 2e7, 7e6), (1.0, 50.0, 8e7, 3e5)]
    return Throughput("test", [Record(r, r[2] / macs_per_s, "probe") for r in rows])


# ---- the work of a run ------------------------------------------------------------------------

def test_macs_of_course_lenet_by_hand():
    # course_lenet on 1×28×28: conv 1→6 5×5 gives 6×24×24, each output 25 MACs: 86,400;
    # pool → 12×12; conv 6→16 5×5 gives 16×8×8, each 6·25 = 150 MACs: 153,600; pool → 4×4;
    # linear 256→120: 30,720; 120→84: 10,080; 84→10: 840. Total 281,640.
    work = run_work(get_preset("course_lenet").spec, TrainConfig(batch_size=128, epochs=5),
                    DIGITS)
    assert work.macs_per_image == 281_640
    assert work.steps_per_epoch == 31  # 4000 // 128, the last partial batch dropped
    assert work.total_steps == 155 and work.epochs == 5
    # A step is ≈ 3 forward passes, the test pass 1: 281,640 · (3·31·128 + 1000) per epoch.
    assert work.macs_per_epoch == 281_640 * (3 * 31 * 128 + 1000)


def test_max_steps_and_resize_enter_the_work():
    spec = LeNetSpec(input_shape=(1, 32, 32))
    work = run_work(spec, TrainConfig(batch_size=100, epochs=9, max_steps=50), DIGITS)
    assert (work.steps_per_epoch, work.total_steps, work.epochs) == (40, 50, 2)
    same = run_work(spec, TrainConfig(batch_size=100), DataSizes(4000, 1000, (1, 32, 32), 10))
    # The engine resizes 28×28 batches to 32×32 on the device: 1,024 more elements per image.
    assert work.elements_per_image - same.elements_per_image == 32 * 32
    with pytest.raises(ConfigError, match="choose at most 4000"):
        run_work(spec, TrainConfig(batch_size=5000), DIGITS)


# ---- the time model ---------------------------------------------------------------------------

def test_fit_recovers_overhead_and_throughput_from_noisy_runs():
    truth = (2e-3, 1e-4, 1 / 2e10, 1 / 5e8)  # per step, per layer, per MAC, per element
    rng = random.Random(0)
    rows, times = [], []
    for _ in range(40):
        row = (1.0, float(rng.randint(2, 60)), 10 ** rng.uniform(5, 10.5), 10 ** rng.uniform(3, 8))
        rows.append(row)
        times.append(sum(c * x for c, x in zip(truth, row, strict=True))
                     * (1 + rng.uniform(-0.02, 0.02)))
    coef = fit(rows, times)
    for got, want in zip(coef, truth, strict=True):
        assert got == pytest.approx(want, rel=0.05)


def test_fit_never_goes_negative():
    # Times that shrink as the layers grow would need a negative per-layer cost.
    rows = [(1.0, 2.0, 1e6, 0.0), (1.0, 40.0, 1e6, 0.0), (1.0, 20.0, 1e9, 0.0)]
    coef = fit(rows, [0.01, 0.005, 0.05])
    assert min(coef) >= 0


def test_seconds_use_earlier_runs_of_the_same_work():
    th = macs_only(1e9)
    work = run_work(get_preset("course_lenet").spec, TrainConfig(), DIGITS)
    model = work.macs_per_image * 3 * 128 / 1e9
    assert th.seconds(work.step_features()) == pytest.approx(model)
    runs = [Record(work.step_features(), s) for s in (0.2, 0.3, 0.9)]
    refined = Throughput("test", [*th.records, *runs])
    assert refined.seconds(work.step_features()) == pytest.approx(0.3)  # their median


def test_nearby_runs_correct_the_model():
    probes = macs_only(1e9).records
    lenet = (1.0, 7.0, 1e8, 3e6)  # a finished run that took twice what the MACs predict
    th = Throughput("test", [*probes, Record(lenet, 0.2)])
    error = 0.2 / th.model_seconds(lenet)
    assert error > 1.5  # the fit mostly follows the five probes
    bn_lenet = (1.0, 11.0, 1e8, 4e6)  # similar work: within half a decade
    assert th.seconds(bn_lenet) == pytest.approx(th.model_seconds(bn_lenet) * error)
    wide = (1.0, 7.0, 1e10, 3e6)  # a hundred times the MACs: the model alone
    assert th.seconds(wide) == pytest.approx(th.model_seconds(wide))
    assert th.model_seconds(wide) == pytest.approx(10.0, rel=0.05)


def test_the_nearer_of_two_similar_runs_corrects_more():
    probes = macs_only(1e9).records  # exact: the model's error on them is 1
    here = (1.0, 7.0, 1e8, 3e6)
    near = (1.0, 7.0, 1e8 * 10**0.1, 3e6)  # a tenth of a decade away (MACs)
    far = (1.0, 7.0, 1e8, 3e6 * 10**0.4)  # four tenths away (elements)
    th = Throughput("test", [*probes, Record(near, 0.4), Record(far, 0.05)])
    e_near, e_far = 0.4 / th.model_seconds(near), 0.05 / th.model_seconds(far)
    assert e_near > 1 > e_far
    # Weights 1/(0.1 + 0.05) and 1/(0.4 + 0.05): the near run counts three times the far one.
    want = math.exp((3 * math.log(e_near) + math.log(e_far)) / 4)
    assert th.seconds(here) == pytest.approx(th.model_seconds(here) * want, rel=1e-6)


def test_cpu_share_measures_the_slow_down(monkeypatch):
    monkeypatch.setattr(estimate_module, "_share_cache", [])
    real = time.perf_counter
    # A thread that gets half a core: its CPU time runs at half the wall clock's pace.
    monkeypatch.setattr(time, "thread_time", lambda: real() / 2)
    assert cpu_share(sample_s=0.02) == pytest.approx(2.0, rel=0.05)

    def no_probe():
        raise AssertionError("probed again within max_age_s")

    monkeypatch.setattr(time, "thread_time", no_probe)
    assert cpu_share(sample_s=0.02) == pytest.approx(2.0, rel=0.05)  # cached


def test_slow_down_is_the_reference_kernels_wall_time_over_its_calibrated_cpu_time(monkeypatch):
    monkeypatch.setattr(estimate_module, "_slow_cache", {})
    monkeypatch.setattr(estimate_module, "reference_seconds", lambda sample_s: 0.003)
    # 3 ms per iteration now, 1 ms of CPU time at calibration: runs go 3 times slower.
    assert estimate_module.slow_down(0.001) == pytest.approx(3.0)
    # A machine less loaded than at calibration: faster, down to a quarter at most.
    assert estimate_module.slow_down(0.006) == pytest.approx(0.5)
    assert estimate_module.slow_down(0.1) == 0.25

    def no_probe(sample_s):
        raise AssertionError("measured again within max_age_s")

    monkeypatch.setattr(estimate_module, "reference_seconds", no_probe)
    assert estimate_module.slow_down(0.001) == pytest.approx(3.0)  # cached


def test_reference_seconds_keeps_the_fastest_window(monkeypatch):
    """Bursts of other work in most windows leave the figure at the kernel's own time."""
    calls = []

    def step():  # 2 ms a step, and a 30 ms burst in the first three of five windows
        calls.append(None)
        time.sleep(0.032 if len(calls) in (2, 12, 22) else 0.002)

    monkeypatch.setattr(estimate_module, "_reference_step", lambda: step)
    # Five windows of 20 ms: about ten steps each; the bursts land in windows 1 to 3.
    fastest = estimate_module.reference_seconds(sample_s=0.1)
    assert fastest == pytest.approx(0.002, abs=0.0012)  # sleep overshoots by a fraction of a ms
    calls.clear()
    # One window over the same bursts (a mean, as any one window is) reads half again at least.
    three = estimate_module.reference_seconds(sample_s=0.1, windows=1)
    assert three > 1.5 * 0.002


def test_while_its_own_runs_fill_the_cpu_the_server_keeps_the_load_measured_without_them(
        monkeypatch):
    monkeypatch.setattr(estimate_module, "_slow_cache", {})

    def no_probe(sample_s):
        raise AssertionError("measured while the server's own runs train")

    monkeypatch.setattr(estimate_module, "reference_seconds", no_probe)
    # No figure yet: the calibrated speed.
    assert estimate_module.slow_down(0.001, busy=True) == 1.0
    monkeypatch.setattr(estimate_module, "reference_seconds", lambda sample_s: 0.002)
    assert estimate_module.slow_down(0.001) == pytest.approx(2.0)  # quiet: measured
    monkeypatch.setattr(estimate_module, "reference_seconds", no_probe)
    # Busy, however long after: the quiet figure, not a new measurement of its own runs' load.
    assert estimate_module.slow_down(0.001, max_age_s=0, busy=True) == pytest.approx(2.0)


def test_students_pricing_at_once_share_one_measurement(monkeypatch):
    """Two measurements at once would time each other (torch's threads of both on the cores)."""
    import threading

    monkeypatch.setattr(estimate_module, "_slow_cache", {})
    measured = []

    def reference(sample_s):
        measured.append(threading.get_ident())
        time.sleep(0.2)
        return 0.003

    monkeypatch.setattr(estimate_module, "reference_seconds", reference)
    results = []
    threads = [threading.Thread(target=lambda: results.append(estimate_module.slow_down(0.001)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(measured) == 1
    assert results == [pytest.approx(3.0)] * 4


def test_slots_busy_counts_the_runs_training_on_this_machine(tmp_path):
    import socket

    from explorer.admission import slots_busy
    from explorer.runs import RunStore

    store = RunStore(tmp_path / "runs.db")
    try:
        job = {"dataset": "digits"}
        ids = [store.create_run(f"r{i}", {"family": "lenet"}, {}, "queued", job=job)
               for i in range(3)]
        assert not slots_busy(store, "cpu", 1)
        here = f"{socket.gethostname()}:pool1:abc"
        assert store.claim(here, "cpu", "cpu")["id"] == ids[0]
        assert slots_busy(store, "cpu", 1)
        assert not slots_busy(store, "cpu", 2)  # a second slot is free: a run starts now
        assert not slots_busy(store, "cuda", 1)
        # A worker on another machine of a shared store takes nothing from this one's CPU.
        store.claim("elsewhere.example:7:def", "cpu", "cpu")
        assert not slots_busy(store, "cpu", 2)
        store.claim(here.replace("abc", "ghi"), "cpu", "cpu")
        assert slots_busy(store, "cpu", 2)
    finally:
        store.close()


def test_epoch_sentence():
    assert epoch_sentence(41.6) == "about 42 s per epoch on this server"
    assert epoch_sentence(300) == "about 5 min per epoch on this server"
    assert epoch_sentence(0.2) == "under 1 s per epoch on this server"
    # Under 10 s a decimal, so that the epochs add up to the total: 3 × 2.4 s = 7.2 s, and
    # 200 × 2.5 s = 500 s = 8.3 min (a whole "3 s" per epoch read as 10 min in all).
    assert epoch_sentence(2.4) == "about 2.4 s per epoch on this server"
    assert duration_text(3 * 2.4) == "7.2 s" and duration_text(9.96) == "10 s"
    assert epoch_sentence(2.5) == "about 2.5 s per epoch on this server"
    assert duration_text(200 * 2.5) == "8 min"


# ---- the budget -------------------------------------------------------------------------------

def test_budget_refusal_names_fewer_epochs_and_a_smaller_input():
    # One VGG block on H×H: conv 1→8 3×3 (8·9·H² MACs), pool, linear 8·(H/2)²→10 (20·H²):
    # 92·H² per image; an epoch is 92·H²·(3·31·128 + 1000) = 92·H²·12,904 MACs.
    # At 3e7 MAC/s: H = 64 takes 162.0 s per epoch, 810 s for 5; H = 48 takes 455.9 s for 5.
    spec = VGGSpec(input_shape=(1, 64, 64), arch=(VGGBlock(1, 8),), hidden=())
    est = estimate_run(spec, TrainConfig(batch_size=128, epochs=5), DIGITS, macs_only(3e7))
    assert est.epoch_s == pytest.approx(92 * 64**2 * 12_904 / 3e7)
    error = check_budget(est, budget_s=600)
    assert isinstance(error, ConfigError)
    assert str(error) == ("this run would take about 14 min on this server (5 epochs of about "
                          "3 min), over the limit of 10 min per run; choose at most 3 epochs or "
                          "a smaller input such as 1×48×48, set on the Build page (about 8 min).")
    assert check_budget(est, budget_s=900) is None
    # A fix aims at 90 % of the limit: with 500 s, at most 450 s. 1×48×48 (455.9 s) would pass
    # the limit only just; 1×32×32 takes 92·32²·12,904 / 3e7 = 40.5 s per epoch, 203 s for 5;
    # 450 // 162.0 = 2 epochs.
    assert str(check_budget(est, budget_s=500)).endswith(
        "choose at most 2 epochs or a smaller input such as 1×32×32, set on the Build page "
        "(about 3 min).")


def test_budget_refusal_names_a_smaller_model_of_the_family():
    # vgg16 with a 10-way head at 3×224×224: course_vgg11_small (same family) costs far less.
    spec = with_classes(get_preset("vgg16").spec, 10)
    th = macs_only(2e10)
    est = estimate_run(spec, TrainConfig(epochs=1), DIGITS, th)
    error = str(check_budget(est, budget_s=600))
    assert "a smaller model such as course_vgg11_small" in error
    small = estimate_run(with_classes(get_preset("course_vgg11_small").spec, 10),
                         TrainConfig(epochs=1), DIGITS, th)
    assert small.total_s < 600 < est.total_s


def test_budget_setting(monkeypatch):
    monkeypatch.delenv("EXPLORER_RUN_BUDGET_S", raising=False)
    assert budget_seconds() == 600
    monkeypatch.setenv("EXPLORER_RUN_BUDGET_S", "120")
    assert budget_seconds() == 120
    monkeypatch.setenv("EXPLORER_RUN_BUDGET_S", "ten minutes")
    with pytest.raises(ConfigError, match="EXPLORER_RUN_BUDGET_S"):
        budget_seconds()


# ---- calibration and finished runs ------------------------------------------------------------

def test_calibration_is_cached_and_refined_by_runs(tmp_path, monkeypatch):
    path = tmp_path / "throughput.json"
    first = calibration.load_throughput("cpu", "fp32", path=path)
    assert len(first.records) == len(calibration.probe_specs()) == 7
    assert all(r.source == "probe" for r in first.records)
    assert all(r.seconds > 0 for r in first.records) and first.calibrated_at

    def refuse(*_args):
        raise AssertionError("calibrated twice")

    monkeypatch.setattr(calibration, "calibrate", refuse)
    again = calibration.load_throughput("cpu", "fp32", path=path)
    assert again.calibrated_at == first.calibrated_at
    assert [r.seconds for r in again.records] == [r.seconds for r in first.records]
    work = run_work(get_preset("course_lenet5").spec, TrainConfig(), DIGITS)
    # A TrainResult's epochs: 128 images per step at 256 images/s is 0.5 s per step. The run
    # took 20 s but 10 s of CPU: it went at half speed, on an idle machine 0.25 s per step.
    result = types.SimpleNamespace(device="cpu", precision="fp32", elapsed_s=20.0, epoch_metrics=[
        {"images_per_s": 256.0, "eval_time_s": 2.0, "test_acc": 0.9}])
    calibration.record_result(work, result, path=path, idle_seconds=10.0)
    monkeypatch.setattr(calibration, "slow_down", lambda _ref, busy=False: 1.5)  # the slow-down now
    refined = calibration.load_throughput("cpu", "fp32", path=path)
    assert refined.seconds(work.step_features()) == pytest.approx(0.25 * 1.5)
    assert refined.seconds(work.eval_features()) == pytest.approx(1.0 * 1.5)
    assert refined.epoch_seconds(work) == pytest.approx((31 * 0.25 + 1.0) * 1.5)
    data = json.loads(path.read_text())
    (entry,) = data["devices"].values()
    assert len(entry["runs"]) == 2 and entry["runs"][0]["at"]


def test_the_server_calibrates_in_a_child_process_and_reads_its_file(tmp_path, monkeypatch):
    path = tmp_path / "throughput.json"

    def refuse(*_args):
        raise AssertionError("calibrated in the server's own process")

    monkeypatch.setattr(calibration, "calibrate", refuse)
    th = calibration.load_throughput("cpu", "fp32", path=path, in_child=True)
    assert len(th.records) == 7 and all(r.source == "probe" for r in th.records)
    (entry,) = json.loads(path.read_text())["devices"].values()
    assert entry["probe_version"] == calibration.PROBE_VERSION
    # The same threads as this process: the file's key is this process's.
    assert calibration.device_key("cpu", "fp32") in json.loads(path.read_text())["devices"]


def test_students_asking_at_once_share_one_calibrating_child(tmp_path, monkeypatch):
    """The pool's warm-up and two students' estimates ask while the file is empty: one child
    calibrates, the others wait for it and read its file (two children would halve each one's
    cores and double the wait)."""
    import threading

    path = tmp_path / "throughput.json"
    real = calibration.calibrate_in_child
    children = []

    def counted(*args, **kwargs):
        children.append(threading.current_thread().name)
        real(*args, **kwargs)

    monkeypatch.setattr(calibration, "calibrate_in_child", counted)
    results = {}

    def ask(name):
        results[name] = calibration.load_throughput("cpu", "fp32", path=path, in_child=True)

    threads = [threading.Thread(target=ask, args=(n,), name=n) for n in ("warm-up", "a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(children) == 1
    assert all(len(r.records) == 7 for r in results.values())


def test_each_probe_keeps_the_fastest_of_its_repeats(monkeypatch):
    times = iter([0.30, 0.10, 0.20] * 7)  # a busy machine only ever adds time
    monkeypatch.setattr(calibration, "_probe_seconds", lambda *_a: next(times))
    records = calibration.calibrate("cpu", "fp32", repeats=3)
    assert [r.seconds for r in records] == [0.10] * 7


def test_an_unwritable_calibration_file_fails_nothing(tmp_path, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    work = run_work(get_preset("course_lenet").spec, TrainConfig(), DIGITS)
    calibration.record("cpu", "fp32", work, 0.1, 0.5, path=blocker / "t.json", share=1.0)
    assert "could not record" in caplog.text


def test_calibration_file_lies_beside_the_run_store(monkeypatch, tmp_path):
    monkeypatch.setenv("EXPLORER_RUNS_DB", str(tmp_path / "class.db"))
    assert calibration.calibration_path() == tmp_path / "class.db.throughput.json"
    monkeypatch.delenv("EXPLORER_RUNS_DB")
    # runs.sqlite.throughput.json: .gitignore's /runs.sqlite* keeps it out of the repository.
    assert str(calibration.calibration_path()) == "runs.sqlite.throughput.json"


def test_a_damaged_calibration_file_is_recalibrated(tmp_path, monkeypatch):
    path = tmp_path / "throughput.json"
    path.write_text("{not json")
    probes = [Record((1.0, 3.0, 1e6, 1e3), 0.01, "probe")] * 7
    monkeypatch.setattr(calibration, "calibrate", lambda *_a: probes)
    th = calibration.load_throughput("cpu", "fp32", path=path)
    assert [r.seconds for r in th.records] == [0.01] * 7
    assert calibration.load_throughput("cpu", "bf16", path=path,
                                       calibrate_if_missing=False) is None


# ---- memory -----------------------------------------------------------------------------------

def test_parameter_bytes_match_torchvision_resnet18():
    # torchvision's published size of resnet18 (ResNet18_Weights' meta["num_params"])
    n = torchvision.models.ResNet18_Weights.DEFAULT.meta["num_params"]
    assert n == 11_689_512
    spec = get_preset("resnet18").spec
    sgd = estimate_footprint(spec, TrainConfig(optimizer="sgd", momentum=0.9), DIGITS)
    assert sgd.params_bytes == sgd.grads_bytes == sgd.optimizer_bytes == 4 * n
    adam = estimate_footprint(spec, TrainConfig(optimizer="adamw"), DIGITS)
    assert adam.optimizer_bytes == 2 * 4 * n  # exp_avg and exp_avg_sq
    plain = estimate_footprint(spec, TrainConfig(optimizer="sgd", momentum=0.0), DIGITS)
    assert plain.optimizer_bytes == 0
    # The dataset on the device: 5,000 uint8 images of 784 pixels and their int64 labels.
    assert sgd.data_bytes == 5000 * (784 + 8)


def test_activation_bytes_of_a_tiny_net_by_hand():
    # conv 1→2 3×3 on 1×8×8 → 2×6×6, ReLU, max pool 2 → 2×3×3, flatten 18, linear 18→10.
    # Saved for backward, per image: the conv's input (64 floats), the ReLU's output (72; the
    # pool reads the same tensor), the pool's argmax indices (18 int64) and the linear layer's
    # input (18 floats, the pool's output): (64 + 72 + 18)·4 = 616 bytes and 18·8 = 144 bytes.
    # Layer outputs: 72 + 72 + 18 + 18 + 10 = 190 elements, the largest 72.
    spec = LeNetSpec(input_shape=(1, 8, 8), conv_channels=(2,), kernel_size=3, hidden=(),
                     activation="relu")
    act = activation_profile(spec)
    assert (act.saved_bytes, act.saved_index_bytes) == (616, 144)
    assert (act.output_elements, act.largest_output) == (190, 72)


def _allocator_peak(fn) -> int:
    """Peak bytes held by torch's CPU allocator while ``fn`` runs (profiler memory events)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    level = peak = 0
    for _t, nbytes in sorted((e.start_ns(), e.nbytes())
                             for e in prof.profiler.kineto_results.events()
                             if e.name() == "[memory]"):
        level += nbytes
        peak = max(peak, level)
    return peak


def test_peak_memory_of_a_real_cpu_run_within_a_factor_of_1_5():
    spec = get_preset("course_lenet5").spec
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (192, 1, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (192,), generator=g)
    data = ImageDataset("random", images[:128], labels[:128], images[128:], labels[128:],
                        tuple(str(i) for i in range(10)))
    config = TrainConfig(batch_size=64, epochs=1, precision="fp32", lr=0.01)
    # Everything from the model's construction on: weights, gradients, momentum, two steps'
    # activations, the test pass; the dataset itself was allocated before.
    measured = _allocator_peak(lambda: train(build(spec), spec.input_shape, 10, data, config))
    fp = estimate_footprint(spec, config, DataSizes(128, 64, (1, 28, 28), 10), "fp32")
    estimated = fp.peak_bytes - fp.data_bytes
    assert measured / 1.5 <= estimated <= measured * 1.5


def test_memory_refusal_names_the_batch_that_fits():
    # Fixed 300 bytes; a training batch costs 10 bytes per image, an evaluation batch (at
    # least 256 images) 1 byte per image. At 700 bytes: 300 + 10·b ≤ 700 → b ≤ 40.
    fp = Footprint(100, 100, 100, 0, 0, batch_size=64, train_image_bytes=10,
                   eval_image_bytes=1, test_images=1000)
    assert fp.peak_bytes == 300 + 640
    assert largest_batch(fp, 700) == 40
    assert str(check_memory(fp, 700)) == (
        "this run needs about 940 bytes of memory at batch size 64, more than the 700 bytes a "
        "run may use on this server; choose a batch size of at most 40.")
    assert check_memory(fp, 940) is None
    assert memory_sentence(fp) == "about 940 bytes of memory at batch size 64"
    big = Footprint(10**9, 10**9, 0, 0, 0, 128, 4_000_000, 0, 1000)  # 2 GB + 128 · 4 MB
    assert memory_sentence(big) == "about 2.5 GB of memory at batch size 128"
    assert "even at batch size 1" in str(check_memory(fp, 299))


def test_memory_refusal_for_course_vgg11_at_batch_512():
    # The case: course_vgg11, batch 512, took 8.2 GB on the CPU before the kernel's
    # OOM killer ended the server. With 16 GB allowed it is refused with a batch that fits.
    spec = get_preset("course_vgg11").spec
    fp = estimate_footprint(spec, TrainConfig(batch_size=512), DIGITS, "fp32")
    assert fp.peak_bytes > 16e9
    error = str(check_memory(fp, 16 * 10**9))
    fits = largest_batch(fp, 16 * 10**9)
    assert 1 <= fits < 512 and error.endswith(f"choose a batch size of at most {fits}.")
    assert fp.with_batch(fits).peak_bytes <= 16e9 < fp.with_batch(fits + 1).peak_bytes
    # The test pass takes 256 images at once: its first conv's 64×224×224 float32 output is
    # 12.8 MB per image, 3.3 GB per batch, and the ReLU's output as much again.
    assert "256 images at a time" in str(check_memory(fp, 6 * 10**9))


def test_available_memory_setting(monkeypatch):
    monkeypatch.setenv("EXPLORER_RUN_MEMORY_BYTES", "2e9")
    assert available_memory("cpu") == 2 * 10**9
    monkeypatch.setenv("EXPLORER_RUN_MEMORY_BYTES", "-1")
    with pytest.raises(ConfigError, match="EXPLORER_RUN_MEMORY_BYTES"):
        available_memory("cpu")
    monkeypatch.delenv("EXPLORER_RUN_MEMORY_BYTES")
    with open("/proc/meminfo") as f:
        total = int(f.readline().split()[1]) * 1024  # MemTotal
    one, two = available_memory("cpu", slots=1), available_memory("cpu", slots=2)
    assert 0 < one <= total // 2 and abs(one // 2 - two) <= 1


def test_gpu_slots():
    # 10 GB, 90 % usable; the largest run peaks at 2 GB plus its CUDA context (600 MiB):
    # 9e9 / (2e9 + 629,145,600) = 3.4 → 3 runs side by side.
    def fp(peak: int) -> Footprint:
        return Footprint(peak, 0, 0, 0, 0, 1, 0, 0, 1)

    assert gpu_slots(10 * 10**9, [fp(10**9), fp(2 * 10**9)]) == 3
    assert CUDA_CONTEXT_BYTES == 600 * 2**20
    assert gpu_slots(10**9, [fp(5 * 10**9)]) == 1  # a slot is never refused outright


# ---- classes ----------------------------------------------------------------------------------

def test_classes_mismatch_sentence_and_the_resized_head():
    assert str(check_classes(1000, 10, "vgg16", "the offline digits")) == (
        "vgg16 has a 1000-way head but the offline digits have 10 classes; tick 'Train with "
        "a 10-way head' or choose a course preset.")
    assert check_classes(10, 10) is None
    spec = get_preset("vgg16").spec
    small = with_classes(spec, 10)
    assert small.num_classes == 10 and small.arch == spec.arch
    with torch.device("meta"):
        model = build(small, device="meta")
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    assert (last.in_features, last.out_features) == (4096, 10)
    with pytest.raises(ConfigError):
        with_classes(spec, 0)


def test_a_database_store_keeps_its_calibration_in_the_machines_cache(monkeypatch, tmp_path):
    from explorer.calibration import calibration_path

    url = "postgresql://explorer:s3cret@db.example/runs"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cached = tmp_path / "cnn-explorer" / "throughput.throughput.json"
    assert calibration_path(url) == cached  # never a file named after the URL (and password)
    monkeypatch.setenv("EXPLORER_RUNS_DB", url)  # how workers get a PostgreSQL store
    assert calibration_path(None) == cached
    assert calibration_path(tmp_path / "runs.sqlite") == tmp_path / "runs.sqlite.throughput.json"
