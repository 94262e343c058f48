"""The command line: presets, summary (table/csv/json), bench, and errors as sentences."""

import json
import subprocess
import sys

from explorer.__main__ import main
from explorer.registry import PRESETS


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "explorer", *args], capture_output=True,
                          text=True, timeout=300)


def test_presets_lists_every_name_with_a_description(capsys):
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split("\t")[0] for ln in lines] == list(PRESETS)
    assert all(len(ln.split("\t")) == 2 and ln.split("\t")[1] for ln in lines)


def test_summary_json_of_the_classic_lenet(capsys):
    assert main(["summary", "course_lenet", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["name"] == "course_lenet" and data["input"] == [1, 28, 28]
    # 156 + 2416 + 30840 + 10164 + 850, as counted in tests/test_models.py.
    assert data["total_params"] == data["trainable_params"] == 44426
    # conv 5×5 → 5; pool 2/2 → 6, jump 2; conv 5×5 → 6 + 4·2 = 14; pool → 14 + 1·2 = 16.
    assert data["receptive_field"] == [16, 16] and data["jump"] == [4, 4]  # height, width
    assert data["receptive_field_at"] == "output of features.pool2"
    conv1 = next(x for x in data["layers"] if x["name"] == "features.conv1")
    # Lecture MACs 6·24·24·(1·5·5) = 86,400; torchinfo adds the bias 6·24·24 = 3,456.
    assert (conv1["output_shape"], conv1["params"], conv1["macs"]) == ([6, 24, 24], 156, 89856)
    assert conv1["receptive_field"] == [5, 5] and conv1["jump"] == [1, 1]
    # past the last spatial map (flatten, the linear layers) no layer has a receptive field
    fc = next(x for x in data["layers"] if x["name"] == "head.fc")
    assert fc["receptive_field"] is None and fc["jump"] is None
    assert {"name", "type", "output_shape", "params", "macs", "receptive_field",
            "jump"} <= set(conv1)


def test_summary_overrides_and_formats(capsys, tmp_path):
    spec = tmp_path / "vgg.json"
    spec.write_text('{"family": "vgg", "arch": [[1, 8], [1, 16]], "hidden": [32]}')
    assert main(["summary", str(spec), "--input", "3,32,32", "--classes", "5",
                 "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("name,type")
    assert "head.fc,Linear" in out
    assert main(["summary", str(spec), "--input", "3,32,32"]) == 0
    table = capsys.readouterr().out
    # conv(8,3,p1) on 3 channels: 8·3·9 + 8 = 224 parameters, shown in the table.
    assert "224" in table and "receptive field" in table


def test_errors_are_one_sentence_and_exit_2(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"family": "vgg", "arch": [[1, 0]]}')
    for args in (["summary", "resnet-18"], ["summary", str(bad)],
                 ["summary", "course_vgg11", "--input", "1,28,28"],
                 ["summary", str(tmp_path / "missing.json")],
                 ["summary", "course_lenet", "--input", "1,28"],
                 ["conv", "--input", "1,4,4", "--out", "2", "--kernel", "7"],
                 ["conv", "--input", "1,4,4", "--out", "2", "--kernel", "abc"],
                 ["summary"], ["bogus"]):
        proc = run(*args)
        assert proc.returncode == 2, args
        assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: ")
        assert len(proc.stderr.strip().splitlines()) == 1


def test_bench_analyze_prints_json():
    proc = run("bench", "analyze", "--preset", "course_lenet", "--repeats", "2")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["analyze_median_s"] > 0 and data["torchinfo_median_s"] > 0
    # ratio = analyze / torchinfo, up to the 4-decimal rounding of the printed medians.
    ratio, a, t = data["ratio"], data["analyze_median_s"], data["torchinfo_median_s"]
    assert abs(ratio * t - a) <= 1e-4 * (1 + ratio)


def test_families_lists_the_registry_with_its_presets(capsys):
    from explorer.families import families

    assert main(["families"]) == 0
    rows = [ln.split("\t") for ln in capsys.readouterr().out.strip().splitlines()]
    assert [r[0] for r in rows] == [f.name for f in families()]
    regnet = next(r for r in rows if r[0] == "regnet")
    assert regnet[2].split(", ") == ["course_regnetx32", "regnet_x_400mf", "regnet_x_800mf",
                                     "regnet_y_400mf"]
    assert main(["presets", "--family", "resnext"]) == 0
    names = [ln.split("\t")[0] for ln in capsys.readouterr().out.strip().splitlines()]
    assert names == ["course_resnext", "resnext50_32x4d", "resnext101_32x8d"]
    assert main(["presets", "--family", "resnett"]) == 2
    assert "unknown family 'resnett'; choose one of lenet" in capsys.readouterr().err
