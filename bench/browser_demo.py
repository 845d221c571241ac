"""The Space in a real browser: launch app.py on a release folder (loopback, analytics off), open it in Debian's
Chromium through Selenium and its chromedriver (no browser download), type a history the way a person does (search
a title, pick it, rate it, add it; type another line), press Recommend, read the table and save a screenshot.

    python bench/browser_demo.py --release RELEASE_FOLDER --screenshot docs/demo_recommend.png \\
        --pick "Toy Story" --history "Heat (1995) = 5" "Ronin (1998) = 4.5"

tests/serving/test_browser.py runs the same `drive` on a tiny release (skipped where /usr/bin/chromium is absent).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1280,1500"]  # fmt: skip


def browser(profile: Path):
    """Headless Chromium with a fresh profile, driven by the Debian chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def drive(url: str, *, pick: str, rating_steps_down: int, history: Sequence[str], screenshot: Path, timeout: float = 60) -> dict:
    """Open the app at `url`, search `pick` in "Find a movie", choose the first match, lower the rating slider by
    `rating_steps_down` half-stars, add it, type the `history` lines, press Recommend; returns the history as the
    page shows it, the message and the table (a list of rows of cell texts) and writes the screenshot."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as when
    from selenium.webdriver.support.ui import WebDriverWait

    with tempfile.TemporaryDirectory() as profile:
        driver = browser(Path(profile))
        try:
            wait = WebDriverWait(driver, timeout)
            driver.get(url)
            box = wait.until(when.element_to_be_clickable((By.CSS_SELECTOR, "#history textarea")))
            box.send_keys(Keys.CONTROL, "a")
            box.send_keys(Keys.DELETE)  # a person's way of emptying it (clear() bypasses the page's own binding)
            search = driver.find_element(By.CSS_SELECTOR, "#pick input")
            search.click()
            search.send_keys(pick)
            option = wait.until(when.element_to_be_clickable((By.CSS_SELECTOR, "#pick [role=option]")))
            option.click()
            slider = driver.find_element(By.CSS_SELECTOR, "#rating input[type=range]")
            for _ in range(rating_steps_down):
                slider.send_keys(Keys.ARROW_LEFT)
            driver.find_element(By.ID, "add").click()
            wait.until(lambda d: box.get_attribute("value").strip())
            for line in history:
                box.send_keys(Keys.END, Keys.ENTER, line)  # Enter: a new line (Shift+Enter submits)
            typed = box.get_attribute("value")
            driver.find_element(By.ID, "recommend").click()
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#recommendations [role=row] [role=gridcell]")
                       and d.find_element(By.ID, "recommend-message").text.strip())  # fmt: skip
            time.sleep(0.5)  # let the table finish painting before the screenshot
            rows = [[cell.get_attribute("textContent").strip() for cell in row.find_elements(By.CSS_SELECTOR, "[role=gridcell]")]
                    for row in driver.find_elements(By.CSS_SELECTOR, "#recommendations [role=row]")]
            rows = [row for row in rows if row]  # the header row has column headers, no grid cells
            message = driver.find_element(By.ID, "recommend-message").text.strip()
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(screenshot))
            return {"history": typed, "message": message, "rows": rows}
        finally:
            driver.quit()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--release", required=True, help="a release folder (release.py --dry-run writes one)")
    parser.add_argument("--screenshot", default="docs/demo_recommend.png")
    parser.add_argument("--pick", default="Toy Story", help="what to type in the search box (the first match is picked)")
    parser.add_argument("--rating-steps-down", type=int, default=1, help="half-stars below 5 for the picked movie")
    parser.add_argument("--history", nargs="*", default=["Heat (1995) = 5", "Ronin (1998) = 4.5"])
    args = parser.parse_args(argv)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fusionrec" / "serving"))
    from app import build_demo

    demo = build_demo(args.release)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    try:
        seen = drive(url, pick=args.pick, rating_steps_down=args.rating_steps_down, history=args.history,
                     screenshot=Path(args.screenshot))  # fmt: skip
    finally:
        demo.close()
    print(json.dumps(seen, ensure_ascii=False, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
