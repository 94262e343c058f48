"""Spec ↔ widget helpers: tables with named columns and the book's tuple notation."""

import re

import pytest

from explorer.errors import ConfigError
from explorer.forms import (
    book_notation,
    code_span,
    form_fields,
    frame_to_rows,
    md_escape,
    rows_to_frame,
)
from explorer.specs import GoogLeNetSpec, VGGSpec


def test_book_notation_matches_the_book():
    # d2l writes VGG-11 as ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512)).
    assert book_notation(VGGSpec().arch) == "((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))"
    assert book_notation([[1, 64]]) == "((1, 64),)"  # a one-element tuple keeps its comma
    assert book_notation([6, 16]) == "(6, 16)"


def test_tables_round_trip_with_named_columns():
    fields = {f.name: f for f in form_fields(VGGSpec)}
    frame = rows_to_frame(fields["arch"], VGGSpec().arch)
    assert list(frame.columns) == ["convs", "out channels"]
    assert frame_to_rows(fields["arch"], frame) == [[1, 64], [1, 128], [2, 256], [2, 512],
                                                    [2, 512]]
    stages = {f.name: f for f in form_fields(GoogLeNetSpec)}["stages"]
    frame = rows_to_frame(stages, GoogLeNetSpec().stages)
    assert frame["stage"].tolist() == [1, 1, 2, 2, 2, 2, 2, 3, 3]
    assert [len(s) for s in frame_to_rows(stages, frame)] == [2, 5, 2]


def test_an_empty_cell_is_a_sentence():
    fields = {f.name: f for f in form_fields(VGGSpec)}
    frame = rows_to_frame(fields["arch"], VGGSpec().arch)
    frame.loc[1, "out channels"] = None
    with pytest.raises(ConfigError, match="row 2, out channels is empty"):
        frame_to_rows(fields["arch"], frame)


# What a student may paste into the tuple box: Markdown emphasis, links, math, Streamlit colour
# directives, HTML, entities and backtick runs of every length.
NASTY = ["__import__('os')", "*a* _b_ **c**", "[x](http://e.com)", "$x^2$", ":red[alarm]",
         "<b>hi</b>", "&lt;", "a`b", "``x``", "`", " lead", "trail ", "\\*", "# h", "~~s~~|t|"]


def read_code_span(markdown: str) -> str:
    """The text a CommonMark renderer shows for a string that is one code span (spec 6.1)."""
    fence = re.match(r"`+", markdown).group()
    assert markdown.endswith(fence) and len(markdown) > 2 * len(fence)
    inner = markdown[len(fence):-len(fence)]
    # The closing run must be exactly as long as the opening one: no run of that length inside.
    assert all(len(run) != len(fence) for run in re.findall(r"`+", inner))
    assert not inner.endswith("`")
    if inner.startswith(" ") and inner.endswith(" ") and inner.strip(" "):
        inner = inner[1:-1]
    return inner


@pytest.mark.parametrize("text", NASTY)
def test_a_code_span_shows_the_text_as_typed(text):
    assert read_code_span(code_span(text)) == text


@pytest.mark.parametrize("text", NASTY)
def test_escaped_text_reads_back_and_leaves_no_markup(text):
    escaped = md_escape(text)
    # CommonMark shows a backslash-escaped ASCII punctuation character as itself (spec 2.4).
    # The invisible word joiners that break autolinks (see md_escape) are not part of the text.
    assert re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", escaped).replace("\u2060", "") == text
    # Every character that starts inline markup is escaped.
    unescaped = re.sub(r"\\.", "", escaped)
    assert not set(unescaped) & set("\\`*_[]<>$~|&#"), unescaped
