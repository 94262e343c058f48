"""Weights kept as safetensors: round trip through the exported source, limits, the callback."""

import importlib.util
import json
import os
import re
import struct
import types

import pytest
import torch
from safetensors.torch import load_file

from explorer.errors import ConfigError
from explorer.export import to_pytorch_source
from explorer.models import build
from explorer.registry import get_preset
from explorer.runs import RunStore
from explorer.weights import (
    MB,
    WeightsCallback,
    WeightsLimits,
    delete_weights,
    export_weights,
    import_weights,
    load_into,
    load_weights,
    model_from_weights,
    read_weights,
    run_files,
    save_weights,
    weights_dir,
    weights_note,
    weights_path,
)


def _source_module(tmp_path, model, shape) -> types.ModuleType:
    path = tmp_path / "exported_net.py"
    path.write_text(to_pytorch_source(model, shape), encoding="utf-8")
    spec = importlib.util.spec_from_file_location("exported_net", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("preset", ["course_lenet5", "course_resnet_3x4_28"])
def test_store_to_safetensors_to_exported_source_gives_the_same_logits(tmp_path, preset):
    spec = get_preset(preset).spec
    model = build(spec)
    with torch.no_grad():  # make the BN running statistics non-trivial, as after training
        model.train()(torch.randn(8, *spec.input_shape))
    model.eval()
    store = RunStore(tmp_path / "runs.sqlite")
    run_id = store.create_run("kept", spec.to_dict(), {"epochs": 1}, status="completed")
    result = save_weights(model, store, run_id, spec=spec)
    assert result.saved and result.path == tmp_path / "weights" / f"run-{run_id}.safetensors"

    # The file is safetensors: an 8-byte little-endian header length, then a JSON header.
    raw = result.path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    assert set(header) - {"__metadata__"} == set(model.state_dict())
    assert json.loads(header["__metadata__"]["spec"]) == spec.to_dict()

    exported = _source_module(tmp_path, model, spec.input_shape).build_model()
    exported.load_state_dict(load_file(result.path), strict=True)  # plain safetensors API
    exported.eval()
    x = torch.randn(4, *spec.input_shape)
    with torch.no_grad():
        want, got = model(x), exported(x)
    assert torch.allclose(want, got, atol=1e-6, rtol=0)

    # And back into a model built from the run's spec.
    spec2, rebuilt = model_from_weights(load_weights(store, run_id))
    assert spec2 == spec
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), want, atol=1e-6, rtol=0)


def test_channels_last_weights_are_saved_as_their_values(tmp_path):
    spec = get_preset("course_lenet5").spec
    model = build(spec).to(memory_format=torch.channels_last)
    save_weights(model, tmp_path, 1, spec=spec)
    state = read_weights(weights_path(tmp_path, 1)).state_dict
    for k, v in model.state_dict().items():
        assert torch.equal(state[k], v)


def test_weights_dir_of_a_store_file_and_of_a_folder(tmp_path):
    assert weights_dir(tmp_path / "runs.sqlite") == tmp_path / "weights"
    assert weights_dir(tmp_path) == tmp_path
    with pytest.raises(ConfigError, match="in memory"):
        weights_dir(":memory:")


def _linear(n_floats: int) -> torch.nn.Module:
    m = torch.nn.Linear(n_floats, 1, bias=False)  # n_floats × 4 bytes of weights
    return m


def test_a_run_over_the_per_run_limit_is_refused_with_a_sentence(tmp_path):
    limits = WeightsLimits(per_run=2_000, total=10 * MB)
    result = save_weights(_linear(1_000), tmp_path, 7, limits=limits)  # 4,000 bytes + header
    assert not result.saved and not weights_path(tmp_path, 7).exists()
    note = weights_note(tmp_path, 7)
    assert note == result.notes[0]
    # 1,000 float32 weights are 4,000 bytes; the header adds about a hundred.
    assert re.match(r"Run 7's final weights \(4\.[12] kB\) were not kept", note)
    assert "EXPLORER_WEIGHTS_MAX_RUN_MB" in note


def test_a_file_over_the_server_limit_is_refused(tmp_path):
    limits = WeightsLimits(per_run=10 * MB, total=3_000)
    result = save_weights(_linear(1_000), tmp_path, 2, limits=limits)
    assert not result.saved
    assert "the server keeps at most" in weights_note(tmp_path, 2)


