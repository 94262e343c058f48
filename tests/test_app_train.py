"""AppTest of the Train page: start a tiny run, watch it finish, reattach from the URL."""

import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

from explorer.runs import EXPORT_FORMAT

APP = str(Path(__file__).resolve().parent.parent / "app.py")


def train_page(query: dict | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    at.switch_page("pages/train.py").run()  # as a link to /train opens it
    assert not at.exception, at.exception
    return at


def wait_done(at: AppTest, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        at.run()
        if any(s in x.value for x in at.info for s in ("completed", "stopped", "failed")):
            return
        time.sleep(0.5)
    raise AssertionError("the run did not finish in time")


def test_start_a_tiny_run_and_see_its_curves():
    at = train_page()
    at.radio(key="tr_source").set_value("Preset").run()
    at.selectbox(key="tr_preset").select("course_lenet5").run()
    at.number_input(key="tr_epochs").set_value(1).run()
    next(b for b in at.button if b.label == "Start training").click().run()
    assert not at.error, [e.value for e in at.error]
    run_id = int(at.query_params["run"][0] if isinstance(at.query_params["run"], list)
                 else at.query_params["run"])
    wait_done(at)
    assert any(f"Run {run_id} completed" in x.value for x in at.info)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Loss"] != "–" and metrics["Test acc"].endswith("%")
    # The loss and accuracy figures carry data points.
    charts = at.get("plotly_chart")
    assert len(charts) >= 2
    # The history lists the run; overlaying it draws two more figures.
    at.multiselect(key="tr_overlay").select(run_id).run()
    assert not at.exception and len(at.get("plotly_chart")) >= 4

    # A page reload (a new session) with ?run=ID reattaches to the same run.
    again = train_page({"run": str(run_id)})
    assert any(f"Run {run_id} completed" in x.value for x in again.info)


def test_missing_dataset_is_a_sentence_naming_the_directory(tmp_path):
    at = train_page()
    at.radio(key="tr_source").set_value("Preset").run()
    at.selectbox(key="tr_data").select("fashion-mnist").run()
    at.text_input(key="tr_dir").set_value(str(tmp_path)).run()
    next(b for b in at.button if b.label == "Start training").click().run()
    assert not at.exception
    assert at.error and str(tmp_path) in at.error[0].value
    assert "train-images-idx3-ubyte" in at.error[0].value


def test_bad_setting_is_a_sentence():
    at = train_page()
    at.radio(key="tr_source").set_value("Preset").run()
    at.selectbox(key="tr_preset").select("course_lenet").run()
    at.number_input(key="tr_wd").set_value(0.0).run()
    at.number_input(key="tr_momentum").set_value(0.999).run()
    at.selectbox(key="tr_optimizer").select("adam").run()
    next(b for b in at.button if b.label == "Start training").click().run()
    assert not at.exception and not at.error  # a valid config: queued
    assert "run" in at.query_params


def stored_run(spec_dict: dict, test_acc: float) -> dict:
    """An exported run as another server's Train page would write it."""
    return {"format": EXPORT_FORMAT, "version": 1, "name": "elsewhere", "spec": spec_dict,
            "config": {"epochs": 1}, "status": "completed", "error": None,
            "created_at": 1.0, "started_at": 2.0, "finished_at": 3.0,
            "metrics": [{"kind": "step", "step": s, "epoch": 1, "values": {"loss": 2.0 / s}}
                        for s in (1, 2, 3)]
            + [{"kind": "epoch", "step": 3, "epoch": 1, "values": {"test_acc": test_acc}}]}


def test_runs_import_from_a_file_and_bad_files_store_nothing():
    from explorer.io import runs_to_json
    from explorer.registry import get_preset
    from explorer.runs import RunStore

    spec = get_preset("course_lenet5").spec.to_dict()
    good = stored_run(spec, 0.75)
    before = len(RunStore().list_runs())
    at = train_page()
    at.file_uploader(key="tr_import").upload("bad.json", b"{oops", "application/json").run()
    assert not at.exception and "not valid JSON" in at.error[0].value
    assert len(RunStore().list_runs()) == before
    at.file_uploader(key="tr_import").upload(
        "runs.json", runs_to_json([good]).encode(), "application/json").run()
    assert not at.exception and "Imported 1 run" in at.success[0].value
    assert len(RunStore().list_runs()) == before + 1

    # The Compare page overlays the stored runs of the compared models.
    cmp = AppTest.from_file(APP, default_timeout=120)
    cmp.query_params["cmp_models"] = "course_lenet5,course_lenet"
    cmp.query_params["cmp_view"] = "runs"
    cmp.switch_page("pages/compare.py").run()
    assert not cmp.exception
    assert len(cmp.get("plotly_chart")) == 2


def test_train_settings_round_trip_through_the_url():
    at = train_page({"tr_lr": "0.05", "tr_epochs": "7", "tr_optimizer": "adamw",
                     "tr_preset": "course_nin", "tr_data": "mnist"})
    assert at.number_input(key="tr_lr").value == 0.05
    assert at.number_input(key="tr_epochs").value == 7
    assert at.selectbox(key="tr_optimizer").value == "adamw"
    assert at.selectbox(key="tr_data").value == "mnist"
    at.number_input(key="tr_batch").set_value(64).run()
    query = {k: v[0] if isinstance(v, list) else v for k, v in at.query_params.items()}
    assert query["tr_batch"] == "64" and query["tr_preset"] == "course_nin"
    again = train_page(query)
    assert again.number_input(key="tr_batch").value == 64
    assert again.number_input(key="tr_lr").value == 0.05
