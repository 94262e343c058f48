"""One image through a network: predictions, feature maps, filters, a test set's errors."""

import io

import numpy as np
import pytest
import torch

from explorer.data import ImageDataset, offline_mnist
from explorer.errors import ConfigError
from explorer.inspect import (
    activation_stats,
    evaluate,
    first_conv,
    paint_cells,
    pixels_from_array,
    pixels_from_file,
    predict,
    prepare,
    run_image,
)
from explorer.models import build
from explorer.registry import get_preset
from explorer.specs import DenseNetSpec, GoogLeNetSpec, Inception, ResNetSpec, Stage

SMALL = {
    "lenet": get_preset("course_lenet5").spec,
    "resnet": ResNetSpec(input_shape=(1, 32, 32), stages=(Stage(1, 8), Stage(1, 16)),
                         stem="small", stem_channels=8),
    "densenet": DenseNetSpec(input_shape=(1, 32, 32), block_config=(2, 2), growth_rate=4,
                             num_init_features=8),
    "googlenet": GoogLeNetSpec(input_shape=(1, 64, 64), stem_channels=(8, 8, 16),
                               stages=((Inception(4, 4, 8, 2, 4, 4),),
                                       (Inception(8, 4, 8, 2, 4, 4),))),
}


@pytest.mark.parametrize("family", list(SMALL))
def test_predictions_equal_the_models_own_forward_pass(family):
    spec = SMALL[family]
    model = build(spec)
    with torch.no_grad():
        model.train()(torch.randn(4, *spec.input_shape))  # BN statistics away from 0 and 1
    running = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(*spec.input_shape)
    fwd = run_image(model, x)
    model.eval()
    with torch.no_grad():
        want = torch.softmax(model(x[None]), 1)[0]
    assert torch.allclose(fwd.probs, want, atol=1e-6)
    assert torch.allclose(predict(model, x), want, atol=1e-6)
    # The model is left in train mode, its statistics untouched.
    model.train()
    assert torch.allclose(run_image(model, x).probs, want, atol=1e-6)
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, running[k])


def test_feature_maps_are_each_modules_output_in_execution_order():
    spec = SMALL["resnet"]
    model = build(spec).eval()
    x = torch.randn(*spec.input_shape)
    fwd = run_image(model, x)
    with torch.no_grad():  # the same layers called by hand, one after the other
        stem = model.stem(x[None])
        block = model.stage1.block1(stem)
        conv1 = model.stage2.block1.conv1(block)
    assert torch.allclose(fwd.maps["stem"], stem[0])
    assert torch.allclose(fwd.maps["stage1.block1"], block[0])
    assert torch.allclose(fwd.maps["stage2.block1.conv1"], conv1[0])
    names = list(fwd.maps)
    assert names.index("stem.conv") < names.index("stem") < names.index("stage1.block1.conv1")
    assert names[-1] == "head"
    assert fwd.maps["head.fc"].shape == (10,)
    assert "stem.conv" in fwd.spatial_layers() and "head.fc" not in fwd.spatial_layers()


def test_activation_stats_by_hand():
    t = torch.tensor([[0.0, 1.0], [3.0, 0.0]])
    s = activation_stats(t)
    # mean 1, deviations -1 0 2 -1: variance 6/4
    assert s == {"shape": [2, 2], "min": 0.0, "max": 3.0, "mean": 1.0,
                 "std": pytest.approx(1.5 ** 0.5), "zero_fraction": 0.5}


def test_first_conv_is_the_stem():
    model = build(SMALL["resnet"])
    name, w = first_conv(model)
    assert name == "stem.conv" and torch.equal(w, model.stem.conv.weight)
    with pytest.raises(ConfigError, match="no convolution"):
        first_conv(torch.nn.Linear(3, 2))


def test_prepare_normalises_as_written_by_hand():
    data = offline_mnist()
    pixels = data.test_images[3]
    x = prepare(pixels, (1, 28, 28), data)
    want = (pixels.float() / 255 - data.mean[0]) / data.std[0]
    assert torch.allclose(x, want, atol=1e-5)
    assert prepare(pixels, (3, 56, 56), data).shape == (3, 56, 56)


def test_an_uploaded_image_is_converted_like_the_datasets():
    from PIL import Image

    a = np.zeros((56, 56, 3), dtype=np.uint8)
    a[:28] = 255  # top half white
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    px = pixels_from_file(buf.getvalue(), (1, 28, 28))
    assert px.shape == (1, 28, 28) and px.dtype == torch.uint8
    assert int(px[0, 2, 5]) == 255 and int(px[0, 25, 5]) == 0
    inverted = pixels_from_file(buf.getvalue(), (1, 28, 28), invert=True)
    assert int(inverted[0, 2, 5]) == 0 and int(inverted[0, 25, 5]) == 255
    rgb = pixels_from_array(a, (3, 32, 32))
    assert rgb.shape == (3, 32, 32)
    with pytest.raises(ConfigError, match="not an image"):
        pixels_from_file(b"no picture", (1, 28, 28))


def test_paint_cells_paints_and_softens_the_rim():
    canvas = paint_cells(np.zeros((5, 5), dtype=np.uint8), [(2, 2)])
    assert canvas[2, 2] == 255 and canvas[1, 2] == canvas[2, 3] == 96 and canvas[0, 0] == 0
    again = paint_cells(canvas, [(2, 3)])
    assert again[2, 2] == 255 and again[2, 3] == 255  # a rim never darkens a painted cell


def test_confusion_matrix_and_mistakes_against_a_second_count():
    data = offline_mnist()
    spec = get_preset("course_lenet5").spec
    model = build(spec)
    ev = evaluate(model, data, spec.input_shape, limit=300, batch_size=64)
    # An independent pass: every image alone, through the model's own forward.
    x = prepare(data.test_images[:300], spec.input_shape, data)
    with torch.no_grad():
        p = torch.softmax(model.eval()(x), 1)
    pred = p.argmax(1).numpy()
    assert np.array_equal(ev.predicted, pred)
    # A second count: each (true, predicted) pair as one number, tallied by numpy.
    truth = data.test_labels[:300].numpy()
    want = np.bincount(truth * 10 + pred, minlength=100).reshape(10, 10)
    assert np.array_equal(ev.confusion, want)
    assert ev.confusion.sum() == 300
    assert ev.accuracy == pytest.approx(float((pred == data.test_labels[:300].numpy()).mean()))
    wrong = ev.mistakes()
    assert set(wrong) == set(np.flatnonzero(pred != data.test_labels[:300].numpy()))
    conf = p.max(1).values.numpy()
    assert all(conf[a] >= conf[b] - 1e-7 for a, b in zip(wrong, wrong[1:], strict=False))
    assert ev.mistakes(limit=3) == wrong[:3]


def test_a_model_with_too_few_outputs_is_a_sentence():
    data = ImageDataset("tiny", torch.zeros(4, 1, 8, 8, dtype=torch.uint8),
                        torch.tensor([0, 1, 2, 0]), torch.zeros(2, 1, 8, 8, dtype=torch.uint8),
                        torch.tensor([0, 2]), ("a", "b", "c"))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    with pytest.raises(ConfigError, match="2 outputs but tiny has 3 classes"):
        evaluate(model, data, (1, 8, 8))
