"""One image through a network: probabilities, every layer's feature maps, filters, test errors.

What CNN Explainer shows for its one Tiny-VGG (Wang et al. 2020), for any network the explorer
builds: forward hooks on the named modules record each layer's output in execution order, under
their stable names (``stem.conv``, ``stage2.block1``, ``head.fc``). The model is run in eval mode
and its train/eval flags are restored; nothing is reseeded. Hooks live on the module objects, so
one model object is inspected by one thread at a time (``explorer.rfgraph.model_lock``); other
models, other visitors, are not held up. The receptive-field side lives in
``explorer.inspect_rf``; the figures in ``explorer.inspect_charts``.
"""

from __future__ import annotations

import contextlib
import io
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from explorer.data import BatchTransform, ImageDataset
from explorer.errors import ConfigError
from explorer.rfgraph import model_lock

EVAL_BATCH = 256  # images per batch over a test set (no gradients, so larger than training's)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode, then put every module's train/eval flag back."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def _device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def as_batch(x: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
    """A C×H×W image (or a 1×C×H×W batch) as a float batch of one on the model's device."""
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[0] != 1:
        raise ConfigError(f"give one image as C×H×W, not a tensor of shape {tuple(x.shape)}.")
    return x.float().to(_device(model) if model is not None else x.device)


@dataclass(frozen=True, eq=False)  # tensors have no single truth value
class Forward:
    """One image's pass: logits, probabilities and (optionally) every layer's output."""

    input: torch.Tensor  # C×H×W, the normalised model input
    logits: torch.Tensor  # (num_classes,)
    maps: dict[str, torch.Tensor]  # layer name -> its output for the image (C×H×W or (F,))

    @property
    def probs(self) -> torch.Tensor:
        """Class probabilities (softmax of the logits)."""
        return torch.softmax(self.logits.double(), 0).float()

    def spatial_layers(self) -> list[str]:
        """The layers whose output is still a C×H×W map, in execution order."""
        return [n for n, t in self.maps.items() if t.dim() == 3]


def run_image(model: nn.Module, x: torch.Tensor, keep_maps: bool = True,
              layers: Sequence[str] | None = None) -> Forward:
    """Forward one image; with ``keep_maps`` record the output of every named module.

    Args:
        x: the normalised model input, C×H×W (``prepare`` makes it from dataset pixels).
        layers: record only these names (default: every named module but the model itself).
    """
    batch = as_batch(x, model)
    maps: dict[str, torch.Tensor] = OrderedDict()
    modules = dict(model.named_modules())
    names = [n for n in modules if n] if layers is None else list(layers)
    for n in names:
        if n not in modules:
            raise ConfigError(f"the model has no layer named {n!r}; choose one of "
                              f"{', '.join(list(modules)[1:6])}, ...")
    handles = []

    def make_hook(name: str):
        def hook(_m: nn.Module, _i: object, out: object) -> None:
            if isinstance(out, torch.Tensor):
                key, k = name, 1
                while key in maps:  # a module called twice keeps both outputs
                    k += 1
                    key = f"{name}@{k}"
                # clone: a later in-place op (ReLU(inplace=True), +=) would change it
                maps[key] = out[0].detach().clone()
        return hook

    with model_lock(model), eval_mode(model), torch.no_grad():
        if keep_maps:
            handles = [modules[n].register_forward_hook(make_hook(n)) for n in names]
        try:
            logits = model(batch)
        finally:
            for h in handles:
                h.remove()
    if logits.dim() != 2:
        raise ConfigError(f"the model's output has shape {tuple(logits.shape)}, not one score "
                          f"per class; inspect a classifier.")
    return Forward(batch[0].detach(), logits[0].detach().float().cpu(), maps)


def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Class probabilities for one image (C×H×W, normalised)."""
    return run_image(model, x, keep_maps=False).probs


def activation_stats(t: torch.Tensor) -> dict[str, float | list[int]]:
    """Shape, min, max, mean, standard deviation and fraction of zeros of a layer's output."""
    f = t.detach().float()
    return {"shape": list(f.shape), "min": float(f.min()), "max": float(f.max()),
            "mean": float(f.mean()), "std": float(f.std(unbiased=False)),
            "zero_fraction": float((f == 0).float().mean())}


def first_conv(model: nn.Module) -> tuple[str, torch.Tensor]:
    """Name and weights (out × in × kH × kW) of the first 2-D convolution."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return name, m.weight.detach().float().cpu()
    raise ConfigError("this model has no convolution, so it has no filters to show.")


# ---- images: from the dataset, a file, or drawn ----------------------------------------------

def prepare(images: torch.Tensor, input_shape: Sequence[int], dataset: ImageDataset
            ) -> torch.Tensor:
    """uint8 C×H×W (or N×C×H×W) dataset-style pixels → the model's normalised input.

    The same conversion as training's (``BatchTransform``): the dataset's mean and std, the
    channel conversion and the bilinear resize to the model's input.
    """
    batch = images.unsqueeze(0) if images.dim() == 3 else images
    transform = BatchTransform(dataset.image_shape, tuple(int(v) for v in input_shape),
                               dataset.mean, dataset.std)
    out = transform(batch.to(torch.uint8))
    return out[0] if images.dim() == 3 else out


def pixels_from_array(array: np.ndarray, image_shape: Sequence[int],
                      invert: bool = False) -> torch.Tensor:
    """A grey (H×W) or RGB (H×W×3) array of 0-255 as uint8 C×H×W at the dataset's image size."""
    from PIL import Image

    a = np.asarray(array)
    if a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.ndim not in (2, 3):
        raise ConfigError(f"an image must be H×W or H×W×3 pixels, not shape {a.shape}.")
    return _from_pil(Image.fromarray(a), image_shape, invert)


