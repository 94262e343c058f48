"""Exports: the standalone PyTorch file rebuilds the same network; ONNX and CSV are readable."""

import subprocess
import sys

import onnx
import pytest
import torch

from explorer.analysis import analyze
from explorer.export import table_csv, to_onnx_bytes, to_pytorch_source
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


def test_onnx_export_is_a_valid_graph():
    spec = get_preset("course_lenet").spec
    proto = onnx.load_from_string(to_onnx_bytes(build(spec), spec.input_shape))
    onnx.checker.check_model(proto)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [1, 28, 28]


def test_table_csv_has_every_row():
    analysis = analyze(get_preset("course_lenet").spec)
    lines = table_csv(analysis.table).strip().splitlines()
    assert len(lines) == len(analysis.table) + 1
    conv1 = next(ln for ln in lines if ln.startswith("features.conv1,"))
    assert ",6x24x24," in conv1  # conv(6,5) on 1×28×28 gives 6×24×24
    assert ",156," in conv1  # 6·1·25 + 6 parameters
