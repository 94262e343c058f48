"""Every way text reaches the app, fed hostile input: a result or one ConfigError, nothing else.

The corpus (tests/fuzz_corpus/, see its README) holds the cases of issue 11; hypothesis adds
random ones. Each case is measured: a regression to the 162 s, 2.5 GB analysis of a link fails
the explicit bound here (the bounds are generous, the cases take milliseconds).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import time
import tracemalloc
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from explorer import charts
from explorer.__main__ import main as cli_main
from explorer.bounded import literal, parse_id
from explorer.cost import check_spec
from explorer.errors import ConfigError
from explorer.forms import form_fields
from explorer.io import import_runs_file, read_specs, spec_from_link
from explorer.runs import RunStore
from explorer.specs import SPEC_TYPES, coerce_field, spec_from_query

CORPUS = Path(__file__).parent / "fuzz_corpus"
MAX_SECONDS = 60.0  # per case; most take milliseconds (seconds under tracemalloc on a busy
# machine); the unbounded analysis of the issue took 162 s
MAX_PYTHON_BYTES = 1024**3  # Python allocations at the peak of one case
PASTE_CHARS = 4_000  # the Build page's limit for the tuple box (pages/build.MAX_PASTE_CHARS)


@contextmanager
def bounded(case: str):
    """Fail unless the block ends within MAX_SECONDS and MAX_PYTHON_BYTES of Python memory."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert elapsed < MAX_SECONDS, f"{case}: {elapsed:.1f} s"
    assert peak < MAX_PYTHON_BYTES, f"{case}: {peak / 2**20:.0f} MiB"


def answers(fn, *args):
    """``fn(*args)``'s result, or the ConfigError it raised; any other exception fails the test."""
    try:
        return fn(*args)
    except ConfigError as exc:
        message = str(exc)
        assert message.strip() and "Traceback" not in message
        assert len(message) < 2_000, message[:200]  # a sentence, not the input echoed back
        return exc


# ---- the entry points, as the pages and the CLI call them --------------------------------------

def from_link(text: str):
    """The Build page opened with this URL (spec_from_query, then the cost check it runs first),
    and the Compare page's "add a link" box (spec_from_link)."""
    query = urlsplit(text).query if "?" in text else text
    params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    if "family" in params:
        spec = answers(spec_from_query, params)
        if not isinstance(spec, ConfigError):
            answers(check_spec, spec)
    return answers(spec_from_link, text)


def pasted(text: str, cls=SPEC_TYPES["vgg"], name: str = "arch"):
    """The Build page's tuple box (pages/build.on_paste)."""
    value = answers(literal, text, "the pasted tuple", PASTE_CHARS)
    if isinstance(value, ConfigError):
        return value
    return answers(coerce_field, cls, name, value)


def uploaded_spec(data: bytes, name: str):
    return answers(read_specs, data, name)


def imported_runs(data: bytes, name: str, store: RunStore):
    """The Train page's import: a runs .json, or a .zip with weights (io.import_runs_file)."""
    result = answers(import_runs_file, store, data, name)
    ids = result if isinstance(result, ConfigError) else result[0]
    if not isinstance(ids, ConfigError):
        for run_id in ids:  # the Train page's live panel draws what was imported
            steps = store.metrics(run_id, "step")
            epochs = store.metrics(run_id, "epoch")
            charts.loss_figure(steps), charts.lr_figure(steps), charts.accuracy_figure(epochs)
    return ids


def cli_summary(path: Path, capsys) -> int:
    code = cli_main(["summary", str(path), "--format", "json"])
    err = capsys.readouterr().err
    assert code in (0, 2) and "Traceback" not in err
    return code


@pytest.fixture(scope="module", autouse=True)
def warm_torch():
    """Run each family once on the meta device before any case is measured: torch imports and
    registers its meta kernels on first use, which under tracemalloc takes tens of seconds."""
    for cls in SPEC_TYPES.values():
        with contextlib.suppress(ConfigError):
            check_spec(cls())


