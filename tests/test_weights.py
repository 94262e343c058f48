"""Weights kept as safetensors: round trip through the exported source, limits, the callback."""

import dataclasses
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


# ---- runs exported and imported with their weights (a zip) --------------------------------------

def _trained_run(tmp_path, preset="course_resnet_3x4_28"):
    from explorer.runs import RunStore

    spec = get_preset(preset).spec
    torch.manual_seed(0)
    model = build(spec)
    with torch.no_grad():  # non-trivial BN statistics, as after training
        model.train()(torch.randn(8, *spec.input_shape))
    model.eval()
    store = RunStore(tmp_path / "a" / "runs.sqlite")
    run_id = store.create_run("kept", spec.to_dict(), {"epochs": 1}, status="completed")
    assert save_weights(model, store, run_id, spec=spec).saved
    return spec, model, store, run_id


def test_a_run_exported_with_weights_imports_elsewhere_with_the_same_logits(tmp_path):
    import zipfile
    from io import BytesIO

    from explorer.inspect import run_image
    from explorer.io import export_runs, import_runs_file, runs_export_name
    from explorer.runs import RunStore

    spec, model, store, run_id = _trained_run(tmp_path)
    bare = store.create_run("no weights", spec.to_dict(), {"epochs": 1}, status="failed")
    data = export_runs(store, [run_id, bare], with_weights=True)
    assert runs_export_name(True) == ("runs.zip", "application/zip")
    # An ordinary zip: the runs' JSON and the safetensors file byte for byte.
    with zipfile.ZipFile(BytesIO(data)) as zf:
        assert sorted(zf.namelist()) == ["runs.json", "weights/run-1.safetensors"]
        assert zf.read("weights/run-1.safetensors") == weights_path(store, run_id).read_bytes()
        listed = json.loads(zf.read("runs.json"))["runs"]
        assert [r["weights"] for r in listed] == ["weights/run-1.safetensors", None]

    fresh = RunStore(tmp_path / "b" / "runs.sqlite")
    ids, notes = import_runs_file(fresh, data, "runs.zip")
    assert len(ids) == 2 and notes == []
    assert fresh.get_run(ids[0])["name"] == "kept"
    assert run_files(fresh, ids[1]) == []  # the run without weights stays without
    _, again = model_from_weights(load_weights(fresh, ids[0]))
    torch.manual_seed(1)
    x = torch.randn(*spec.input_shape)
    want = run_image(model, x, keep_maps=False).logits
    got = run_image(again, x, keep_maps=False).logits
    assert torch.allclose(got, want, atol=1e-6, rtol=0)
    assert torch.equal(got, want)  # the same bytes: the same numbers
    # Without weights the export is the JSON it always was, and imports as before.
    text = export_runs(store, [run_id])
    assert runs_export_name(False) == ("runs.json", "application/json")
    assert json.loads(text)["runs"][0]["name"] == "kept"
    ids2, _ = import_runs_file(fresh, text, "runs.json")
    assert run_files(fresh, ids2[0]) == []


def test_an_export_over_the_weights_limit_is_refused_with_a_sentence(tmp_path):
    from explorer.io import export_runs, weights_export_problem

    _, _, store, run_id = _trained_run(tmp_path, "course_lenet5")
    size = weights_path(store, run_id).stat().st_size
    small = WeightsLimits(per_run=size - 1)
    with pytest.raises(ConfigError, match=r"export fewer runs at once, or without their weights"):
        export_runs(store, [run_id], with_weights=True, limits=small)
    # The page asks first, and shows the same sentence instead of the download.
    assert "export fewer runs" in weights_export_problem(store, [run_id], small)
    assert weights_export_problem(store, [run_id], WeightsLimits(per_run=size)) is None
    assert export_runs(store, [run_id], with_weights=True, limits=WeightsLimits(per_run=size))


def _zip(members: dict[str, bytes], method=None) -> bytes:
    import zipfile
    from io import BytesIO

    buffer = BytesIO()
    with zipfile.ZipFile(buffer, "w", method or zipfile.ZIP_STORED) as zf:
        for name, blob in members.items():
            zf.writestr(name, blob)
    return buffer.getvalue()


def test_a_hostile_runs_zip_is_one_sentence_and_stores_nothing(tmp_path):
    import zipfile

    from explorer.io import export_runs, import_runs_file
    from explorer.runs import RunStore

    spec, _, store, run_id = _trained_run(tmp_path, "course_lenet5")
    good = export_runs(store, [run_id], with_weights=True)
    with zipfile.ZipFile(__import__("io").BytesIO(good)) as zf:
        runs_json, blob = zf.read("runs.json"), zf.read("weights/run-1.safetensors")
    other = dataclasses.replace(spec, num_classes=7)  # the same layers, a 7-way classifier
    other_blob = __import__("safetensors.torch", fromlist=["save"]).save(
        {k: v.contiguous() for k, v in build(other).state_dict().items()})
    limits = WeightsLimits(per_run=10 * MB)
    cases = {
        "garbage after the zip magic": (b"PK\x03\x04" + b"\x00" * 100, "broken zip"),
        "no runs.json": (_zip({"weights/run-1.safetensors": blob}), "holds no runs.json"),
        "a pickle for weights": (_zip({"runs.json": runs_json,
                                       "weights/run-1.safetensors": b"\x80\x04pickle"}),
                                 "not a safetensors"),
        "another network's weights": (_zip({"runs.json": runs_json,
                                            "weights/run-1.safetensors": other_blob}),
                                      "do not fit its network"),
        "a zip bomb": (_zip({"runs.json": runs_json,
                             "weights/run-1.safetensors": b"\x00" * (11 * MB)},
                            zipfile.ZIP_DEFLATED), r"holds 10.5 MiB, more than the 9.5 MiB it may"),
        "a path outside": (_zip({"runs.json": runs_json.replace(
            b"weights/run-1.safetensors", b"../../etc/passwd")}), "must name its file"),
        "too many files": (_zip({"runs.json": runs_json,
                                 **{f"x{i}": b"" for i in range(60)}}), "holds 61 files"),
    }
    fresh = RunStore(tmp_path / "b" / "runs.sqlite")
    for case, (data, sentence) in cases.items():
        assert len(data) < 2 * MB or case != "a zip bomb"  # 11 MB of zeros deflate to ~11 kB
        with pytest.raises(ConfigError, match=sentence):
            import_runs_file(fresh, data, "runs.zip", limits=limits)
        assert fresh.list_runs() == [], case
    assert not (tmp_path / "b" / "weights").exists()


def test_imported_weights_over_the_server_limit_are_refused_with_a_note(tmp_path):
    from explorer.io import export_runs, import_runs_file
    from explorer.runs import RunStore

    _, _, store, run_id = _trained_run(tmp_path, "course_lenet5")
    data = export_runs(store, [run_id], with_weights=True)
    fresh = RunStore(tmp_path / "b" / "runs.sqlite")
    size = weights_path(store, run_id).stat().st_size
    ids, notes = import_runs_file(fresh, data, "runs.zip",
                                  limits=WeightsLimits(per_run=size, total=size - 1))
    assert len(ids) == 1 and run_files(fresh, ids[0]) == []
    assert len(notes) == 1 and "were not kept" in notes[0]
    assert weights_note(fresh, ids[0]) == notes[0]
