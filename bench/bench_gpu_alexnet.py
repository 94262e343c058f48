"""One epoch of the course AlexNet at 1×224×224 on 60,000 Fashion-MNIST-sized images.

The lecture's notebook needed about 122 s per epoch on a Colab GPU (SGD lr 0.01, batch 128);
the training issue's goal on a lent GPU is ≤ 5 s. Prints JSON: epoch seconds (training only,
and with the test pass), images/s, and the fraction of the chip's bf16 peak the training step
reaches, counting 3 × 2 × multiply-adds per image (forward, plus a backward pass of twice the
forward's work).

Uses Fashion-MNIST from $EXPLORER_DATA_DIR when it is there, else synthetic uint8 images of the
same shape (the speed does not depend on the pixel values). On a machine without a GPU it runs
a short CPU smoke test: ``--images 512``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from explorer.data import ImageDataset, load_dataset  # noqa: E402
from explorer.errors import ConfigError  # noqa: E402
from explorer.layers import meta_pass  # noqa: E402
from explorer.models import build  # noqa: E402
from explorer.registry import get_preset  # noqa: E402
from explorer.training import TrainConfig, train  # noqa: E402

# Dense bf16 tensor-core peak, TFLOP/s, from NVIDIA's data sheets (no sparsity); the first name
# that CUDA's device name contains wins, so the PCIe and NVL parts come before the SXM ones.
PEAK_BF16_TFLOPS = (("H200 NVL", 835.0), ("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0),
                    ("A100", 312.0), ("L4", 121.0))


def dataset(n_train: int, n_test: int) -> tuple[ImageDataset, str]:
    try:
        data = load_dataset("fashion-mnist")
        return data.subset(n_train, n_test), "fashion-mnist"
    except ConfigError:
        g = torch.Generator().manual_seed(0)
        return ImageDataset(
            "synthetic", torch.randint(0, 256, (n_train, 1, 28, 28), dtype=torch.uint8,
                                       generator=g),
            torch.randint(0, 10, (n_train,), generator=g),
            torch.randint(0, 256, (n_test, 1, 28, 28), dtype=torch.uint8, generator=g),
            torch.randint(0, 10, (n_test,), generator=g),
            tuple(str(i) for i in range(10))), "synthetic"


def peak_tflops(name: str) -> float | None:
    """The bf16 peak of the GPU CUDA calls ``name``; None for a chip the table lacks."""
    return next((v for k, v in PEAK_BF16_TFLOPS if k in name), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60_000)
    parser.add_argument("--test-images", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--warmup-steps", type=int, default=20)
    args = parser.parse_args()

    spec = get_preset("course_alexnet").spec
    macs = meta_pass(spec).macs_lecture
    data, source = dataset(args.images, args.test_images)
    config = TrainConfig(optimizer="sgd", lr=0.01, momentum=0.0, batch_size=args.batch,
                         epochs=1, init="xavier", device=args.device,
                         precision=args.precision, metrics_every=50)
    # A short warm-up run: cuDNN's autotuner and the first CUDA kernels load here, not in the
    # measured epoch.
    if args.warmup_steps > 0:
        train(build(spec), spec.input_shape, 10,
              data.subset(args.batch * args.warmup_steps, args.batch),
              TrainConfig(**{**config.to_dict(), "max_steps": args.warmup_steps}))
    t0 = time.perf_counter()
    result = train(build(spec), spec.input_shape, 10, data, config)
    total = time.perf_counter() - t0
    epoch = result.epoch_metrics[-1]
    images_per_s = epoch["images_per_s"]
    achieved = images_per_s * 3 * 2 * macs / 1e12
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    # The fraction is of the bf16 peak, so it is given for bf16 runs alone.
    peak = peak_tflops(name) if result.precision == "bf16" else None
    print(json.dumps({
        "bench": "course_alexnet_one_epoch", "device": name, "precision": result.precision,
        "data": source, "train_images": args.images, "batch": args.batch,
        "epoch_train_s": round(epoch["epoch_time_s"], 3),
        "epoch_with_test_s": round(total, 3),
        "images_per_s": round(images_per_s, 1),
        "macs_per_image": macs, "achieved_tflops": round(achieved, 2),
        "peak_bf16_tflops": peak,
        "fraction_of_peak": round(achieved / peak, 4) if peak else None,
        "lecture_colab_epoch_s": 122, "goal_epoch_s": 5,
        "test_acc": result.test_accuracy}, indent=2))


if __name__ == "__main__":
    main()