@pytest.fixture
def store(tmp_path):
    s = RunStore(tmp_path / "runs.sqlite")
    yield s
    s.close()


# ---- the corpus ------------------------------------------------------------------------------

def corpus(prefix: str) -> list[Path]:
    files = sorted(CORPUS.glob(f"{prefix}_*"))
    assert files, prefix
    return files


@pytest.mark.parametrize("path", corpus("link"), ids=lambda p: p.stem)
def test_hostile_links_are_refused_with_a_sentence(path):
    with bounded(path.name):
        result = from_link(path.read_text())
    assert isinstance(result, ConfigError), result


@pytest.mark.parametrize("path", corpus("paste"), ids=lambda p: p.stem)
def test_hostile_pasted_tuples_are_refused_with_a_sentence(path):
    text = path.read_text()
    with bounded(path.name):
        results = [pasted(text, cls, f.name) for cls in SPEC_TYPES.values()
                   for f in form_fields(cls) if f.kind in ("rows", "list", "stages")]
    assert all(isinstance(r, ConfigError) for r in results), results


@pytest.mark.parametrize("path", corpus("spec"), ids=lambda p: p.stem)
def test_hostile_spec_files_are_refused_by_the_upload_and_the_cli(path, capsys):
    with bounded(path.name):
        result = uploaded_spec(path.read_bytes(), path.name)
        code = cli_summary(path, capsys)
    assert isinstance(result, ConfigError), result
    assert code == 2


@pytest.mark.parametrize("path", corpus("runs"), ids=lambda p: p.stem)
def test_hostile_run_files_are_refused_or_imported_whole(path, store):
    with bounded(path.name):
        result = imported_runs(path.read_bytes(), path.name, store)
    if path.stem == "runs_rows_without_lr_or_train_acc":  # valid: the panel draws what is there
        assert isinstance(result, list) and len(result) == 1
        assert len(store.metrics(result[0], "step")) == 2
    elif path.stem == "runs_markdown_name_and_error":  # text is stored as text; pages escape it
        assert isinstance(result, list)
        assert "evil.example" in store.get_run(result[0])["error"]
    else:
        assert isinstance(result, ConfigError), result
        assert store.list_runs() == []  # all or nothing


@pytest.mark.parametrize("path", corpus("id"), ids=lambda p: p.stem)
def test_hostile_run_ids_are_refused(path):
    assert isinstance(answers(parse_id, path.read_text(), "run"), ConfigError)


def test_run_ids_within_sqlite_range_are_read():
    assert parse_id("12", "run") == 12
    assert parse_id(str(2**63 - 1), "run") == 2**63 - 1  # SQLite's largest INTEGER
    for text in ("²", "١٢", str(2**63), "0"):  # str.isdigit() is true for the first three
        assert isinstance(answers(parse_id, text, "run"), ConfigError)


def test_a_long_id_is_cut_in_its_sentence_and_its_quotes_still_close():
    # 5,000 nines: repr is 5,002 characters; the sentence keeps 30 of them, the last the
    # closing quote after the ellipsis: "'" + 27 nines + "…'".
    text = str(answers(parse_id, "9" * 5000, "The link's run"))
    assert text == "The link's run must be a run number such as 12, not '" + "9" * 27 + "…'."
    assert str(answers(parse_id, "-1", "run")).endswith("not '-1'.")


# ---- inputs too large to keep as files --------------------------------------------------------

def test_a_million_pasted_rows_are_refused_before_any_row_is_read():
    text = "(" + ", ".join(["(1, 64)"] * 1_000_000) + ")"
    with bounded("10^6 pasted rows"):
        result = pasted(text)
    assert isinstance(result, ConfigError) and "characters" in str(result)
    # The same rows arriving already parsed (a spec file's list) are counted before conversion.
    with bounded("10^6 rows as a list"):
        result = answers(coerce_field, SPEC_TYPES["vgg"], "arch", [[1, 64]] * 1_000_000)
    assert isinstance(result, ConfigError) and "1,000,000 entries" in str(result)


