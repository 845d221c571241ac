"""Pure parsers of raw cells: stringified lists, names, cast and crew, numbers, ids, years, titles."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fusionrec.data.parsing import (
    cast_names,
    crew_tokens,
    format_imdb_id,
    log1p_nonnegative,
    log1p_positive,
    names_of,
    parse_float,
    parse_int_id,
    parse_movielens_title,
    parse_stringified_list,
    parse_year,
    year_bucket,
)


def test_parse_stringified_list():
    assert parse_stringified_list("[{'id': 16, 'name': 'Animation'}]") == [
        {"id": 16, "name": "Animation"}
    ]
    assert parse_stringified_list("{'id': 1, 'name': 'Saga'}") == [{"id": 1, "name": "Saga"}]
    assert parse_stringified_list("") == [] and parse_stringified_list(None) == []
    assert parse_stringified_list(float("nan")) == [] and parse_stringified_list("[]") == []
    assert parse_stringified_list("[{'id': 16, 'name': 'Anim") is None
    assert parse_stringified_list("__import__('os').system('echo pwned')") is None  # never eval'd
    assert parse_stringified_list("0.5") is None
    assert parse_stringified_list(b"[{'name': 'x'}, 3]") == [{"name": "x"}]


def test_names_cast_and_crew():
    assert names_of([{"name": " A  B "}, {"name": ""}, {"x": 1}, {"name": "A B"}]) == ["A B"]
    cast = [{"name": "Second", "order": 1}, {"name": "First", "order": 0}, {"name": "Nobody"}]
    assert cast_names(cast) == ["First", "Second", "Nobody"]
    crew = [{"job": "Producer", "name": "P"}, {"job": "Grip", "name": "G"}, {"job": "Director", "name": "D"},
            {"job": "Director", "name": "D"}, {"job": "Screenplay", "name": "S"}]  # fmt: skip
    assert crew_tokens(crew) == ["Director:D", "Screenplay:S", "Producer:P"]


def test_parse_numbers_and_ids():
    assert (
        parse_int_id("862") == 862 and parse_int_id("862.0") == 862 and parse_int_id(862.0) == 862
    )
    assert parse_int_id(" 7 ") == 7 and parse_int_id(np.int64(5)) == 5
    for bad in ("1997-08-20", "", "abc", None, float("nan"), -1, "1e5", "8.5", True):
        assert parse_int_id(bad) is None, bad
    assert (
        parse_float("81.0") == 81.0
        and math.isnan(parse_float("x"))
        and math.isnan(parse_float(""))
    )
    assert math.isnan(parse_float("inf"))
    assert math.isnan(log1p_positive(0.0)) and log1p_positive(math.e - 1) == pytest.approx(1.0)
    assert log1p_nonnegative(0.0) == 0.0 and math.isnan(log1p_nonnegative(-1.0))
    assert parse_year("1995-10-30") == 1995 and parse_year("01-Jan-1995") == 1995
    assert parse_year("") is None and parse_year("0001-01-01") is None
    assert year_bucket(1995) == "1990s" and year_bucket(None) is None
    assert parse_movielens_title("Toy Story (1995)") == ("Toy Story", 1995)
    assert parse_movielens_title("Babylon 5") == ("Babylon 5", None)
    assert parse_movielens_title("Fawlty Towers (1975-1979)") == ("Fawlty Towers", 1975)
    assert format_imdb_id("0114709") == "tt0114709" and format_imdb_id("tt0113497") == "tt0113497"
    assert format_imdb_id("") is None
