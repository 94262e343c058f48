"""Spec ↔ widget helpers: tables with named columns and the book's tuple notation."""

import pytest

from explorer.errors import ConfigError
from explorer.forms import book_notation, form_fields, frame_to_rows, rows_to_frame
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
