"""AppTest of the Train page: start a tiny run, watch it finish, reattach from the URL."""

import re
import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

from explorer.runs import EXPORT_FORMAT

APP = str(Path(__file__).resolve().parent.parent / "app.py")


def rendered(markdown: str) -> str:
    """The text a message shows: the page escapes what a visitor typed (CommonMark 2.4)."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown)


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
    assert any(f"Your run {run_id} completed" in x.value for x in at.info)
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
    # A visitor names a folder inside the server's data directory, which appears by the name of
    # its setting: no server path is shown.
    at.text_input(key="tr_dir").set_value("course").run()
    next(b for b in at.button if b.label == "Start training").click().run()
    assert not at.exception
    message = rendered(at.error[0].value) if at.error else ""
    assert "EXPLORER_DATA_DIR/course" in message
    assert "train-images-idx3-ubyte" in message and "/tmp" not in message
    at.text_input(key="tr_dir").set_value(str(tmp_path)).run()  # any other path is refused
    next(b for b in at.button if b.label == "Start training").click().run()
    assert not at.exception and "other paths on the server" in rendered(at.error[0].value)


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
    assert not at.exception and "not valid JSON" in rendered(at.error[0].value)
    assert len(RunStore().list_runs()) == before
    at.file_uploader(key="tr_import").upload(
        "runs.json", runs_to_json([good]).encode(), "application/json").run()
    assert not at.exception and "Imported 1 run" in at.success[0].value
    assert len(RunStore().list_runs()) == before + 1

    # The Compare page overlays the stored runs of the compared models.
    cmp = AppTest.from_file(APP, default_timeout=120)
    cmp.query_params["cmp_models"] = "course_lenet5,course_lenet"
    cmp.query_params["cmp_view"] = "Training runs"
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


def test_settings_survive_another_page_and_the_model_source_toggle():
    at = train_page()
    at.radio(key="tr_source").set_value("Preset").run()
    at.selectbox(key="tr_preset").select("course_nin").run()
    at.number_input(key="tr_epochs").set_value(7).run()
    at.number_input(key="tr_lr").set_value(0.05).run()
    at.switch_page("pages/build.py").run()  # Streamlit drops the Train widgets' state here
    at.switch_page("pages/train.py").run()
    assert not at.exception, at.exception
    assert at.number_input(key="tr_epochs").value == 7
    assert at.number_input(key="tr_lr").value == 0.05
    assert at.selectbox(key="tr_preset").value == "course_nin"
    # The Build page's model hides the preset box; changing a setting then must not lose it.
    at.radio(key="tr_source").set_value("Build page").run()
    at.number_input(key="tr_epochs").set_value(2).run()
    assert not at.exception, at.exception
    at.radio(key="tr_source").set_value("Preset").run()
    assert at.selectbox(key="tr_preset").value == "course_nin"
    assert at.number_input(key="tr_epochs").value == 2


def test_a_link_with_settings_out_of_range_says_so_and_keeps_the_defaults():
    at = train_page({"tr_lr": "100", "tr_epochs": "1000", "tr_momentum": "nan",
                     "tr_optimizer": "rmsprop", "tr_batch": "64"})
    warning = at.warning[0].value
    assert "tr_lr=100 (from 1e-06 to 10)" in warning
    assert "tr_epochs=1000 (from 1 to 200)" in warning
    assert "tr_momentum=nan" in warning and "tr_optimizer=rmsprop (one of sgd," in warning
    assert "tr_batch" not in warning
    # The defaults of the page (lr 0.1, 3 epochs, momentum 0.9, SGD); the valid batch stays.
    assert at.number_input(key="tr_lr").value == 0.1
    assert at.number_input(key="tr_epochs").value == 3
    assert at.number_input(key="tr_momentum").value == 0.9
    assert at.selectbox(key="tr_optimizer").value == "sgd"
    assert at.number_input(key="tr_batch").value == 64


def test_a_link_to_a_run_that_does_not_exist_says_so_and_leaves_the_url():
    at = train_page({"run": "987654"})
    assert not at.exception
    assert any("There is no run 987654 on this server" in x.value for x in at.info)
    assert "run" not in at.query_params


def test_history_survives_a_stored_time_no_calendar_shows():
    import sqlite3

    from explorer.registry import get_preset
    from explorer.runs import RunStore

    store = RunStore()
    spec = get_preset("course_lenet5").spec.to_dict()
    run_id = store.create_run("from an old bug", spec, {"epochs": 1}, status="completed")
    with sqlite3.connect(store.path) as conn:  # pandas' calendar ends in the year 2262
        conn.execute("UPDATE runs SET created_at=1e20 WHERE id=?", (run_id,))
    at = train_page()
    assert not at.exception, at.exception
    history = at.dataframe[0].value
    assert run_id in list(history["id"])
    # A completed run has no message: its cell is blank (Streamlit writes a missing one "None").
    assert history.loc[history["id"] == run_id, "error"].tolist() == [""]
    store.delete_run(run_id)


def button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def test_a_visitor_deletes_only_their_own_runs_after_a_confirmation():
    from explorer.registry import get_preset
    from explorer.runs import RunStore

    store = RunStore()
    spec = get_preset("course_lenet5").spec.to_dict()
    at = train_page()
    me = at.session_state["visitor"]
    theirs = store.create_run("someone else's", spec, {"epochs": 1}, status="completed",
                              session="another browser")
    mine = store.create_run("mine", spec, {"epochs": 1}, status="completed", session=me)
    at.run()
    at.multiselect(key="tr_overlay").select(theirs).run()
    assert not [b for b in at.button if b.label.startswith("Delete")]
    assert any("Only the visitor who started a run" in c.value for c in at.caption)
    at.multiselect(key="tr_overlay").select(mine).run()
    button(at, "Delete your run…").click().run()
    assert any(f"Delete run #{mine} for good?" in w.value and "cannot be undone" in w.value
               for w in at.warning), [w.value for w in at.warning]
    # The selection changes after the question: the question goes, and Yes with it (it would
    # have deleted a run no longer chosen).
    at.multiselect(key="tr_overlay").unselect(mine).run()
    assert not any("for good?" in w.value for w in at.warning)
    assert not [b for b in at.button if b.label == "Yes, delete"]
    at.multiselect(key="tr_overlay").select(mine).run()  # chosen again: asked again first
    assert not any("for good?" in w.value for w in at.warning)
    button(at, "Delete your run…").click().run()
    assert mine in [r["id"] for r in store.list_runs(limit=1000)]  # not before the yes
    button(at, "Yes, delete").click().run()
    assert not at.exception, at.exception
    ids = [r["id"] for r in store.list_runs(limit=1000)]
    assert theirs in ids and mine not in ids
    assert at.multiselect(key="tr_overlay").value == [theirs]
    store.delete_run(theirs)


def test_the_teacher_key_lets_the_teacher_delete_any_run(monkeypatch):
    from explorer.registry import get_preset
    from explorer.runs import RunStore

    monkeypatch.setenv("EXPLORER_TEACHER_KEY", "blackboard")
    store = RunStore()
    theirs = store.create_run("a student's", get_preset("course_lenet5").spec.to_dict(),
                              {"epochs": 1}, status="completed", session="a student")
    at = train_page()
    at.text_input(key="teacher_key_input").input("chalk").run()
    assert any("not this server's teacher key" in w.value for w in at.sidebar.warning)
    at.text_input(key="teacher_key_input").input("blackboard").run()
    assert any("Teacher:" in c.value for c in at.sidebar.caption)
    training = store.create_run("training", get_preset("course_lenet5").spec.to_dict(),
                                {"epochs": 1}, status="running", session="another student")
    at.run()  # the history lists it
    at.multiselect(key="tr_overlay").select(theirs).select(training).run()
    # Inspect opens finished runs: a link for the completed one, none for the one training.
    links = [e.proto.label for e in at.get("page_link")]
    assert f"Inspect run #{theirs}" in links and f"Inspect run #{training}" not in links, links
    button(at, "Delete 2 runs…").click().run()
    # The question says which run trains, and what Yes does to it.
    assert any(f"Delete runs #{theirs} and #{training} for good?" in w.value
               and f"#{training} is training: Yes stops it, and you delete it once stopped."
               in w.value for w in at.warning), [w.value for w in at.warning]
    at.multiselect(key="tr_overlay").unselect(training).run()
    button(at, "Delete run…").click().run()
    button(at, "Yes, delete").click().run()
    ids = [r["id"] for r in store.list_runs(limit=1000)]
    assert theirs not in ids and training in ids
    store.set_status(training, "stopped")  # no worker trains it: out of the other tests' way
    store.delete_run(training)


def test_a_data_directory_survives_switching_to_the_offline_set_and_back():
    # The directory box is drawn only for datasets read from disk; its first value is set
    # before it is ever drawn, which Streamlit would bring back once the box is hidden again.
    at = train_page()
    at.radio(key="tr_source").set_value("Preset").run()
    at.selectbox(key="tr_data").select("fashion-mnist").run()
    at.text_input(key="tr_dir").set_value("/srv/course-data").run()
    at.selectbox(key="tr_data").select("offline-mnist").run()
    at.number_input(key="tr_epochs").set_value(2).run()
    at.selectbox(key="tr_data").select("fashion-mnist").run()
    assert not at.exception
    assert at.text_input(key="tr_dir").value == "/srv/course-data"


def qp(at: AppTest, key: str) -> str | None:
    value = at.query_params.get(key)
    return value[-1] if isinstance(value, list) else value


def test_the_url_keeps_the_run_and_the_model_source_after_another_page():
    from explorer.registry import get_preset
    from explorer.runs import RunStore

    store = RunStore()
    run_id = store.create_run("shown", get_preset("course_lenet5").spec.to_dict(),
                              {"epochs": 1}, status="completed")
    at = train_page({"run": str(run_id)})
    at.radio(key="tr_source").set_value("Build page").run()
    at.switch_page("pages/build.py").run()
    at.switch_page("pages/train.py").run()
    assert not at.exception
    assert qp(at, "run") == str(run_id)
    assert qp(at, "tr_source") == "build" and qp(at, "family") == "resnet"  # course_resnet18
    # The same URL in a new tab (a new session) shows the same run and the same model.
    again = train_page({k: qp(at, k) for k in at.query_params})
    assert again.radio(key="tr_source").value == "Build page"
    assert any(c.value.startswith("build_resnet: ResNet on 1×96×96") for c in again.caption)
    assert any(f"Run {run_id} completed" in x.value for x in again.info)
    # Back to a preset: the Build page's parameters leave the URL.
    again.radio(key="tr_source").set_value("Preset").run()
    assert qp(again, "tr_source") == "preset" and qp(again, "family") is None
    store.delete_run(run_id)


def test_the_overlay_selection_survives_another_page_and_drops_deleted_runs():
    from explorer.registry import get_preset
    from explorer.runs import RunStore

    store = RunStore()
    spec = get_preset("course_lenet5").spec.to_dict()
    keep, gone = (store.create_run(n, spec, {"epochs": 1}, status="completed")
                  for n in ("kept", "deleted elsewhere"))
    at = train_page()
    at.multiselect(key="tr_overlay").select(keep).select(gone).run()
    at.switch_page("pages/conv.py").run()
    store.delete_run(gone)  # another user deletes one of them meanwhile
    at.switch_page("pages/train.py").run()
    assert not at.exception
    assert at.multiselect(key="tr_overlay").value == [keep]
    store.delete_run(keep)


def test_a_refused_seed_names_its_range_in_full():
    at = train_page({"tr_seed": "-5"})
    assert "tr_seed=-5 (from 0 to 2,147,483,647)" in at.warning[0].value


def test_the_estimate_shows_before_start_and_refusals_are_sentences(monkeypatch):
    from explorer.runs import RunStore

    at = train_page()
    at.radio(key="tr_source").set_value("Preset").run()
    at.selectbox(key="tr_preset").select("course_lenet5").run()
    assert any("per epoch on this server" in c.value and "of memory at batch size 128" in c.value
               for c in at.caption)
    # And what the run would meet: a free worker, or its place in the queue.
    outlook = re.compile(r"(A worker is free: it would start at once|(No run is|\d+ runs? "
                         r"(is|are)) training and \d+ waiting: yours would be "
                         r"\d+(st|nd|rd|th) in the queue)\.$")
    assert any(outlook.search(c.value) for c in at.caption), [c.value for c in at.caption]
    # vgg16 has torchvision's 1000-way head; the offline digits have 10 classes.
    at.selectbox(key="tr_preset").select("vgg16").run()
    classes = "The model vgg16 has a 1000-way head but the 5,000 MNIST digits (offline) have 10"
    assert any(classes in rendered(w.value) for w in at.warning)
    before = len(RunStore().list_runs(limit=10_000))
    button(at, "Start training").click().run()
    assert any(classes in rendered(e.value) for e in at.error)
    # With a 10-way head it is the time budget that refuses it, naming a cheaper fix. (The
    # budget is set first: a price is cached for 15 s, and the check's own run prices it.)
    monkeypatch.setenv("EXPLORER_RUN_BUDGET_S", "60")
    at.checkbox(key="tr_head").check().run()
    button(at, "Start training").click().run()
    assert any("over the limit of 60 s per run; choose" in rendered(e.value) for e in at.error)
    assert len(RunStore().list_runs(limit=10_000)) == before  # nothing was queued
    assert not at.exception


def test_a_runs_zip_with_weights_imports_through_the_page_and_keeps_the_weights(tmp_path):
    """Another server's export with weights (a zip) lands here with the same tensors."""
    import torch

    from explorer.io import export_runs
    from explorer.models import build
    from explorer.registry import get_preset
    from explorer.runs import RunStore
    from explorer.weights import load_weights, save_weights

    spec = get_preset("course_lenet5").spec
    torch.manual_seed(3)
    model = build(spec).eval()
    elsewhere = RunStore(tmp_path / "elsewhere.sqlite")
    run_id = elsewhere.create_run("from afar", spec.to_dict(), {"epochs": 1}, status="completed")
    assert save_weights(model, elsewhere, run_id, spec=spec).saved
    data = export_runs(elsewhere, [run_id], with_weights=True)

    at = train_page()
    at.file_uploader(key="tr_import").upload("runs.zip", data, "application/zip").run()
    assert not at.exception and not at.error
    found = re.search(r"Imported 1 run as #(\d+)\.", at.success[0].value)
    assert found, at.success[0].value
    kept = load_weights(RunStore(), int(found.group(1)))
    for name, value in model.state_dict().items():
        assert torch.equal(kept.state_dict[name], value), name


def test_a_run_taken_out_of_the_queue_says_it_trained_no_step():
    from explorer.registry import get_preset
    from explorer.runs import RunStore

    store = RunStore()
    run = store.create_run("course_lenet5 · offline-mnist",
                           get_preset("course_lenet5").spec.to_dict(), {"epochs": 1},
                           status="stopped")
    at = train_page({"run": str(run)})
    assert f"Run {run} was stopped before it trained a step: it has no curves." in \
        [i.value for i in at.info], [i.value for i in at.info]
    store.delete_run(run)
