"""Hugging Face Inference Endpoints handler of a fusionrec model repo: the "movie-recommendation" pipeline of the
repo's own remote code, behind JSON.

    {"inputs": ["Heat (1995)", ["Ronin (1998)", 4.5]], "parameters": {"top_k": 10, "explain": true}}
        -> [{"movie_id", "tmdb_id", "title", "year", "genres", "score", "because_you_liked": [{"title", "share"}]}, ...]
    {"inputs": {"similar_to": "Heat (1995)"}, "parameters": {"top_k": 10}}      -> the nearest catalog movies
    {"inputs": {"description": "A heist crew in Los Angeles ..."}}               -> a new movie placed among them

Bad input (an unknown title, an empty history, top_k out of range, ...) answers {"error": "<one line>"} with the
closest titles where there are some; the handler keeps serving.
"""

from __future__ import annotations

import numbers
from typing import Any

from transformers import pipeline

MAX_TOP_K = 100
NEIGHBOUR_KEYS = ("movie_id", "tmdb_id", "title", "year", "genres", "score")


class EndpointHandler:
    def __init__(self, path: str = "") -> None:
        self.recommender = pipeline("movie-recommendation", model=path or ".", trust_remote_code=True, device="cpu")
        self.model = self.recommender.model

    def __call__(self, data: dict[str, Any]) -> list | dict:
        try:
            return self.answer(data)
        except (ValueError, TypeError, KeyError) as error:
            return {"error": " ".join(str(error).split()) or type(error).__name__}

    def answer(self, data: dict[str, Any]) -> list | dict:
        if not isinstance(data, dict) or "inputs" not in data:
            raise ValueError('send {"inputs": [...], "parameters": {...}}: "inputs" is missing.')
        inputs, parameters = data["inputs"], data.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise ValueError('"parameters" must be an object, e.g. {"top_k": 10, "explain": true}.')
        unknown = set(parameters) - {"top_k", "explain", "as_of"}
        if unknown:
            raise ValueError(f"unknown parameter(s) {sorted(unknown)}; use top_k, explain and as_of.")
        top_k = parameters.get("top_k", 10)
        if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or not 1 <= top_k <= MAX_TOP_K:
            raise ValueError(f"top_k must be an integer from 1 to {MAX_TOP_K}, got {top_k!r}.")
        if isinstance(inputs, dict):
            return self.neighbours(inputs, int(top_k))
        if isinstance(inputs, list) and not inputs:
            raise ValueError('the history is empty: list at least one movie you liked, e.g. ["Heat (1995)"].')
        options = {"top_k": int(top_k), "explain": bool(parameters.get("explain", False))}
        if parameters.get("as_of") is not None:
            options["as_of"] = parameters["as_of"]
        return self.recommender(inputs, **options)

    def neighbours(self, inputs: dict, top_k: int) -> list[dict]:
        if set(inputs) == {"similar_to"} and isinstance(inputs["similar_to"], str):
            rows = self.model.similar_movies(inputs["similar_to"], k=top_k)
        elif set(inputs) == {"description"} and isinstance(inputs["description"], str):
            rows = self.model.similar_to_text(inputs["description"], k=top_k)
        else:
            raise ValueError('"inputs" is a history (a list), {"similar_to": "<title>"} or {"description": "<text>"}.')
        return [{key: row[key] for key in NEIGHBOUR_KEYS} for row in rows]
