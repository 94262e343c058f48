"""Benchmark: how long a small analysis waits while a large one runs (issue 11).

A class opens links at once; one student's large network must not hold up another's LeNet. Until
the receptive-field graph was captured per thread, every analysis held one process-wide lock
(torch.fx patched ``nn.Module.__call__`` for the whole process). This script measures, in one run:

- ``serial``: the old behaviour, emulated by one lock around ``analyze`` (what the code held);
- ``concurrent``: what the code does now (no global lock; one lock per model object).

In each, a large analysis starts in one thread; once its real forward pass has begun, the LeNet-5
analysis is asked for in another, and its wait (from asking to its result) is timed.
``lenet_alone_s`` is the same analysis with nothing beside it; ``large_alone_s`` the large one's.
Medians over ``--repeats``.

Usage: python bench/bench_analysis_concurrency.py [--large densenet121] [--size 224] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torchvision  # noqa: E402
from torch import nn  # noqa: E402

from explorer.analysis import analyze  # noqa: E402
from explorer.models import build  # noqa: E402
from explorer.registry import get_preset  # noqa: E402


def lenet5() -> nn.Module:
    """d2l's LeNet (61,706 parameters), from the registry."""
    return build(get_preset("course_lenet_d2l").spec)


def one_round(large: nn.Module, shape: tuple[int, int, int],
              lock: contextlib.AbstractContextManager) -> dict[str, float]:
    """Start the large analysis; once its real forward pass (torchinfo's, the costly part) has
    begun, ask for the LeNet one in this thread; time both."""
    out: dict[str, float] = {}
    running = threading.Event()
    first = next(m for m in large.modules() if not list(m.children()))

    def signal(_m: nn.Module, args: tuple) -> None:
        if args and args[0].device.type != "meta":
            running.set()

    handle = first.register_forward_pre_hook(signal)

    def big() -> None:
        t = time.perf_counter()
        with lock:
            analyze(large, shape)
        out["large_s"] = time.perf_counter() - t

    thread = threading.Thread(target=big)
    thread.start()
    running.wait(600)
    t = time.perf_counter()
    with lock:
        analyze(lenet5(), (1, 28, 28))
    out["lenet_wait_s"] = time.perf_counter() - t
    thread.join()
    handle.remove()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", default="densenet121", help="a torchvision model name")
    parser.add_argument("--size", type=int, default=224, help="the large model's image size")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    large = torchvision.models.get_model(args.large, weights=None)
    shape = (3, args.size, args.size)
    analyze(large, shape)  # warm-up: lazy imports, allocator growth
    analyze(lenet5(), (1, 28, 28))

    def timed(fn) -> float:  # noqa: ANN001
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    large_alone = [timed(lambda: analyze(large, shape)) for _ in range(args.repeats)]
    lenet_alone = [timed(lambda: analyze(lenet5(), (1, 28, 28))) for _ in range(args.repeats)]
    rounds: dict[str, list[dict[str, float]]] = {"serial": [], "concurrent": []}
    for _ in range(args.repeats):  # alternate, so that the machine's load hits both alike
        rounds["serial"].append(one_round(large, shape, threading.Lock()))
        rounds["concurrent"].append(one_round(large, shape, contextlib.nullcontext()))

    def med(kind: str, key: str) -> float:
        return round(statistics.median(r[key] for r in rounds[kind]), 3)

    serial, concurrent = med("serial", "lenet_wait_s"), med("concurrent", "lenet_wait_s")
    print(json.dumps({
        "large": f"{args.large} at {shape[0]}×{shape[1]}×{shape[2]}",
        "large_alone_s": round(statistics.median(large_alone), 3),
        "lenet_alone_s": round(statistics.median(lenet_alone), 3),
        "serial": {"lenet_wait_s": serial, "large_s": med("serial", "large_s")},
        "concurrent": {"lenet_wait_s": concurrent, "large_s": med("concurrent", "large_s")},
        "wait_ratio_serial_over_concurrent": round(serial / concurrent, 1),
        "repeats": args.repeats,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_1min": round(os.getloadavg()[0], 2)},
    }, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