def test_a_link_with_a_100000_entry_list_is_refused():
    text = "?family=lenet&hidden=[" + ",".join(["1"] * 100_000) + "]"
    with bounded("100,000 entries"):
        assert isinstance(from_link(text), ConfigError)


def run_export(**changes) -> dict:
    base = {"format": "cnn-explorer-run", "version": 1, "name": "r", "spec": {"family": "lenet"},
            "config": {}, "status": "completed", "error": None, "created_at": 1.7e9,
            "started_at": None, "finished_at": None, "metrics": []}
    return base | changes


def test_run_import_quotas(store):
    rows = [{"kind": "step", "step": i, "epoch": 0, "values": {"loss": 1.0}}
            for i in range(300_000)]
    big_spec = {"family": "lenet", "note": "x" * (30 * 2**20)}
    cases = {
        "300,000 rows": json.dumps(run_export(metrics=rows)),
        "30 MB spec": json.dumps(run_export(spec=big_spec)),
        "a 70 KB spec": json.dumps(run_export(spec={"family": "lenet", "n": "x" * 70_000})),
        "60 runs": json.dumps({"format": "cnn-explorer/runs",
                               "runs": [run_export()] * 60}),
        "6 runs of 19,000 rows": json.dumps({"format": "cnn-explorer/runs",
                                             "runs": [run_export(metrics=rows[:19_000])] * 6}),
    }
    for case, text in cases.items():
        with bounded(case):
            result = imported_runs(text.encode(), "big.json", store)
        assert isinstance(result, ConfigError), case
    assert store.list_runs() == []


def test_the_issues_alexnet_link_is_refused_on_the_meta_device_naming_the_layer():
    # conv2 alone: 500 out × 256×256 outputs (padding 15 keeps the size) × 500 in × 31×31
    # = 15.7 T multiply-adds; vgg19 at 3×224×224, the largest preset, has 19.6 G.
    link = ("/?family=alexnet&input_shape=[3,256,256]&convs=[[500,31,1,15,false],"
            "[500,31,1,15,false]]&hidden=[]&avgpool_size=1")
    with bounded("alexnet link"):
        result = from_link(link)
    assert isinstance(result, ConfigError)
    assert "15.7 T" in str(result) and "features.conv2" in str(result)


# ---- random input (hypothesis) ---------------------------------------------------------------

SPECIAL_TEXT = ["1" + "0" * 400, "9" * 5000, "[" * 3000, "NaN", "-Infinity", "1e400", "²",
                "![t](http://evil.example/x.png)", "", " ", "null", "true", "{}", "[[]]"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.floats()
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=4),
    max_leaves=24)
raw_values = st.one_of(json_values.map(lambda v: json.dumps(v, allow_nan=True)),
                       st.sampled_from(SPECIAL_TEXT), st.text(max_size=40))
FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def link_params(draw) -> dict[str, str]:
    family = draw(st.sampled_from(sorted(SPEC_TYPES)))
    names = [f.name for f in dataclasses.fields(SPEC_TYPES[family])]
    chosen = draw(st.lists(st.sampled_from(names), max_size=4, unique=True))
    return {"family": family} | {name: draw(raw_values) for name in chosen}


@FUZZ
@given(link_params())
def test_random_links(params):
    with bounded(str(params)[:80]):
        spec = answers(spec_from_query, params)
        if not isinstance(spec, ConfigError):
            answers(check_spec, spec)


@FUZZ
@given(st.sampled_from([(cls, f.name) for cls in SPEC_TYPES.values() for f in form_fields(cls)
                        if f.kind in ("rows", "list", "stages")]),
       st.one_of(json_values.map(repr), st.sampled_from(SPECIAL_TEXT), st.text(max_size=60)))
