"""The Gradio Space of a fusionrec model repo: type the movies you love, see what comes back and why.

Tabs: "Recommend" (find titles as you type, rate them, get the top-k with the history movies behind each one),
"Similar movies" and "A new movie" (a description placed among the catalog). Every answer goes through
handler.py's EndpointHandler, the code Inference Endpoints runs, so the page, the endpoint and the pipeline give
the same rows. The model repo carries its catalog: nothing else is downloaded.

    FUSIONREC_MODEL=path/to/release python app.py      # locally; on the Space, MODEL_ID below
"""

from __future__ import annotations

import os
from pathlib import Path

import gradio as gr
from handler import MAX_TOP_K, EndpointHandler

MODEL_ID = "fusionrec/fusionrec-tmdb"  # release.py writes the model repo here
RECOMMEND_HEADERS = ["#", "title", "year", "genres", "score", "because you liked"]
NEIGHBOUR_HEADERS = ["#", "title", "year", "genres", "score"]
EXAMPLE = ["Heat (1995) = 5", "Ronin (1998) = 4.5", "The Matrix (1999) = 4.5", "Toy Story (1995) = 4"]


def parse_history(text: str) -> list:
    """One movie a line, oldest first: "Heat (1995)" (liked) or "Heat (1995) = 4.5" (rated)."""
    entries = []
    for line in (text or "").splitlines():
        title, _, rating = line.rpartition("=")
        try:
            entries.append([title.strip(), float(rating)] if title.strip() else line.strip())
        except ValueError:
            entries.append(line.strip())
    return [entry for entry in entries if entry]


def shares(reasons: list[dict]) -> str:
    return ", ".join(f"{reason['title']} ({reason['year']}) {reason['share']:.0%}" for reason in reasons)


class Demo:
    def __init__(self, model: str) -> None:
        self.handler = EndpointHandler(model)
        catalog = self.handler.model.movie_catalog()
        self.labels = sorted({catalog.label(index) for index in range(len(catalog))}, key=str.casefold)
        self.example = "\n".join(line for line in EXAMPLE if self.known(catalog, line))

    @staticmethod
    def known(catalog, line: str) -> bool:
        """Whether an example line names a movie of this catalog (the page opens with an answerable history)."""
        try:
            catalog.resolve(parse_history(line)[0][0])
        except ValueError:
            return False
        return True

    def ask(self, data: dict) -> tuple[list, str]:
        answer = self.handler(data)
        if isinstance(answer, dict):
            return [], f"⚠️ {answer['error']}"
        return answer, ""

    def recommend(self, history: str, top_k: float) -> tuple[list[list], str]:
        rows, message = self.ask({"inputs": parse_history(history), "parameters": {"top_k": whole(top_k), "explain": True}})
        table = [[rank, row["title"], row["year"], ", ".join(row["genres"]), round(row["score"], 4),
                  shares(row["because_you_liked"])] for rank, row in enumerate(rows, 1)]  # fmt: skip
        return table, message or f"{len(table)} movies for a history of {len(parse_history(history))}."

    def neighbours(self, inputs: dict, top_k: float) -> tuple[list[list], str]:
        rows, message = self.ask({"inputs": inputs, "parameters": {"top_k": whole(top_k)}})
        table = [[rank, row["title"], row["year"], ", ".join(row["genres"]), round(row["score"], 4)]
                 for rank, row in enumerate(rows, 1)]  # fmt: skip
        return table, message or f"{len(table)} movies."

    def similar(self, title: str, top_k: float) -> tuple[list[list], str]:
        return self.neighbours({"similar_to": title or ""}, top_k)

    def new_movie(self, title: str, genres: str, overview: str, cast: str, top_k: float) -> tuple[list[list], str]:
        parts = [f"{title.strip()}." if title.strip() else "", f"Genres: {genres.strip()}." if genres.strip() else "",
                 overview.strip(), f"Cast: {cast.strip()}." if cast.strip() else ""]  # fmt: skip
        return self.neighbours({"description": " ".join(part for part in parts if part)}, top_k)


