"""Spec files and links: export specs as JSON, import a spec file or a shared link (validated).

An import either returns specs that build, or raises one ``ConfigError`` sentence that names the
file and the fix; it never changes anything the caller already holds (it only returns values).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any
from urllib.parse import parse_qs, urlsplit

from explorer.bounded import loads
from explorer.errors import ConfigError
from explorer.formatting import plural
from explorer.registry import PRESETS, get_preset
from explorer.specs import SpecBase, spec_from_dict, spec_from_query

FORMAT = "cnn-explorer/specs"  # marks a file that holds several named specs
MAX_SPEC_BYTES = 64 * 1024  # the largest preset's spec is under 2 KiB
MAX_MODELS = 8  # models in one file
MAX_LINK_CHARS = 8 * 1024
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]+")


def safe_name(text: str, fallback: str = "model") -> str:
    """A model name made of letters, digits, ``_`` and ``-`` (it goes into URLs and filenames)."""
    name = _NAME_CHARS.sub("_", str(text)).strip("_-")[:40]
    return name or fallback


def _size_text(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def specs_to_json(specs: Mapping[str, SpecBase]) -> str:
    """Several named specs as one JSON document (the Compare page's download); read_specs reads it.

    A single spec file is the spec's own JSON (the Build page's download); this format wraps
    several of them with their names, in order.
    """
    models = [{"name": name, "spec": spec.to_dict()} for name, spec in specs.items()]
    return json.dumps({"format": FORMAT, "version": 1, "models": models}, indent=2)


def _checked(data: Any, where: str) -> SpecBase:
    """A spec from a JSON-like value that also builds within the size and cost limits."""
    from explorer.cost import check_spec  # lazy: the meta-device builders import torch

    try:
        spec = spec_from_dict(data)
        check_spec(spec)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{where} is nested too deeply to be a spec.") from None
    return spec


def _load_json(data: bytes | str, filename: str, max_bytes: int, what: str,
               source: str) -> tuple[str, Any]:
    """(shown file name, parsed JSON) of an uploaded file; every failure is one sentence."""
    shown = PurePath(filename or "the file").name
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if len(raw) > max_bytes:
        raise ConfigError(f"{shown} is {_size_text(len(raw))}; a {what} file is at most "
                          f"{_size_text(max_bytes)}, so pick {source}.")
    if not raw.strip():
        raise ConfigError(f"{shown} is empty; pick {source}.")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"{shown} is not a text file; pick {source}.") from None
    return shown, loads(text, shown, max_bytes, fix="download it again or fix that line")


def read_specs(data: bytes | str, filename: str = "spec.json") -> dict[str, SpecBase]:
    """Named specs from a spec file: one spec (its own JSON) or several (``specs_to_json``).

    Raises ConfigError with one sentence for an oversized, empty, non-UTF-8, malformed or
    invalid file. A single spec is named after the file.
    """
    shown, doc = _load_json(data, filename, MAX_SPEC_BYTES, "spec",
                            "a spec .json downloaded from the Build or Compare page")
    if isinstance(doc, dict) and "family" in doc:
        return {safe_name(PurePath(shown).stem, "uploaded"): _checked(doc, shown)}
    if not (isinstance(doc, dict) and isinstance(doc.get("models"), list)):
        raise ConfigError(f"{shown} holds neither a spec (a JSON object with a 'family' field) "
                          f"nor a list of models; download one from the Build or Compare page.")
    items = doc["models"]
    if not items:
        raise ConfigError(f"{shown} lists no models; add at least one.")
    if len(items) > MAX_MODELS:
        raise ConfigError(f"{shown} lists {len(items)} models; a file may hold at most "
                          f"{MAX_MODELS}.")
    out: dict[str, SpecBase] = {}
    for i, item in enumerate(items, 1):
        if not isinstance(item, dict) or "spec" not in item:
            raise ConfigError(f"{shown}: model {i} must be an object with 'name' and 'spec' "
                              f"fields.")
        name = safe_name(str(item.get("name", "")), f"model{i}")
        base, k = name, 2
        while name in out:
            name, k = f"{base}_{k}", k + 1
        out[name] = _checked(item["spec"], f"{shown}, model {name}")
    return out


def read_spec(text: str, name: str = "model") -> SpecBase:
    """One spec from its JSON text (a value stored in a URL), with the same checks as a file."""
    specs = read_specs(text, f"{name}.json")
    if len(specs) != 1:
        raise ConfigError(f"the spec {name!r} holds {len(specs)} models; one is expected.")
    return next(iter(specs.values()))


def spec_from_link(link: str) -> tuple[str, SpecBase]:
    """The model in a Build-page link (``?family=...`` or ``?preset=NAME``): (name, spec)."""
    text = (link or "").strip()
    if not text:
        raise ConfigError("the link is empty; paste a link copied from the Build page's "
                          "'Share & export' tab.")
    if len(text) > MAX_LINK_CHARS:
        raise ConfigError(f"the link is {len(text):,} characters long; a model link is at most "
                          f"{MAX_LINK_CHARS:,}, so copy it again from the Build page.")
    query = urlsplit(text).query if "?" in text or "://" in text else text.lstrip("?")
    params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    try:
        if "family" in params:
            from explorer.cost import check_spec

            spec = spec_from_query(params)
            check_spec(spec)
            preset = params.get("preset", "")
            name = preset if preset in PRESETS else f"linked_{spec.family}"
            return safe_name(name), spec
        if "preset" in params:
            if len(params["preset"]) > 64:  # no preset name is that long; do not echo it
                raise ConfigError("its preset name is too long to be one; python -m explorer "
                                  "presets lists them.")
            return safe_name(params["preset"]), get_preset(params["preset"]).spec
    except ConfigError as exc:
        raise ConfigError(f"the link's model could not be read: {exc}") from None
    raise ConfigError("the link holds no model; copy the link from the Build page's "
                      "'Share & export' tab (it contains ?family=...).")


__all__ = ["FORMAT", "MAX_MODELS", "MAX_SPEC_BYTES", "read_spec", "read_specs", "safe_name",
           "spec_from_link", "specs_to_json"]


RUNS_FORMAT = "cnn-explorer/runs"  # marks a file that holds several exported runs
MAX_RUNS_BYTES = 16 * 1024 * 1024  # a 2,000-step run with every metric is well under 2 MiB
MAX_RUNS = 50


def runs_to_json(exports: list[dict[str, Any]]) -> str:
    """Several exported runs (``RunStore.export_run``) in one file for ``read_runs``."""
    return json.dumps({"format": RUNS_FORMAT, "runs": exports}, indent=1)


def read_runs(data: bytes | str, filename: str = "runs.json") -> list[dict[str, Any]]:
    """The exported runs in an uploaded file: one run, or ``runs_to_json``'s list.

    Only the file's shape is checked here; ``RunStore.import_runs`` validates every run and
    stores all of them or none.
    """
    shown, doc = _load_json(data, filename, MAX_RUNS_BYTES, "runs",
                            "a runs .json downloaded from the Train page")
    if isinstance(doc, dict) and isinstance(doc.get("runs"), list):
        items = doc["runs"]
    elif isinstance(doc, dict) and "metrics" in doc:
        items = [doc]
    else:
        raise ConfigError(f"{shown} holds no exported run; download runs from the Train "
                          f"page's history.")
    if not items:
        raise ConfigError(f"{shown} lists no runs.")
    if len(items) > MAX_RUNS:
        raise ConfigError(f"{shown} lists {len(items)} runs; import at most {MAX_RUNS} at once.")
    if not all(isinstance(item, dict) for item in items):
        raise ConfigError(f"{shown}: every run must be a JSON object.")
    return items


# ---- runs with their weights: one zip ---------------------------------------------------------
#
# A run's weights are a safetensors file of up to EXPLORER_WEIGHTS_MAX_RUN_MB (200 MB by default);
# as base64 inside JSON they would grow by a third and be parsed as one giant string, so a runs
# export with weights is a zip: ``runs.json`` (as ``runs_to_json`` writes it, each run naming its
# weights member) and ``weights/run-<k>.safetensors`` for the k-th run, stored as they are.

RUNS_ZIP_JSON = "runs.json"
_ZIP_MAGIC = b"PK\x03\x04"
_WEIGHTS_MEMBER = re.compile(r"^weights/run-(\d{1,3})\.safetensors$")


def runs_export_name(with_weights: bool) -> tuple[str, str]:
    """(file name, MIME type) of ``export_runs``'s file, for the download button."""
    return ("runs.zip", "application/zip") if with_weights else ("runs.json", "application/json")


