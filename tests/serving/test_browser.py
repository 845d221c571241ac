"""The Space in a real browser: Debian's Chromium (Selenium + chromedriver, no browser download) opens the locally
launched app on a tiny release, a history is typed the way a person does (search and pick a title, rate it, add it,
type more lines), Recommend is pressed and the table read back equals the handler's answer; a screenshot is saved.
Skipped where /usr/bin/chromium or chromedriver is absent (.ci/run installs them when it may use apt-get)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from tiny import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "bench"))

from browser_demo import CHROMEDRIVER, CHROMIUM, drive  # noqa: E402

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()), reason="needs Debian's chromium and chromium-driver"),
]


def test_a_history_typed_in_chromium_gives_the_handlers_table(space, tmp_path):
    pytest.importorskip("selenium")
    from app import build_demo
    from handler import EndpointHandler

    demo = build_demo(str(space["release"]))
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    try:
        seen = drive(f"http://127.0.0.1:{port}/", pick="Matr", rating_steps_down=1,
                     history=["Heat (1995) = 5", "千と千尋の神隠し = 4"], screenshot=tmp_path / "page.png")  # fmt: skip
    finally:
        demo.close()
    assert seen["history"] == "The Matrix (1999) = 4.5\nHeat (1995) = 5\n千と千尋の神隠し = 4"
    history = [["The Matrix (1999)", 4.5], ["Heat (1995)", 5.0], ["千と千尋の神隠し", 4.0]]
    rows = EndpointHandler(str(space["release"]))({"inputs": history, "parameters": {"top_k": 10, "explain": True}})
    assert seen["message"] == "10 movies for a history of 3."
    assert [line[:4] for line in seen["rows"]] == [
        [str(rank), row["title"], str(row["year"]), ", ".join(row["genres"])] for rank, row in enumerate(rows, 1)
    ]
    assert [line[5] for line in seen["rows"]] == [
        ", ".join(f"{r['title']} ({r['year']}) {r['share']:.0%}" for r in row["because_you_liked"]) for row in rows
    ]
    assert (tmp_path / "page.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "page.png").stat().st_size > 20_000