def test_the_oldest_runs_are_evicted_to_make_room_with_a_sentence_each(tmp_path):
    # Each file: 4,000 bytes of weights plus a header of about 150 bytes; three fit in 13 kB.
    limits = WeightsLimits(per_run=10 * MB, total=13_000)
    for run_id in (1, 2, 3):
        assert save_weights(_linear(1_000), tmp_path, run_id, limits=limits).saved
        os.utime(weights_path(tmp_path, run_id), (run_id, run_id))  # 1 is the oldest
    result = save_weights(_linear(1_000), tmp_path, 4, limits=limits)
    assert result.saved
    assert not weights_path(tmp_path, 1).exists()
    assert all(weights_path(tmp_path, r).exists() for r in (2, 3, 4))
    assert len(result.notes) == 1
    assert result.notes[0].startswith("Run 1's final weights were deleted on ")
    assert "to make room for run 4's" in result.notes[0]
    assert weights_note(tmp_path, 1) == result.notes[0]
    assert weights_note(tmp_path, 2) is None


def test_limits_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("EXPLORER_WEIGHTS_MAX_RUN_MB", "1.5")
    monkeypatch.setenv("EXPLORER_WEIGHTS_MAX_TOTAL_MB", "30")
    limits = WeightsLimits.from_env()
    assert (limits.per_run, limits.total) == (1_500_000, 30_000_000)
    monkeypatch.setenv("EXPLORER_WEIGHTS_MAX_RUN_MB", "lots")
    with pytest.raises(ConfigError, match="number of megabytes"):
        WeightsLimits.from_env()
    monkeypatch.delenv("EXPLORER_WEIGHTS_MAX_RUN_MB")
    monkeypatch.delenv("EXPLORER_WEIGHTS_MAX_TOTAL_MB")
    assert WeightsLimits.from_env().per_run == 200 * MB


def test_weights_that_do_not_fit_the_model_are_a_sentence(tmp_path):
    save_weights(_linear(10), tmp_path, 1)
    with pytest.raises(ConfigError, match="do not fit this model"):
        load_into(_linear(11), load_weights(tmp_path, 1))
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match="not a safetensors"):
        read_weights(tmp_path / "broken.safetensors")
    with pytest.raises(ConfigError, match="no weights file"):
        load_weights(tmp_path, 99)


def test_the_callback_keeps_epochs_of_small_models_and_the_final_weights(tmp_path):
    from explorer.data import offline_mnist
    from explorer.training import TrainConfig, train

    spec = get_preset("course_lenet5").spec
    model = build(spec)
    data = offline_mnist().subset(256, 64)
    cb = WeightsCallback(tmp_path / "runs.sqlite", 5, spec=spec)
    train(model, spec.input_shape, 10, data, TrainConfig(epochs=2, batch_size=64, device="cpu",
                                                         lr=0.05), callbacks=[cb])
    files = [p.name for p in run_files(tmp_path / "runs.sqlite", 5)]
    assert files == ["run-5-epoch1.safetensors", "run-5-epoch2.safetensors", "run-5.safetensors"]
    final = read_weights(tmp_path / "weights" / "run-5.safetensors").state_dict
    for k, v in model.state_dict().items():
        assert torch.equal(final[k], v.cpu())
    assert delete_weights(tmp_path / "runs.sqlite", 5) == 3
    assert run_files(tmp_path / "runs.sqlite", 5) == []


def test_a_failed_run_keeps_no_weights(tmp_path):
    cb = WeightsCallback(tmp_path, 3, every_epoch=False)
    cb.on_run_end(types.SimpleNamespace(model=_linear(4)), "failed")
    assert run_files(tmp_path, 3) == []
    cb.on_run_end(types.SimpleNamespace(model=_linear(4)), "stopped")
    assert [p.name for p in run_files(tmp_path, 3)] == ["run-3.safetensors"]


def test_weights_travel_with_an_exported_run_as_base64(tmp_path):
    import base64

    spec = get_preset("course_lenet5").spec
    model = build(spec).eval()
    save_weights(model, tmp_path / "a", 3, spec=spec)
    text = export_weights(tmp_path / "a", 3)
    # Base64 of the file's bytes, as any base64 decoder reads it.
    assert base64.b64decode(text) == weights_path(tmp_path / "a", 3).read_bytes()
    assert export_weights(tmp_path / "a", 4) is None
    assert import_weights(text, tmp_path / "b", 9).saved
    _, again = model_from_weights(load_weights(tmp_path / "b", 9))
    x = torch.randn(2, *spec.input_shape)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    with pytest.raises(ConfigError, match="not base64"):
        import_weights("%%%", tmp_path / "b", 10)
    with pytest.raises(ConfigError, match="not a safetensors"):
        import_weights(base64.b64encode(b"pickle?").decode(), tmp_path / "b", 10)
    limited = import_weights(text, tmp_path / "b", 11, limits=WeightsLimits(per_run=10))
    assert not limited.saved and "were not kept" in weights_note(tmp_path / "b", 11)