def export_runs(store: Any, run_ids: list[int], with_weights: bool = False,
                limits: Any = None) -> str | bytes:
    """Runs of ``store`` as a file that ``import_runs_file`` reads, made when it is downloaded.

    Without weights: the JSON text of ``runs_to_json``. With weights: a zip of that JSON and each
    run's final weights (runs without weights go without, and say so in ``weights``: null). The
    weights in one export may total the per-run limit (EXPLORER_WEIGHTS_MAX_RUN_MB, what one
    import may keep); over it, a ConfigError sentence says to export fewer runs or none of them.
    """
    import io as _io
    import zipfile

    from explorer.weights import weights_path

    exports = [store.export_run(i) for i in run_ids]
    if not with_weights:
        return runs_to_json(exports)
    problem = weights_export_problem(store, run_ids, limits)
    if problem:
        raise ConfigError(problem)
    files = [weights_path(store, i) for i in run_ids]
    sizes = [p.stat().st_size if p.is_file() else 0 for p in files]
    buffer = _io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:  # weights barely compress
        for k, (export, path, size) in enumerate(zip(exports, files, sizes, strict=True), 1):
            blob = None
            if size:
                try:
                    blob = path.read_bytes()
                except FileNotFoundError:  # evicted since (its note says so): export without
                    blob = None
            export["weights"] = f"weights/run-{k}.safetensors" if blob else None
            if blob:
                zf.writestr(export["weights"], blob)
        zf.writestr(RUNS_ZIP_JSON, runs_to_json(exports))
    return buffer.getvalue()


