"""Vocabularies, encodings and the rendered text column."""

from __future__ import annotations

from collections import Counter

from fusionrec.data.tables import build_vocab, encode_bag, encode_category, render_text


def test_vocab_and_encoding():
    vocab = build_vocab(Counter({"b": 2, "a": 2, "c": 5, "rare": 1}), min_count=2)
    assert vocab == ["<pad>", "<oov>", "c", "a", "b"]
    index = {t: i for i, t in enumerate(vocab)}
    assert encode_bag(["a", "rare", "c", "b"], index, 3) == [3, 1, 2]
    assert encode_category(None, index) == 0 and encode_category("rare", index) == 1
    assert encode_category("c", index) == 2


def test_render_text_drops_empty_parts():
    full = render_text(
        "Heat", 1995, ["Crime"], "A tagline.", "An overview.", ["heist"], ["Al"], ["Michael"]
    )
    assert (
        full
        == "Heat (1995). Genres: Crime. A tagline. An overview. Keywords: heist. Cast: Al. Director: Michael."
    )
    assert render_text("movie 7", None) == "movie 7."
