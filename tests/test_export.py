"""Exports: the standalone PyTorch file rebuilds the same network; ONNX and CSV are readable."""

import subprocess
import sys
import warnings

import numpy as np
import onnx
import pytest
import torch
from background import training_beside
from onnx.reference import ReferenceEvaluator
from torch import nn

from explorer.analysis import analyze
from explorer.export import _export_onnx, table_csv, to_onnx_bytes, to_pytorch_source
from explorer.models import build
from explorer.registry import get_preset


# One network per kind of block: residual, Inception, dense, grouped bottleneck, plain + BN.
@pytest.mark.parametrize("name", ["course_resnet18", "course_googlenet", "course_densenet",
                                  "course_resnext", "course_bn_lenet"])
def test_exported_source_runs_alone_and_rebuilds_the_model(name, tmp_path):
    spec = get_preset(name).spec
    model = build(spec)
    path = tmp_path / f"{name}.py"
    path.write_text(to_pytorch_source(model, spec.input_shape, name, spec.to_json(None)))
    # The file needs only torch: run it in a fresh interpreter from an empty directory.
    out = subprocess.run([sys.executable, str(path)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300, check=True).stdout
    params = sum(p.numel() for p in model.parameters())
    assert f"output (1, {spec.num_classes}), {params:,} parameters" in out
    assert "explorer" not in path.read_text().split('"""', 2)[2]  # no import of the explorer


def test_exported_source_loads_the_state_dict_and_computes_the_same(tmp_path):
    spec = get_preset("course_resnet18").spec
    model = build(spec).eval()
    namespace: dict = {}
    exec(compile(to_pytorch_source(model, spec.input_shape), "exported", "exec"), namespace)
    twin = namespace["build_model"]().eval()
    twin.load_state_dict(model.state_dict())  # strict: the same names and shapes
    x = torch.randn(2, *spec.input_shape)
    with torch.no_grad():
        assert torch.equal(model(x), twin(x))


def test_onnx_is_a_valid_graph_that_computes_what_the_model_computes_in_eval_mode():
    spec = get_preset("course_bn_lenet").spec  # convs, BN, sigmoid, pooling, linear
    torch.manual_seed(0)
    model = build(spec)
    with torch.no_grad():  # non-trivial running statistics, so eval-mode BN matters
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    proto = onnx.load_from_string(to_onnx_bytes(model, spec.input_shape))
    assert model.training  # the caller's model stays in train mode
    onnx.checker.check_model(proto)
    assert proto.opset_import[0].version == 18
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [1, 28, 28]
    assert dims[0].dim_param  # the batch dimension is symbolic
    x = torch.randn(3, *spec.input_shape)  # batch 3, where the export saw 2
    # Second method: onnx's own reference interpreter runs the file.
    (got,) = ReferenceEvaluator(proto).run(None, {"image": x.numpy()})
    with torch.no_grad():
        want = model.eval()(x).numpy()
    assert got.shape == (3, spec.num_classes)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)


def test_the_onnx_export_itself_warns_nothing_deprecated():
    spec = get_preset("course_lenet").spec
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _export_onnx(build(spec), spec.input_shape)  # the helper process's call, run here
    bad = [w for w in caught if issubclass(w.category, DeprecationWarning | FutureWarning)]
    assert not bad, [str(w.message) for w in bad]


def test_onnx_export_beside_a_training_thread():
    """torch.export sets process-wide flags while it runs: in-process, a training thread saw
    torch.compiler.is_exporting() turn True and once failed (KeyError 'custom' in zero_grad)."""
    with training_beside(lambda ctx: torch.compiler.is_exporting()) as run:
        before = len(run.seen)
        spec = get_preset("course_lenet").spec
        onnx.checker.check_model(onnx.load_from_string(to_onnx_bytes(build(spec),
                                                                     spec.input_shape)))
        during = len(run.seen) - before
    assert run.error is None, run.error
    assert run.result.status == "stopped"
    assert during > 0 and not any(run.seen)


def test_table_csv_has_every_row():
    analysis = analyze(get_preset("course_lenet").spec)
    lines = table_csv(analysis.table).strip().splitlines()
    assert len(lines) == len(analysis.table) + 1
    conv1 = next(ln for ln in lines if ln.startswith("features.conv1,"))
    assert ",6x24x24," in conv1  # conv(6,5) on 1×28×28 gives 6×24×24
    assert ",156," in conv1  # 6·1·25 + 6 parameters