def _read_member(zf: Any, info: Any, limit: int, shown: str) -> bytes:
    """A zip member's bytes, refused past ``limit`` before anything is decompressed."""
    if info.file_size > limit:  # what it declares; zipfile never reads past that (nor a bomb)
        raise ConfigError(f"{shown}: {info.filename} holds {_size_text(info.file_size)}, more "
                          f"than the {_size_text(limit)} it may; export the runs again.")
    try:
        with zf.open(info) as f:
            out = f.read(info.file_size + 1)
    except Exception:  # zlib.error, BadZipFile (bad CRC), NotImplementedError (encrypted, ...)
        raise ConfigError(f"{shown}: {info.filename} cannot be read from the zip; export the "
                          f"runs again.") from None
    if len(out) > limit:  # cannot happen with zipfile as it is; kept as the bound's last word
        raise ConfigError(f"{shown}: {info.filename} holds more than {_size_text(limit)}; "
                          f"export the runs again.")
    return out


def weights_export_problem(store: Any, run_ids: list[int], limits: Any = None) -> str | None:
    """Why these runs cannot be exported with their weights (one sentence), or None if they can.

    The weights in one export may total the per-run limit (EXPLORER_WEIGHTS_MAX_RUN_MB), what one
    import may keep; the Train page shows the sentence instead of the download.
    """
    from explorer.weights import WeightsLimits, weights_path

    limits = limits or WeightsLimits.from_env()
    files = [weights_path(store, i) for i in run_ids]
    sizes = [p.stat().st_size if p.is_file() else 0 for p in files]
    if sum(sizes) <= limits.per_run:
        return None
    biggest = max(range(len(run_ids)), key=sizes.__getitem__)
    these = "this run" if len(run_ids) == 1 else f"these {len(run_ids)} runs"
    return (f"The weights of {these} come to {_size_text(sum(sizes))} "
            f"(run #{run_ids[biggest]}'s alone {_size_text(sizes[biggest])}); an export carries "
            f"at most {_size_text(limits.per_run)} of weights, so export fewer runs at once, or "
            f"without their weights.")


def read_runs_file(data: bytes | str, filename: str = "runs.json", limits: Any = None
                   ) -> tuple[list[dict[str, Any]], dict[int, bytes]]:
    """The runs in an uploaded file and, from a zip, their weights: (runs, {run index: bytes}).

    A .json file is read by ``read_runs``. A zip holds ``runs.json`` and at most one weights file
    per run; every size is bounded before it is read (the zip's own, each member's as it is
    decompressed, the weights' total by the per-run limit), so a zip bomb or a huge upload costs
    a sentence, not memory.
    """
    from explorer.weights import WeightsLimits

    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if not raw.startswith(_ZIP_MAGIC):
        return read_runs(raw, filename), {}
    import io as _io
    import zipfile

    limits = limits or WeightsLimits.from_env()
    shown = PurePath(filename or "the file").name
    if len(raw) > MAX_RUNS_BYTES + limits.per_run + 2**20:  # + the zip's own headers
        raise ConfigError(f"{shown} is {_size_text(len(raw))}; a runs file with weights is at "
                          f"most {_size_text(MAX_RUNS_BYTES + limits.per_run)}.")
    try:
        zf = zipfile.ZipFile(_io.BytesIO(raw))
        infos = zf.infolist()
    except Exception:  # BadZipFile, a broken central directory, ...
        raise ConfigError(f"{shown} is not a runs file that can be read (a broken zip); "
                          f"download the runs from the Train page again.") from None
    with zf:
        if len(infos) > MAX_RUNS + 1:
            raise ConfigError(f"{shown} holds {len(infos):,} files; a runs zip holds "
                              f"{RUNS_ZIP_JSON} and at most {MAX_RUNS} weights files.")
        by_name = {i.filename: i for i in infos}
        if RUNS_ZIP_JSON not in by_name:
            raise ConfigError(f"{shown} holds no {RUNS_ZIP_JSON}; download the runs from the "
                              f"Train page again.")
        items = read_runs(_read_member(zf, by_name[RUNS_ZIP_JSON], MAX_RUNS_BYTES, shown),
                          f"{shown}/{RUNS_ZIP_JSON}")
        weights: dict[int, bytes] = {}
        total = 0
        for k, item in enumerate(items, 1):
            ref = item.pop("weights", None)
            if ref is None:
                continue
            if not isinstance(ref, str) or not _WEIGHTS_MEMBER.match(ref) \
                    or ref not in by_name or int(_WEIGHTS_MEMBER.match(ref).group(1)) != k:
                raise ConfigError(f"{shown}: run {k}'s 'weights' must name its file "
                                  f"weights/run-{k}.safetensors in the zip, not "
                                  f"{shown_value(ref)}.")
            blob = _read_member(zf, by_name[ref], limits.per_run - total, shown)
            total += len(blob)
            weights[k - 1] = blob
    return items, weights


