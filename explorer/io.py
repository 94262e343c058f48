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
