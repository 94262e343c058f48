"""Benchmark: what the Inspect page costs on this CPU.

Prints one JSON object with three figures (medians over ``--repeats``, wall clock and process CPU
time, so that other processes on a shared machine can be told apart):

- ``one_image``: one image through the course ResNet-18 at 1×96×96 with every layer's feature map
  kept (``explorer.inspect.run_image``), against the bare forward pass (goal ≤ 100 ms);
- ``unit``: choosing another unit: the work of the page's unit section (receptive-field rectangle
  from the cached geometry, |∂unit/∂input| and the three figures as JSON), and the page's rerun
  measured with AppTest, which reruns the whole script where the browser reruns only that
  fragment (goal ≤ 300 ms);
- ``confusion``: the confusion matrix of 10,000 test images for the course LeNet-5 (the offline
  test set's 1,000 images ten times over), batched without gradients (goal ≤ 5 s).

Usage: python bench/bench_inspect.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from explorer import inspect_charts as ic  # noqa: E402
from explorer.data import ImageDataset, offline_mnist  # noqa: E402
from explorer.inspect import evaluate, prepare, run_image  # noqa: E402
from explorer.inspect_rf import effective_rf, receptive_rect, unit_geometry  # noqa: E402
from explorer.models import build  # noqa: E402
from explorer.registry import get_preset  # noqa: E402


def timed(fn: Callable[[], Any], repeats: int) -> dict[str, float]:
    """Median wall and CPU seconds of ``fn`` after one warm-up call."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return {"wall_ms": round(1000 * statistics.median(wall), 1),
            "cpu_ms": round(1000 * statistics.median(cpu), 1)}


def one_image(repeats: int) -> dict[str, Any]:
    spec = get_preset("course_resnet18").spec
    model = build(spec).eval()
    data = offline_mnist()
    x = prepare(data.test_images[0], spec.input_shape, data)
    fwd = run_image(model, x)
    kept = sum(t.numel() * t.element_size() for t in fwd.maps.values())
    return {"model": "course_resnet18", "input": list(spec.input_shape),
            "maps_kept": len(fwd.maps), "maps_bytes": kept,
            "with_every_map": timed(lambda: run_image(model, x), repeats),
            "forward_only": timed(lambda: run_image(model, x, keep_maps=False), repeats)}


def unit(repeats: int) -> dict[str, Any]:
    spec = get_preset("course_resnet18").spec
    model = build(spec).eval()
    data = offline_mnist()
    x = prepare(data.test_images[0], spec.input_shape, data)
    fwd = run_image(model, x)
    geo_start = time.perf_counter()
    geo = unit_geometry(model, spec.input_shape)
    geometry_s = time.perf_counter() - geo_start
    layer = "stage3.block1"
    out = fwd.maps[layer]
    where = iter(range(10**6))

    def choose() -> None:
        k = next(where)
        y, col = k % out.shape[1], (3 * k) % out.shape[2]
        rect = receptive_rect(geo, layer, y, col)
        erf = effective_rf(model, fwd.input, layer, 0, y, col)
        for fig in (ic.unit_map_figure(out[0], layer, 0, (y, col)),
                    ic.receptive_field_figure(fwd.input, rect, "t"), ic.erf_figure(erf, rect, "t")):
            fig.to_json()

    return {"layer": layer, "unit_section": timed(choose, repeats),
            "geometry_once_per_model_ms": round(1000 * geometry_s, 1),
            "page_rerun_apptest": page_rerun(repeats)}


def page_rerun(repeats: int) -> dict[str, float]:
    """The whole Inspect page rerun by AppTest after another row is chosen (Build's model)."""
    from streamlit.testing.v1 import AppTest

    os.environ.setdefault("EXPLORER_RUNS_DB", str(Path(tempfile.mkdtemp()) / "runs.sqlite"))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.session_state["current_spec_json"] = get_preset("course_resnet18").spec.to_json(None)
    at.switch_page("pages/inspect.py").run()
    at.radio(key="in_source").set_value("The Build page's model (untrained)").run()
    at.selectbox(key="in_unit_layer").select("stage3.block1").run()
    rows = iter(range(10**6))
    return timed(lambda: at.number_input(key="in_row").set_value(next(rows) % 6).run(),
                 repeats)


def confusion(repeats: int) -> dict[str, Any]:
    spec = get_preset("course_lenet5").spec
    model = build(spec).eval()
    d = offline_mnist()
    tenfold = ImageDataset("offline x10", d.train_images[:1], d.train_labels[:1],
                           d.test_images.repeat(10, 1, 1, 1), d.test_labels.repeat(10),
                           d.classes, d.mean, d.std)
    return {"model": "course_lenet5", "test_images": len(tenfold.test_labels),
            "evaluate": timed(lambda: evaluate(model, tenfold, spec.input_shape), repeats)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    print(json.dumps({
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "one_image": one_image(args.repeats), "unit": unit(args.repeats),
        "confusion": confusion(args.repeats),
    }, indent=2))


if __name__ == "__main__":
    main()