def shown_value(value: Any) -> str:
    """A short, quoted rendering of a value from a file, for a message."""
    from explorer.bounded import shown as _shown

    return _shown(value)


def _check_weights_fit(blob: bytes, spec_dict: Any, where: str) -> None:
    """Refuse weights that are not safetensors or do not fit the run's own network."""
    from explorer.cost import meta_model
    from explorer.specs import spec_from_dict
    from explorer.weights import weights_from_bytes

    got = weights_from_bytes(blob, f"{where}'s weights").state_dict
    try:  # built on the meta device, within the layer limit: names and shapes, no allocation
        want = meta_model(spec_from_dict(dict(spec_dict))).state_dict()
    except ConfigError as exc:
        raise ConfigError(f"{where}: its spec is invalid ({exc})") from None
    except (RecursionError, TypeError, ValueError, OverflowError):
        raise ConfigError(f"{where}: its spec cannot be read.") from None
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    wrong = sorted(k for k in set(want) & set(got)
                   if tuple(want[k].shape) != tuple(got[k].shape) or want[k].dtype != got[k].dtype)
    if missing or extra or wrong:
        first = (missing or extra or wrong)[0]
        what = "lack" if missing else "have an extra" if extra else "have a wrong shape for"
        raise ConfigError(f"{where}'s weights do not fit its network (they {what} "
                          f"{shown_value(first)}); export the run again.")


def import_runs_file(store: Any, data: bytes | str, filename: str = "runs.json",
                     session: str | None = None, limits: Any = None,
                     max_kept: int | None = None) -> tuple[list[int], list[str]]:
    """Import an uploaded runs file (JSON, or a zip with weights): (new run ids, sentences).

    Everything is checked before anything is stored: the runs by ``RunStore.import_runs`` (all
    or none) and each run's weights (safetensors that fit the run's network). The weights are
    then kept under the new ids within the server's limits (``explorer.weights``); a refusal or
    an eviction is one of the returned sentences, never a silent loss. ``max_kept`` (a visitor's
    limit; None for the teacher) refuses a file that would leave ``session`` keeping more runs:
    one visitor's imports cannot bury the class's runs.
    """
    from explorer.weights import WeightsLimits, store_weights_bytes

    limits = limits or WeightsLimits.from_env()
    items, weights = read_runs_file(data, filename, limits)
    shown = PurePath(filename or "the file").name
    if session is not None and max_kept is not None:
        kept = store.count_runs(session)
        if kept + len(items) > max_kept:
            raise ConfigError(
                f"{shown} holds {plural(len(items), 'run')} and you keep {kept:,} on this "
                f"server; a visitor keeps at most {max_kept:,}, so delete some of yours or "
                f"import fewer (the teacher has no limit).")
    for k, blob in weights.items():
        spec = items[k].get("spec") if isinstance(items[k], dict) else None
        if not isinstance(spec, dict):
            raise ConfigError(f"{shown}: run {k + 1} has weights but no spec.")
        _check_weights_fit(blob, spec, f"{shown}, run {k + 1}")
    ids = store.import_runs(items, session=session)
    notes: list[str] = []
    for k, blob in weights.items():
        notes.extend(store_weights_bytes(blob, store, ids[k], limits=limits).notes)
    return ids, notes


__all__ += ["RUNS_FORMAT", "export_runs", "import_runs_file", "read_runs", "read_runs_file",
            "runs_export_name", "runs_to_json", "weights_export_problem"]
