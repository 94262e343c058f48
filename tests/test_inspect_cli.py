"""``python -m explorer predict``: probabilities of a run's kept weights for one image."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from explorer.__main__ import main
from explorer.data import offline_mnist
from explorer.models import build
from explorer.registry import get_preset
from explorer.weights import save_weights

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def kept(tmp_path_factory):
    """A LeNet-5 with its weights kept as run 4 of a store in a temporary folder."""
    folder = tmp_path_factory.mktemp("store")
    spec = get_preset("course_lenet5").spec
    model = build(spec).eval()
    result = save_weights(model, folder / "runs.sqlite", 4, spec=spec,
                          extra={"dataset": "offline-mnist"})
    return folder / "runs.sqlite", result.path, model


def _own_probs(model, index):
    data = offline_mnist()
    # The dataset's normalisation written out: (pixel / 255 − mean) / std.
    x = (data.test_images[index].float() / 255 - data.mean[0]) / data.std[0]
    with torch.no_grad():
        return torch.softmax(model(x[None]), 1)[0].tolist()


def test_predict_a_run_id_as_json(kept, capsys):
    store, _, model = kept
    assert main(["predict", "4", "--store", str(store), "--image", "7", "--layer",
                 "features.conv1", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    want = _own_probs(model, 7)
    got = list(out["probabilities"].values())
    assert got == pytest.approx(want, abs=1e-6)
    assert out["predicted"] == list(out["probabilities"])[max(range(10), key=want.__getitem__)]
    data = offline_mnist()
    assert out["label"] == data.classes[int(data.test_labels[7])]
    assert out["layer"]["shape"] == [20, 28, 28]  # 20 filters of 5×5 with padding 2 on 28×28


def test_predict_a_weights_file_as_a_table_in_a_subprocess(kept):
    _, path, model = kept
    proc = subprocess.run([sys.executable, "-m", "explorer", "predict", str(path), "--image",
                           "0"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("run-4.safetensors (lenet, input 1×28×28) on offline-mnist image 0")
    want = _own_probs(model, 0)
    best = max(range(10), key=want.__getitem__)
    # classes sorted by probability, the likeliest first
    assert lines[1].strip().startswith(offline_mnist().classes[best])
    assert f"{want[best]:.2%}" in lines[1]


def test_predict_an_image_file(kept, tmp_path, capsys):
    from PIL import Image

    _, path, model = kept
    pixels = offline_mnist().test_images[5][0].numpy()
    Image.fromarray(pixels).save(tmp_path / "digit.png")
    assert main(["predict", str(path), "--image", str(tmp_path / "digit.png"),
                 "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out["probabilities"].values()) == pytest.approx(_own_probs(model, 5), abs=1e-6)
    assert out["label"] is None


@pytest.mark.parametrize("argv, message", [
    (["predict", "99", "--image", "0"], "no weights file"),
    (["predict", "nothing.safetensors", "--image", "0"], "neither a run id nor a weights file"),
    (["predict", "{path}", "--image", "100000"], "past the last of the 1000 test images"),
    (["predict", "{path}", "--image", "0", "--layer", "features.nope"], "no layer named"),
])
def test_predict_errors_are_one_sentence(kept, capsys, argv, message):
    _, path, _ = kept
    argv = [a.replace("{path}", str(path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
