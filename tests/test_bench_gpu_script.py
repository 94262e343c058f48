"""bench/bench_gpu_alexnet.py runs where it is meant to run: a GPU machine whose image holds
PyTorch and numpy but not torchinfo, plotly, streamlit or mlxtend. Here it runs the CPU
smoke size with those packages made unimportable, and its figures are checked by hand."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "bench_gpu_alexnet.py"
# pandas is on that image, but the script needs none of it either.
NOT_NEEDED = ("torchinfo", "plotly", "streamlit", "mlxtend", "onnx", "onnxscript", "pandas")

# The course AlexNet (d2l 8.1) on one 1×224×224 image, lecture convention (C_out·H'·W'·C_in·K²
# per conv, in·out per linear layer, no bias): 224 → conv 11/4 p1 → 54 → pool 3/2 → 26 →
# conv 5 p2 → 26 → pool → 12 → three 3×3 p1 convs → 12 → pool → 5.
ALEXNET_MACS = (96 * 54 * 54 * 11 * 11 * 1
                + 256 * 26 * 26 * 5 * 5 * 96
                + 384 * 12 * 12 * 3 * 3 * 256
                + 384 * 12 * 12 * 3 * 3 * 384
                + 256 * 12 * 12 * 3 * 3 * 384
                + 256 * 5 * 5 * 4096 + 4096 * 4096 + 4096 * 10)


def test_the_gpu_benchmark_needs_only_torch_and_numpy(tmp_path):
    runner = tmp_path / "bare.py"
    runner.write_text(
        "import runpy, sys\n"
        f"for name in {NOT_NEEDED!r}:\n"
        "    sys.modules[name] = None  # import fails, as on the GPU image\n"
        "sys.argv = sys.argv[1:]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    env = {**os.environ, "EXPLORER_DATA_DIR": str(tmp_path / "no-data")}
    done = subprocess.run(
        [sys.executable, str(runner), str(SCRIPT), "--images", "64", "--test-images", "32",
         "--batch", "32", "--warmup-steps", "1", "--device", "cpu", "--precision", "fp32"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["device"] == "cpu" and figures["precision"] == "fp32"
    assert figures["data"] == "synthetic"  # no Fashion-MNIST in the data directory
    assert figures["train_images"] == 64 and figures["batch"] == 32
    assert figures["macs_per_image"] == ALEXNET_MACS == 938_146_176
    # forward + backward = 3 × the forward's 2 FLOPs per multiply-add
    assert figures["achieved_tflops"] == pytest.approx(
        figures["images_per_s"] * 6 * ALEXNET_MACS / 1e12, abs=0.006)
    assert figures["peak_bf16_tflops"] is None and figures["fraction_of_peak"] is None
    assert 0 < figures["epoch_train_s"] <= figures["epoch_with_test_s"]
    assert 0.0 <= figures["test_acc"] <= 1.0


def test_the_peak_table_reads_cuda_device_names():
    spec = importlib.util.spec_from_file_location("bench_gpu_alexnet", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # Dense bf16 tensor-core peaks from NVIDIA's data sheets (no sparsity): the H100 SXM's
    # 1,979 TFLOP/s "with sparsity" halves to 989; the PCIe card's 1,513 to 756.
    assert bench.peak_tflops("NVIDIA H200") == 989.0
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert bench.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bench.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert bench.peak_tflops("Tesla T4") is None  # Turing has no bf16 tensor cores
    assert bench.peak_tflops("cpu") is None