def pixels_from_file(data: bytes, image_shape: Sequence[int], invert: bool = False
                     ) -> torch.Tensor:
    """An uploaded PNG/JPEG as uint8 C×H×W, converted and resized as the dataset's images are."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError, ValueError):
        raise ConfigError("this file is not an image that can be read; upload a PNG or JPEG."
                          ) from None
    return _from_pil(img, image_shape, invert)


def paint_cells(canvas: np.ndarray, cells: Sequence[tuple[int, int]], value: int = 255,
                soft: int = 96) -> np.ndarray:
    """A copy of a grey H×W canvas with ``cells`` (row, column) painted, their neighbours soft.

    The soft rim imitates a pen's anti-aliased edge, as MNIST digits have.
    """
    out = np.array(canvas, dtype=np.uint8, copy=True)
    h, w = out.shape
    for r, c in cells:
        for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            rr, cc = r + dr, c + dc
            if 0 <= rr < h and 0 <= cc < w:
                out[rr, cc] = max(int(out[rr, cc]), soft)
    for r, c in cells:
        if 0 <= r < h and 0 <= c < w:
            out[r, c] = value
    return out


def _from_pil(img, image_shape: Sequence[int], invert: bool) -> torch.Tensor:
    from PIL import Image, ImageOps

    c, h, w = (int(v) for v in image_shape)
    img = img.convert("L" if c == 1 else "RGB")
    if invert:  # MNIST digits are white on black; ink on paper is the other way round
        img = ImageOps.invert(img)
    img = img.resize((w, h), Image.Resampling.BILINEAR)
    a = np.asarray(img, dtype=np.uint8)
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    return torch.from_numpy(a.copy())


# ---- a test set: confusion matrix and the most confident mistakes -----------------------------

@dataclass(frozen=True, eq=False)
class Evaluation:
    """Predictions over a test set: labels, predicted classes and their probabilities."""

    labels: np.ndarray  # (N,) int64
    predicted: np.ndarray  # (N,) int64
    confidence: np.ndarray  # (N,) float, probability of the predicted class
    classes: tuple[str, ...]

    @property
    def accuracy(self) -> float:
        return float((self.labels == self.predicted).mean()) if len(self.labels) else 0.0

    @property
    def confusion(self) -> np.ndarray:
        """K×K counts: row = true class, column = predicted class."""
        k = len(self.classes)
        m = np.zeros((k, k), dtype=np.int64)
        np.add.at(m, (self.labels, self.predicted), 1)
        return m

    def mistakes(self, limit: int | None = None, true_class: int | None = None) -> list[int]:
        """Indices of wrong predictions, most confident first."""
        wrong = np.flatnonzero(self.labels != self.predicted)
        if true_class is not None:
            wrong = wrong[self.labels[wrong] == true_class]
        order = wrong[np.argsort(-self.confidence[wrong], kind="stable")]
        return [int(i) for i in (order if limit is None else order[:limit])]


def evaluate(model: nn.Module, dataset: ImageDataset, input_shape: Sequence[int],
             limit: int | None = None, batch_size: int = EVAL_BATCH) -> Evaluation:
    """Classify the test images (batched, no gradients, eval mode)."""
    images, labels = dataset.test_images, dataset.test_labels
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    device = _device(model)
    transform = BatchTransform(dataset.image_shape, tuple(int(v) for v in input_shape),
                               dataset.mean, dataset.std, device)
    preds, confs = [], []
    with model_lock(model), eval_mode(model), torch.no_grad():
        for start in range(0, len(labels), batch_size):
            logits = model(transform(images[start:start + batch_size].to(device)))
            if logits.shape[1] < dataset.num_classes:
                raise ConfigError(f"the model has {logits.shape[1]} outputs but "
                                  f"{dataset.name} has {dataset.num_classes} classes.")
            p = torch.softmax(logits.float(), 1)
            conf, pred = p.max(1)
            preds.append(pred.cpu())
            confs.append(conf.cpu())
    pred = torch.cat(preds).numpy() if preds else np.zeros(0, dtype=np.int64)
    conf = torch.cat(confs).numpy() if confs else np.zeros(0, dtype=np.float32)
    n_out = max(dataset.num_classes, int(pred.max()) + 1 if len(pred) else 0)
    classes = tuple(dataset.classes) + tuple(f"output {i}" for i in
                                             range(dataset.num_classes, n_out))
    return Evaluation(labels.numpy().astype(np.int64), pred.astype(np.int64), conf, classes)


__all__ = ["EVAL_BATCH", "Evaluation", "Forward", "activation_stats", "as_batch",
           "eval_mode", "evaluate", "first_conv", "paint_cells", "pixels_from_array",
           "pixels_from_file", "predict", "prepare", "run_image"]