def whole(value) -> int | float:
    """A slider's number as an int when it is one (the handler answers anything else with one line)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def add_movie(history: str, title: str | None, rating: float) -> tuple[str, None]:
    if not title:
        return history, None
    line = f"{title} = {rating:g}"
    return (f"{history.rstrip()}\n{line}" if history.strip() else line), None


def build_demo(model: str) -> gr.Blocks:
    demo_model = Demo(model)
    shown = Path(model).name if Path(model).is_dir() else model  # a repo id, or a local folder by its name only
    with gr.Blocks(title="fusionrec: movies you may like, and why") as demo:
        gr.Markdown(
            f"# 🎬 fusionrec\nA two-tower recommender over {len(demo_model.labels):,} movies (`{shown}`). Type the "
            "movies you love, oldest first; each answer says which of them it comes from."
        )
        with gr.Tab("Recommend"):
            with gr.Row():
                pick = gr.Dropdown(demo_model.labels, label="Find a movie (type to search)", filterable=True, value=None,
                                   elem_id="pick")  # fmt: skip
                rating = gr.Slider(0.5, 5, value=5, step=0.5, label="Your rating", elem_id="rating")
                add = gr.Button("Add to history", elem_id="add")
            history = gr.Textbox(label="Your history: one movie a line, \"Title (year) = rating\"", lines=6,
                                 value=demo_model.example, elem_id="history")  # fmt: skip
            top_k = gr.Number(value=10, precision=0, label=f"How many (1 to {MAX_TOP_K})")
            go = gr.Button("Recommend", variant="primary", elem_id="recommend")
            message = gr.Markdown(elem_id="recommend-message")
            table = gr.Dataframe(headers=RECOMMEND_HEADERS, interactive=False, wrap=True, elem_id="recommendations")
            add.click(add_movie, [history, pick, rating], [history, pick], api_name=False)
            go.click(demo_model.recommend, [history, top_k], [table, message], api_name="recommend")
            history.submit(demo_model.recommend, [history, top_k], [table, message], api_name=False)
        with gr.Tab("Similar movies"):
            title = gr.Dropdown(demo_model.labels, label="A movie (type to search)", filterable=True,
                                allow_custom_value=True, value=None)  # fmt: skip
            similar_k = gr.Number(value=10, precision=0, label=f"How many (1 to {MAX_TOP_K})")
            similar_go = gr.Button("Find similar movies", variant="primary")
            similar_message = gr.Markdown()
            similar_table = gr.Dataframe(headers=NEIGHBOUR_HEADERS, interactive=False, wrap=True)
            similar_go.click(demo_model.similar, [title, similar_k], [similar_table, similar_message], api_name="similar")
        with gr.Tab("A new movie"):
            gr.Markdown("A movie the model has never seen, described in words: where does it land among the catalog?")
            new_title = gr.Textbox(label="Title (and year)", value="Nightfall (2024)")
            new_genres = gr.Textbox(label="Genres", value="Crime, Thriller")
            overview = gr.Textbox(label="Overview", lines=4, value="A detective hunts a master thief across Los Angeles.")
            cast = gr.Textbox(label="Cast", value="")
            new_k = gr.Number(value=10, precision=0, label=f"How many (1 to {MAX_TOP_K})")
            new_go = gr.Button("Place it", variant="primary")
            new_message = gr.Markdown()
            new_table = gr.Dataframe(headers=NEIGHBOUR_HEADERS, interactive=False, wrap=True)
            new_go.click(demo_model.new_movie, [new_title, new_genres, overview, cast, new_k], [new_table, new_message],
                         api_name="new_movie")  # fmt: skip
    return demo


if __name__ == "__main__":
    build_demo(os.environ.get("FUSIONREC_MODEL", MODEL_ID)).launch()
