"""A GPU's slots and memory budget: runs share a device only while their footprints fit.

No GPU is needed: a GPU's memory is injected (``default_slots(gpu_memory=…)``,
$EXPLORER_GPU_MEMORY_MB, or ``explorer.system.gpu_memory`` replaced), and the claims that a
GPU's workers make are the store's own, on SQLite and on PostgreSQL.
"""

import threading
import time

import pytest

from explorer import system
from explorer.admission import price
from explorer.data import OFFLINE
from explorer.estimate import with_classes
from explorer.footprint import DataSizes, estimate_footprint, plan_gpu
from explorer.jobs import DataRef
from explorer.pool import default_slots
from explorer.registry import get_preset
from explorer.runs import RunStore
from explorer.training import TrainConfig
from explorer.worker import Worker

MB = 10**6
LENET = get_preset("course_lenet5").spec
DIGITS = DataRef(OFFLINE)
DIGIT_SIZES = DataSizes(4000, 1000, (1, 28, 28), 10)
SHORT = TrainConfig(epochs=1, batch_size=64, max_steps=6, metrics_every=2)


@pytest.fixture(autouse=True)
def _no_gpu_settings(monkeypatch):
    for name in ("EXPLORER_GPU_MEMORY_MB", "EXPLORER_GPU_SLOTS", "EXPLORER_SLOTS",
                 "EXPLORER_GPU_RESERVE_MB", "EXPLORER_RUN_MEMORY_BYTES"):
        monkeypatch.delenv(name, raising=False)


def queue(store, n, footprint, prefix="r"):
    """n runs of ``footprint`` bytes, each of its own visitor (the fair order is their ids)."""
    return [store.create_run(f"{prefix}{i}", LENET.to_dict(), SHORT, session=f"{prefix}{i}",
                             job=DIGITS.to_job(), footprint=footprint) for i in range(n)]


def test_three_runs_of_300_mb_share_a_1000_mb_gpu_and_a_fourth_waits(store_url):
    with RunStore(store_url) as store:
        ids = queue(store, 5, 300 * MB)
        got = [store.claim(f"box:1:w{k}", "cuda:0", "cuda", budget=1000 * MB) for k in range(4)]
        # 3 × 300 MB = 900 MB fit in 1,000 MB; a fourth would make 1,200 MB.
        assert [g["id"] if g else None for g in got] == [ids[0], ids[1], ids[2], None]
        # Another GPU, and the same name on another machine, have their own budgets.
        assert store.claim("box:1:w9", "cuda:1", "cuda", budget=1000 * MB)["id"] == ids[3]
        assert store.claim("lab:7:w0", "cuda:0", "cuda", budget=1000 * MB)["id"] == ids[4]
        store.finish(ids[3], "box:1:w9", "stopped")
        assert store.device_load("box:1:w0", "cuda:0") == (3, 900 * MB)
        assert store.finish(ids[1], "box:1:w1", "completed")
        assert store.device_load("box:1:w0", "cuda:0") == (2, 600 * MB)


def test_the_fourth_run_starts_when_one_finishes_in_fair_order(store_url):
    with RunStore(store_url) as store:
        ids = queue(store, 5, 300 * MB)
        for k in range(3):
            store.claim(f"box:1:w{k}", "cuda:0", "cuda", budget=1000 * MB)
        assert store.claim("box:1:w3", "cuda:0", "cuda", budget=1000 * MB) is None
        assert store.queue_position(ids[3]) == 1 and store.queue_position(ids[4]) == 2
        store.finish(ids[0], "box:1:w0", "completed")
        assert store.claim("box:1:w3", "cuda:0", "cuda", budget=1000 * MB)["id"] == ids[3]
        assert store.claim("box:1:w0", "cuda:0", "cuda", budget=1000 * MB) is None


def test_a_large_run_first_in_line_is_not_overtaken_and_one_over_the_budget_is_passed_over(
        store_url):
    with RunStore(store_url) as store:
        (first,) = queue(store, 1, 600 * MB, "a")
        (big,) = queue(store, 1, 700 * MB, "b")
        (small,) = queue(store, 1, 100 * MB, "c")
        (huge,) = queue(store, 1, 2000 * MB, "d")  # larger than the whole GPU's budget
        assert store.claim("box:1:w0", "cuda:0", "cuda", budget=1000 * MB)["id"] == first
        # 400 MB are left: the 700 MB run is next in line and waits; the 100 MB run may not
        # overtake it (it would starve a large run of a busy class).
        assert store.claim("box:1:w1", "cuda:0", "cuda", budget=1000 * MB) is None
        store.finish(first, "box:1:w0", "completed")
        assert store.claim("box:1:w1", "cuda:0", "cuda", budget=1000 * MB)["id"] == big
        assert store.claim("box:1:w0", "cuda:0", "cuda", budget=1000 * MB)["id"] == small
        store.finish(big, "box:1:w1", "completed")
        store.finish(small, "box:1:w0", "completed")
        # The 2,000 MB run can never fit on this GPU: passed over, it stays queued.
        assert store.claim("box:1:w0", "cuda:0", "cuda", budget=1000 * MB) is None
        assert store.get_run(huge)["status"] == "queued"


