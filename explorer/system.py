"""What the app runs on: the one device picker, GPUs' memory, and library versions.

Every part that chooses a device (the training engine, the workers, the worker pool, the Ray
dispatcher, the sidebar) goes through ``resolve_device``, so "auto" means the same everywhere.
The web server never initialises CUDA (its workers are started after it, and a CUDA context
costs each process hundreds of megabytes of the GPU): it counts GPUs without a context and reads
their memory in a short child process (``gpu_memory``).
"""

from __future__ import annotations

import functools
import json
import platform
import subprocess
import sys

import torch

from explorer.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda", "mps")  # what a run may ask for


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps and mps.is_available())


def gpu_count() -> int:
    """CUDA GPUs visible to this process (0 without CUDA); creates no CUDA context."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """The torch.device for ``auto|cpu|cuda|cuda:N|mps``; one this machine lacks is a sentence.

    ``auto`` is the first CUDA GPU when there is one, else Apple's GPU, else the CPU.
    """
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        if gpu_count():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {name!r}.") from exc
    if dev.type == "cuda" and not gpu_count():
        raise ConfigError("device 'cuda' was asked for but this machine has no CUDA GPU; "
                          "choose auto or cpu.")
    if dev.type == "cuda" and dev.index is not None and dev.index >= gpu_count():
        raise ConfigError(f"device {name!r} does not exist: this machine has "
                          f"{gpu_count()} CUDA GPU(s).")
    if dev.type == "mps" and not _mps_available():
        raise ConfigError("device 'mps' was asked for but this machine has no Apple GPU; "
                          "choose auto or cpu.")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {name!r}.")
    return dev


def best_device() -> str:
    """'cuda' when a GPU is visible, else 'mps' on Apple silicon, else 'cpu'."""
    return resolve_device("auto").type


_PROBE = ("import json, torch; print(json.dumps([[torch.cuda.get_device_name(i), "
          "torch.cuda.get_device_properties(i).total_memory] "
          "for i in range(torch.cuda.device_count())]))")


@functools.lru_cache(maxsize=1)
def gpus() -> tuple[tuple[str, int], ...]:
    """(name, total bytes of memory) of each CUDA GPU, ``()`` without one.

    Read in a child process when this one has no CUDA context yet (the web server must not make
    one), else here.
    """
    if not gpu_count():
        return ()
    if torch.cuda.is_initialized():
        return tuple((torch.cuda.get_device_name(i),
                      int(torch.cuda.get_device_properties(i).total_memory))
                     for i in range(gpu_count()))
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                         timeout=120, check=True)
    return tuple((str(n), int(m)) for n, m in json.loads(out.stdout.strip().splitlines()[-1]))


def gpu_memory() -> tuple[int, ...]:
    """Total bytes of memory of each CUDA GPU, ``()`` without one (see ``gpus``)."""
    return tuple(m for _n, m in gpus())


def device_description() -> str:
    """One line for the sidebar, e.g. 'CUDA: NVIDIA H200' or 'CPU (2 threads)'."""
    device = best_device()
    if device == "cuda":
        names = [n for n, _m in gpus()]
        more = f" (+{len(names) - 1} more)" if len(names) > 1 else ""
        return f"CUDA: {names[0]}{more}" if names else "CUDA"
    if device == "mps":
        return "Apple MPS"
    return f"CPU ({torch.get_num_threads()} threads, {platform.machine()})"


def versions() -> dict[str, str]:
    import torchinfo
    import torchvision

    return {"torch": torch.__version__, "torchvision": torchvision.__version__,
            "torchinfo": torchinfo.__version__, "python": platform.python_version()}
