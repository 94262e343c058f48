"""What the Build page needs to draw a spec as widgets, without importing streamlit.

``form_fields(cls)`` describes each field of a spec class (kind, label, help, range, table
columns); ``rows_to_frame`` / ``frame_to_rows`` convert arch tuples to and from the editable
tables; ``book_notation`` writes a tuple as the book writes it, for copying; ``md_escape`` and
``code_span`` put text a student typed into a Markdown message so that it shows as typed.
"""

from __future__ import annotations

import math
import re
import typing
from dataclasses import dataclass, fields
from typing import Any, Literal

import pandas as pd

from explorer.errors import ConfigError
from explorer.families import families, get_family
from explorer.specs import SpecBase

# Labels of the fields every spec has; each family names its own fields (``Family.labels``).
COMMON_LABELS: dict[str, str] = {"input_shape": "Input", "num_classes": "Classes"}


def _merged(attr: str) -> dict:
    out: dict = {}
    for f in families():
        for key, value in getattr(f, attr).items():
            out.setdefault(key, value)
    return out


# Column labels of the arch tables: named so that neither tuple order is ambiguous.
COLUMN_LABELS: dict[str, str] = _merged("columns")
# Single-column tables (tuple[int, ...] fields) and their column label.
LIST_LABELS: dict[str, str] = _merged("list_labels")
FIELD_LABELS: dict[str, str] = {**COMMON_LABELS, **_merged("labels")}
# Per row type, the order the book writes a row in (shown beside the tuple box).
BOOK_ORDER_NOTE: dict[type, str] = _merged("book_order")


@dataclass(frozen=True)
class FormField:
    """How one spec field is edited: a number, a switch, a choice, a table or the input shape."""

    name: str
    label: str
    help: str
    kind: Literal["int", "float", "bool", "choice", "rows", "list", "shape", "triple", "stages"]
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] = ()
    row_type: type | None = None  # for "rows" and "stages"

    @property
    def columns(self) -> list[str]:
        if self.row_type is not None:
            return [COLUMN_LABELS[n] for n in self.row_type._fields]
        return [LIST_LABELS.get(self.name, "value")]


def form_fields(cls: type[SpecBase]) -> list[FormField]:
    """One FormField per dataclass field, in declaration order."""
    hints = typing.get_type_hints(cls)
    labels = {**COMMON_LABELS, **get_family(cls.family).labels}
    out = []
    for f in fields(cls):  # type: ignore[arg-type]
        tp, meta = hints[f.name], dict(f.metadata)
        label = labels.get(f.name) or FIELD_LABELS.get(f.name, f.name)
        help_ = meta.get("help", "")
        lo, hi = meta.get("lo"), meta.get("hi")
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if f.name == "input_shape":
            out.append(FormField(f.name, label, help_, "shape"))
        elif tp is bool:
            out.append(FormField(f.name, label, help_, "bool"))
        elif tp is int:
            out.append(FormField(f.name, label, help_, "int", lo, hi))
        elif tp is float:
            out.append(FormField(f.name, label, help_, "float", lo, hi))
        elif origin is Literal:
            out.append(FormField(f.name, label, help_, "choice", choices=tuple(args)))
        elif origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            inner = args[0]
            if typing.get_origin(inner) is tuple:  # GoogLeNet: stages of Inception rows
                out.append(FormField(f.name, label, help_, "stages",
                                     row_type=typing.get_args(inner)[0]))
            elif inner is int:
                out.append(FormField(f.name, label, help_, "list"))
            else:
                out.append(FormField(f.name, label, help_, "rows", row_type=inner))
        elif origin is tuple:
            out.append(FormField(f.name, label, help_, "triple"))
        else:  # pragma: no cover - a new field type must be given a widget here
            raise TypeError(f"no widget for {f.name}: {tp}")
    return out


def rows_to_frame(field: FormField, value: Any) -> pd.DataFrame:
    """The table a student edits: named columns, one row per block (stages get a stage column)."""
    if field.kind == "list":
        return pd.DataFrame({field.columns[0]: list(value)}, dtype="Int64")
    if field.kind == "stages":
        records = [{"stage": i, **dict(zip(field.columns, row, strict=True))}
                   for i, stage in enumerate(value, 1) for row in stage]
        return pd.DataFrame(records, columns=["stage", *field.columns])
    return pd.DataFrame([list(r) for r in value], columns=field.columns)


def _cell(value: Any, where: str) -> int:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        raise ConfigError(f"{where} is empty; fill it in or delete the row.")
    if isinstance(value, bool):
        return int(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be a number, not {value!r}.") from None
    if not number.is_integer():
        raise ConfigError(f"{where} must be a whole number, not {value!r}.")
    return int(number)


def frame_to_rows(field: FormField, frame: pd.DataFrame) -> Any:
    """Read an edited table back into JSON-like rows (the spec validates the numbers)."""
    label = field.label.lower()
    records = frame.to_dict("records")
    if field.kind == "list":
        col = field.columns[0]
        return [_cell(r.get(col), f"{label} row {i}, {col}") for i, r in enumerate(records, 1)]
    cols = field.columns
    names = field.row_type._fields  # type: ignore[union-attr]
    rows = []
    for i, r in enumerate(records, 1):
        row = {n: _cell(r.get(c), f"{label} row {i}, {c}") for n, c in zip(names, cols,
                                                                            strict=True)}
        if field.kind == "stages":
            row["_stage"] = _cell(r.get("stage"), f"{label} row {i}, stage")
        rows.append(row)
    if field.kind != "stages":
        return [[row[n] for n in names] for row in rows]
    stages: dict[int, list[list[int]]] = {}
    for row in rows:
        stages.setdefault(row.pop("_stage"), []).append([row[n] for n in names])
    return [stages[k] for k in sorted(stages)]


def book_notation(value: Any) -> str:
    """Rows (lists or tuples) as the book writes them: VGG-11's ((1, 64), (1, 128), ...)."""
    if isinstance(value, list | tuple):
        items = [book_notation(x) for x in value]
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    return repr(value)


# Characters that start Markdown (CommonMark, plus Streamlit's $math$ and :color[...]) inline;
# ``!`` starts an image.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>$~|&#!:@])")
# GitHub's autolinks (http://…, www.…, a@b.c) are found in the text after escapes are read, so a
# backslash cannot stop them; an invisible WORD JOINER inside "://", "www." and after "@" does.
WORD_JOINER = "\u2060"
_AUTOLINK = re.compile(r"(?i)(?<=:)(?=//)|(?<=www)(?=\\?\.)|(?<=@)")


def md_escape(text: str) -> str:
    """``text`` with a backslash before every character Markdown would read as markup and the
    start of every autolink broken, so that a link or an image in it shows as the text typed
    (no <a>, no request from the visitor's browser to the host it names)."""
    escaped = _MARKDOWN_SPECIAL.sub(r"\\\1", str(text))
    return _AUTOLINK.sub(WORD_JOINER, escaped)


def code_span(text: str) -> str:
    """``text`` as an inline Markdown code span that shows it verbatim, backticks included.

    CommonMark closes a code span only at a backtick run as long as the opening one, and drops
    one space at each end when both are there; so the fence is one backtick longer than the
    longest run inside, and padded with a space when the text touches a backtick or a space.
    """
    runs = [len(r) for r in re.findall(r"`+", text)]
    fence = "`" * (max(runs, default=0) + 1)
    pad = " " if text[:1] in ("`", " ") or text[-1:] in ("`", " ") else ""
    return f"{fence}{pad}{text}{pad}{fence}"
