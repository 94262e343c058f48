"""What the app runs on: the device it would train on and library versions."""

from __future__ import annotations

import platform

import torch


def best_device() -> str:
    """'cuda' when a GPU is visible, else 'mps' on Apple silicon, else 'cpu'."""
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def device_description() -> str:
    """One line for the sidebar, e.g. 'CUDA: NVIDIA H200' or 'CPU (2 threads)'."""
    device = best_device()
    if device == "cuda":
        return f"CUDA: {torch.cuda.get_device_name(0)}"
    if device == "mps":
        return "Apple MPS"
    return f"CPU ({torch.get_num_threads()} threads, {platform.machine()})"


def versions() -> dict[str, str]:
    import torchinfo
    import torchvision

    return {"torch": torch.__version__, "torchvision": torchvision.__version__,
            "torchinfo": torchinfo.__version__, "python": platform.python_version()}
