"""handler.py (Inference Endpoints) called directly on a tiny release: the pipeline's rows as JSON, neighbours and a
new movie, and one line (with suggestions where there are some) for every bad input, after which it keeps serving."""

from __future__ import annotations

import json
import time

import pytest
from tiny import TITLES, YEARS


@pytest.fixture(scope="module")
def handler(space):
    from handler import EndpointHandler

    return EndpointHandler(str(space["release"]))


HISTORY = ["Heat (1995)", ["The Matrix (1999)", 4.5], ["Toy Story", 3.0], "千と千尋の神隠し"]


def test_the_handler_answers_with_the_pipelines_rows_as_json(handler):
    rows = handler({"inputs": HISTORY, "parameters": {"top_k": 5, "explain": True}})
    assert json.loads(json.dumps(rows, ensure_ascii=False)) == rows and len(rows) == 5
    assert rows == handler.recommender(HISTORY, top_k=5, explain=True)
    assert {"title", "year", "genres", "score", "because_you_liked"} <= set(rows[0])
    for row in rows:
        assert all(reason["title"] in TITLES and 0 < reason["share"] <= 1 for reason in row["because_you_liked"])
    plain = handler({"inputs": HISTORY})
    assert len(plain) == 10 and "because_you_liked" not in plain[0]


def test_neighbours_and_a_new_movie(handler):
    similar = handler({"inputs": {"similar_to": "heat (1986)"}, "parameters": {"top_k": 3}})
    assert [row["title"] for row in similar] == [row["title"] for row in handler.model.similar_movies("#5", k=3)]
    placed = handler({"inputs": {"description": "Nightfall (2024). Genres: Crime. A thief in Los Angeles."}})
    assert len(placed) == 10 and json.dumps(placed)


BAD = [
    ({"inputs": ["The Matrx"]}, "unknown movie 'The Matrx'; did you mean: The Matrix (1999)"),
    ({"inputs": ["Toy Stroy (1995)"]}, "did you mean: Toy Story (1995)"),
    ({"inputs": ["Heat"]}, "'Heat' names 2 movies: Heat (1995) [#0]; Heat (1986) [#5]; add the year"),
    ({"inputs": ["千と千尋の神隠"]}, "did you mean: 千と千尋の神隠し (2001)"),
    ({"inputs": ["Zzyzx Qwerty"]}, "unknown movie 'Zzyzx Qwerty'; no similar title either"),
    ({"inputs": []}, "the history is empty"),
    ({"inputs": [""]}, "unknown movie ''"),
    ({"inputs": [["Heat (1995)", 11]]}, "ratings run from 0.5 to 5"),
    ({"inputs": ["Heat (1995)"], "parameters": {"top_k": 0}}, "top_k must be an integer from 1 to 100, got 0"),
    ({"inputs": ["Heat (1995)"], "parameters": {"top_k": 10**9}}, "top_k must be an integer from 1 to 100, got 1000000000"),
    ({"inputs": ["Heat (1995)"], "parameters": {"top_k": "10"}}, "top_k must be an integer"),
    ({"inputs": ["Heat (1995)"], "parameters": {"topk": 3}}, "unknown parameter(s) ['topk']"),
    ({"inputs": ["Heat (1995)"], "parameters": {"as_of": "yesterday"}}, "as_of 'yesterday' is not a date"),
    ({"inputs": 42}, "give one history"),
    ({"inputs": {"similar_to": "Heet (1995)"}}, "did you mean: Heat (1995)"),
    ({"inputs": {"similar": "Heat (1995)"}}, '"inputs" is a history (a list), {"similar_to"'),
    ({"inputs": {"description": " "}}, "non-empty movie descriptions"),
    ({"history": ["Heat (1995)"]}, '"inputs" is missing'),
]


@pytest.mark.parametrize(("data", "message"), BAD, ids=[str(data)[:60] for data, _ in BAD])
def test_bad_input_is_one_line_and_the_handler_keeps_serving(handler, data, message):
    answer = handler(data)
    assert set(answer) == {"error"} and message in answer["error"], answer
    assert "\n" not in answer["error"] and "Traceback" not in answer["error"]
    assert len(handler({"inputs": ["Heat (1995)"], "parameters": {"top_k": 2}})) == 2


def test_a_ten_thousand_movie_history_is_answered_quickly(handler):
    labels = [f"{title} ({year})" for title, year in zip(TITLES, YEARS, strict=True)] + [f"#{i}" for i in range(6, 40)]
    history = [[labels[i % 37], 0.5 + (i % 10) / 2] for i in range(10_000)]
    started = time.perf_counter()
    rows = handler({"inputs": history, "parameters": {"top_k": 5, "explain": True}})
    assert isinstance(rows, list) and {row["title"] for row in rows} <= {f"Film {i}" for i in range(31, 34)}
    assert len(rows) == 3, "only the three catalog movies outside the history are left"
    assert time.perf_counter() - started < 30