def test_runs_of_unknown_footprint_are_bounded_by_slots_alone(store_url):
    with RunStore(store_url) as store:
        ids = [store.create_run(f"u{i}", LENET.to_dict(), SHORT, session=f"u{i}",
                                job=DIGITS.to_job()) for i in range(3)]
        got = [store.claim(f"box:1:w{k}", "cuda:0", "cuda", budget=1 * MB) for k in range(3)]
        assert [g["id"] for g in got] == ids


def test_concurrent_claims_of_one_gpus_workers_never_overfill_it(store_url):
    with RunStore(store_url) as store:
        queue(store, 8, 300 * MB)
    stores = [RunStore(store_url) for _ in range(6)]
    barrier, got = threading.Barrier(6), []

    def claim(k):
        barrier.wait()
        got.append(stores[k].claim(f"box:1:w{k}", "cuda:0", "cuda", budget=1000 * MB))

    threads = [threading.Thread(target=claim, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for s in stores:
        s.close()
    assert sum(g is not None for g in got) == 3  # 3 × 300 MB; a fourth would overfill


# A worker's CUDA context as the design assumes it (600 MiB, docs and test_estimate), written
# here rather than imported from explorer.footprint, so that the budgets below are checked.
CONTEXT = 600 * 2**20


def test_slots_and_budget_from_an_injected_gpu_memory():
    # A 2 GB GPU: a tenth is kept back (1.8 GB usable) and each worker's CUDA context takes
    # 600 MiB (629 MB): two workers with a LeNet each fit (2 × ~0.68 GB), three would not.
    plan = plan_gpu(2 * 10**9, cores=16)
    assert plan.slots == 2
    assert plan.budget == 1_800_000_000 - 2 * CONTEXT
    slots = default_slots(gpu_memory=[2 * 10**9, 80 * 10**9], cores=8)
    # The 80 GB GPU holds many LeNets: one worker per core, the 8 cores shared by 2 GPUs,
    # caps it at 4.
    assert [s.device for s in slots] == ["cuda:0"] * 2 + ["cuda:1"] * 4
    assert {s.threads for s in slots} == {1}
    assert slots[-1].budget == 72 * 10**9 - 4 * CONTEXT
    assert len(default_slots(gpu_memory=[80 * 10**9], cores=64)) == 8  # GPU_SLOTS_CAP


def test_settings_fix_the_budget_and_the_slots(monkeypatch):
    monkeypatch.setenv("EXPLORER_GPU_MEMORY_MB", "1000")
    plan = plan_gpu(80 * 10**9, typical_bytes=300 * MB, cores=16)
    assert (plan.slots, plan.budget) == (3, 1000 * MB)  # 1,000 MB // 300 MB
    monkeypatch.setenv("EXPLORER_GPU_SLOTS", "5")
    assert plan_gpu(80 * 10**9, typical_bytes=300 * MB).slots == 5
    monkeypatch.delenv("EXPLORER_GPU_MEMORY_MB")
    monkeypatch.setenv("EXPLORER_GPU_RESERVE_MB", "4000")
    assert plan_gpu(10 * 10**9).budget == 6 * 10**9 - 5 * CONTEXT


def test_a_run_over_a_gpus_whole_budget_is_refused_at_admission(monkeypatch, tmp_path):
    monkeypatch.setattr(system, "gpu_memory", lambda: (80 * 10**9,))
    monkeypatch.setenv("EXPLORER_GPU_MEMORY_MB", "1000")
    nin = with_classes(get_preset("course_nin").spec, 10)
    config = TrainConfig(batch_size=512)
    fp = estimate_footprint(nin, config, DIGIT_SIZES, "bf16")
    assert fp.peak_bytes > 1000 * MB
    refused = price(nin, config, DIGIT_SIZES, "cuda", store_path=tmp_path / "runs.sqlite")
    assert refused.refusal is not None
    text = str(refused.refusal)
    assert "more than the 1.0 GB a run may use on this server; choose a batch size" in text
    fits = int(text.rsplit("at most ", 1)[1].rstrip("."))
    assert fp.with_batch(fits).peak_bytes <= 1000 * MB < fp.with_batch(fits + 1).peak_bytes
    ok = price(LENET, TrainConfig(), DIGIT_SIZES, "cuda", store_path=tmp_path / "runs.sqlite")
    assert ok.refusal is None


def test_workers_with_a_budget_train_three_runs_side_by_side_and_the_fourth_after(tmp_path):
    """End to end through ``Worker``: the GPU is faked by a budget on CPU workers (the claims
    are the same), four workers, four runs of 300 MB on 1,000 MB."""
    db = tmp_path / "runs.sqlite"
    with RunStore(db) as store:
        ids = queue(store, 4, 300 * MB)
    stores = [RunStore(db) for _ in range(4)]
    workers = [Worker(s, "cpu", f"box:1:w{k}", budget=1000 * MB) for k, s in enumerate(stores)]
    threads = [threading.Thread(target=w.serve, daemon=True) for w in workers]
    peak, seen_waiting = 0, False
    with RunStore(db) as watch:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            status = [watch.get_run(i)["status"] for i in ids]
            running = status.count("running")
            peak = max(peak, running)
            seen_waiting |= running == 3 and status.count("queued") == 1
            if all(s == "completed" for s in status):
                break
            time.sleep(0.01)
        for w in workers:
            w.stop()
        for t in threads:
            t.join(30)
        assert [watch.get_run(i)["status"] for i in ids] == ["completed"] * 4
    for s in stores:
        s.close()
    assert peak == 3 and seen_waiting
