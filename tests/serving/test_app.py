"""The Space's app.py launched locally (loopback, analytics off) on a tiny release and driven through
gradio_client: the three tabs' API answers are the handler's rows, bad input is one line in the page's message and
the app keeps serving."""

from __future__ import annotations

import pytest
from tiny import free_port


@pytest.fixture(scope="module")
def client(space):
    from app import build_demo
    from gradio_client import Client

    demo = build_demo(str(space["release"]))
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        demo.close()


@pytest.fixture(scope="module")
def handler(space):
    from handler import EndpointHandler

    return EndpointHandler(str(space["release"]))


def test_recommend_shows_the_handlers_rows_with_the_reasons(client, handler):
    table, message = client.predict("Heat (1995) = 5\nThe Matrix (1999)\n千と千尋の神隠し = 4", 6, api_name="/recommend")
    history = [["Heat (1995)", 5.0], "The Matrix (1999)", ["千と千尋の神隠し", 4.0]]
    rows = handler({"inputs": history, "parameters": {"top_k": 6, "explain": True}})
    assert table["headers"] == ["#", "title", "year", "genres", "score", "because you liked"]
    assert [line[1:4] for line in table["data"]] == [[row["title"], row["year"], ", ".join(row["genres"])] for row in rows]
    assert [line[4] for line in table["data"]] == pytest.approx([row["score"] for row in rows], abs=1e-4)
    for line, row in zip(table["data"], rows, strict=True):
        reasons = row["because_you_liked"]
        assert line[5] == ", ".join(f"{r['title']} ({r['year']}) {r['share']:.0%}" for r in reasons)
    assert message == "6 movies for a history of 3."


def test_similar_movies_and_a_new_movie(client, handler):
    table, _ = client.predict("Heat (1986)", 4, api_name="/similar")
    assert [line[1] for line in table["data"]] == [r["title"] for r in handler({"inputs": {"similar_to": "Heat (1986)"},
                                                                                 "parameters": {"top_k": 4}})]  # fmt: skip
    table, message = client.predict("Nightfall (2024)", "Crime, Thriller", "A detective hunts a thief.", "A. Actor", 3,
                                    api_name="/new_movie")  # fmt: skip
    text = "Nightfall (2024). Genres: Crime, Thriller. A detective hunts a thief. Cast: A. Actor."
    assert [line[1] for line in table["data"]] == [r["title"] for r in handler({"inputs": {"description": text},
                                                                                 "parameters": {"top_k": 3}})]  # fmt: skip
    assert message == "3 movies."


@pytest.mark.parametrize(
    ("api_name", "args", "message"),
    [
        ("/recommend", ("The Matrx", 5), "⚠️ unknown movie 'The Matrx'; did you mean: The Matrix (1999)"),
        ("/recommend", ("", 5), "⚠️ the history is empty"),
        ("/recommend", ("Heat", 5), "add the year, e.g. \"Heat (1995)\""),
        ("/recommend", ("Heat (1995)", 0), "⚠️ top_k must be an integer from 1 to 100, got 0"),
        ("/recommend", ("Heat (1995)", 10**9), "got 1000000000"),
        ("/recommend", ("Heat (1995) = 9", 5), "ratings run from 0.5 to 5"),
        ("/recommend", ("千と千尋の神隠", 5), "did you mean: 千と千尋の神隠し (2001)"),
        ("/similar", ("Toy Stroy", 5), "did you mean: Toy Story (1995)"),
        ("/similar", ("", 5), "unknown movie ''"),
        ("/new_movie", ("", "", "", "", 5), "non-empty movie descriptions"),
    ],
)
def test_bad_input_is_one_line_in_the_page_and_the_app_keeps_serving(client, api_name, args, message):
    table, answer = client.predict(*args, api_name=api_name)
    assert table["data"] == [] and message in answer and "\n" not in answer and "Traceback" not in answer
    table, _ = client.predict("Heat (1995)", 2, api_name="/recommend")
    assert len(table["data"]) == 2


def test_a_ten_thousand_movie_history_through_the_page(client):
    lines = "\n".join(f"#{i % 37} = {0.5 + (i % 10) / 2:g}" for i in range(10_000))
    table, message = client.predict(lines, 10, api_name="/recommend")
    assert len(table["data"]) == 3 and message == "3 movies for a history of 10000."


def test_the_page_opens_with_an_example_history_of_this_catalogs_movies(space):
    from app import Demo

    assert Demo(str(space["release"])).example == "Heat (1995) = 5\nThe Matrix (1999) = 4.5\nToy Story (1995) = 4"
