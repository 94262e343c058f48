"""Benchmark: BN folding speed-up on CPU, and the BN statistics recorder's training cost and size.

Prints one JSON object. Part 1: torchvision resnet18 (random weights, randomised BN statistics) in
eval mode on the CPU, 3×224×224, batch 8, folded (explorer.bn.fold_bn) against unfolded. Part 2: a
resnet18-sized training loop (torchvision resnet18, 10 classes, small inputs) without a recorder,
with BNStatsRecorder at the default ``every`` and at every=1, interleaved in blocks so that noise
from other processes hits all three alike. Timings are figures, never pass/fail.

Small inputs make the recorder's fixed cost (4,800 channels read back per recorded step) a larger
share of a step than at full size, so the overhead measured here errs on the high side.

Usage: python bench/bench_bn_fold.py [--steps 60] [--batch 16] [--size 32] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from explorer.bn import DEFAULT_EVERY, BNStatsRecorder, find_foldable, fold_bn  # noqa: E402


def _randomise_bn(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.2 * torch.randn(c, generator=g))


def bench_fold(batch: int, repeats: int, warmup: int) -> dict:
    """Eval-mode images/s of resnet18 on the CPU, unfolded and folded, timed alternately."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    _randomise_bn(model)
    model.eval()
    plan = find_foldable(model, (3, 224, 224))
    folded = fold_bn(model, plan)
    x = torch.randn(batch, 3, 224, 224)
    times: dict[str, list[float]] = {"unfolded": [], "folded": []}
    with torch.inference_mode():
        for _ in range(warmup):
            model(x), folded(x)
        for _ in range(repeats):
            for name, m in (("unfolded", model), ("folded", folded)):
                t0 = time.perf_counter()
                m(x)
                times[name].append(time.perf_counter() - t0)
        diff = (model(x) - folded(x)).abs().max().item()
    # The machine may be shared: the median resists spikes, the minimum is the least disturbed run.
    ips = {k: batch / statistics.median(v) for k, v in times.items()}
    best = {k: batch / min(v) for k, v in times.items()}
    return {
        "model": "torchvision resnet18, random weights, randomised BN statistics",
        "input": [batch, 3, 224, 224],
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "bn_folded": len(plan.pairs),
        "bn_kept": len(plan.kept),
        "images_per_s_unfolded": round(ips["unfolded"], 2),
        "images_per_s_folded": round(ips["folded"], 2),
        "speedup_folded_over_unfolded": round(ips["folded"] / ips["unfolded"], 3),
        "images_per_s_unfolded_best": round(best["unfolded"], 2),
        "images_per_s_folded_best": round(best["folded"], 2),
        "speedup_best": round(best["folded"] / best["unfolded"], 3),
        "max_abs_diff": diff,
    }


def bench_recorder(steps: int, block: int, batch: int, size: int, device: str) -> dict:
    """Training steps/s without a recorder, with the default every, and with every=1."""
    dev = torch.device(device)
    configs = {"none": None, f"every={DEFAULT_EVERY}": DEFAULT_EVERY, "every=1": 1}
    runs = {}
    for i, (name, every) in enumerate(configs.items()):
        torch.manual_seed(i)
        model = torchvision.models.resnet18(weights=None, num_classes=10).to(dev).train()
        rec = None
        ctx = SimpleNamespace(model=model, step=0)
        if every is not None:
            rec = BNStatsRecorder(every=every)
            rec.on_run_start(ctx)
        runs[name] = {
            "model": model, "rec": rec, "ctx": ctx, "step": 0, "times": [],
            "opt": torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
        }
    x = torch.randn(batch, 3, size, size, device=dev)
    y = torch.randint(0, 10, (batch,), device=dev)
    loss_fn = nn.CrossEntropyLoss()

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def run_block(r: dict, n: int) -> None:
        for _ in range(n):
            sync()
            t0 = time.perf_counter()
            loss = loss_fn(r["model"](x), y)
            r["opt"].zero_grad(set_to_none=True)
            loss.backward()
            r["opt"].step()
            if r["rec"] is not None:
                r["ctx"].step = r["step"]
                r["rec"].on_step_end(r["ctx"], {})
            r["step"] += 1
            sync()
            r["times"].append(time.perf_counter() - t0)

    for r in runs.values():  # warm-up, not timed
        run_block(r, 3)
        r["times"], r["step"] = [], 0
        if r["rec"] is not None:  # start the recording afresh after the warm-up
            rec = BNStatsRecorder(every=r["rec"].every)
            r["rec"].detach()
            r["rec"] = rec
            rec.on_run_start(r["ctx"])
    names = list(runs)
    done = 0
    while done < steps:
        n = min(block, steps - done)
        for name in names[done // block % 3:] + names[:done // block % 3]:  # rotate the order
            run_block(runs[name], n)
        done += n

    # Medians of per-step times: robust to other processes' spikes on a shared machine.
    def med(name: str) -> float:
        return statistics.median(runs[name]["times"])

    base = med("none")
    out = {
        "model": "torchvision resnet18 (num_classes=10), SGD, cross-entropy",
        "input": [batch, 3, size, size],
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "steps_per_config": steps,
        "block": block,
        "default_every": DEFAULT_EVERY,
        "ms_per_step_no_recorder_median": round(1000 * base, 2),
    }
    for name in names[1:]:
        r = runs[name]
        t = med(name)
        rec: BNStatsRecorder = r["rec"]
        out[name] = {
            "ms_per_step": round(1000 * t, 2),
            "overhead_pct": round(100 * (t / base - 1), 2),
            "rows_recorded": len(rec.steps),
        }
    # Every step recorded gives the cost of one record; the default's share follows from it.
    per_record = med("every=1") - base
    out["ms_per_recorded_step"] = round(1000 * per_record, 3)
    out[f"overhead_pct_every={DEFAULT_EVERY}_from_per_record_cost"] = round(
        100 * per_record / (DEFAULT_EVERY * base), 3
    )
    rec1: BNStatsRecorder = runs["every=1"]["rec"]
    raw, packed = rec1.to_bytes(), rec1.to_bytes(compress=True)
    rec_default: BNStatsRecorder = runs[f"every={DEFAULT_EVERY}"]["rec"]
    est = rec_default.estimate_nbytes(2000)
    out["memory"] = {
        "bn_layers": len(rec1.layers),
        "channels": sum(rec1.layers.values()),
        "bytes_per_recorded_step": rec1.bytes_per_step(),
        f"bytes_for_2000_steps_every={DEFAULT_EVERY}": est,
        f"MB_for_2000_steps_every={DEFAULT_EVERY}": round(est / 1e6, 2),
        "npz_bytes_over_held_bytes": round(len(raw) / rec1.nbytes, 4),
        "npz_compressed_over_plain": round(len(packed) / len(raw), 3),
    }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fold-batch", type=int, default=8)
    p.add_argument("--fold-repeats", type=int, default=8)
    p.add_argument("--steps", type=int, default=60, help="timed training steps per config")
    p.add_argument("--block", type=int, default=10, help="steps per interleaved block")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=32, help="input height and width")
    p.add_argument("--device", default="auto", help="recorder part: auto, cpu or cuda")
    a = p.parse_args()
    device = a.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu_count": os.cpu_count(),
        "fold": bench_fold(a.fold_batch, a.fold_repeats, warmup=2),
        "recorder": bench_recorder(a.steps, a.block, a.batch, a.size, device),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
