"""``python -m explorer predict``: a run's (or a weights file's) probabilities for one image.

``RUN_ID_OR_WEIGHTS`` is a run id (its weights lie beside the run store, see explorer.weights) or
a ``.safetensors`` file saved by CNN Explorer; ``--image`` is a test image number of the dataset
or an image file, converted as the dataset's images are. ``--layer`` adds that layer's activation
statistics.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from explorer.errors import ConfigError


def add_parser(sub: Any) -> None:
    """Register the ``predict`` subcommand on ``python -m explorer``'s subparsers."""
    p = sub.add_parser("predict", help="class probabilities of a run's model for one image")
    p.add_argument("source", metavar="RUN_ID_OR_WEIGHTS",
                   help="a run id, or a .safetensors file saved by CNN Explorer")
    p.add_argument("--image", required=True, metavar="N_OR_FILE",
                   help="a test image number, or a PNG/JPEG file")
    p.add_argument("--layer", metavar="NAME", help="also print this layer's activation statistics")
    p.add_argument("--dataset", help="dataset of the test images and of the normalisation "
                   "(default: the one saved with the weights, else offline-mnist)")
    p.add_argument("--data-dir", default="", help="where the dataset's files lie")
    p.add_argument("--store", help="run store file (default: $EXPLORER_RUNS_DB or runs.sqlite)")
    p.add_argument("--invert", action="store_true",
                   help="invert an image file (dark ink on light paper, for MNIST-like data)")
    p.add_argument("--format", choices=["table", "json"], default="table")


def _weights(source: str, store: str | None):
    from explorer.weights import read_weights, weights_path

    if source.isdigit():
        from explorer.runs import default_store_path

        return f"run {source}", read_weights(weights_path(store or default_store_path(),
                                                           int(source)))
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"{source!r} is neither a run id nor a weights file; give a run id "
                          f"such as 3 or the path of a .safetensors file.")
    return path.name, read_weights(path)


def predict_json(args: argparse.Namespace) -> dict[str, Any]:
    """The documented JSON of ``predict``."""
    from explorer.data import load_dataset
    from explorer.inspect import activation_stats, pixels_from_file, prepare, run_image
    from explorer.weights import model_from_weights

    name, weights = _weights(args.source, args.store)
    spec, model = model_from_weights(weights)
    data = load_dataset(args.dataset or weights.metadata.get("dataset") or "offline-mnist",
                        args.data_dir)
    label = None
    if args.image.isdigit():
        index = int(args.image)
        if index >= len(data.test_labels):
            raise ConfigError(f"--image {index} is past the last of the {len(data.test_labels)} "
                              f"test images; use 0 to {len(data.test_labels) - 1}.")
        pixels, label, image = data.test_images[index], int(data.test_labels[index]), index
    else:
        path = Path(args.image)
        if not path.is_file():
            raise ConfigError(f"--image {args.image!r} is neither a test image number nor a "
                              f"file.")
        pixels, image = pixels_from_file(path.read_bytes(), data.image_shape, args.invert), str(
            path)
    fwd = run_image(model, prepare(pixels, spec.input_shape, data),
                    layers=[args.layer] if args.layer else [])
    probs = [float(p) for p in fwd.probs]
    classes = list(data.classes) + [f"output {i}" for i in range(len(data.classes), len(probs))]
    top = max(range(len(probs)), key=probs.__getitem__)
    out: dict[str, Any] = {
        "source": name, "family": spec.family, "input": list(spec.input_shape),
        "dataset": data.name, "image": image, "label": None if label is None else classes[label],
        "predicted": classes[top], "probabilities": dict(zip(classes, probs, strict=True)),
    }
    if args.layer:
        out["layer"] = {"name": args.layer, **activation_stats(fwd.maps[args.layer])}
    return out


def run(args: argparse.Namespace) -> None:
    """Print the probabilities (and the layer's statistics) as a table or JSON."""
    out = predict_json(args)
    if args.format == "json":
        print(json.dumps(out, indent=2))
        return
    print(f"{out['source']} ({out['family']}, input {'×'.join(map(str, out['input']))}) on "
          f"{out['dataset']} image {out['image']}"
          + (f", true class {out['label']}" if out["label"] is not None else ""))
    for cls, p in sorted(out["probabilities"].items(), key=lambda kv: -kv[1]):
        print(f"{cls:>14}  {p:7.2%}  {'█' * round(p * 40)}")
    if "layer" in out:
        s = out["layer"]
        print(f"\n{s['name']}: shape {'×'.join(map(str, s['shape']))}, min {s['min']:.4g}, "
              f"max {s['max']:.4g}, mean {s['mean']:.4g}, std {s['std']:.4g}, "
              f"{s['zero_fraction']:.1%} zeros")