def test_random_pasted_tuples(field, text):
    cls, name = field
    with bounded(text[:80]):
        pasted(text, cls, name)


@FUZZ
@given(st.one_of(json_values.map(lambda v: json.dumps(v, allow_nan=True).encode()),
                 st.binary(max_size=200),
                 st.builds(lambda fam, v: json.dumps({"family": fam, "hidden": v}).encode(),
                           st.sampled_from(sorted(SPEC_TYPES)), json_values)))
def test_random_spec_files(data):
    with bounded(repr(data[:80])):
        uploaded_spec(data, "upload.json")


@FUZZ
@given(st.fixed_dictionaries({}, optional={
    "name": st.one_of(st.text(max_size=20), json_values),
    "status": st.sampled_from(["completed", "failed", "running", "bogus"]),
    "created_at": st.one_of(st.floats(), st.integers(-(10**40), 10**40), json_values),
    "error": st.one_of(st.none(), st.text(max_size=20), json_values),
    "metrics": st.lists(st.fixed_dictionaries({
        "kind": st.sampled_from(["step", "epoch", "other"]),
        "step": st.one_of(st.integers(-5, 2**70), json_values),
        "epoch": st.integers(-1, 10),
        "values": st.one_of(st.dictionaries(st.sampled_from(["loss", "lr", "train_acc", "x"]),
                                            st.one_of(st.none(), st.floats(),
                                                      st.integers(-(10**40), 10**40))),
                            json_values)}), max_size=5),
    "config": st.one_of(st.just({}), st.dictionaries(st.sampled_from(["lr", "epochs", "seed"]),
                                                     json_values, max_size=2)),
}))
def test_random_run_files(tmp_path_factory, changes):
    store = RunStore(tmp_path_factory.mktemp("fuzz") / "runs.sqlite")
    try:
        text = json.dumps(run_export(**changes), allow_nan=True).encode()
        with bounded(repr(changes)[:80]):
            imported_runs(text, "runs.json", store)
    finally:
        store.close()


@functools.cache
def exported_zip() -> bytes:
    """A real runs export with weights (course LeNet-5, untrained): the seed of mutated zips."""
    import tempfile

    from explorer.io import export_runs
    from explorer.models import build
    from explorer.registry import get_preset
    from explorer.weights import save_weights

    spec = get_preset("course_lenet5").spec
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(Path(tmp) / "runs.sqlite")
        run_id = store.create_run("seed", spec.to_dict(), {"epochs": 1}, status="completed")
        save_weights(build(spec), store, run_id, spec=spec)
        data = export_runs(store, [run_id], with_weights=True)
        store.close()
    return data


def mutate(data: bytes, edits: list[tuple[float, int]], cut: float) -> bytes:
    """``data`` with bytes overwritten at relative positions and cut at a relative length."""
    out = bytearray(data[:max(4, int(len(data) * cut))])
    for where, value in edits:
        out[int(where * (len(out) - 1))] = value
    return bytes(out)


zip_mutations = st.tuples(st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)),
                                   max_size=8),
                          st.sampled_from([1.0, 1.0, 1.0, 0.999, 0.9, 0.5, 0.01]))


@FUZZ
@given(zip_mutations)
def test_mutated_runs_zips(tmp_path_factory, mutation):
    """A runs export with weights, bytes changed or cut: imported whole, or one sentence."""
    store = RunStore(tmp_path_factory.mktemp("zip") / "runs.sqlite")
    try:
        data = mutate(exported_zip(), *mutation)
        with bounded(repr(mutation)[:80]):
            result = imported_runs(data, "runs.zip", store)
        if isinstance(result, ConfigError):
            assert store.list_runs() == []  # all or nothing
    finally:
        store.close()


@FUZZ
@given(st.text(max_size=30))
def test_random_run_ids(text):
    result = answers(parse_id, text, "run")
    if not isinstance(result, ConfigError):
        assert text.strip().isascii() and 1 <= result <= 2**63 - 1
